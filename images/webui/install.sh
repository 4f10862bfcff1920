#!/bin/sh
# Install Open-WebUI from PyPI into its own virtualenv: the webui image built
# for hosts that cannot reach ghcr.io, the AutoDL image and the native bundle.
# Env: WEBUI_VERSION (pinned in targets.yaml), KTA_WEBUI_VENV, KTA_SKIP_APT=1 where
# Python 3.11/3.12 is already there.
set -eu
# shellcheck source=../common/prelude.sh
. "$(dirname "$0")/../common/prelude.sh"
venv=${KTA_WEBUI_VENV:-/opt/webui}
if [ "${KTA_SKIP_APT:-0}" != 1 ]; then
    "$common/apt-install.sh" python3 python3-venv ca-certificates curl libgomp1 procps iproute2
fi
# Open-WebUI needs Python 3.11 or 3.12; Ubuntu 22.04 (the CUDA 12.4 images)
# ships 3.10 as python3 and 3.11 as a separate package.
python=${WEBUI_PYTHON:-}
for candidate in python3.12 python3.11 python3; do
    [ -n "$python" ] && break
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))'; then
        python=$candidate
    fi
done
if [ -z "$python" ] && [ "${KTA_SKIP_APT:-0}" != 1 ]; then
    "$common/apt-install.sh" python3.11 python3.11-venv
    python=python3.11
fi
[ -n "$python" ] || { echo "install: Open-WebUI needs Python 3.11 or 3.12 (set WEBUI_PYTHON)" >&2; exit 2; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install --progress-bar off "open-webui==${WEBUI_VERSION:?}"
"$venv/bin/open-webui" --help >/dev/null && echo "install: Open-WebUI $WEBUI_VERSION ready in $venv"
