#!/usr/bin/env bash
# Prometheus and promtool from the Debian package, for `make monitor` and the
# monitoring tests. Nothing is started here: `first monitor up` and the test
# setup run Prometheus as their own child process. (On a machine with systemd
# the package also enables its own service on port 9090; give `make monitor`
# another port with MONITOR_PORT=... if that one runs.)
set -euo pipefail

log() { echo "[install-prometheus] $*" >&2; }

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  log "prometheus and promtool are already installed"; exit 0
fi
sudo=""; [[ $EUID -ne 0 ]] && sudo=sudo
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show prometheus >/dev/null 2>&1; then
  log "apt-get update"; $sudo apt-get update -q >&2
fi
log "installing prometheus"
if ! $sudo apt-get install -y -q --no-install-recommends prometheus >&2; then
  log "install failed; refreshing the package lists (apt-get update) and retrying"
  $sudo apt-get update -q >&2
  $sudo apt-get install -y -q --no-install-recommends prometheus >&2
fi
log "installed: $(prometheus --version 2>&1 | head -n 1)"
