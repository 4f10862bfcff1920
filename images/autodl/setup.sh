#!/bin/sh
# ktappliance native set-up for an AutoDL instance (no Docker, no systemd):
# runs the same images/*/ install scripts the Dockerfiles run, into the same
# paths, then installs supervisord's config. Safe to run twice.
#   sh setup.sh [--pip-mirror URL] [--turbo]
# --turbo sources AutoDL's /etc/network_turbo (its GitHub/HF proxy) first.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
pip_mirror=""
turbo=0
while [ $# -gt 0 ]; do
    case "$1" in
        --pip-mirror) pip_mirror=$2; shift 2 ;;
        --turbo) turbo=1; shift ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
# The plan's values, the ones the Dockerfile builds with and stamps: exported,
# so the install scripts below read them as they read the image's.
set -a
# shellcheck disable=SC1091
. "$here/bundle.env"
set +a
if [ "$turbo" = 1 ] && [ -f /etc/network_turbo ]; then
    # shellcheck disable=SC1091
    . /etc/network_turbo
fi
[ -z "$pip_mirror" ] || export PIP_INDEX_URL="$pip_mirror"
home=/opt/ktappliance
step() { printf '\n== ktappliance setup: %s\n' "$*"; }

step "scripts into $home"
mkdir -p "$home"
for part in common engine llamacpp api webui autodl; do
    rm -rf "${home:?}/$part"
    cp -r "$here/images/$part" "$home/$part"
done
cp "$here/src/ktappliance/models/modelcheck.py" "$home/common/modelcheck.py"

case "$KTA_ENGINE" in
    llamacpp)
        if [ -x /opt/llama.cpp/bin/llama-server ] && [ "$(cat /opt/llama.cpp/.built-from 2>/dev/null)" = "$LLAMA_TAG $LLAMA_CPU_CMAKE" ]; then
            step "llama.cpp already built"
        else
            step "llama.cpp $LLAMA_TAG for $KTA_TARGET (compiles for several minutes)"
            # The image's own package lists (targets.yaml, through the bundle's
            # settings); python3-venv for the API service's venv.
            # shellcheck disable=SC2086  # word-split lists of package names
            "$home/common/apt-install.sh" $LLAMA_APT_BUILD $LLAMA_APT_RUNTIME python3-venv
            source=${LLAMA_SOURCE:-}
            [ -n "$source" ] || source=https://github.com/ggml-org/llama.cpp.git
            [ ! -f "$here/sources/llamacpp.tar.gz" ] || source="$here/sources/llamacpp.tar.gz"
            LLAMA_SOURCE=$source LLAMA_TAG=$LLAMA_TAG LLAMA_COMMIT=$LLAMA_COMMIT LLAMA_CPU_CMAKE=$LLAMA_CPU_CMAKE \
                LLAMA_CUDA_ARCHS=${LLAMA_CUDA_ARCHS:-} LLAMA_JOBS=${KTA_JOBS:-2} "$home/llamacpp/build-llamacpp.sh"
            echo "$LLAMA_TAG $LLAMA_CPU_CMAKE" >/opt/llama.cpp/.built-from
        fi ;;
    ktransformers)
        if /opt/venv/bin/python -c 'import cpuinfer_ext, KTransformersOps' 2>/dev/null; then
            step "KTransformers already installed in /opt/venv"
        else
            step "KTransformers $KT_TAG for $KTA_TARGET (compiles for a long while)"
            "$home/engine/install-build-deps.sh"
            source=https://github.com/kvcache-ai/ktransformers.git
            [ ! -f "$here/sources/ktransformers.tar.gz" ] || source="$here/sources/ktransformers.tar.gz"
            KT_SOURCE=$source KT_WHEEL_DIR=/opt/ktappliance/wheels "$home/engine/build-ktransformers.sh"
            KT_WHEEL_DIR=/opt/ktappliance/wheels "$home/engine/install-runtime.sh"
        fi ;;
    *) echo "setup.sh: KTA_ENGINE in bundle.env must be llamacpp or ktransformers" >&2; exit 2 ;;
esac

step "API service and supervisor (/opt/kta-api)"
KTA_API_VENV=/opt/kta-api KTA_API_EXTRAS=api,autodl "$home/api/install.sh" "$here/src"

step "Open-WebUI $WEBUI_VERSION (/opt/webui)"
WEBUI_VERSION=$WEBUI_VERSION KTA_WEBUI_VENV=/opt/webui "$home/webui/install.sh"

step "start script"
# What the engine image stamps as ENV, the start script reads from the bundle's settings.
cp "$here/bundle.env" "$home/bundle.env"
cat >"$home/start.sh" <<START
#!/bin/sh
# Written by ktappliance setup.sh: start engine + API + Open-WebUI.
set -a
. $home/bundle.env
set +a
export KT_TARGET=\$KTA_TARGET
export LLAMA_ARG_JINJA=true LLAMA_ARG_REASONING_FORMAT=none LLAMA_ARG_ALIAS=DeepSeek-R1 KT_MODEL_NAME=DeepSeek-R1
exec $home/autodl/start.sh "\$@"
START
chmod +x "$home/start.sh"

cat <<NEXT

ktappliance is installed. Next:
  1. Put the model on the data disk (not saved into images):
       /opt/kta-api/bin/ktappliance model fetch --dir /root/autodl-tmp/models
  2. Start it (foreground; or: nohup $home/start.sh >/root/autodl-tmp/ktappliance.log 2>&1 &):
       $home/start.sh
  3. Save the instance image in the AutoDL console (the system disk keeps all of this).
  4. Open the "custom service" URL (port 6006) for Open-WebUI; the API is on 6008.
NEXT
