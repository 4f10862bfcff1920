#!/bin/sh
# Compile KTransformers into a wheel for exactly one CPU target.
# Env:
#   KT_SOURCE       git URL, or a local source directory or .tar.gz
#   KT_TAG KT_COMMIT   with a git URL: the tag to clone and the commit it must be
#   CPU_INSTRUCT    AVX2 | AVX512 | FANCY (never NATIVE for a shipped image)
#   KT_REQUIRED_FLAGS  the target's CPU flags: what `lscpu` reports during the compile
#   KT_CFLAGS       the target's extra -m flags (C and C++); KT_CMAKE_ARGS its llama.cpp switches
#   KT_NUMA         1 to build with NUMA. Upstream tests `if(DEFINED ENV{USE_NUMA})`,
#                   so USE_NUMA=0 would turn it ON: it is exported only when wanted.
#   TORCH_CUDA_ARCH_LIST, KT_JOBS, KT_WHEEL_DIR, KT_VENV, KT_FLASH_ATTN (version or "skip")
#   KT_SPLIT_COMPILE  threads nvcc may use for one file (default KT_JOBS; 1: off)
#   KT_PATCHES      files of patches/ to apply to upstream's tree (each says why)
#   KT_BALANCE_SERVE  1: also the multi-request backend (scheduler, KV-cache service,
#                   custom_flashinfer and its kernels compiled ahead), compiled with
#                   KT_TARGET_CFLAGS (the target's -m flags) where upstream has -march=native
#   KT_RESUME       1: keep a work tree built with the same settings (see below)
# Options: --print-env / --print-lscpu show what the compile would see, and stop.
set -eu
# shellcheck source=../common/prelude.sh
. "$(dirname "$0")/../common/prelude.sh"
venv=${KT_VENV:-/opt/venv}
wheels=${KT_WHEEL_DIR:-/wheels}
workdir=${KT_WORKDIR:-/build/ktransformers}
jobs=${KT_JOBS:-2}

case "${CPU_INSTRUCT:?}" in
    AVX2|AVX512|FANCY) ;;
    *) echo "build-ktransformers: CPU_INSTRUCT must be AVX2, AVX512 or FANCY, not $CPU_INSTRUCT" >&2; exit 2 ;;
esac
case " ${KT_CFLAGS:-} " in
    *march=native*) echo "build-ktransformers: -march=native ties the build to this machine" >&2; exit 2 ;;
esac

export KTRANSFORMERS_FORCE_BUILD=TRUE CPU_INSTRUCT
export MAX_JOBS="$jobs" CMAKE_BUILD_PARALLEL_LEVEL="$jobs"
split=${KT_SPLIT_COMPILE:-$jobs}
nvcc_append=${NVCC_APPEND_FLAGS:-}
[ "$split" = 1 ] || nvcc_append="${nvcc_append:+$nvcc_append }--split-compile=$split"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:?}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export CFLAGS="${KT_CFLAGS:-}" CXXFLAGS="${KT_CFLAGS:-}" CMAKE_ARGS="${KT_CMAKE_ARGS:-}"
unset USE_NUMA USE_BALANCE_SERVE
if [ "${KT_NUMA:-0}" = 1 ]; then
    export USE_NUMA=1
fi
serve=${KT_BALANCE_SERVE:-0}
if [ "$serve" = 1 ]; then
    export USE_BALANCE_SERVE=1 KTA_TARGET_CFLAGS="${KT_TARGET_CFLAGS:?KT_BALANCE_SERVE=1 needs the -m flags of the target}"
    # balance_serve's FindCUDA otherwise looks for the toolkit around the first nvcc on PATH.
    CMAKE_ARGS="$CMAKE_ARGS -DCUDA_TOOLKIT_ROOT_DIR=$CUDA_HOME"
    # Upstream links balance_serve with its own pick of g++ (13, 12, 11, plain),
    # and CMake adds the C compiler's library folders to those links. Where the
    # C compiler is another gcc whose folder has a libstdc++.a beside a dangling
    # libstdc++.so (the accelerator host's), the KV-cache library took a private
    # libstdc++ and the scheduler aborted at start. That g++'s own shared
    # libstdc++ comes first; check-shared-libstdcxx.sh verifies the result.
    for cxx in g++-13 g++-12 g++-11 g++; do command -v "$cxx" >/dev/null 2>&1 && break; done
    LDFLAGS="-L$(dirname "$("$cxx" -print-file-name=libstdc++.so)")${LDFLAGS:+ $LDFLAGS}"
    export LDFLAGS
fi
if command -v ccache >/dev/null 2>&1; then
    # Same paths every build, so a flag change recompiles only what it touches.
    export CCACHE_DIR="${CCACHE_DIR:-/root/.cache/ccache}" CCACHE_BASEDIR="$workdir" CCACHE_NOHASHDIR=1
    # A rebuilt base copies the same compilers with new mtimes: compare contents.
    export CCACHE_COMPILERCHECK=content
    export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
    # This build's own hits and misses (the cache is shared with other builds).
    export CCACHE_STATSLOG="$workdir.ccache-stats"
    rm -f "$CCACHE_STATSLOG"
    export PYTORCH_NVCC="ccache $CUDA_HOME/bin/nvcc"
    # ccache cannot cache an nvcc call that writes its own dependency file
    # (--generate-dependencies-with-compile; ccache 4.7 passes it through
    # uncached), so every Marlin file compiled again on one core for 13-16
    # minutes (bench/RESULTS.md). The tree is fresh each build: ninja never
    # needs those dependency files.
    export TORCH_EXTENSION_SKIP_NVCC_GEN_DEPENDENCIES=1
fi

# v0.3.2's CMakeLists runs `lscpu` and compiles the AVX-512 and AMX code when
# its output says "avx512" / "amx": that must be the target's answer, never the
# build machine's (an AMX builder broke avx512 builds; a builder without AMX
# silently dropped the AMX backends from amx builds).
lscpu_dir=$(mktemp -d)
trap 'rm -rf "$lscpu_dir"' EXIT
printf '#!/bin/sh\n# ktappliance: the flags of the target being compiled for.\necho "Architecture:        x86_64"\necho "Flags:               %s"\n' \
    "${KT_REQUIRED_FLAGS:?}" >"$lscpu_dir/lscpu"
chmod +x "$lscpu_dir/lscpu"
PATH="$lscpu_dir:$PATH"
export PATH

case "${1:-}" in
    --print-env)
        { env; echo "NVCC_APPEND_FLAGS=$nvcc_append"; } | grep -E '^(KTRANSFORMERS_FORCE_BUILD|CPU_INSTRUCT|USE_NUMA|MAX_JOBS|CMAKE_BUILD_PARALLEL_LEVEL|TORCH_CUDA_ARCH_LIST|CFLAGS|CXXFLAGS|LDFLAGS|CMAKE_ARGS|NVCC_APPEND_FLAGS)=' | sort
        exit 0 ;;
    --print-lscpu)
        lscpu
        exit 0 ;;
esac

# A fresh tree every time: upstream builds in-tree and a stale build dir keeps
# the previous NUMA setting (upstream #634, #796). KT_RESUME=1 (the GPU tier,
# whose host may stop a command mid-compile) keeps a tree built with exactly
# these settings, so ninja compiles only what is missing.
stamp="$KT_SOURCE|$CPU_INSTRUCT|${USE_NUMA:-}|$TORCH_CUDA_ARCH_LIST|$CFLAGS|$CMAKE_ARGS|$KT_REQUIRED_FLAGS|$serve|${KT_TARGET_CFLAGS:-}|${KT_PATCHES:-}"
if [ "${KT_RESUME:-0}" = 1 ] && [ "$(cat "$workdir/.ktappliance-settings" 2>/dev/null)" = "$stamp" ]; then
    echo "build-ktransformers: resuming the build in $workdir (same source and settings)"
    mkdir -p "$wheels"
else
rm -rf "$workdir"
mkdir -p "$workdir" "$wheels"
case "${KT_SOURCE:?}" in
    http://*|https://*|git@*)
        git clone -q --depth 1 --branch "${KT_TAG:?}" "$KT_SOURCE" "$workdir"
        actual=$(git -C "$workdir" rev-parse HEAD)
        case "$actual" in
            "${KT_COMMIT:?}"*) ;;
            *) echo "build-ktransformers: tag $KT_TAG is $actual, expected $KT_COMMIT" >&2; exit 2 ;;
        esac
        # Only the submodules the default build compiles; v0.3.2 lists five
        # more that only balance_serve uses.
        git -C "$workdir" submodule update -q --init --depth 1 third_party/llama.cpp third_party/pybind11
        if [ "$serve" = 1 ]; then
            git -C "$workdir" submodule update -q --init --recursive --depth 1 third_party/custom_flashinfer \
                third_party/prometheus-cpp third_party/spdlog third_party/xxHash third_party/PhotonLibOS
        fi ;;
    *.tar.gz|*.tgz)
        tar -xzf "$KT_SOURCE" -C "$workdir" --strip-components=1 ;;
    *)
        [ -d "$KT_SOURCE" ] || { echo "build-ktransformers: no source at $KT_SOURCE" >&2; exit 2; }
        cp -a "$KT_SOURCE/." "$workdir/" ;;
esac
for patch in ${KT_PATCHES:-}; do
    echo "build-ktransformers: applying patches/$patch"
    patch -d "$workdir" -p1 --forward --batch --quiet <"$here/patches/$patch" \
        || { echo "build-ktransformers: patches/$patch does not apply to $KT_SOURCE" >&2; exit 2; }
done
echo "$stamp" >"$workdir/.ktappliance-settings"
fi
[ -z "${CCACHE_DIR:-}" ] || mkdir -p "$CCACHE_DIR"
[ -f "$workdir/setup.py" ] || { echo "build-ktransformers: $KT_SOURCE holds no setup.py" >&2; exit 2; }

echo "build-ktransformers: CPU_INSTRUCT=$CPU_INSTRUCT USE_NUMA=${USE_NUMA:-<unset>} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST jobs=$jobs"
echo "build-ktransformers: CFLAGS='$CFLAGS' CMAKE_ARGS='$CMAKE_ARGS'; lscpu reports: $KT_REQUIRED_FLAGS"
cd "$workdir"
# -v: the compile takes many minutes; its lines are the progress.
# nvcc spreads one file's optimisation over threads: upstream's Marlin kernel is
# one file that otherwise compiles on one core for many minutes (0.40 of the
# time with two threads, bench/marlin_compile.py). Only this compile: the
# flash-attn build below has threads of its own and needs much memory.
NVCC_APPEND_FLAGS="$nvcc_append" PATH="$venv/bin:$PATH" \
    "$venv/bin/pip" wheel -v --no-build-isolation --no-deps -w "$wheels" .

if [ "$serve" = 1 ]; then
    native=$(grep -l -- '-march=native' csrc/balance_serve/build/compile_commands.json || true)
    [ -z "$native" ] || { echo "build-ktransformers: balance_serve compiled with -march=native ($native)" >&2; exit 1; }
    # setup.py puts balance_serve's own libraries beside the Python modules
    # (build/lib.*); prometheus-cpp and PhotonLibOS stay in its CMake tree.
    sh "$here/check-shared-libstdcxx.sh" csrc/balance_serve/build build/lib.*/lib*.so build/lib.*/sched_ext*.so
    "$venv/bin/python" "$here/repair-wheel.py" "$(ls "$wheels"/ktransformers-*.whl)" "$workdir"
    # custom_flashinfer: Python and the kernels' sources; the kernels this
    # image's models need are compiled now, for the target's GPU archs.
    "$venv/bin/pip" wheel -q --no-build-isolation --no-deps -w "$wheels" third_party/custom_flashinfer
    "$venv/bin/pip" install -q --no-deps --force-reinstall "$wheels"/flashinfer_python-*.whl
    (unset KTA_FLASHINFER_OPS; PATH="$venv/bin:$PATH" MAX_JOBS="$jobs" \
        "$venv/bin/python" "$here/flashinfer-kernels.py" "$wheels/flashinfer-ops")
fi

if [ -n "${CCACHE_STATSLOG:-}" ] && [ -f "$CCACHE_STATSLOG" ]; then
    echo "build-ktransformers: ccache, this build:"
    ccache --show-log-stats | sed -n '1,5p'
    rm -f "$CCACHE_STATSLOG"
fi
KT_WHEEL_DIR="$wheels" sh "$here/build-flash-attn.sh"
ls -l "$wheels"
