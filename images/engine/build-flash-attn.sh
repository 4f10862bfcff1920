#!/bin/sh
# flash-attn for the venv's torch: KTransformers v0.2.3 imports it when the
# rule loads attention and v0.3.2 calls it for every prefill, so an engine
# without it cannot answer a prompt.
# Its prebuilt wheel where one matches torch, CUDA, Python and the C++ ABI (they
# are on flash-attn's GitHub release page); otherwise a compile bounded to our
# CUDA archs and job count, announced with an estimate, since it takes hours.
# Env: KT_FLASH_ATTN (version, or "skip"), KT_VENV, KT_WHEEL_DIR, KT_JOBS,
#      TORCH_CUDA_ARCH_LIST.  Option --print-plan: say what would happen, stop.
set -eu
venv=${KT_VENV:-/opt/venv}
wheels=${KT_WHEEL_DIR:-/wheels}
jobs=${KT_JOBS:-2}
version=${KT_FLASH_ATTN:-skip}

if [ "$version" = skip ]; then
    echo "build-flash-attn: skipped (--flash-attn skip): this engine cannot serve; the image says so and refuses to start"
    exit 0
fi

# flash-attn compiles for sm_80 and up only: each 8.x arch runs the sm_80 code.
archs=$(echo "${TORCH_CUDA_ARCH_LIST:?}" | tr ';' '\n' | sed -n 's/^\([0-9]*\)\..*/\1/p' \
    | awk '$1 >= 8 && !seen[$1]++ {printf "%s%s0", sep, $1; sep=";"}')
[ -n "$archs" ] || { echo "build-flash-attn: no CUDA arch of 8.0 or newer in $TORCH_CUDA_ARCH_LIST" >&2; exit 2; }

# The wheel name flash-attn's own setup.py looks for on its release page.
here=$(cd "$(dirname "$0")" && pwd)
named=$("$venv/bin/python" "$here/flash-attn-wheel.py" "$version" --this-torch)
wheel=$(echo "$named" | sed -n 1p)
url=$(echo "$named" | sed -n 2p)
# About 85 kernels per arch at about 6 CPU-minutes each (measured on an
# Emerald Rapids host); each job needs 1.5 GB of RAM or more.
narchs=$(echo "$archs" | tr ';' '\n' | wc -l)
minutes=$((85 * 6 * narchs / jobs))

if [ "${1:-}" = --print-plan ]; then
    echo "wheel $wheel"
    echo "url $url"
    echo "archs $archs"
    echo "estimate_minutes $minutes"
    exit 0
fi

if "$venv/bin/python" - "$url" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=30)
except Exception:
    sys.exit(1)
PY
then
    echo "build-flash-attn: prebuilt wheel $wheel"
    "$venv/bin/pip" download -q --no-deps -d "$wheels" "$url"
    exit 0
fi
echo "build-flash-attn: no prebuilt wheel $wheel (or its release page is out of reach):"
echo "build-flash-attn: compiling flash-attn $version for sm $archs with $jobs jobs; expect about $((minutes / 60)) h $((minutes % 60)) min"
"$venv/bin/pip" install -q psutil einops
FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS="$archs" MAX_JOBS="$jobs" NVCC_THREADS=1 \
    PATH="$venv/bin:$PATH" "$venv/bin/pip" wheel -v --no-build-isolation --no-deps -w "$wheels" "flash-attn==$version"
