#!/usr/bin/env bash
# Soak test: release swapd with three fake-upstream models under mixed traffic while upstreams
# are killed every few seconds. Every request must end visibly: a success, or an error the
# client can see (a JSON error body, or an SSE error event in a stream). A request that gets
# no response at all (reset, EOF before the status line, or a hang past the deadline) is
# "lost"; one whose response started and then ended early without an error event (or an error
# status without an error object) is "cut short". The script exits non-zero if any request was
# lost or cut short: both are failures the client could not see clearly.
#
# Usage: tests/soak.sh            (make soak)
# Environment: SOAK_SECONDS (traffic duration, default 100), SOAK_WORKERS (concurrent
# clients, default 8), SOAK_KILL_EVERY (seconds between upstream kills, default 4).
#
# Models: a and b share the default group (swap: true, exclusive), so requests for them swap
# each other out; c is alone in a `swap: false`, non-exclusive group.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOAK_SECONDS="${SOAK_SECONDS:-100}"
SOAK_WORKERS="${SOAK_WORKERS:-8}"
SOAK_KILL_EVERY="${SOAK_KILL_EVERY:-4}"

echo "soak: building release binaries"
(cd "$ROOT" && cargo build --release --bins)
SWAPD="$ROOT/target/release/swapd"
FAKE="$ROOT/target/release/fake-upstream"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/swapd-soak.XXXXXX")"
SWAPD_PID=""

cleanup() {
    local status=$?
    if [[ -n "$SWAPD_PID" ]] && kill -0 "$SWAPD_PID" 2>/dev/null; then
        kill -TERM "$SWAPD_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SWAPD_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SWAPD_PID" 2>/dev/null || true
        wait "$SWAPD_PID" 2>/dev/null || true
    fi
    # Children swapd may have left behind: by the pids they wrote, and only if their command
    # line is ours.
    for pid_file in "$WORK"/*.pid; do
        [[ -f "$pid_file" ]] || continue
        local pid
        pid="$(tr -dc '0-9' <"$pid_file")"
        if [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] \
            && { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$WORK"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [[ $status -ne 0 && -f "$WORK/swapd.err" ]]; then
        echo "soak: last lines of swapd's stderr:" >&2
        tail -n 20 "$WORK/swapd.err" >&2 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT INT TERM

# Three consecutive free ports for ${PORT}.
START_PORT="$(python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randint(20000, 32000)  # below the ephemeral range (32768 and up)
    sockets = []
    try:
        for port in range(base, base + 3):
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            sockets.append(s)
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in sockets:
            s.close()
PY
)"

cat >"$WORK/config.yaml" <<EOF
startPort: $START_PORT
healthCheckTimeout: 15
logLevel: info
logToStdout: proxy
swapd:
  headerTimeout: 5
  upstreamTimeout: 10
  shutdownTimeout: 5
models:
  a:
    cmd: $FAKE --port \${PORT} --model a --pid-file $WORK/a.pid
  b:
    cmd: $FAKE --port \${PORT} --model b --pid-file $WORK/b.pid
  c:
    cmd: $FAKE --port \${PORT} --model c --pid-file $WORK/c.pid
groups:
  side:
    swap: false
    exclusive: false
    members: [c]
EOF

"$SWAPD" --config "$WORK/config.yaml" --listen 127.0.0.1:0 >"$WORK/swapd.out" 2>"$WORK/swapd.err" &
SWAPD_PID=$!
ADDR=""
for _ in $(seq 1 300); do
    ADDR="$(sed -n 's|^swapd: listening on http://||p' "$WORK/swapd.err" | head -n 1)"
    [[ -n "$ADDR" ]] && break
    kill -0 "$SWAPD_PID" 2>/dev/null || { echo "soak: swapd exited at startup" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$ADDR" ]] || { echo "soak: swapd did not report its address" >&2; exit 1; }
echo "soak: swapd pid $SWAPD_PID on $ADDR; ${SOAK_SECONDS}s of traffic, $SOAK_WORKERS clients, a kill every ${SOAK_KILL_EVERY}s"

python3 - "$ADDR" "$SWAPD_PID" "$SOAK_SECONDS" "$SOAK_WORKERS" "$SOAK_KILL_EVERY" <<'PY'
import collections
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time

addr, swapd_pid = sys.argv[1], int(sys.argv[2])
seconds, workers, kill_every = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
host, port = addr.rsplit(":", 1)
port = int(port)
MODELS = ["a", "b", "c"]
DEADLINE = 60.0      # a request taking longer than this is a hang
READ_TIMEOUT = 30.0  # no byte for this long is a hang too

counts = collections.Counter()
lost_examples = []
cut_examples = []
lock = threading.Lock()


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


def count(kind, example=None):
    with lock:
        counts[kind] += 1
        if example is not None:
            if kind == "lost" and len(lost_examples) < 10:
                lost_examples.append(example)
            if kind == "failed_cut" and len(cut_examples) < 10:
                cut_examples.append(example)


def is_error_json(data):
    try:
        value = json.loads(data)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("error"), (dict, str))


def one_request(rng):
    model = rng.choice(MODELS)
    stream = rng.random() < 0.5
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    disconnect_after = None
    if stream:
        body.update(stream=True, stream_chunks=rng.randint(5, 40),
                    stream_interval_ms=rng.randint(5, 30))
        if rng.random() < 0.15:
            disconnect_after = rng.randint(1, 3)
    payload = json.dumps(body)
    what = f"{model} stream={stream}"
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=READ_TIMEOUT)
    count("sent")
    try:
        try:
            conn.request("POST", "/v1/chat/completions", payload,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as error:
            # No status line: reset, EOF, refused, or no answer within READ_TIMEOUT.
            count("lost", f"{what}: no response ({type(error).__name__}: {error}) "
                          f"after {time.monotonic() - started:.1f}s")
            return
        status = response.status
        data = b""
        reads = 0
        try:
            while True:
                if time.monotonic() - started > DEADLINE:
                    count("lost", f"{what}: status {status}, then hung past {DEADLINE}s")
                    return
                piece = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not piece:
                    break
                data += piece
                reads += 1
                if disconnect_after is not None and status == 200 and data.count(b"data:") >= disconnect_after:
                    conn.close()  # the client leaves mid-stream
                    count("client_disconnected")
                    return
        except (OSError, http.client.HTTPException) as error:
            # The response started, then ended abnormally.
            if b'"error"' in data and b"data:" in data:
                count("failed_clear")  # an SSE error event, then the cut
                with lock:
                    counts["sse_errors"] += 1
            elif isinstance(error, socket.timeout):
                count("lost", f"{what}: status {status}, then no data for {READ_TIMEOUT}s")
            else:
                count("failed_cut", f"{what}: status {status}, body ended early "
                                    f"({type(error).__name__}) after {len(data)} bytes: {data[-200:]!r}")
            return
        if status == 200:
            if stream:
                if b"[DONE]" in data:
                    count("ok")
                elif b'"error"' in data:
                    count("failed_clear")
                    with lock:
                        counts["sse_errors"] += 1
                else:
                    count("failed_cut", f"{what}: 200 stream without [DONE] or error: {data[-200:]!r}")
            elif b'"choices"' in data:
                count("ok")
            else:
                count("failed_cut", f"{what}: 200 without an answer: {data[:200]!r}")
        elif status >= 400 and is_error_json(data):
            count("failed_clear")
            with lock:
                counts[f"status_{status}"] += 1
        else:
            count("failed_cut", f"{what}: status {status} without an error object: {data[:200]!r}")
    finally:
        conn.close()


def worker(index, stop):
    rng = random.Random(1000 + index)
    while not stop.is_set():
        one_request(rng)


def killer(stop):
    rng = random.Random(7)
    while not stop.wait(kill_every):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/running")
            running = json.loads(conn.getresponse().read()).get("running", [])
            conn.close()
        except (OSError, ValueError, http.client.HTTPException) as error:
            with lock:
                counts["running_errors"] += 1
            print(f"soak: GET /running failed: {error}", file=sys.stderr)
            continue
        candidates = [entry for entry in running if entry.get("pid")]
        if not candidates:
            continue
        victim = rng.choice(candidates)
        try:
            os.kill(int(victim["pid"]), signal.SIGKILL)
            with lock:
                counts["upstreams_killed"] += 1
        except ProcessLookupError:
            pass


def warm_up():
    for model in MODELS:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": model}),
                     {"Content-Type": "application/json"})
        status = conn.getresponse().status
        conn.close()
        if status != 200:
            sys.exit(f"soak: warm-up request to {model} got {status}")


warm_up()
threads_start, rss_start = proc_status(swapd_pid)
stop = threading.Event()
pool = [threading.Thread(target=worker, args=(i, stop), daemon=True) for i in range(workers)]
pool.append(threading.Thread(target=killer, args=(stop,), daemon=True))
for thread in pool:
    thread.start()
began = time.monotonic()
next_report = began + 20
while time.monotonic() - began < seconds:
    time.sleep(1)
    if time.monotonic() >= next_report:
        next_report += 20
        with lock:
            snapshot = dict(counts)
        threads, rss = proc_status(swapd_pid)
        print(f"soak: {time.monotonic() - began:5.0f}s sent {snapshot.get('sent', 0)} "
              f"ok {snapshot.get('ok', 0)} lost {snapshot.get('lost', 0)} "
              f"kills {snapshot.get('upstreams_killed', 0)} threads {threads} rss {rss // 1024} MiB")
stop.set()
for thread in pool:
    thread.join(DEADLINE + 10)
hung_clients = sum(thread.is_alive() for thread in pool)

# Everything still works afterwards, once swapd has noticed the last kills: every process
# /running lists is alive (a killed one stays listed until swapd has seen it exit).
def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def settled():
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/running")
    running = json.loads(conn.getresponse().read()).get("running", [])
    conn.close()
    return all(pid_alive(int(entry["pid"])) for entry in running if entry.get("pid"))


settle_deadline = time.monotonic() + 60
while not settled():
    if time.monotonic() > settle_deadline:
        sys.exit("soak: FAILED: /running still lists a dead process 60 s after the traffic")
    time.sleep(0.1)
after_ok = True
for model in MODELS:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": model}),
                     {"Content-Type": "application/json"})
        status = conn.getresponse().status
        conn.close()
    except (OSError, http.client.HTTPException) as error:
        status = f"{type(error).__name__}"
    if status != 200:
        after_ok = False
        print(f"soak: after the run, a request to {model} got {status}", file=sys.stderr)
time.sleep(2)
threads_end, rss_end = proc_status(swapd_pid)

sent = counts["sent"]
lost = counts["lost"] + hung_clients
statuses = ", ".join(
    [f"HTTP {k[7:]}: {v}" for k, v in sorted(counts.items()) if k.startswith("status_")]
    + [f"SSE error events: {counts['sse_errors']}"])
print()
print("soak report")
print(f"  duration            {seconds:.0f} s, {workers} clients, upstream killed every {kill_every:.0f} s")
print(f"  requests sent       {sent}")
print(f"  succeeded           {counts['ok']}")
print(f"  client disconnected {counts['client_disconnected']} (left mid-stream on purpose)")
print(f"  failed, clear error {counts['failed_clear']} ({statuses})")
print(f"  failed, cut short   {counts['failed_cut']} (response started, ended early without an error event)")
print(f"  lost                {lost} (no response, reset, or hang past {DEADLINE:.0f} s)")
print(f"  upstreams killed    {counts['upstreams_killed']}")
print(f"  swapd threads       {threads_start} -> {threads_end}")
print(f"  swapd RSS           {rss_start / 1024:.1f} MiB -> {rss_end / 1024:.1f} MiB")
print(f"  after the run       {'all three models answer' if after_ok else 'NOT all models answer'}")
for example in lost_examples:
    print(f"  lost: {example}")
for example in cut_examples:
    print(f"  cut: {example}")
accounted = counts["ok"] + counts["client_disconnected"] + counts["failed_clear"] + counts["failed_cut"] + counts["lost"]
if accounted != sent:
    print(f"  WARNING: {sent - accounted} requests unaccounted for")
if lost > 0 or counts["failed_cut"] > 0 or not after_ok or accounted != sent:
    reasons = [why for why, bad in [
        (f"{lost} lost", lost > 0),
        (f"{counts['failed_cut']} cut short without an error event", counts["failed_cut"] > 0),
        ("not every model answers after the run", not after_ok),
        (f"{sent - accounted} unaccounted for", accounted != sent),
    ] if bad]
    sys.exit("soak: FAILED: " + "; ".join(reasons))
PY
echo "soak: swapd's own log had $(grep -c 'WARN\|ERROR' "$WORK/swapd.out" 2>/dev/null || echo 0) warning/error lines"
