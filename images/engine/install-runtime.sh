#!/bin/sh
# The engine's runtime: Python, the pinned torch and the wheels built by
# build-ktransformers.sh; no compilers, no source tree.
# Env: KT_APT_RUNTIME, KT_TORCH, KT_TORCH_INDEX, KT_RUNTIME_PIP, KT_WHEEL_DIR, KT_VENV, KT_USER.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
common="$here/../common"
[ -d "$common" ] || common="$here"
venv=${KT_VENV:-/opt/venv}
wheels=${KT_WHEEL_DIR:-/wheels}

if [ "${KT_SKIP_APT:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    "$common/apt-install.sh" python3 python3-venv ca-certificates libstdc++6 $KT_APT_RUNTIME
fi
# shellcheck source=../common/network.sh
. "$common/network.sh"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
set -- "torch==$KT_TORCH" ${KT_RUNTIME_PIP:-}
for wheel in "$wheels"/*.whl; do
    set -- "$@" "$wheel"
done
if [ -n "${KT_TORCH_INDEX:-}" ]; then
    "$venv/bin/pip" install --progress-bar off "$@" --index-url "$KT_TORCH_INDEX" \
        --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}"
else
    "$venv/bin/pip" install --progress-bar off "$@"
fi
"$venv/bin/python" "$here/check-libstdcxx.py"
if [ -n "${KT_USER:-}" ]; then
    id "$KT_USER" >/dev/null 2>&1 || useradd --create-home --uid 10001 --shell /bin/sh "$KT_USER"
    user_home=$(getent passwd "$KT_USER" | cut -d: -f6)
    "$venv/bin/python" "$here/kt-user-config.py" "$user_home"
    chown -R "$KT_USER:" "$user_home/.ktransformers"
fi
