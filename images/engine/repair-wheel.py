"""Make a KTransformers wheel built with balance_serve stand on its own.

Upstream's wheel only works beside its build tree: sched_ext links shared
libraries that stay in the tree (prometheus-cpp's core and pull) and finds
them through a RUNPATH that points into it (upstream's install.sh has the
fix commented out). The runtime image installs the wheel far from any build
tree, so the libraries go into the wheel, next to sched_ext, and every
library at the wheel's top looks beside itself ($ORIGIN) and in torch's
folder ($ORIGIN/torch/lib) instead.

Usage: repair-wheel.py WHEEL BUILD_TREE   (the wheel is rewritten in place)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RUNPATH = "$ORIGIN:$ORIGIN/torch/lib"


def resolved_libraries(library: Path) -> dict[str, str]:
    """soname -> path, as the loader finds them now (build tree included)."""
    out = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if arrow and rest.startswith("/"):
            found[name] = rest.split(" (", 1)[0]
    return found


def repair(wheel: Path, build_tree: Path) -> list[str]:
    build_tree = build_tree.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", scratch, str(wheel)], check=True,
                       stdout=subprocess.DEVNULL)
        root = next(Path(scratch).iterdir())
        pending = sorted(root.glob("*.so*"))
        vendored: list[str] = []
        while pending:
            library = pending.pop()
            for soname, path in resolved_libraries(library).items():
                if Path(path).resolve().is_relative_to(build_tree) and not (root / soname).exists():
                    shutil.copy2(Path(path).resolve(), root / soname)
                    vendored.append(soname)
                    pending.append(root / soname)
        for library in sorted(root.glob("*.so*")):
            subprocess.run(["patchelf", "--set-rpath", RUNPATH, str(library)], check=True)
        for library in sorted(root.glob("*.so*")):
            stuck = [p for p in resolved_libraries(library).values() if Path(p).resolve().is_relative_to(build_tree)]
            if stuck:
                raise SystemExit(f"repair-wheel: {library.name} still loads from the build tree: {' '.join(stuck)}")
        wheel.unlink()
        subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(wheel.parent), str(root)], check=True,
                       stdout=subprocess.DEVNULL)
    return vendored


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[0]).is_file() or not Path(argv[1]).is_dir():
        print("usage: repair-wheel.py WHEEL BUILD_TREE", file=sys.stderr)
        return 2
    vendored = repair(Path(argv[0]), Path(argv[1]))
    print(f"repair-wheel: {Path(argv[0]).name}: vendored {' '.join(vendored) or 'nothing'}; RUNPATH {RUNPATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
