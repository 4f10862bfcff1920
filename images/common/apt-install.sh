#!/bin/sh
# apt-get install with the optional mirror and the cache-mount friendly settings.
# Usage: apt-install.sh PACKAGE...   (PACKAGE may be "a|b": the first apt knows)
set -eu
here=$(dirname "$0")
# shellcheck source=network.sh
. "$here/network.sh"
if [ -n "${APT_MIRROR:-}" ]; then
    for list in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$list" ] || continue
        sed -i -E "s#https?://(deb|archive|security)\.(debian\.org|ubuntu\.com)/(debian-security|debian|ubuntu)#${APT_MIRROR%/}/\3#g" "$list"
    done
fi
# Keep downloaded .debs in the BuildKit cache mount instead of deleting them.
rm -f /etc/apt/apt.conf.d/docker-clean
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >/etc/apt/apt.conf.d/keep-cache
# shellcheck disable=SC2086
apt-get $KTA_APT_CA_OPT update -qq
# "a|b": the first of the names this release's apt knows (packages renamed
# between the Ubuntu and Debian releases the bases use).
for wanted in "$@"; do
    shift
    case "$wanted" in
        *"|"*)
            chosen=""
            for name in $(echo "$wanted" | tr '|' ' '); do
                if apt-cache show "$name" >/dev/null 2>&1; then chosen=$name; break; fi
            done
            [ -n "$chosen" ] || { echo "apt-install: none of $wanted is known to apt here" >&2; exit 1; }
            set -- "$@" "$chosen" ;;
        *) set -- "$@" "$wanted" ;;
    esac
done
# shellcheck disable=SC2086
apt-get $KTA_APT_CA_OPT install -y -qq --no-install-recommends "$@" >/dev/null
