#!/bin/sh
# The GPU tier on a host without network (the accelerator host): the test
# tools and every Python package the engines install come from wheel folders
# prepared on a machine with network; torch is the host's own.
# Usage: tests/gpu/offline-host.sh WHEEL_DIR... [-- PYTEST_ARGS]
#        tests/gpu/offline-host.sh --compile WHEEL_DIR... -- ENGINE...   (compile ahead:
#            tests/gpu/gpuhost.py in the same environment; detach it where commands are cut off)
# Env: KTA_KT_SOURCES, KTA_LLAMACPP_SRC, KTA_GPU_WORK (see tests/gpu/gpuhost.py),
#      KTA_DEB_ROOT (where WHEEL_DIR/debs/*.deb are unpacked; default /tmp/kta-debroot)
set -eu
cd "$(dirname "$0")/../.."
mode="test"
if [ "${1:-}" = --compile ]; then mode=compile; shift; fi
wheels=""
while [ $# -gt 0 ] && [ "$1" != -- ]; do wheels="$wheels $(cd "$1" && pwd)"; shift; done
[ "${1:-}" != -- ] || shift
[ -n "$wheels" ] || { echo "offline-host.sh: name at least one wheel folder" >&2; exit 2; }
export KTA_WHEELHOUSE="${wheels# }"
# Debian packages the native balance_serve build needs and the host lacks
# (wheelhouse.py --debs): unpacked into a private root, never over the host's.
debroot=${KTA_DEB_ROOT:-/tmp/kta-debroot}
for folder in $wheels; do
    for deb in "$folder"/debs/*.deb; do
        [ -f "$deb" ] || continue
        dpkg-deb -x "$deb" "$debroot"
    done
done
if [ -d "$debroot/usr" ]; then
    lib="$debroot/usr/lib/x86_64-linux-gnu"
    export PATH="$debroot/usr/bin:$PATH" CMAKE_PREFIX_PATH="$debroot/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    export CPATH="$debroot/usr/include${CPATH:+:$CPATH}" LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
venv=${KTA_GPU_TOOL_VENV:-/tmp/kta-gpu-tools}
[ -x "$venv/bin/python" ] || sh images/common/venv-with-host-torch.sh "$venv"
PIP_NO_INDEX=1 PIP_FIND_LINKS="$KTA_WHEELHOUSE" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$venv/bin/pip" install -q -r tests/gpu/tool-requirements.txt
if [ "$mode" = compile ]; then
    exec "$venv/bin/python" tests/gpu/gpuhost.py "$@"
fi
if command -v make >/dev/null 2>&1; then
    exec make test-gpu GPU_PY="$venv/bin/python" PYTEST_ARGS="$*"
fi
exec "$venv/bin/python" -m pytest -q -s tests/gpu "$@"
