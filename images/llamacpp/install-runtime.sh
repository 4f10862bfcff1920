#!/bin/sh
# The llama.cpp server's runtime: a few shared libraries and a non-root user.
# Env: LLAMA_APT_RUNTIME, LLAMA_USER.
set -eu
# shellcheck source=../common/prelude.sh
. "$(dirname "$0")/../common/prelude.sh"
if [ "${KTA_SKIP_APT:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    "$common/apt-install.sh" $LLAMA_APT_RUNTIME
fi
if [ -n "${LLAMA_USER:-}" ] && ! id "$LLAMA_USER" >/dev/null 2>&1; then
    useradd --create-home --uid 10001 --shell /bin/sh "$LLAMA_USER"
fi
