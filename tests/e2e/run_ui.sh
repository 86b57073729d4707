#!/usr/bin/env bash
# The web UI in a real browser (tests/e2e/test_ui.py): installs what it needs when missing,
# then runs it against swapd, llama-server (the e2e install) and fake-upstream.
#
#   Debian packages: chromium, chromium-driver, nginx (apt-get, only when missing)
#   PyPI: selenium (pinned, into the e2e venv at $SWAPD_CACHE/venv, only when missing)
#
# Environment: SWAPD_BIN (default target/release/swapd; fake-upstream is taken from the same
# directory), SWAPD_CACHE, SWAPD_UI_ARTIFACTS (screenshots; default $SWAPD_CACHE/ui-artifacts).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export SWAPD_CACHE="${SWAPD_CACHE:-$HOME/.cache/swapd}"
SELENIUM_VERSION="4.41.0"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# nginx serves swapd under a path prefix in one test (run unprivileged, on a free port).
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
if (( ${#missing[@]} )); then
  echo "run_ui.sh: installing ${missing[*]}" >&2
  sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  $sudo apt-get update >&2 && $sudo apt-get install -y "${missing[@]}" >&2
fi

# llama-server, the venv and the models (cached).
export SWAPD_MODELS="${SWAPD_MODELS:-$SWAPD_CACHE/models}"
SERVER="$("$HERE/install.sh" | tail -n 1)"
export SWAPD_LLAMA_SERVER="$SERVER"
VENV="$SWAPD_CACHE/venv"

# selenium goes into the e2e venv next to its pinned requirements, under install.sh's lock,
# without touching the requirement stamp (so the venv is not rebuilt for it).
(
  flock 9
  if ! "$VENV/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
    echo "run_ui.sh: installing selenium==$SELENIUM_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "selenium==$SELENIUM_VERSION" >&2
  fi
) 9>"$SWAPD_CACHE/.install.lock"

SWAPD_BIN="${SWAPD_BIN:-target/release/swapd}"
[[ "$SWAPD_BIN" = /* ]] || SWAPD_BIN="$REPO/$SWAPD_BIN"
export SWAPD_BIN
cd "$HERE"
exec "$VENV/bin/python" "$HERE/test_ui.py" "$@"
