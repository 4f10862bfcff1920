#!/bin/sh
# llama.cpp engine entrypoint: check the CPU and the model, then start
# llama-server. Settings come from llama-server's own LLAMA_ARG_* variables
# (LLAMA_ARG_MODEL, LLAMA_ARG_N_GPU_LAYERS, LLAMA_ARG_CTX_SIZE, ...); a split
# GGUF is given by its first shard and the rest are found next to it.
# Arguments starting with "-" go to llama-server; another command runs instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# Refusals no restart can fix exit with KT_REFUSAL_EXIT where it is set (the
# compose stack sets 0, so that `restart: on-failure` leaves them stopped).
"$here/../common/cpu-guard.sh" || exit "${KT_REFUSAL_EXIT:-3}"

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
model=${LLAMA_ARG_MODEL:-}
if [ -z "$model" ]; then
    echo "ktappliance: no model given: set LLAMA_ARG_MODEL to the .gguf file (the first shard of a split model)" >&2
    exit "${KT_REFUSAL_EXIT:-2}"
fi
if [ ! -f "$model" ]; then
    echo "ktappliance: model file $model not found: mount the model directory and point LLAMA_ARG_MODEL at the .gguf (first shard of a split model)" >&2
    exit "${KT_REFUSAL_EXIT:-2}"
fi
# Headers only, well under a second: a missing or truncated shard stops here
# with one line per problem instead of after minutes of loading.
if [ "${KT_MODEL_CHECK:-1}" = 1 ]; then
    python3 "$here/../common/modelcheck.py" "$model" --engine llama.cpp || exit "${KT_REFUSAL_EXIT:-2}"
fi
# LLAMA_SERVER: where a native install (the GPU tier) put the binary.
exec "${LLAMA_SERVER:-/opt/llama.cpp/bin/llama-server}" "$@"
