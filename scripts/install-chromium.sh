#!/usr/bin/env bash
# Chromium from the Debian package, for the chat page's browser test
# (tests/integration/test_chat_page.py). Playwright drives this system browser
# through `executable_path`; `playwright install`, which downloads browsers,
# is never run.
set -euo pipefail

log() { echo "[install-chromium] $*" >&2; }

if command -v chromium >/dev/null; then
  log "chromium is already installed"; exit 0
fi
sudo=""; [[ $EUID -ne 0 ]] && sudo=sudo
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show chromium >/dev/null 2>&1; then
  log "apt-get update"; $sudo apt-get update -q >&2
fi
log "installing chromium"
if ! $sudo apt-get install -y -q --no-install-recommends chromium >&2; then
  log "install failed; refreshing the package lists (apt-get update) and retrying"
  $sudo apt-get update -q >&2
  $sudo apt-get install -y -q --no-install-recommends chromium >&2
fi
log "installed: $(chromium --version 2>/dev/null | head -n 1)"
