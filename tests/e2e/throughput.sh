#!/usr/bin/env bash
# Throughput through swapd versus direct with a real llama-server (see throughput.py).
#   tests/e2e/throughput.sh [ROUNDS] [SECONDS_PER_ROUND] [CONCURRENCY]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export SWAPD_CACHE="${SWAPD_CACHE:-$HOME/.cache/swapd}"
export SWAPD_MODELS="${SWAPD_MODELS:-$SWAPD_CACHE/models}"
SERVER="$("$HERE/install.sh" | tail -n 1)"
export SWAPD_LLAMA_SERVER="$SERVER"
export SWAPD_BIN="${SWAPD_BIN:-$REPO/target/release/swapd}"
[[ -x "$SWAPD_BIN" ]] || (cd "$REPO" && cargo build --release --bin swapd)
exec "$SWAPD_CACHE/venv/bin/python" "$HERE/throughput.py" "$@"
