#!/bin/sh
# Fail when a shared library under DIR carries its own copy of libstdc++.
# Two copies in one process share objects such as the global locale, and
# freeing one copy's object in the other aborts: balance_serve's scheduler
# died at start with "free(): invalid pointer" in std::locale::~locale when
# its KV-cache library had been linked against a static libstdc++.a.
# Usage: check-shared-libstdcxx.sh DIR
set -eu
dir=${1:?usage: check-shared-libstdcxx.sh DIR}
private=$(find "$dir" -name '*.so' -type f -exec sh -c '
    for library; do
        if nm -D --defined-only "$library" 2>/dev/null | grep -q " _ZNSt6localeD[12]Ev\$"; then
            echo "$library"
        fi
    done' sh {} +)
[ -n "$private" ] || exit 0
echo "$private" | while IFS= read -r library; do
    echo "check-shared-libstdcxx: $library holds its own copy of libstdc++ (linked against libstdc++.a)" >&2
done
exit 1
