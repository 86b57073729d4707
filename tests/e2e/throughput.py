"""Throughput through swapd versus direct, with a real llama-server upstream.

Starts one llama-server, and one swapd whose only model proxies to that same llama-server (its
`cmd` is a placeholder process that swapd supervises; its `proxy` is the running server's
address). Both paths therefore reach the very same server process: two separately started
llama-servers differed by up to 20% in throughput on this machine, which would swamp a proxy's
cost. The same non-streaming chat requests go to both paths in alternating rounds, so drift on
a shared machine hits both alike. Prints requests per second per round and the median of the
per-round ratios. Issue 12 asks for at least 98%.

    tests/e2e/throughput.sh [ROUNDS] [SECONDS_PER_ROUND] [CONCURRENCY]

(throughput.sh installs what is needed and runs this with the e2e venv's python.) Every
process started here is stopped by pid in a finally block.
"""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

LLAMA_SERVER = os.environ["SWAPD_LLAMA_SERVER"]
MODELS = os.environ["SWAPD_MODELS"]
SWAPD = os.environ["SWAPD_BIN"]
FLAGS = "--host 127.0.0.1 -c 512 -np 1 -t 1 -tb 1 --no-warmup --no-webui --log-colors off"
BODY = json.dumps({
    "model": "tiny-a",
    "messages": [{"role": "user", "content": "Count from one to ten."}],
    "max_tokens": 16,
    "temperature": 0,
}).encode()


def free_port() -> int:
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def wait_ok(port: int, path: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered 200 on port {port}{path} within {timeout}s")


def load(port: int, seconds: float, concurrency: int) -> tuple[float, int]:
    """Requests per second over `seconds` with `concurrency` keep-alive clients; errors."""
    stop = time.time() + seconds
    counts = [0] * concurrency
    errors = [0] * concurrency

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def client(i: int) -> None:
        conn = connect()
        while time.time() < stop:
            try:
                conn.request("POST", "/v1/chat/completions", BODY,
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                if response.status == 200 and b"choices" in data:
                    counts[i] += 1
                else:
                    errors[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = connect()
        conn.close()

    started = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.time() - started), sum(errors)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    work = tempfile.mkdtemp(prefix="swapd-throughput-")
    direct_port, swapd_port, model_port = free_port(), free_port(), free_port()
    placeholder = shutil.which("sleep") or "/bin/sleep"
    model = os.path.join(MODELS, "tiny-a.gguf")
    config = os.path.join(work, "config.yaml")
    with open(config, "w") as f:
        f.write(f"""startPort: {model_port}
logLevel: warn
models:
  tiny-a:
    cmd: {placeholder} 86400
    proxy: http://127.0.0.1:{direct_port}
    checkEndpoint: /health
    concurrencyLimit: 100
""")
    processes = []
    try:
        direct = subprocess.Popen(
            [LLAMA_SERVER, *FLAGS.split(), "--port", str(direct_port), "-m", model],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(direct)
        swapd = subprocess.Popen(
            [SWAPD, "--config", config, "--listen", f"127.0.0.1:{swapd_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(swapd)
        wait_ok(direct_port, "/health", 60)
        wait_ok(swapd_port, "/health", 20)
        # Let swapd "start" the model (the placeholder) and warm both paths.
        for port in (direct_port, swapd_port):
            load(port, 1.0, concurrency)
        ratios, direct_rates, proxied_rates = [], [], []
        for r in range(rounds):
            # The order alternates too, so neither path always runs first.
            if r % 2 == 0:
                d, d_err = load(direct_port, seconds, concurrency)
                p, p_err = load(swapd_port, seconds, concurrency)
            else:
                p, p_err = load(swapd_port, seconds, concurrency)
                d, d_err = load(direct_port, seconds, concurrency)
            direct_rates.append(d)
            proxied_rates.append(p)
            ratios.append(p / d if d else 0.0)
            print(f"round {r + 1}: direct {d:.1f} req/s ({d_err} errors), "
                  f"through swapd {p:.1f} req/s ({p_err} errors), ratio {p / d:.3f}",
                  flush=True)
        print(f"llama-server (tiny-a, max_tokens 16, c={concurrency}, {rounds} rounds of "
              f"{seconds:.0f} s): direct median {statistics.median(direct_rates):.1f} req/s, "
              f"through swapd {statistics.median(proxied_rates):.1f} req/s; "
              f"median of per-round ratios {statistics.median(ratios):.3f}")
        return 0
    finally:
        for process in reversed(processes):
            stop(process)


if __name__ == "__main__":
    sys.exit(main())
