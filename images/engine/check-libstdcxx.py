"""Fail when a compiled KTransformers extension needs a newer libstdc++ than
the one this image carries (the GLIBCXX_3.4.30 / CXXABI_1.3.15 errors users
hit, upstream #439 #524 #1484). Versions are read from the ELF files' symbol
version strings, so no binutils are needed in the runtime image."""

import ctypes.util
import glob
import importlib.util
import os
import re
import sys

VERSION = re.compile(rb"(GLIBCXX|CXXABI)_(\d+(?:\.\d+)+)")


def versions(path):
    with open(path, "rb") as handle:
        data = handle.read()
    found = {}
    for kind, ver in VERSION.findall(data):
        key = kind.decode()
        parsed = tuple(int(p) for p in ver.decode().split("."))
        found[key] = max(found.get(key, parsed), parsed)
    return found


def libstdcxx_path():
    for candidate in glob.glob("/usr/lib/*-linux-gnu/libstdc++.so.6") + glob.glob("/usr/lib*/libstdc++.so.6"):
        return os.path.realpath(candidate)
    name = ctypes.util.find_library("stdc++")
    return name


def main():
    spec = importlib.util.find_spec("ktransformers")
    if spec is None or not spec.submodule_search_locations:
        print("check-libstdcxx: ktransformers is not installed", file=sys.stderr)
        return 1
    site = os.path.dirname(list(spec.submodule_search_locations)[0])
    extensions = glob.glob(os.path.join(site, "cpuinfer_ext*.so")) + glob.glob(os.path.join(site, "KTransformersOps*.so"))
    if not extensions:
        print("check-libstdcxx: no compiled extensions found next to ktransformers", file=sys.stderr)
        return 1
    have = versions(libstdcxx_path())
    for ext in extensions:
        for kind, needed in versions(ext).items():
            if needed > have.get(kind, ()):
                print(f"check-libstdcxx: {os.path.basename(ext)} needs {kind}_{'.'.join(map(str, needed))}, "
                      f"this image's libstdc++ stops at {'.'.join(map(str, have.get(kind, ())))}", file=sys.stderr)
                return 1
    print(f"check-libstdcxx: {len(extensions)} extensions fit this libstdc++")
    return 0


if __name__ == "__main__":
    sys.exit(main())
