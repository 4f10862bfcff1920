#!/usr/bin/env bash
# Chromium and its chromedriver for the stack tier's browser test. On a
# machine that has both, this does nothing; on Debian as root it installs
# Debian's chromium and chromium-driver (the driver matches the browser).
set -euo pipefail
log() { printf 'ensure-browser: %s\n' "$*" >&2; }
if { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } \
        && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "no Chromium/chromedriver: install your distribution's chromium and chromium-driver (or run this as root on Debian)"
    exit 1
fi
log "installing Debian's chromium and chromium-driver"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
log "browser ready ($(chromium --version))"
