#!/bin/sh
# Compile llama.cpp's server for one CPU target (and CUDA when asked) into
# $LLAMA_PREFIX/bin/llama-server, statically linked against ggml/llama.
# Env:
#   LLAMA_SOURCE        git URL, or a local tree / .tar.gz holding one (for
#                       example llama-cpp-python's sdist, which vendors the tree)
#   LLAMA_TAG LLAMA_COMMIT   with a git URL: the release tag and its commit
#   LLAMA_CPU_CMAKE     the target's -DGGML_* flags (from targets.yaml)
#   LLAMA_CUDA_ARCHS    empty for CPU-only, else CMAKE_CUDA_ARCHITECTURES
#   LLAMA_JOBS LLAMA_PREFIX
set -eu
# shellcheck source=../common/prelude.sh
. "$(dirname "$0")/../common/prelude.sh"
work=${LLAMA_WORKDIR:-/build/llama.cpp}
prefix=${LLAMA_PREFIX:-/opt/llama.cpp}
jobs=${LLAMA_JOBS:-2}

# KT_RESUME's twin: LLAMA_RESUME=1 keeps a tree configured with exactly these
# settings, so a stopped CUDA compile goes on where it was.
stamp="${LLAMA_SOURCE:?}|${LLAMA_CPU_CMAKE:-}|${LLAMA_CUDA_ARCHS:-}"
if [ "${LLAMA_RESUME:-0}" = 1 ] && [ "$(cat "$work/.ktappliance-settings" 2>/dev/null)" = "$stamp" ]; then
    echo "build-llamacpp: resuming the build in $work (same source and settings)"
else
rm -rf "$work" && mkdir -p "$work/raw"
case "${LLAMA_SOURCE:?}" in
    http://*|https://*|git@*)
        git clone -q --depth 1 --branch "${LLAMA_TAG:?}" "$LLAMA_SOURCE" "$work/raw/llama.cpp"
        actual=$(git -C "$work/raw/llama.cpp" rev-parse HEAD)
        case "$actual" in
            "${LLAMA_COMMIT:?}"*) ;;
            *) echo "build-llamacpp: tag $LLAMA_TAG is $actual, expected $LLAMA_COMMIT" >&2; exit 2 ;;
        esac ;;
    *.tar.gz|*.tgz) tar -xzf "$LLAMA_SOURCE" -C "$work/raw" ;;
    *) cp -a "$LLAMA_SOURCE/." "$work/raw/" ;;
esac
echo "$stamp" >"$work/.ktappliance-settings"
fi
# The tree is the shallowest directory with the server's sources in it.
tree=$(find "$work/raw" -maxdepth 7 -path '*/tools/server/CMakeLists.txt' | awk '{ print length, $0 }' | sort -n | head -n1 | cut -d' ' -f2-)
[ -n "$tree" ] || { echo "build-llamacpp: no llama.cpp tree (tools/server) in $LLAMA_SOURCE" >&2; exit 2; }
tree=${tree%/tools/server/CMakeLists.txt}
echo "build-llamacpp: tree $tree; CPU flags: ${LLAMA_CPU_CMAKE:-}; CUDA: ${LLAMA_CUDA_ARCHS:-none}"

set -- -S "$tree" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_CCACHE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
# shellcheck disable=SC2086
set -- "$@" ${LLAMA_CPU_CMAKE:-}
if [ -n "${LLAMA_CUDA_ARCHS:-}" ]; then
    set -- "$@" -DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$LLAMA_CUDA_ARCHS"
fi
export CCACHE_DIR="${CCACHE_DIR:-/root/.cache/ccache}" CCACHE_BASEDIR="$work" CCACHE_NOHASHDIR=1
# A rebuilt base copies the same compilers with new mtimes: compare contents.
export CCACHE_COMPILERCHECK=content
cmake "$@"
cmake --build "$work/build" --target llama-server -j "$jobs"
mkdir -p "$prefix/bin"
install -m 0755 "$work/build/bin/llama-server" "$prefix/bin/llama-server"
"$prefix/bin/llama-server" --version
