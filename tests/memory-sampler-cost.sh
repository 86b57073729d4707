#!/usr/bin/env bash
# CPU cost of memory-aware scheduling's sampler: swapd runs three fake-upstream models (each
# holding 16 MiB) for a while with and without `swapd.memory`, and the script prints swapd's
# own CPU time (utime + stime from /proc/PID/stat) over the same idle interval. The difference
# is what sampling every 2 s costs (reading /proc/*/stat to find each process group, and
# smaps_rollup per member). No GPU tool is involved.
#
# Usage: tests/memory-sampler-cost.sh [seconds]   (default 30; builds nothing: run
# `cargo build --bins` or `cargo build --release --bins` first and set PROFILE=release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_TO_WATCH="${1:-30}"
BIN="$ROOT/target/${PROFILE:-debug}"
WORK="$(mktemp -d)"
PORT_BASE=$((21000 + RANDOM % 5000))
SWAPD_PID=""
cleanup() {
    if [ -n "$SWAPD_PID" ]; then kill "$SWAPD_PID" 2>/dev/null || true; wait "$SWAPD_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

write_config() { # $1 = on|off, $2 = file
    {
        if [ "$1" = on ]; then
            printf 'swapd:\n  memory: {ram: 1GiB, stateFile: %s/footprints.json}\n' "$WORK"
        fi
        printf 'groups:\n  all: {swap: false, members: [a, b, c]}\nmodels:\n'
        local i=1
        for model in a b c; do
            printf '  %s:\n    cmd: %s/fake-upstream --port %d --model %s --hold-mib 16\n    proxy: http://127.0.0.1:%d\n' \
                "$model" "$BIN" $((PORT_BASE + i)) "$model" $((PORT_BASE + i))
            i=$((i + 1))
        done
    } > "$2"
}

measure() { # $1 = on|off
    local config="$WORK/config-$1.yaml"
    write_config "$1" "$config"
    "$BIN/swapd" --config "$config" --listen "127.0.0.1:$PORT_BASE" > "$WORK/swapd-$1.log" 2>&1 &
    SWAPD_PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT_BASE/health" > /dev/null && break; sleep 0.1; done
    for model in a b c; do
        curl -sf "http://127.0.0.1:$PORT_BASE/v1/chat/completions" -H 'content-type: application/json' \
            -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" > /dev/null
    done
    sleep 1
    local before after
    before=$(awk '{print $14 + $15}' "/proc/$SWAPD_PID/stat")
    sleep "$SECONDS_TO_WATCH"
    after=$(awk '{print $14 + $15}' "/proc/$SWAPD_PID/stat")
    echo "swapd.memory $1: $((after - before)) ticks of CPU (1/$(getconf CLK_TCK) s) in ${SECONDS_TO_WATCH} s with 3 models loaded"
    kill "$SWAPD_PID"; wait "$SWAPD_PID" 2>/dev/null || true
    SWAPD_PID=""
}

measure on
measure off
echo "processes on this machine: $(ls /proc | grep -c '^[0-9]')"
