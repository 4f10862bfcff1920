#!/bin/sh
# Install the API service into a virtualenv: in the API image, in the
# AutoDL all-in-one image and by the native AutoDL bundle.
# Usage: install.sh PACKAGE_SOURCE_DIR   (the ktappliance source tree)
# Env:   KTA_API_VENV (default /opt/venv), KTA_SKIP_APT=1 where Python is already there.
set -eu
# shellcheck source=../common/prelude.sh
. "$(dirname "$0")/../common/prelude.sh"
src=${1:?usage: install.sh KTAPPLIANCE_SOURCE_DIR}
venv=${KTA_API_VENV:-/opt/venv}
if [ "${KTA_SKIP_APT:-0}" != 1 ]; then
    "$common/apt-install.sh" python3 python3-venv ca-certificates curl procps iproute2
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# KTA_API_EXTRAS: "api" for the service; "api,autodl" adds supervisor.
"$venv/bin/pip" install -q --progress-bar off "${src}[${KTA_API_EXTRAS:-api}]"
"$venv/bin/python" -c "import ktappliance.api.app" && echo "install: API service ready in $venv"
