#!/usr/bin/env python3
"""Several machines on loopback: two "GPU hosts" and a front swapd that lists both as peers,
with nginx terminating TLS in front of it. Driven by the official `openai` client (and curl
for /logs/stream), as users run it.

    127.0.0.2  swapd "gpu1" serving tiny-a (a real llama-server)
    127.0.0.3  swapd "gpu2" serving tiny-b (a real llama-server)
    127.0.0.1  the front swapd: tiny-embed locally, peers gpu1 and gpu2
    127.0.0.1  nginx with a self-signed certificate in front of the front swapd

test_e2e.py's runner includes these tests; this file also runs on its own:

    SWAPD_BIN=... SWAPD_LLAMA_SERVER=... SWAPD_MODELS=... \\
        ~/.cache/swapd/venv/bin/python tests/e2e/test_multihost.py [-v] [TestMultiHost.test_x ...]

Every process is started by the test and stopped by pid; waiting is a poll against a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import openai
from openai import OpenAI

import test_e2e as base
from test_e2e import (
    MODEL_FILES,
    REQUEST_TIMEOUT,
    STREAM_CTX,
    STREAM_TOKENS,
    SWAPD_START_TIMEOUT,
    SWAPD_STOP_TIMEOUT,
    LineReader,
    SlotWitness,
    chat,
    free_port,
    free_port_block,
    http,
    info,
    pids_with,
    stream_chat,
    upstream_url,
    wait_until,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NGINX_TEMPLATE = os.path.join(REPO, "config", "nginx-swapd.conf")


def setUpModule():
    base.setUpModule()


def nginx_binary() -> str | None:
    for path in ("/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("nginx")


class Node:
    """One swapd "host" listening on its own loopback address, with its own models."""

    def __init__(self, name: str, ip: str, port: int, models: list[str], peers: str = ""):
        self.name, self.ip, self.port = name, ip, port
        self.tmp = tempfile.mkdtemp(prefix=f"swapd-multihost-{name}-")
        self.models_dir = os.path.join(self.tmp, "models")
        os.mkdir(self.models_dir)
        start_port = free_port_block(max(1, len(models)))
        # The streaming checks need room for a long generation (STREAM_TOKENS).
        llama = f"{base.LLAMA_SERVER} {base.llama_flags(STREAM_CTX)}"
        lines = [
            f"# {name}: written by tests/e2e/test_multihost.py",
            "healthCheckTimeout: 30",
            "logLevel: debug",
            f"startPort: {start_port}",
            "models:",
        ]
        for model in models:
            fname = MODEL_FILES[model]
            os.symlink(os.path.join(base.MODELS_DIR, fname), os.path.join(self.models_dir, fname))
            extra = " --embeddings --pooling mean" if model == "tiny-embed" else ""
            lines.append(f"  {model}:")
            lines.append(f"    cmd: {llama} --port ${{PORT}} -m {self.models_dir}/{fname}{extra}")
        self.config = os.path.join(self.tmp, "config.yaml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n" + peers)
        self.log_path = os.path.join(self.tmp, "swapd.log")
        self.base = f"http://{ip}:{port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self):
        if self._log:
            self._log.close()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [base.SWAPD_BIN, "--config", self.config, "--listen", f"{self.ip}:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, SWAPD_PEER_CHECK_INTERVAL_MS="500"))

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                return http("GET", self.base + "/health", timeout=1.0)[0] == 200
            except OSError:
                return False

        if not wait_until(healthy, SWAPD_START_TIMEOUT):
            raise AssertionError(f"{self.name} did not become healthy:\n{self.log_tail()}")

    def kill(self):
        """The host dies: SIGKILL (its llama-server follows through the parent-death signal)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        wait_until(lambda: not pids_with(self.models_dir), 30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=SWAPD_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def cleanup(self):
        self.stop()
        for pid in pids_with(self.models_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self._log:
            self._log.close()
        if os.environ.get("SWAPD_E2E_KEEP"):
            info(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"    {self.name}| {line}" for line in lines[-n:])

    def get_json(self, path: str):
        status, _, body = http("GET", self.base + path)
        if status != 200:
            raise AssertionError(f"GET {path} on {self.name} -> {status}: {body[:300]!r}")
        return json.loads(body)

    def client(self, base_url: str | None = None, **kw) -> OpenAI:
        return OpenAI(base_url=(base_url or self.base) + "/v1", api_key="none",
                      timeout=REQUEST_TIMEOUT, max_retries=0, **kw)


class MultiHostCase(unittest.TestCase):
    def setUp(self):
        self.gpu1 = Node("gpu1", "127.0.0.2", free_port(), ["tiny-a"])
        self.gpu2 = Node("gpu2", "127.0.0.3", free_port(), ["tiny-b"])
        peers = (
            "peers:\n"
            f"  gpu1:\n    proxy: {self.gpu1.base}\n    models: [tiny-a]\n"
            f"  gpu2:\n    proxy: {self.gpu2.base}\n    models: [tiny-b]\n"
        )
        self.front = Node("front", "127.0.0.1", free_port(), ["tiny-embed"], peers)
        for node in (self.gpu1, self.gpu2, self.front):
            self.addCleanup(node.cleanup)
        for node in (self.gpu1, self.gpu2, self.front):
            node.start()
        self.client = self.front.client()

    def tearDown(self):
        logs = "\n".join(n.log_tail(15) for n in (self.front, self.gpu1, self.gpu2))
        for node in (self.front, self.gpu1, self.gpu2):
            node.stop()
            left = pids_with(node.models_dir)
            wait_until(lambda: not pids_with(node.models_dir), 30)
            if pids_with(node.models_dir):
                self.fail(f"llama-server of {node.name} left after it stopped: {left}\n{logs}")

    def assert_incremental(self, client: OpenAI, model: str, host: Node, where: str):
        """test_e2e's criterion (SlotWitness): the first token reaches the client, through
        every hop, while the host's llama-server is still generating the request."""
        chat(client, model, max_tokens=4)  # loaded
        witness = SlotWitness(upstream_url(host.get_json("/running"), model.split("/")[-1]))
        t0, arrivals, usage, timings = stream_chat(
            client, model, max_tokens=STREAM_TOKENS, on_first_content=witness.observe)
        self.assertGreaterEqual(len(arrivals), 10, arrivals)
        self.assertEqual(usage["completion_tokens"], STREAM_TOKENS)
        times = [t for t, _ in arrivals]
        info(f"{where}: {len(arrivals)} chunks, ttft {1000 * (times[0] - t0):.1f} ms, "
             f"first->last {1000 * (times[-1] - times[0]):.1f} ms, generation "
             f"{(timings or {}).get('predicted_ms')} ms (informative)")
        witness.check(self, where)


class TestMultiHost(MultiHostCase):
    def test_every_model_on_every_host_answers_through_the_front(self):
        listed = {m.id for m in self.client.models.list().data}
        self.assertEqual(listed, {"gpu1/tiny-a", "gpu2/tiny-b", "tiny-embed"})
        for model, host in (("tiny-a", self.gpu1), ("gpu1/tiny-a", self.gpu1),
                            ("tiny-b", self.gpu2), ("gpu2/tiny-b", self.gpu2)):
            r = chat(self.client, model, max_tokens=8)
            self.assertTrue(r.choices[0].message.content, r)
            running = {e["model"] for e in host.get_json("/running")["running"]}
            self.assertEqual(running, {model.split("/")[-1]}, f"{model} ran on {host.name}")
        e = self.client.embeddings.create(model="tiny-embed", input="hello")
        self.assertEqual(len(e.data[0].embedding), base.EMBED_DIM)
        # Nothing but the local embedding model runs on the front.
        front = {e["model"] for e in self.front.get_json("/running")["running"]}
        self.assertEqual(front, {"tiny-embed"})
        self.assert_incremental(self.client, "gpu2/tiny-b", self.gpu2, "stream front -> gpu2")
        # The parsed stream of the official client works through the hop too.
        stream = self.client.chat.completions.create(
            model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=16,
            stream=True)
        self.assertTrue("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        peers = self.front.get_json("/running")["peers"]
        self.assertEqual({p: peers[p]["reachable"] for p in peers}, {"gpu1": True, "gpu2": True})

    def test_a_dead_host_fails_only_its_models_and_comes_back(self):
        chat(self.client, "tiny-b", max_tokens=4)
        front_pid = self.front.proc.pid
        self.gpu2.kill()
        with self.assertRaises(openai.APIStatusError) as caught:
            chat(self.client, "tiny-b", max_tokens=4)
        self.assertEqual(caught.exception.status_code, 502)
        message = str(caught.exception)
        info(f"dead host: {message}")
        self.assertIn("peer proxy error", message)
        self.assertIn("gpu2", message)
        self.assertIn(f"127.0.0.3:{self.gpu2.port}", message)
        # The other host and the local model are untouched.
        self.assertTrue(chat(self.client, "gpu1/tiny-a", max_tokens=4).choices)
        self.assertTrue(self.client.embeddings.create(model="tiny-embed", input="x").data)
        down = wait_until(
            lambda: self.front.get_json("/running")["peers"]["gpu2"]["reachable"] is False, 30)
        self.assertTrue(down, "the front did not mark gpu2 unreachable")
        metrics = http("GET", self.front.base + "/metrics")[2].decode()
        self.assertRegex(metrics, r'swapd_peer_up\{peer="gpu2",address="127\.0\.0\.3:\d+"\} 0')
        self.assertIn('swapd_requests_total{model="tiny-b",peer="gpu2",code="502"} 1', metrics)

        # The host comes back on the same address; the front is not touched.
        self.gpu2.start()
        r = chat(self.client, "tiny-b", max_tokens=4)
        self.assertTrue(r.choices[0].message.content)
        self.assertEqual(self.front.proc.pid, front_pid)
        self.assertIsNone(self.front.proc.poll())
        up = wait_until(
            lambda: self.front.get_json("/running")["peers"]["gpu2"]["reachable"] is True, 30)
        self.assertTrue(up, "the front did not mark gpu2 reachable again")


class TestNginxTLS(MultiHostCase):
    def setUp(self):
        self.nginx_bin = nginx_binary()
        if self.nginx_bin is None:
            if os.environ.get("SWAPD_REQUIRE_NGINX"):
                self.fail("nginx is not installed but SWAPD_REQUIRE_NGINX is set")
            self.skipTest("nginx is not installed (apt-get install nginx)")
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="swapd-nginx-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert = os.path.join(self.dir, "cert.pem")
        key = os.path.join(self.dir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", key, "-out", self.cert],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Clients trust exactly this certificate (the openai client through its HTTP client).
        self.tls = ssl.create_default_context(cafile=self.cert)
        self.port = free_port()
        with open(NGINX_TEMPLATE) as f:
            conf = f.read()
        user = "user root;" if os.geteuid() == 0 else ""
        for name, value in (("@USER@", user), ("@PREFIX@", self.dir),
                            ("@LISTEN@", f"127.0.0.1:{self.port}"),
                            ("@SWAPD@", f"{self.front.ip}:{self.front.port}"),
                            ("@CERT@", self.cert), ("@KEY@", key)):
            conf = conf.replace(name, value)
        self.assertIsNone(re.search(r"@[A-Z]+@", conf), "a placeholder was left in the template")
        conf_path = os.path.join(self.dir, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        self.nginx = subprocess.Popen(
            [self.nginx_bin, "-p", self.dir, "-c", conf_path, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.addCleanup(self._stop_nginx)
        self.https = f"https://127.0.0.1:{self.port}"

        def listening():
            if self.nginx.poll() is not None:
                with open(os.path.join(self.dir, "error.log")) as f:
                    raise AssertionError(f"nginx exited: {f.read()}")
            try:
                with urllib.request.urlopen(self.https + "/health", timeout=1.0,
                                            context=self.tls) as r:
                    return r.status == 200
            except OSError:
                return False

        self.assertTrue(wait_until(listening, 30), "nginx did not come up")

    def _stop_nginx(self):
        if self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGTERM)
            try:
                self.nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait(timeout=10)

    def test_tls_front_streams_every_host_incrementally(self):
        make_client = getattr(openai, "DefaultHttpx2Client", None) or openai.DefaultHttpxClient
        http_client = make_client(verify=self.tls)
        self.addCleanup(http_client.close)
        client = self.front.client(self.https, http_client=http_client)
        listed = {m.id for m in client.models.list().data}
        self.assertEqual(listed, {"gpu1/tiny-a", "gpu2/tiny-b", "tiny-embed"})
        self.assertTrue(chat(client, "gpu2/tiny-b", max_tokens=8).choices[0].message.content)
        self.assert_incremental(client, "tiny-a", self.gpu1, "stream nginx(TLS) -> front -> gpu1")

    def test_logs_stream_through_nginx_with_curl(self):
        curl = subprocess.Popen(
            ["curl", "-sN", "--cacert", self.cert, "--max-time", "120",
             f"{self.https}/logs/stream/proxy"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            reader = LineReader(curl.stdout)
            # The history's first line shows the stream is subscribed, so the request below
            # (the front's first to gpu1) is logged on it live.
            history = reader.lines_until(time.monotonic() + 30.0, stop=lambda line: True)
            self.assertTrue(history, "no history line through nginx")
            chat(self.front.client(), "gpu1/tiny-a", max_tokens=4)
            request_line = lambda line: re.search(r"model=gpu1/tiny-a peer=gpu1 200", line)
            live = reader.lines_until(time.monotonic() + 30.0, stop=request_line)
            self.assertIsNone(curl.poll(), "curl exited: the stream closed early")
            self.assertTrue([line for _, line in live if request_line(line)],
                            f"no live proxy log line for the peer request: {live[-10:]}")
        finally:
            curl.kill()
            curl.wait(timeout=10)
            curl.stdout.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
