#!/bin/sh
# Start the appliance on AutoDL (or in the all-in-one image): check what would
# otherwise fail later, one line each, then run supervisord in the foreground.
# Open-WebUI on 6006 and the API on 6008, the two ports AutoDL publishes.
set -eu
: "${KTA_HOME:=/opt/ktappliance}" "${KTA_API_VENV:=/opt/kta-api}" "${KTA_WEBUI_VENV:=/opt/webui}"
: "${KTA_ENGINE:?set KTA_ENGINE to llamacpp or ktransformers}"
: "${KTA_DATA:=/root/autodl-tmp}" "${KTA_API_PORT:=6008}" "${KTA_WEBUI_PORT:=6006}"
: "${KTA_MODEL_DIR:=$KTA_DATA/models}" "${KTA_CONFIG_DIR:=/root/.config/ktappliance}" "${KTA_MIN_FREE_GB:=2}"
: "${KTA_RUN_AS:=root}"
KTA_RUN_HOME=$(getent passwd "$KTA_RUN_AS" | cut -d: -f6)
[ -n "$KTA_RUN_HOME" ] || { echo "ktappliance: KTA_RUN_AS=$KTA_RUN_AS is no user here" >&2; exit 2; }
if [ "$KTA_ENGINE" = llamacpp ]; then : "${KTA_ENGINE_PORT:=8080}"; health=/health; else : "${KTA_ENGINE_PORT:=10002}"; health=/v1/models; fi
KTA_ENGINE_HEALTH="http://127.0.0.1:$KTA_ENGINE_PORT$health"
export KTA_HOME KTA_API_VENV KTA_WEBUI_VENV KTA_ENGINE KTA_DATA KTA_API_PORT KTA_WEBUI_PORT KTA_MODEL_DIR \
    KTA_ENGINE_PORT KTA_ENGINE_HEALTH KTA_RUN_AS KTA_RUN_HOME
py="$KTA_API_VENV/bin/python"

fail() { echo "ktappliance: $*" >&2; exit 2; }

# The model lives on the data disk (not saved into instance images).
find "$KTA_MODEL_DIR/gguf" -name '*.gguf' 2>/dev/null | grep -q . \
    || fail "no model on the data disk: fetch one into $KTA_MODEL_DIR (python build.py model fetch --dir $KTA_MODEL_DIR)"
free_gb=$(df -Pk "$KTA_DATA" | awk 'NR==2 { print int($4 / 1048576) }')
[ "$free_gb" -ge "$KTA_MIN_FREE_GB" ] || fail "disk too small: $free_gb GB free on $KTA_DATA, $KTA_MIN_FREE_GB GB needed"
for port in "$KTA_WEBUI_PORT" "$KTA_API_PORT" "$KTA_ENGINE_PORT"; do
    "$py" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', int(sys.argv[1])))" "$port" 2>/dev/null \
        || fail "port $port is already taken: stop what uses it (AutoDL's own services use 6006 too) or set KTA_*_PORT"
done
if [ "$KTA_ENGINE" = ktransformers ] && ! nvidia-smi -L >/dev/null 2>&1; then
    fail "no NVIDIA GPU visible: KTransformers needs one (start a GPU instance, or use the llamacpp engine)"
fi

# Keys are generated once and kept on the system disk (saved with the image).
mkdir -p "$KTA_CONFIG_DIR" && chmod 700 "$KTA_CONFIG_DIR"
for name in api_key webui_secret; do
    [ -s "$KTA_CONFIG_DIR/$name" ] || (umask 077 && "$py" -c "import secrets; print('sk-kta-' + secrets.token_urlsafe(32))" >"$KTA_CONFIG_DIR/$name")
done
KTA_API_KEY_FILE="$KTA_CONFIG_DIR/api_key"
KTA_UPSTREAM="http://127.0.0.1:$KTA_ENGINE_PORT"
export KTA_API_KEY_FILE KTA_UPSTREAM KTA_REASONING_OPENED="${KTA_REASONING_OPENED:-$([ "$KTA_ENGINE" = llamacpp ] && echo true || echo false)}"

set -a
# shellcheck disable=SC1091
. "$KTA_HOME/webui/webui.env"
set +a
OPENAI_API_KEY=$(cat "$KTA_API_KEY_FILE")
WEBUI_SECRET_KEY=$(cat "$KTA_CONFIG_DIR/webui_secret")
export OPENAI_API_KEY OPENAI_API_BASE_URL="http://127.0.0.1:$KTA_API_PORT/v1" \
    WEBUI_SECRET_KEY DATA_DIR="${DATA_DIR:-$KTA_DATA/webui}"
mkdir -p "$DATA_DIR"
if [ "$KTA_RUN_AS" != root ]; then
    # The services' own files: the API reads its key, Open-WebUI writes its
    # data; the engine reads the models (public weights) on a data disk that
    # may be mounted 0700 and root's.
    chown -R "$KTA_RUN_AS:" "$KTA_CONFIG_DIR" "$DATA_DIR"
    chmod o+x "$KTA_DATA"
    chmod -R o+rX "$KTA_MODEL_DIR"
fi

echo "ktappliance: Open-WebUI on :$KTA_WEBUI_PORT, API on :$KTA_API_PORT (key in $KTA_API_KEY_FILE), engine $KTA_ENGINE" >&2
exec "$KTA_API_VENV/bin/supervisord" -n -c "$KTA_HOME/autodl/supervisord.conf"
