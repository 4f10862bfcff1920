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
# balance_serve starts its scheduler as `python3 .../sched_rpc.py`, whichever
# python3 is first on PATH: it must be the engine's own, on every host (the
# image sets this PATH; the AutoDL bundle and the GPU tier start from a shell).
PATH="$venv/bin:$PATH"
export PATH
refuse() {
    echo "ktappliance: $1" >&2
    exit "${KT_REFUSAL_EXIT:-$2}"
}
features=" ${KT_SERVER_FEATURES:-} "
has_feature() { [ "${features#* "$1" }" != "$features" ]; }
# An image built with balance_serve has FlashInfer and its kernels compiled
# ahead; both backends then use them (v0.3.2's single-request attention takes
# FlashInfer's MLA when it is installed), and nothing may compile at run time.
if [ -d "$venv/flashinfer-ops" ]; then
    export KTA_FLASHINFER_OPS="$venv/flashinfer-ops"
fi
backend=${KT_BACKEND:-single}
case "$backend" in
    single) rule_default=DeepSeek-V3-Chat.yaml ;;
    balance_serve)
        [ -n "${KTA_FLASHINFER_OPS:-}" ] || refuse "KT_BACKEND=balance_serve, but this image was built without it; rebuild with: python build.py --backend balance_serve --line v0.3.2 (or set KT_BACKEND=single)" 5
        rule_default=DeepSeek-V3-Chat-serve.yaml ;;
    *) refuse "KT_BACKEND=$backend: choose single or balance_serve" 5 ;;
esac
rule=${KT_OPTIMIZE_RULE:-$rule_default}
# balance_serve runs only rules written for it (FlashInfer attention, the V2
# experts); the others load the model and fail on the first request.
case "$backend:$rule" in
    balance_serve:*/*|balance_serve:*-serve*.yaml|single:*/*) ;;
    balance_serve:*) refuse "KT_OPTIMIZE_RULE=$rule is for the single-request backend; balance_serve needs a -serve rule such as DeepSeek-V3-Chat-serve.yaml" 5 ;;
    single:*-serve*.yaml) refuse "KT_OPTIMIZE_RULE=$rule is for balance_serve; KT_BACKEND=single needs a rule such as DeepSeek-V3-Chat.yaml" 5 ;;
esac
if [ "$backend" = balance_serve ]; then
    lens=${KT_CACHE_LENS:-16384} new=${KT_MAX_NEW_TOKENS:-8192}
    for value in "KT_CACHE_LENS=$lens" "KT_MAX_NEW_TOKENS=$new" "KT_MAX_BATCH_SIZE=${KT_MAX_BATCH_SIZE:-1}" \
                 "KT_CHUNK_SIZE=${KT_CHUNK_SIZE:-256}"; do
        case "${value#*=}" in
            ''|*[!0-9]*|0) refuse "$value: expected a whole number above 0" 5 ;;
        esac
    done
    # Upstream's rule: cache_lens > max_batch_size x max_new_tokens, else fewer
    # requests run at once than max_batch_size says. build.py plan sets all
    # three; without it, as many as the cache holds (at most 8).
    batch=${KT_MAX_BATCH_SIZE:-$(( (lens - 1) / new ))}
    [ "$batch" -ge 1 ] || batch=1
    [ -n "${KT_MAX_BATCH_SIZE:-}" ] || [ "$batch" -le 8 ] || batch=8
    if [ $((batch * new)) -ge "$lens" ]; then
        echo "ktappliance: note: KT_CACHE_LENS=$lens holds fewer than $batch answers of KT_MAX_NEW_TOKENS=$new, so fewer run at once; python build.py plan sizes them together" >&2
    fi
fi
# An image built with --flash-attn skip loads the model and then fails on the
# first prompt (v0.2.3 imports flash_attn with the attention rule, v0.3.2 calls
# it for every prefill): refuse now, where the reason is plain.
if ! "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("flash_attn") is None)'; then
    refuse "this engine was built without flash-attn (--flash-attn skip) and would fail on the first prompt; rebuild it with: python build.py --flash-attn wheel (the default)" 4
fi
# A user other than the image's own gets its own writable KTransformers config
# (checked here first: the script imports ktransformers, which takes seconds).
[ -f "${HOME:-/root}/.ktransformers/config.yaml" ] || "$venv/bin/python" "$here/kt-user-config.py"
if [ "$backend" = balance_serve ]; then
    "$venv/bin/python" "$here/kt-user-config.py" --kvc2 "${KT_KVC2_RAM_GB:-8}" || exit "${KT_REFUSAL_EXIT:-5}"
fi
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
if [ "${KT_FORCE_THINK:-false}" = true ] && has_feature force_think; then
    set -- "$@" --force_think
fi
if [ -n "${KT_API_KEY:-}" ] && has_feature auth; then
    set -- "$@" --api_key "$KT_API_KEY"
fi
if [ "$backend" = balance_serve ]; then
    set -- "$@" --backend_type balance_serve --max_batch_size "$batch" --chunk_size "${KT_CHUNK_SIZE:-256}"
    # Its server waits forever on a scheduler or model process that died.
    exec "$venv/bin/python" "$here/serve-watch.py" -- "$venv/bin/ktransformers" "$@"
elif has_feature backend_type; then
    set -- "$@" --backend_type ktransformers
fi
exec "$venv/bin/ktransformers" "$@"
