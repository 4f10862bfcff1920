#!/bin/sh
# Compile KTransformers into a wheel for exactly one CPU target.
# Env:
#   KT_SOURCE       git URL, or a local source directory or .tar.gz
#   KT_TAG KT_COMMIT   with a git URL: the tag to clone and the commit it must be
#   CPU_INSTRUCT    AVX2 | AVX512 | FANCY (never NATIVE for a shipped image)
#   KT_NUMA         1 to build with NUMA. Upstream tests `if(DEFINED ENV{USE_NUMA})`,
#                   so USE_NUMA=0 would turn it ON: it is exported only when wanted.
#   TORCH_CUDA_ARCH_LIST, KT_JOBS, KT_WHEEL_DIR, KT_VENV, KT_FLASH_ATTN (version or "skip")
set -eu
here=$(cd "$(dirname "$0")" && pwd)
common="$here/../common"
[ -d "$common" ] || common="$here"
# shellcheck source=../common/network.sh
. "$common/network.sh"
venv=${KT_VENV:-/opt/venv}
wheels=${KT_WHEEL_DIR:-/wheels}
workdir=${KT_WORKDIR:-/build/ktransformers}
jobs=${KT_JOBS:-2}

case "${CPU_INSTRUCT:?}" in
    AVX2|AVX512|FANCY) ;;
    *) echo "build-ktransformers: CPU_INSTRUCT must be AVX2, AVX512 or FANCY, not $CPU_INSTRUCT" >&2; exit 2 ;;
esac

export KTRANSFORMERS_FORCE_BUILD=TRUE CPU_INSTRUCT
export MAX_JOBS="$jobs" CMAKE_BUILD_PARALLEL_LEVEL="$jobs"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:?}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
unset USE_NUMA
if [ "${KT_NUMA:-0}" = 1 ]; then
    export USE_NUMA=1
fi
if command -v ccache >/dev/null 2>&1; then
    # Same paths every build, so a flag change recompiles only what it touches.
    export CCACHE_DIR="${CCACHE_DIR:-/root/.cache/ccache}" CCACHE_BASEDIR="$workdir" CCACHE_NOHASHDIR=1
    export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
    export PYTORCH_NVCC="ccache $CUDA_HOME/bin/nvcc"
fi
if [ "${1:-}" = --print-env ]; then
    # What the compile will see; the unit tests check USE_NUMA here.
    env | grep -E '^(KTRANSFORMERS_FORCE_BUILD|CPU_INSTRUCT|USE_NUMA|MAX_JOBS|CMAKE_BUILD_PARALLEL_LEVEL|TORCH_CUDA_ARCH_LIST)=' | sort
    exit 0
fi
# A fresh tree every time: upstream builds in-tree and a stale build dir keeps
# the previous NUMA setting (upstream #634, #796).
rm -rf "$workdir"
mkdir -p "$workdir" "$wheels"
[ -z "${CCACHE_DIR:-}" ] || mkdir -p "$CCACHE_DIR"
case "${KT_SOURCE:?}" in
    http://*|https://*|git@*)
        git clone -q --depth 1 --branch "${KT_TAG:?}" --recurse-submodules --shallow-submodules \
            "$KT_SOURCE" "$workdir"
        actual=$(git -C "$workdir" rev-parse HEAD)
        case "$actual" in
            "${KT_COMMIT:?}"*) ;;
            *) echo "build-ktransformers: tag $KT_TAG is $actual, expected $KT_COMMIT" >&2; exit 2 ;;
        esac ;;
    *.tar.gz|*.tgz)
        tar -xzf "$KT_SOURCE" -C "$workdir" --strip-components=1 ;;
    *)
        [ -d "$KT_SOURCE" ] || { echo "build-ktransformers: no source at $KT_SOURCE" >&2; exit 2; }
        cp -a "$KT_SOURCE/." "$workdir/" ;;
esac
[ -f "$workdir/setup.py" ] || { echo "build-ktransformers: $KT_SOURCE holds no setup.py" >&2; exit 2; }

echo "build-ktransformers: CPU_INSTRUCT=$CPU_INSTRUCT USE_NUMA=${USE_NUMA:-<unset>} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST jobs=$jobs"
cd "$workdir"
# -v: the compile takes many minutes; its lines are the progress.
PATH="$venv/bin:$PATH" "$venv/bin/pip" wheel -v --no-build-isolation --no-deps -w "$wheels" .

case "${KT_FLASH_ATTN:-skip}" in
    skip) echo "build-ktransformers: flash-attn skipped (KT_FLASH_ATTN=skip)" ;;
    *)
        # flash-attn's setup.py fetches a prebuilt wheel matching torch/CUDA/Python
        # from its release page and compiles only when none matches; the compile
        # is then bounded to our CUDA archs and job count.
        FLASH_ATTN_CUDA_ARCHS=$(echo "$TORCH_CUDA_ARCH_LIST" | tr ';' '\n' | sed 's/[^0-9]//g' | tr '\n' ';' | sed 's/;$//')
        export FLASH_ATTN_CUDA_ARCHS
        PATH="$venv/bin:$PATH" "$venv/bin/pip" wheel --no-build-isolation --no-deps -w "$wheels" \
            "flash-attn==$KT_FLASH_ATTN" ;;
esac
ls -l "$wheels"
