#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus and promtool) for the Prometheus e2e test
# when missing, without leaving a system Prometheus running: the test starts its own instance
# on a free port with its own storage. Run as root; does nothing when both are installed.
#
# Debian's package starts and enables prometheus.service on install. A policy-rc.d that
# refuses service starts is put in place for the install (unless one exists already), and
# the service is disabled (and stopped, where systemd runs) afterwards, so nothing holds
# port 9090 or spends CPU scraping in the background. Recommends (node-exporter, another
# service) are not installed.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "install-prometheus.sh: needs root to apt-get install prometheus" >&2
  exit 1
fi

POLICY=/usr/sbin/policy-rc.d
if [[ ! -e "$POLICY" ]]; then
  printf '#!/bin/sh\n# Temporary, from swapd tests/e2e/install-prometheus.sh\nexit 101\n' >"$POLICY"
  chmod 0755 "$POLICY"
  trap 'rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends prometheus >&2 \
  || { apt-get update >&2 && apt-get install -y --no-install-recommends prometheus >&2; }

if command -v systemctl >/dev/null 2>&1; then
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >&2 || true
  else
    systemctl disable prometheus.service >&2 || true
  fi
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
