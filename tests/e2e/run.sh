#!/usr/bin/env bash
# Real-upstream e2e tier: installs (cached) llama-server and the Python venv,
# generates the tiny GGUF models, then runs test_e2e.py against swapd.
#
#   tests/e2e/run.sh [-v] [TestClass[.test_name] ...]
#
# Environment:
#   SWAPD_BIN        swapd binary (default: target/release/swapd under the repo
#                    root; this script does not build it)
#   SWAPD_CACHE      cache dir (default: ~/.cache/swapd)
#   LLAMA_SERVER     use this llama-server instead of building one
#                    (SWAPD_LLAMA_SERVER is accepted as well)
#   SWAPD_MODELS     where the models go (default: $SWAPD_CACHE/models)
#   SWAPD_E2E_METRICS=0   skip the metrics tests
#   SWAPD_E2E_KEEP=1      keep each test's temp dir (config, swapd.log)
# Exits non-zero when anything fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

export SWAPD_CACHE="${SWAPD_CACHE:-$HOME/.cache/swapd}"
if [[ -z "${LLAMA_SERVER:-}" && -n "${SWAPD_LLAMA_SERVER:-}" ]]; then
  export LLAMA_SERVER="$SWAPD_LLAMA_SERVER"
fi

# venv, llama-server, models (all cached; about 2 s when present)
export SWAPD_MODELS="${SWAPD_MODELS:-$SWAPD_CACHE/models}"
SERVER="$("$HERE/install.sh" | tail -n 1)"
export SWAPD_LLAMA_SERVER="$SERVER"

SWAPD_BIN="${SWAPD_BIN:-target/release/swapd}"
[[ "$SWAPD_BIN" = /* ]] || SWAPD_BIN="$REPO/$SWAPD_BIN"
export SWAPD_BIN
if [[ ! -x "$SWAPD_BIN" ]]; then
  echo "run.sh: no swapd binary at $SWAPD_BIN (cargo build --release, or set SWAPD_BIN)" >&2
  exit 1
fi

echo "run.sh: swapd=$SWAPD_BIN llama-server=$SWAPD_LLAMA_SERVER models=$SWAPD_MODELS" >&2
exec "$SWAPD_CACHE/venv/bin/python" "$HERE/test_e2e.py" "$@"
