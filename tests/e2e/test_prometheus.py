#!/usr/bin/env python3
"""A real Prometheus scraping swapd (run by `make test`, via `make test-ops`).

Starts swapd with fake-upstream models and Debian's `prometheus` on free ports with its own
storage directory and `scrape_interval: 1s`, drives requests and swaps through swapd, and
checks through Prometheus's HTTP query API that the swapd_* series arrived with the right
labels and values. `promtool check metrics` must pass on swapd's /metrics. Every PromQL
query of the example Grafana dashboard (config/grafana-dashboard.json) is run against the
same Prometheus: each must parse and, after this traffic, return data.

Standard library only. Environment: SWAPD_BIN and FAKE_UPSTREAM_BIN (default: the release
builds under target/), PROMETHEUS_BIN / PROMTOOL_BIN (default: from PATH). Exit code 0 when
everything passed; a missing prometheus is a failure unless SWAPD_PROMETHEUS_OPTIONAL=1.
"""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWAPD = os.environ.get("SWAPD_BIN", os.path.join(REPO, "target/release/swapd"))
FAKE = os.environ.get("FAKE_UPSTREAM_BIN", os.path.join(REPO, "target/release/fake-upstream"))
PROMETHEUS = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
PROMTOOL = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")
DASHBOARD = os.path.join(REPO, "config/grafana-dashboard.json")

# What Grafana would put in place of its variables when the dashboard shows all instances.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "10m",
    "$instance": ".*",
}


def log(message):
    print(f"prometheus e2e: {message}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def wait_for(what, timeout, probe):
    """Calls probe() every 0.2 s until it returns something truthy or timeout passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (OSError, urllib.error.URLError, ValueError) as error:
            last = error
        time.sleep(0.2)
    raise Failure(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_range(count):
    """`count` consecutive free ports below the ephemeral range, for swapd's startPort."""
    for base in range(21000 + os.getpid() % 5000, 32000, count + 7):
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise Failure("no free port range")


def http(method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Processes:
    """Every process this test starts, stopped by pid at the end whatever happened."""

    def __init__(self):
        self.started = []

    def start(self, args, **kwargs):
        process = subprocess.Popen(args, **kwargs)
        self.started.append(process)
        return process

    def stop_all(self):
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def start_swapd(processes, directory):
    start_port = free_port_range(3)
    config = f"""startPort: {start_port}
healthCheckTimeout: 15
models:
  a:
    cmd: {FAKE} --port ${{PORT}} --model a
  b:
    cmd: {FAKE} --port ${{PORT}} --model b
  broken:
    cmd: {FAKE} --port ${{PORT}} --exit-immediately 3
groups:
  chat:
    swap: true
    exclusive: false
    members: [a, b]
  other:
    swap: true
    exclusive: false
    members: [broken]
"""
    path = os.path.join(directory, "swapd.yaml")
    with open(path, "w") as handle:
        handle.write(config)
    process = processes.start(
        [SWAPD, "--config", path, "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found = {}
    ready = threading.Event()

    def read_stderr():
        for line in process.stderr:
            if line.startswith("swapd: listening on http://") and "addr" not in found:
                found["addr"] = line.strip().removeprefix("swapd: listening on http://")
                ready.set()
        ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    check(ready.wait(20) and "addr" in found, "swapd did not report its address")
    return found["addr"]


def start_prometheus(processes, directory, target):
    config = f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: swapd
    static_configs:
      - targets: ["{target}"]
"""
    path = os.path.join(directory, "prometheus.yml")
    with open(path, "w") as handle:
        handle.write(config)
    port = free_port()
    log_file = open(os.path.join(directory, "prometheus.log"), "w")
    processes.start(
        [
            PROMETHEUS,
            f"--config.file={path}",
            f"--storage.tsdb.path={os.path.join(directory, 'tsdb')}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for("Prometheus to be ready", 60, lambda: http("GET", base + "/-/ready", timeout=2)[0] == 200)
    return base


def query(prometheus, promql):
    """Runs an instant query; returns the result list. Raises Failure on a PromQL error."""
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = http("GET", url)
    answer = json.loads(body)
    check(
        status == 200 and answer.get("status") == "success",
        f"query {promql!r} failed: {status} {body}",
    )
    return answer["data"]["result"]


def value_of(prometheus, promql):
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def own_sample(metrics_text, series):
    """The value of one exact series in swapd's own /metrics text."""
    for line in metrics_text.splitlines():
        if line.startswith(series + " "):
            return float(line.split(" ")[-1])
    return None


def chat(addr, model, stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return http("POST", f"http://{addr}/v1/chat/completions", body)


def dashboard_queries():
    with open(DASHBOARD) as handle:
        dashboard = json.load(handle)
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
                expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
            check("$" not in expr, f"unknown Grafana variable left in {expr!r}")
            queries.append((panel["title"], target["refId"], expr))
    return dashboard, queries


def run(directory, processes):
    addr = start_swapd(processes, directory)
    log(f"swapd on {addr}")
    prometheus = start_prometheus(processes, directory, addr)
    log(f"prometheus on {prometheus}")
    wait_for(
        "Prometheus to scrape swapd (up == 1)",
        60,
        lambda: value_of(prometheus, 'up{job="swapd"}') == 1.0,
    )

    # Traffic in two rounds. swapd's per-model series (request counts per code, the duration
    # and time-to-first-token histograms) appear with a model's first request, already at
    # their first value, and rate()/increase() cannot see an increase within a series' first
    # sample. The first round creates the series; once Prometheus has scraped them, the second
    # round is what the dashboard's rates show, as with any steady traffic.
    def drive(round_of_requests):
        codes = {}
        for model, stream in round_of_requests:
            status, body = chat(addr, model, stream)
            if model == "broken":
                check(status >= 500, f"the broken model answered {status}: {body}")
            else:
                check(status == 200, f"chat {model} stream={stream}: {status} {body}")
            codes[model] = str(status)
        return codes

    # a, then a swap to b, and a model whose server exits at once (its group does not swap
    # the others out).
    failed_code = drive([("a", False), ("a", True), ("b", False), ("b", True), ("broken", False)])["broken"]
    for series in [
        'swapd_time_to_first_token_seconds_count{model="a"}',
        'swapd_time_to_first_token_seconds_count{model="b"}',
        f'swapd_requests_total{{model="broken",code="{failed_code}"}}',
    ]:
        wait_for(f"Prometheus to scrape {series}", 30, lambda series=series: query(prometheus, series))
    # A swap back to a, a swap to b, and another failure.
    check(
        drive([("a", False), ("a", True), ("b", True), ("broken", False)])["broken"] == failed_code,
        "the broken model answers the same status each time",
    )

    status, metrics_text = http("GET", f"http://{addr}/metrics")
    check(status == 200, "GET /metrics")

    # promtool lints the exposition format (names, types, help, histogram structure).
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=metrics_text, capture_output=True, text=True
    )
    check(lint.returncode == 0, f"promtool check metrics failed:\n{lint.stdout}{lint.stderr}")
    log("promtool check metrics: ok")

    instance = addr
    expected = {
        'swapd_requests_total{model="a",code="200"}': 4.0,
        'swapd_requests_total{model="b",code="200"}': 3.0,
        f'swapd_requests_total{{model="broken",code="{failed_code}"}}': 2.0,
        "swapd_swaps_total": 3.0,
        'swapd_time_to_first_token_seconds_count{model="a"}': 2.0,
        'swapd_time_to_first_token_seconds_count{model="b"}': 2.0,
        'swapd_request_duration_seconds_count{model="a"}': 4.0,
        'swapd_model_starts_total{model="a",result="ok"}': 2.0,
        'swapd_model_starts_total{model="b",result="ok"}': 2.0,
        'swapd_model_starts_total{model="broken",result="failed"}': 2.0,
    }
    for series, value in expected.items():
        check(
            own_sample(metrics_text, series) == value,
            f"swapd's own /metrics: {series} is {own_sample(metrics_text, series)}, expected {value}",
        )
    # Prometheus got the same numbers, with swapd's labels plus job and instance.
    for series, value in expected.items():
        name, _, labels = series.partition("{")
        selector = f'{name}{{job="swapd",instance="{instance}"' + ("," + labels if labels else "}")
        wait_for(
            f"Prometheus to hold {series} = {value}",
            30,
            lambda selector=selector: value_of(prometheus, selector) == value,
        )
    result = query(prometheus, 'swapd_requests_total{model="a",code="200"}')
    check(len(result) == 1, f"one series for a/200: {result}")
    check(
        result[0]["metric"]
        == {
            "__name__": "swapd_requests_total",
            "code": "200",
            "instance": instance,
            "job": "swapd",
            "model": "a",
        },
        f"labels of swapd_requests_total: {result[0]['metric']}",
    )
    completion = own_sample(metrics_text, 'swapd_tokens_total{model="a",kind="completion"}')
    check(completion and completion > 0, f"completion tokens of a in /metrics: {completion}")
    wait_for(
        "Prometheus to hold a's completion tokens",
        30,
        lambda: value_of(prometheus, 'swapd_tokens_total{model="a",kind="completion"}') == completion,
    )
    check(
        value_of(prometheus, 'sum(swapd_model_state{state="ready"})') is not None,
        "swapd_model_state is scraped",
    )
    log("series, labels and values in Prometheus: ok")

    # The dashboard's template variable lists this instance.
    status, body = http(
        "GET",
        prometheus + "/api/v1/label/instance/values?" + urllib.parse.urlencode({"match[]": "swapd_process_threads"}),
    )
    check(status == 200 and instance in json.loads(body)["data"], f"instance values: {body}")

    # Every dashboard query parses and returns finite data after this traffic (rate windows
    # need two scrapes after the requests, hence the polling).
    dashboard, queries = dashboard_queries()
    titles = [panel["title"] for panel in dashboard["panels"]]
    for needed in ["Requests", "latency", "first token", "Tokens per second", "Swaps", "memory"]:
        check(any(needed.lower() in title.lower() for title in titles), f"no panel about {needed}: {titles}")
    for title, ref, expr in queries:
        def finite_data(expr=expr):
            rows = query(prometheus, expr)
            return [row for row in rows if math.isfinite(float(row["value"][1]))]

        rows = wait_for(f"data for panel {title!r} ({ref}): {expr}", 45, finite_data)
        log(f"panel {title!r} {ref}: {len(rows)} series")
    log(f"{len(queries)} dashboard queries: ok")


def main():
    missing = [name for name, path in [("prometheus", PROMETHEUS), ("promtool", PROMTOOL)] if not path]
    if missing:
        if os.environ.get("SWAPD_PROMETHEUS_OPTIONAL") == "1":
            log(f"SKIPPED: {', '.join(missing)} not installed (tests/e2e/install-prometheus.sh)")
            return 0
        log(f"FAIL: {', '.join(missing)} not installed (run tests/e2e/install-prometheus.sh as root)")
        return 1
    for binary in [SWAPD, FAKE]:
        if not os.access(binary, os.X_OK):
            log(f"FAIL: no executable {binary} (cargo build --release --bins)")
            return 1
    directory = tempfile.mkdtemp(prefix="swapd-prometheus-")
    processes = Processes()
    try:
        run(directory, processes)
    except Failure as failure:
        log(f"FAIL: {failure}")
        path = os.path.join(directory, "prometheus.log")
        if os.path.exists(path):
            with open(path) as handle:
                sys.stderr.write(handle.read()[-4000:])
        return 1
    finally:
        processes.stop_all()
        if os.environ.get("SWAPD_E2E_KEEP") != "1":
            shutil.rmtree(directory, ignore_errors=True)
        else:
            log(f"kept {directory}")
    log("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
