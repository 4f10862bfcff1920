#!/bin/sh
# The engine program: the engine image's own entrypoint (CPU guard, model
# check, server), with the model found on the data disk.
set -eu
models=${KTA_MODEL_DIR:-/root/autodl-tmp/models}
case "$KTA_ENGINE" in
    llamacpp)
        if [ -z "${LLAMA_ARG_MODEL:-}" ]; then
            LLAMA_ARG_MODEL=$(find "$models/gguf" -name '*.gguf' 2>/dev/null | grep -v -- '-of-' | sort | head -n1)
            first=$(find "$models/gguf" -name '*-00001-of-*.gguf' 2>/dev/null | sort | head -n1)
            LLAMA_ARG_MODEL=${first:-$LLAMA_ARG_MODEL}
            export LLAMA_ARG_MODEL
        fi
        export LLAMA_ARG_HOST=127.0.0.1 LLAMA_ARG_PORT="${KTA_ENGINE_PORT:-8080}"
        exec /opt/ktappliance/llamacpp/entrypoint.sh ;;
    ktransformers)
        if [ -z "${KT_GGUF_PATH:-}" ]; then
            shard=$(find "$models/gguf" -name '*.gguf' 2>/dev/null | sort | head -n1)
            KT_GGUF_PATH=$(dirname "${shard:-$models/gguf/none}")
            export KT_GGUF_PATH
        fi
        export KT_MODEL_PATH="${KT_MODEL_PATH:-$models/config}" KT_HOST=127.0.0.1 KT_PORT="${KTA_ENGINE_PORT:-10002}"
        exec /opt/ktappliance/engine/entrypoint.sh ;;
    *) echo "ktappliance: KTA_ENGINE must be llamacpp or ktransformers" >&2; exit 2 ;;
esac
