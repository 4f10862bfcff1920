"""Prepare the wheel folder a GPU host without network needs for the GPU tier.

Run it on a machine with network, carry the folder over, then on the GPU
host: `tests/gpu/offline-host.sh FOLDER`. It resolves, for the GPU host's
Python, everything the tier's tools and each KTransformers line install
(the line's build and runtime pins from targets.yaml and the dependencies its
pyproject declares) from scratch, as if nothing were installed: a host that
has a package in a version too old for them (certifi was one) then finds the
newer one here. torch and the CUDA libraries it brings are the host's own and
are left out, and so is whatever the host already has in a version that
satisfies every requirement on it (--host-packages: the host's
`python3 -m pip list --format=freeze`), so the folder fits the 64 MiB a
device call carries. --debs adds the Debian packages balance_serve's native
build needs and such a host lacks (TBB, libaio, patchelf), fetched with
apt-get download on this machine; offline-host.sh unpacks them.

    python3 tests/gpu/wheelhouse.py OUT [--python-version 3.12] [--lines v0.2.3 v0.3.2]
                                        [--host-packages FREEZE.txt] [--debs]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from gpuhost import ktransformers_sources, unpin_numpy

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOOLS = HERE / "tool-requirements.txt"
# The host's torch and what comes with it: never taken from the folder.
HOST_PROVIDED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
# Packages PyPI has only as source: resolved and fetched apart (binary-only
# resolution for another Python cannot see them); they must not need others.
SOURCE_ONLY = {"cpufeature"}
# balance_serve's native build on a host without them (its CMake finds TBB and
# libaio; the wheel's libraries get their RUNPATH from patchelf).
BALANCE_SERVE_DEBS = ("libtbb-dev", "libtbb12", "libtbbmalloc2", "libtbbbind-2-5", "libaio-dev", "libaio1", "patchelf")
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
             "manylinux_2_5_x86_64", "linux_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0])


def tool_requirements() -> list[str]:
    return [line.split("#")[0].strip() for line in TOOLS.read_text().splitlines() if line.split("#")[0].strip()]


def declared_dependencies(source: Path) -> list[str]:
    """[project].dependencies of a KTransformers source (.tar.gz or tree)."""
    if source.is_dir():
        text = (source / "pyproject.toml").read_text()
    else:
        with tarfile.open(source) as tar:
            member = next((m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/pyproject.toml")), None)
            if member is None:
                raise SystemExit(f"wheelhouse: {source} has no pyproject.toml at its top")
            text = tar.extractfile(member).read().decode()
    return list(tomllib.loads(text).get("project", {}).get("dependencies", []))


def line_requirements(line_name: str, source: Path) -> list[str]:
    """What installing this line pulls in on a GPU host that brings its own torch."""
    from ktappliance.target.matrix import load_matrix
    line = load_matrix().lines[line_name]
    serve = line.balance_serve.runtime_pip if line.balance_serve else ()
    wanted = unpin_numpy((*line.build_pip, *line.runtime_pip, *serve))
    wanted += declared_dependencies(source)
    return [r for r in wanted if not HOST_PROVIDED.match(requirement_name(r))]


def pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"wheelhouse: pip {args[0]} failed:\n{result.stderr.strip()[-2000:]}")


def binary_flags(python_version: str) -> list[str]:
    return ["--only-binary=:all:", "--python-version", python_version, *(f"--platform={p}" for p in PLATFORMS)]


def resolve(requirements: list[str], python_version: str) -> list[dict]:
    """pip's report of every package the requirements need (name, version, requires_dist)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        pip("install", "--quiet", "--dry-run", "--ignore-installed", "--target", str(Path(scratch) / "t"),
            "--report", str(report), *binary_flags(python_version), *requirements)
        return json.loads(report.read_text())["install"]


def read_freeze(path: Path) -> dict[str, str]:
    """name -> version from `pip list --format=freeze` (or `pip freeze`) output."""
    packages = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and not name.startswith("#"):
            packages[canonical(name)] = version.strip()
    return packages


def marker_environment(python_version: str) -> dict[str, str]:
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def specifiers_on(items: list[dict], requirements: list[str], python_version: str) -> dict[str, list]:
    """package -> every version specifier the requirements and the resolved
    packages' own dependencies (with the extras asked of them) place on it."""
    environment = marker_environment(python_version)
    wanted: list[tuple[str, tuple[str, ...]]] = [(r, ()) for r in requirements]
    for item in items:
        extras = tuple(item.get("requested_extras") or ())
        wanted += [(r, extras) for r in item["metadata"].get("requires_dist") or ()]
    found: dict[str, list] = {}
    for text, extras in wanted:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker: Marker | None = requirement.marker
        if marker and not any(marker.evaluate({**environment, "extra": e}) for e in ("", *extras)):
            continue
        found.setdefault(canonical(requirement.name), []).append(requirement.specifier)
    return found


def left_for_host(items: list[dict], requirements: list[str], python_version: str,
                  host: dict[str, str]) -> dict[str, str]:
    """name -> version to put in the folder: the resolution less torch's closure
    and less what the host has in a version every requirement on it accepts."""
    limits = specifiers_on(items, requirements, python_version)
    keep = {}
    for item in items:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        if HOST_PROVIDED.match(name):
            continue
        installed = host.get(name)
        if installed is not None:
            try:
                if all(Version(installed) in spec for spec in limits.get(name, [])):
                    continue
            except InvalidVersion:
                pass
        keep[name] = version
    return keep


def fetch_debs(out: Path) -> None:
    """The balance_serve build's Debian packages, downloaded (not installed)."""
    import shutil
    if shutil.which("apt-get") is None:
        raise SystemExit("wheelhouse: --debs needs apt-get (a Debian or Ubuntu machine)")
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", "-q", *BALANCE_SERVE_DEBS], cwd=out, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"wheelhouse: apt-get download failed:\n{result.stderr.strip()[-1000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 tests/gpu/wheelhouse.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the wheels (made if missing)")
    parser.add_argument("--python-version", default="3.12", help="the GPU host's Python (default 3.12)")
    parser.add_argument("--lines", nargs="+", default=["v0.2.3", "v0.3.2"], help="KTransformers lines to cover")
    parser.add_argument("--kt-sources", type=Path, default=ktransformers_sources(),
                        help="folder with ktransformers-<tag>.tar.gz (default $KTA_KT_SOURCES, else ../shared/sources)")
    parser.add_argument("--host-packages", type=Path, metavar="FREEZE",
                        help="the GPU host's `python3 -m pip list --format=freeze`: leave out what it has")
    parser.add_argument("--debs", action="store_true",
                        help=f"also download {', '.join(BALANCE_SERVE_DEBS)} into OUT/debs (apt-get download)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from ktappliance.target.matrix import load_matrix
    lines = load_matrix().lines
    unknown = [name for name in args.lines if name not in lines]
    if unknown:
        parser.error(f"unknown line {' '.join(unknown)} (known: {' '.join(lines)})")
    wanted: dict[str, list[str]] = {"tools": tool_requirements()}
    for name in args.lines:
        source = args.kt_sources / f"ktransformers-{lines[name].tag}.tar.gz"
        if not source.is_file():
            parser.error(f"no {source.name} in {args.kt_sources} (name the folder with --kt-sources)")
        wanted[name] = line_requirements(name, source)
    if args.host_packages and not args.host_packages.is_file():
        parser.error(f"--host-packages {args.host_packages}: no such file")
    host = read_freeze(args.host_packages) if args.host_packages else {}
    if args.host_packages and not host:
        parser.error(f"--host-packages {args.host_packages}: no name==version lines (pip list --format=freeze)")
    args.out.mkdir(parents=True, exist_ok=True)
    source_only: set[str] = set()
    # One resolution and download per group: the lines pin different
    # transformers, and one pip command refuses two versions of a package.
    for group, requirements in wanted.items():
        source_only |= {r for r in requirements if requirement_name(r) in SOURCE_ONLY}
        binary = [r for r in requirements if requirement_name(r) not in SOURCE_ONLY]
        items = resolve(binary, args.python_version)
        found = left_for_host(items, binary, args.python_version, host)
        print(f"wheelhouse: {group}: {len(found)} packages ({len(items) - len(found)} left to the host)", flush=True)
        pip("download", "--quiet", "--no-deps", "--dest", str(args.out), *binary_flags(args.python_version),
            *sorted(f"{name}=={version}" for name, version in found.items()))
    if source_only:
        pip("download", "--quiet", "--no-deps", "--no-binary=:all:", "--dest", str(args.out), *sorted(source_only))
    if args.debs:
        fetch_debs(args.out / "debs")
    files = sorted(path for path in args.out.rglob("*") if path.is_file())
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"wheelhouse: {len(files)} files, {size:.0f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
