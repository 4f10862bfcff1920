#!/bin/sh
# Install Open-WebUI from PyPI into its own virtualenv: the webui image built
# for hosts that cannot reach ghcr.io, the AutoDL image and the native bundle.
# Env: WEBUI_VERSION (pinned in targets.yaml), WEBUI_VENV, KT_SKIP_APT=1 where
# Python 3.11/3.12 is already there.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
common="$here/../common"
[ -d "$common" ] || common="$here"
venv=${WEBUI_VENV:-/opt/webui}
if [ "${KT_SKIP_APT:-0}" != 1 ]; then
    "$common/apt-install.sh" python3 python3-venv ca-certificates curl libgomp1
fi
# shellcheck source=../common/network.sh
. "$common/network.sh"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install --progress-bar off "open-webui==${WEBUI_VERSION:?}"
"$venv/bin/open-webui" --help >/dev/null && echo "install: Open-WebUI $WEBUI_VERSION ready in $venv"
