#!/usr/bin/env bash
# The Debian package and `make install`, for real (run by `make test`; needs root and dpkg):
#
#   tests/package.sh [SWAPD_BINARY]     (default target/release/swapd; not built here)
#
# 1. `make install DESTDIR=… PREFIX=/usr` lays out the binary, the units (with paths
#    rewritten for the prefix) and the config.
# 2. The .deb built by config/debian/build-deb.sh is installed with `dpkg -i`: files in
#    place, the swapd system account exists, `swapd --check-config /etc/swapd/config.yaml`
#    passes, the unit passes `systemd-analyze verify`, and swapd runs as the swapd user on
#    the installed config and answers /health.
# 3. `dpkg -r` keeps the edited conffile and removes everything else; `dpkg --purge`
#    removes the conffile, the state directory and the account. No file of the package is
#    left behind.
#
# A swapd package already installed on this machine is not replaced unless it was left by
# an interrupted run of this test (or SWAPD_PACKAGE_TEST_REPLACE=1).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BINARY="${1:-$REPO/target/release/swapd}"
MARKER=/var/tmp/swapd-package-test.installed

fail() { echo "package.sh: FAIL: $*" >&2; exit 1; }
note() { echo "package.sh: $*" >&2; }

# dpkg refuses to run while another dpkg or apt holds its lock (e.g. an apt-get install of
# another test's dependencies on the same machine): wait for it, bounded.
dpkg_locked() {
  local output status
  for _ in $(seq 1 120); do
    status=0
    output="$(dpkg "$@" 2>&1)" || status=$?
    if [[ $status -ne 0 ]] && grep -qi 'lock' <<<"$output"; then
      sleep 1
      continue
    fi
    echo "$output" >&2
    return $status
  done
  echo "$output" >&2
  return 1
}

if [[ "$(id -u)" != 0 ]] || ! command -v dpkg >/dev/null; then
  echo "package.sh: SKIPPED: needs root and dpkg (Debian/Ubuntu)" >&2
  exit 0
fi
[[ -x "$BINARY" ]] || fail "no swapd binary at $BINARY (cargo build --release)"

# One run at a time on a machine: the package, its account and /etc/swapd are global.
exec 9>/var/lock/swapd-package-test.lock
flock 9

if dpkg-query -W -f '${Status}' swapd 2>/dev/null | grep -q 'installed\|config-files'; then
  if [[ -e "$MARKER" || "${SWAPD_PACKAGE_TEST_REPLACE:-}" == 1 ]]; then
    note "purging the swapd package left by an interrupted run"
    dpkg_locked --purge swapd
  else
    fail "a swapd package is installed on this machine; set SWAPD_PACKAGE_TEST_REPLACE=1 to let this test replace (and purge) it"
  fi
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  if [[ -e "$MARKER" ]]; then dpkg_locked --purge swapd 2>/dev/null || true; rm -f "$MARKER"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. make install -------------------------------------------------------------------
ROOT="$WORK/root"
make -s -C "$REPO" install-files DESTDIR="$ROOT" PREFIX=/usr SWAPD_INSTALL_BINARY="$BINARY" >&2
for path in usr/bin/swapd usr/lib/systemd/system/swapd.service usr/lib/systemd/system/swapd.socket \
  etc/swapd/config.yaml usr/share/doc/swapd/example.yaml; do
  [[ -e "$ROOT/$path" ]] || fail "make install did not install /$path"
done
[[ -x "$ROOT/usr/bin/swapd" ]] || fail "the installed binary is not executable"
grep -q '^ExecStart=/usr/bin/swapd --config /etc/swapd/config.yaml' \
  "$ROOT/usr/lib/systemd/system/swapd.service" || fail "unit ExecStart not set for PREFIX=/usr"
echo "edited" >>"$ROOT/etc/swapd/config.yaml"
make -s -C "$REPO" install-files DESTDIR="$ROOT" PREFIX=/usr SWAPD_INSTALL_BINARY="$BINARY" >&2
grep -q '^edited$' "$ROOT/etc/swapd/config.yaml" || fail "make install overwrote an existing config"
LOCAL="$WORK/local"
make -s -C "$REPO" install-files DESTDIR="$LOCAL" PREFIX=/usr/local SWAPD_INSTALL_BINARY="$BINARY" >&2
grep -q '^ExecStart=/usr/local/bin/swapd --config /usr/local/etc/swapd/config.yaml' \
  "$LOCAL/usr/local/lib/systemd/system/swapd.service" || fail "unit paths not rewritten for PREFIX=/usr/local"
[[ -e "$LOCAL/usr/local/etc/swapd/config.yaml" ]] || fail "config not under PREFIX/etc"
note "make install: ok"

# --- 2. build and install the package --------------------------------------------------
DEB="$("$REPO/config/debian/build-deb.sh" "$BINARY" "$WORK/deb" | tail -n 1)"
[[ -f "$DEB" ]] || fail "no package built"
dpkg-deb --info "$DEB" conffiles | grep -qx '/etc/swapd/config.yaml' || fail "config.yaml is not a conffile"
dpkg-deb --field "$DEB" Package | grep -qx swapd || fail "package name"
touch "$MARKER"
dpkg_locked -i "$DEB" || fail "dpkg -i failed"
dpkg-query -W -f '${Status}' swapd | grep -q 'install ok installed' || fail "package not installed"
mapfile -t FILES < <(dpkg -L swapd | while read -r path; do [[ -f "$path" ]] && echo "$path"; done)
for path in /usr/bin/swapd /usr/lib/systemd/system/swapd.service /usr/lib/systemd/system/swapd.socket \
  /etc/swapd/config.yaml; do
  [[ -f "$path" ]] || fail "$path missing after dpkg -i"
done
entry="$(getent passwd swapd)" || fail "no swapd account after dpkg -i"
uid="$(echo "$entry" | cut -d: -f3)"
[[ "$uid" -lt 1000 ]] || fail "swapd is not a system account (uid $uid)"
[[ "$(echo "$entry" | cut -d: -f6)" == /var/lib/swapd ]] || fail "swapd's home: $entry"
[[ "$(echo "$entry" | cut -d: -f7)" == /usr/sbin/nologin ]] || fail "swapd's shell: $entry"
[[ "$(stat -c %U /var/lib/swapd)" == swapd ]] || fail "/var/lib/swapd not owned by swapd"

/usr/bin/swapd --check-config /etc/swapd/config.yaml >&2 || fail "swapd --check-config /etc/swapd/config.yaml"
/usr/bin/swapd --version | grep -q "$(dpkg-query -W -f '${Version}' swapd)" || fail "version mismatch"
if command -v systemd-analyze >/dev/null; then
  verify="$(systemd-analyze verify /usr/lib/systemd/system/swapd.service /usr/lib/systemd/system/swapd.socket 2>&1)" \
    || fail "systemd-analyze verify: $verify"
  # Messages about the host's own units are not ours; any about swapd's are.
  if grep -i 'swapd' <<<"$verify"; then fail "systemd-analyze verify complains: $verify"; fi
fi

# swapd runs as its user on the installed config (listening on a free port) and answers.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cd /var/lib/swapd
# setpriv execs swapd itself (no parent like runuser), so the pid below is swapd's.
setpriv --reuid=swapd --regid=swapd --init-groups -- /usr/bin/swapd --config /etc/swapd/config.yaml --listen "127.0.0.1:$PORT" \
  >"$WORK/swapd.log" 2>&1 &
SERVER_PID=$!
cd "$REPO"
ok=""
for _ in $(seq 1 200); do
  if [[ "$(curl -s --max-time 2 "http://127.0.0.1:$PORT/health" || true)" == OK ]]; then ok=1; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$ok" ]] || { cat "$WORK/swapd.log" >&2; fail "swapd as user swapd did not answer /health"; }
curl -s "http://127.0.0.1:$PORT/v1/models" | grep -q '"qwen"' || fail "/v1/models lacks the configured model"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || fail "swapd did not exit 0 on SIGTERM"
SERVER_PID=""
note "dpkg -i: ok (account, files, --check-config, unit, runs as swapd)"

# --- 3. remove keeps the edited conffile; purge removes everything --------------------
echo "# edited by the package test" >>/etc/swapd/config.yaml
dpkg_locked -r swapd || fail "dpkg -r failed"
[[ ! -e /usr/bin/swapd ]] || fail "/usr/bin/swapd left after dpkg -r"
[[ ! -e /usr/lib/systemd/system/swapd.service ]] || fail "unit left after dpkg -r"
grep -q 'edited by the package test' /etc/swapd/config.yaml || fail "dpkg -r did not keep the edited conffile"
dpkg_locked --purge swapd || fail "dpkg --purge failed"
rm -f "$MARKER"
for path in "${FILES[@]}" /etc/swapd /var/lib/swapd; do
  [[ ! -e "$path" ]] || fail "$path left after dpkg --purge"
done
! getent passwd swapd >/dev/null || fail "swapd account left after purge"
! getent group swapd >/dev/null || fail "swapd group left after purge"
! dpkg-query -W -f '${Status}' swapd 2>/dev/null | grep -q 'installed\|config-files' \
  || fail "dpkg still lists swapd"
note "dpkg -r / --purge: ok"
echo "package.sh: PASS" >&2
