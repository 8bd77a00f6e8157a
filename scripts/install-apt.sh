#!/usr/bin/env bash
# Install a Debian package unless the program it provides is there already:
#   scripts/install-apt.sh PROGRAM PACKAGE
# (the tests' system tools; the Makefile names each). Refreshes the package
# lists once if the package is unknown or the install fails.
set -euo pipefail

program=$1 package=$2
log() { echo "[install-apt] $*" >&2; }

if command -v "$program" >/dev/null; then
  log "$package is already installed ($program)"; exit 0
fi
sudo=""; [[ $EUID -ne 0 ]] && sudo=sudo
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show "$package" >/dev/null 2>&1; then
  log "apt-get update"; $sudo apt-get update -q >&2
fi
log "installing $package"
if ! $sudo apt-get install -y -q --no-install-recommends "$package" >&2; then
  log "install failed; refreshing the package lists (apt-get update) and retrying"
  $sudo apt-get update -q >&2
  $sudo apt-get install -y -q --no-install-recommends "$package" >&2
fi
command -v "$program" >/dev/null || { log "$package did not install $program"; exit 1; }
log "installed $package"
