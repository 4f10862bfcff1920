#!/bin/sh
# Engine entrypoint: check the CPU, then start the KTransformers server with
# settings from the environment. Arguments starting with "-" are passed on to
# the server; any other command runs instead of it (e.g. `bash`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# Refusals no restart can fix exit with KT_REFUSAL_EXIT where it is set (the
# compose stack sets 0, so that `restart: on-failure` leaves them stopped).
"$here/../common/cpu-guard.sh" || exit "${KT_REFUSAL_EXIT:-3}"

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

venv=${KT_VENV:-/opt/venv}
# An image built with --flash-attn skip loads the model and then fails on the
# first prompt (v0.2.3 imports flash_attn with the attention rule, v0.3.2 calls
# it for every prefill): refuse now, where the reason is plain.
if ! "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("flash_attn") is None)'; then
    echo "ktappliance: this engine was built without flash-attn (--flash-attn skip) and would fail on the first prompt; rebuild it with: python build.py --flash-attn wheel (the default)" >&2
    exit "${KT_REFUSAL_EXIT:-4}"
fi
# A user other than the image's own gets its own writable KTransformers config
# (checked here first: the script imports ktransformers, which takes seconds).
[ -f "${HOME:-/root}/.ktransformers/config.yaml" ] || "$venv/bin/python" "$here/kt-user-config.py"
# Headers only, well under a second: missing or truncated shards, tensor types
# this line cannot run and missing config files stop here, not after the load.
if [ "${KT_MODEL_CHECK:-1}" = 1 ]; then
    "$venv/bin/python" "$here/../common/modelcheck.py" "${KT_GGUF_PATH:-/models/gguf}" \
        --config "${KT_MODEL_PATH:-/models/config}" --types "${KT_QUANT_TYPES:-}" \
        --engine "KTransformers ${KT_LINE:-} for ${KT_TARGET:-}" ${KT_BF16_NOTE:+--note "BF16=$KT_BF16_NOTE"} || exit "${KT_REFUSAL_EXIT:-2}"
fi
if [ -z "${KT_CPU_INFER:-}" ]; then
    # Physical cores minus two for the server and the GPU feeder threads.
    cores=$(awk -F: '/^physical id/{p=$2} /^core id/{print p":"$2}' /proc/cpuinfo | sort -u | wc -l)
    [ "$cores" -gt 0 ] || cores=$(nproc)
    KT_CPU_INFER=$((cores > 3 ? cores - 2 : 1))
fi
rule=${KT_OPTIMIZE_RULE:-DeepSeek-V3-Chat.yaml}
case "$rule" in
    */*) ;;
    *) rule="$("$venv/bin/python" -c 'import ktransformers, os; print(os.path.dirname(ktransformers.__file__))')/optimize/optimize_rules/$rule" ;;
esac

set -- --host "${KT_HOST:-0.0.0.0}" --port "${KT_PORT:-10002}" \
    --model_path "${KT_MODEL_PATH:-/models/config}" --gguf_path "${KT_GGUF_PATH:-/models/gguf}" \
    --model_name "${KT_MODEL_NAME:-DeepSeek-R1}" --cpu_infer "$KT_CPU_INFER" \
    --max_new_tokens "${KT_MAX_NEW_TOKENS:-8192}" --cache_lens "${KT_CACHE_LENS:-16384}" \
    --optimize_config_path "$rule" "$@"
# From v0.2.2 --force_think is a bare flag (`--force_think true` is an argparse error).
features=" ${KT_SERVER_FEATURES:-} "
if [ "${KT_FORCE_THINK:-false}" = true ] && [ "${features#* force_think }" != "$features" ]; then
    set -- "$@" --force_think
fi
if [ -n "${KT_API_KEY:-}" ] && [ "${features#* auth }" != "$features" ]; then
    set -- "$@" --api_key "$KT_API_KEY"
fi
exec "$venv/bin/ktransformers" "$@"
