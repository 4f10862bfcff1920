#!/bin/sh
# Fail when a shared library carries its own copy of libstdc++.
# Two copies in one process share objects such as the global locale, and
# freeing one copy's object in the other aborts: balance_serve's scheduler
# died at start with "free(): invalid pointer" in std::locale::~locale when
# its KV-cache library had been linked against a static libstdc++.a.
# Usage: check-shared-libstdcxx.sh PATH...   (libraries, or folders searched for *.so)
set -eu
[ $# -gt 0 ] || { echo "usage: check-shared-libstdcxx.sh PATH..." >&2; exit 2; }
for path in "$@"; do
    [ -e "$path" ] || { echo "check-shared-libstdcxx: no such library or folder: $path" >&2; exit 2; }
done
libraries=$(find "$@" -name '*.so*' -type f)
[ -n "$libraries" ] || { echo "check-shared-libstdcxx: no shared library in $*" >&2; exit 2; }
private=$(echo "$libraries" | while IFS= read -r library; do
    if nm -D --defined-only "$library" 2>/dev/null | grep -q ' _ZNSt6localeD[12]Ev$'; then
        echo "$library"
    fi
done)
[ -n "$private" ] || { echo "check-shared-libstdcxx: $(echo "$libraries" | wc -l) libraries, each on the shared libstdc++"; exit 0; }
echo "$private" | while IFS= read -r library; do
    echo "check-shared-libstdcxx: $library holds its own copy of libstdc++ (linked against libstdc++.a)" >&2
done
exit 1
