#!/bin/sh
# The engine's runtime: Python, the pinned torch, the wheels built by
# build-ktransformers.sh, and the C toolchain Triton needs at run time; no
# build tree, no CUDA toolkit, no C++ compiler.
# Usage: install-runtime.sh [base|wheels|all]   (default all)
#   base    apt packages, the venv and torch: needs nothing from the compile,
#           so the Dockerfile runs it while the builder stage compiles
#   wheels  the built wheels, then the checks that fail the build instead of
#           the first chat: libstdc++, the server's imports, Triton's compiler
# Env: KT_APT_RUNTIME, KT_TORCH (a version, or "system"), KT_TORCH_INDEX, KT_RUNTIME_PIP, KT_WHEEL_DIR,
#      KT_VENV, KT_USER, KT_WHEELHOUSE (offline: the only place pip installs from).
set -eu
# shellcheck source=../common/prelude.sh
. "$(dirname "$0")/../common/prelude.sh"
venv=${KT_VENV:-/opt/venv}
wheels=${KT_WHEEL_DIR:-/wheels}
phase=${1:-all}

pip_install() {
    if [ -n "${KT_TORCH_INDEX:-}" ]; then
        "$venv/bin/pip" install --progress-bar off "$@" --index-url "$KT_TORCH_INDEX" \
            --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}"
    else
        "$venv/bin/pip" install --progress-bar off "$@"
    fi
}

install_base() {
    if [ "${KTA_SKIP_APT:-0}" != 1 ]; then
        # shellcheck disable=SC2086
        "$common/apt-install.sh" python3 python3-venv ca-certificates libstdc++6 $KT_APT_RUNTIME
    fi
    if [ "$KT_TORCH" = system ]; then
        [ -x "$venv/bin/python" ] || "$common/venv-with-host-torch.sh" "$venv"
    else
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        [ -n "${KT_WHEELHOUSE:-}" ] || "$venv/bin/pip" install -q --upgrade pip
        pip_install "torch==$KT_TORCH"
    fi
}

install_wheels() {
    # shellcheck disable=SC2086
    set -- ${KT_RUNTIME_PIP:-}
    [ "$KT_TORCH" = system ] || set -- "torch==$KT_TORCH" "$@"
    for wheel in "$wheels"/*.whl; do
        [ -f "$wheel" ] || { echo "install-runtime: no wheels in $wheels" >&2; exit 1; }
        set -- "$@" "$wheel"
    done
    pip_install "$@"
    # balance_serve builds: the FlashInfer kernels compiled ahead in the builder.
    if [ -d "$wheels/flashinfer-ops" ]; then
        rm -rf "$venv/flashinfer-ops"
        cp -r "$wheels/flashinfer-ops" "$venv/flashinfer-ops"
    fi
    # The checks below run the target's code. A build depends on the target,
    # never on the machine it runs on: where this machine lacks the target's
    # instructions, they cannot run here (they would die on an illegal
    # instruction) and the image's entrypoint guard stands in at start.
    cpu=" $(grep -m1 -E '^[[:space:]]*[Ff]lags[[:space:]]*:' /proc/cpuinfo | cut -d: -f2-) " lacking=""
    for flag in ${KT_REQUIRED_FLAGS:-}; do
        case "$cpu" in *" $flag "*) ;; *) lacking="$lacking $flag" ;; esac
    done
    if [ -n "$lacking" ]; then
        echo "install-runtime: this build machine lacks $lacking; the import checks are left to a host of the target" >&2
        "$venv/bin/python" "$here/check-triton-toolchain.py"
        install_user
        return
    fi
    if [ -d "$venv/flashinfer-ops" ]; then
        "$venv/bin/python" "$here/check-balance-serve.py" "$venv/flashinfer-ops"
    fi
    "$venv/bin/python" "$here/check-libstdcxx.py"
    "$venv/bin/python" "$here/check-triton-toolchain.py"
    # The server's own imports (its help, the app and every endpoint schema,
    # the extensions), in a throw-away home; a build has no GPU, which the
    # script allows for (it says how).
    check_home=$(mktemp -d)
    HOME="$check_home" "$venv/bin/python" "$here/kt-user-config.py" "$check_home"
    HOME="$check_home" "$venv/bin/python" "$here/check-server-imports.py"
    rm -rf "$check_home"
    install_user
}

install_user() {
    if [ -n "${KT_USER:-}" ]; then
        id "$KT_USER" >/dev/null 2>&1 || useradd --create-home --uid 10001 --shell /bin/sh "$KT_USER"
        user_home=$(getent passwd "$KT_USER" | cut -d: -f6)
        "$venv/bin/python" "$here/kt-user-config.py" "$user_home"
        chown -R "$KT_USER:" "$user_home/.ktransformers"
    fi
}

case "$phase" in
    base) install_base ;;
    wheels) install_wheels ;;
    all) install_base; install_wheels ;;
    *) echo "install-runtime: unknown phase $phase (base, wheels or all)" >&2; exit 2 ;;
esac
