#!/bin/sh
# Refuse to start on a CPU that lacks the flags this image was compiled for,
# with one line, instead of dying later with SIGILL ("Illegal instruction").
# Usage: cpu-guard.sh [CPUINFO_FILE]   (default /proc/cpuinfo)
# Env:   KT_TARGET, KT_REQUIRED_FLAGS (space separated), both stamped at build.
set -eu
source_file=${1:-/proc/cpuinfo}
if [ ! -r "$source_file" ]; then
    echo "ktappliance: cannot read $source_file to check the CPU" >&2
    exit 3
fi
flags=" $(grep -m1 -E '^[[:space:]]*[Ff]lags[[:space:]]*:' "$source_file" | cut -d: -f2-) "
missing=""
for flag in ${KT_REQUIRED_FLAGS:?}; do
    case "$flags" in
        *" $flag "*) ;;
        *) missing="$missing $flag" ;;
    esac
done
if [ -n "$missing" ]; then
    echo "ktappliance: this image is built for the ${KT_TARGET:-?} target but the CPU lacks:$missing; rebuild with: python build.py --target auto" >&2
    exit 3
fi
