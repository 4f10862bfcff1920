#!/bin/sh
# The KTransformers build environment: compilers and headers from apt, a
# Python venv with the pinned CUDA torch and the build requirements.
# Env: KT_APT_BUILD (packages), KT_TORCH (a version, or "system"), KT_TORCH_INDEX, KT_BUILD_PIP,
#      KT_VENV, KT_WHEELHOUSE (offline: the only place pip installs from).
set -eu
# shellcheck source=../common/prelude.sh
. "$(dirname "$0")/../common/prelude.sh"
venv=${KT_VENV:-/opt/venv}

if [ "${KTA_SKIP_APT:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    "$common/apt-install.sh" python3 python3-venv python3-dev ca-certificates $KT_APT_BUILD
fi
# KT_TORCH=system: the host's own torch (a GPU host that has one and no network).
if [ "$KT_TORCH" = system ]; then
    [ -x "$venv/bin/python" ] || "$common/venv-with-host-torch.sh" "$venv"
else
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
fi
[ -n "${KT_WHEELHOUSE:-}" ] || "$venv/bin/pip" install -q --upgrade pip
if [ "$KT_TORCH" = system ]; then
    "$venv/bin/python" -c 'import torch' || { echo "install-build-deps: KT_TORCH=system but this python has no torch" >&2; exit 2; }
elif [ -n "${KT_TORCH_INDEX:-}" ]; then
    "$venv/bin/pip" install --progress-bar off "torch==$KT_TORCH" --index-url "$KT_TORCH_INDEX" \
        --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}"
else
    "$venv/bin/pip" install --progress-bar off "torch==$KT_TORCH"
fi
# shellcheck disable=SC2086
"$venv/bin/pip" install -q $KT_BUILD_PIP
echo "install-build-deps: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
