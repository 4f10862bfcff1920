#!/usr/bin/env bash
# Start a second Docker engine with its own data root, so that the cold-build
# benchmark starts from nothing without wiping the main engine's caches.
#   bash bench/isolated-dockerd.sh start   -> prints the DOCKER_HOST to use
#   bash bench/isolated-dockerd.sh stop
set -euo pipefail
root=${KTA_BENCH_DOCKER_ROOT:-/var/lib/ktappliance-bench-docker}
sock=/run/ktappliance-bench-docker.sock
pidfile=/run/ktappliance-bench-docker.pid
case "${1:-start}" in
    start)
        mkdir -p "$root"
        # Its own bridge: docker0 belongs to the main engine.
        if ! ip link show kta-bench0 >/dev/null 2>&1; then
            ip link add kta-bench0 type bridge
            ip addr add 172.31.251.1/24 dev kta-bench0
            ip link set kta-bench0 up
        fi
        if ! DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; then
            nohup dockerd --data-root "$root" --exec-root /run/ktappliance-bench-exec --host "unix://$sock" \
                --pidfile "$pidfile" --bridge kta-bench0 --storage-driver overlay2 \
                >/tmp/ktappliance-bench-dockerd.log 2>&1 &
            for _ in $(seq 1 60); do DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1 && break; sleep 1; done
        fi
        echo "unix://$sock" ;;
    stop)
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true ;;
esac
