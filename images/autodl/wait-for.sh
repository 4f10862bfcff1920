#!/bin/sh
# wait-for.sh URL -- COMMAND...: start COMMAND once URL answers 2xx.
# supervisord orders starts but does not wait for readiness; this does.
set -eu
url=$1
shift
[ "${1:-}" = "--" ] && shift
until curl -fsS -o /dev/null --max-time 5 "$url"; do
    sleep 2
done
exec "$@"
