"""How long nvcc takes for upstream's Marlin kernel, with and without split compilation.

`gptq_marlin.cu` is one CUDA file with many template instances: the longest
single compile of a KTransformers build (v0.3.2 has two such files, compiled
one after the other). nvcc and ptxas can spread one file's optimisation over
threads (`--split-compile N`, "minimal if any impact on the compiled binary").
This times the file the way torch's extension build compiles it, for each N
given, side by side.

    python bench/marlin_compile.py SOURCE.tar.gz --arch 9.0 --split 1 16      # where nvcc and torch are
    python bench/marlin_compile.py SOURCE.tar.gz --docker kta-test/cuda:13.0-devel --arch 8.6 --split 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The nvcc flags torch's CUDAExtension and KTransformers' setup.py give this file.
FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr", "-O3", "--use_fast_math", "-Xcompiler", "-fPIC",
         "-DKTRANSFORMERS_USE_CUDA", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=KTransformersOps"]


def cxx_standard(torch_include: str) -> str:
    """What torch's extension build passes: C++20 once torch's headers demand it."""
    aten = Path(torch_include) / "ATen" / "ATen.h"
    return "-std=c++20" if aten.is_file() and "C++20 or later" in aten.read_text() else "-std=c++17"


def marlin_source(tarball: Path, into: Path) -> Path:
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if "/ktransformers_ext/cuda/" in m.name]
        tar.extractall(into, members=members)  # upstream source; filter= needs Python 3.11.4+
    found = sorted(into.rglob("ktransformers_ext/cuda/gptq_marlin/gptq_marlin.cu"))
    if not found:
        raise SystemExit(f"{tarball}: no ktransformers_ext/cuda/gptq_marlin/gptq_marlin.cu in it")
    return found[0]


def time_native(source: Path, arch: str, splits: list[int]) -> list[dict]:
    import sysconfig

    from torch.utils.cpp_extension import include_paths
    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    includes = [f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"]]]
    code = arch.replace(".", "")
    rows = []
    for split in splits:
        out = source.with_suffix(f".split{split}.o")
        command = [str(nvcc), "-c", str(source), "-o", str(out), *includes, *FLAGS, cxx_standard(include_paths()[0]),
                   f"-gencode=arch=compute_{code},code=sm_{code}"]
        if split != 1:
            command.append(f"--split-compile={split}")
        started = time.monotonic()
        subprocess.run(command, check=True)
        rows.append({"split": split, "seconds": round(time.monotonic() - started, 1), "object_bytes": out.stat().st_size})
        print(f"marlin_compile: --split-compile={split}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
    return rows


def time_in_docker(args) -> list[dict]:
    """A throw-away image: the CUDA devel base plus the build deps the engine
    image installs (install-build-deps.sh, the line's torch); then this script in it."""
    from ktappliance.image.builder import find_buildkit_cli
    from ktappliance.target.matrix import load_matrix
    from ktappliance.image.plan import make_plan
    matrix = load_matrix()
    plan = make_plan(matrix.select("avx2", line=args.line, cuda="13.0"), default_arch_list=args.arch)
    context = Path(tempfile.mkdtemp(prefix="marlin-bench-"))
    try:
        shutil.copytree(REPO / "images" / "engine", context / "engine")
        shutil.copytree(REPO / "images" / "common", context / "common")
        env = " ".join(f'{key}="{value}"' for key, value in plan.install_env().items())
        (context / "Dockerfile").write_text(
            "ARG BASE\nFROM ${BASE}\nCOPY engine /opt/kta/engine\nCOPY common /opt/kta/common\n"
            "RUN --mount=type=cache,id=kta-apt-cache-13.0,target=/var/cache/apt,sharing=locked "
            "--mount=type=cache,id=kta-apt-lists-13.0,target=/var/lib/apt/lists,sharing=locked "
            "--mount=type=cache,id=kta-pip,target=/root/.cache/pip --mount=type=secret,id=ca_cert "
            f"{env} sh /opt/kta/engine/install-build-deps.sh\n")
        tag = "kta-bench/marlin-compile:latest"
        cli = find_buildkit_cli()
        subprocess.run([*cli.build_prefix(), "-q", "--build-arg", f"BASE={args.docker}", "--secret",
                        f"id=ca_cert,src={args.ca_cert}", "-t", tag, str(context)], check=True,
                       env={**os.environ, **cli.env})
    finally:
        shutil.rmtree(context, ignore_errors=True)
    tarball = Path(args.source).resolve()
    done = subprocess.run(["docker", "run", "--rm", "-v", f"{REPO}:/repo:ro", "-v", f"{tarball}:/src.tar.gz:ro",
                           tag, "/opt/venv/bin/python", "/repo/bench/marlin_compile.py", "/src.tar.gz", "--arch", args.arch,
                           "--json", "--split", *map(str, args.split)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"marlin_compile in {tag} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a ktransformers-<tag>.tar.gz")
    parser.add_argument("--arch", default="9.0")
    parser.add_argument("--split", type=int, nargs="+", default=[1, os.cpu_count() or 2])
    parser.add_argument("--docker", metavar="CUDA_DEVEL_IMAGE", help="run inside this base with the line's torch")
    parser.add_argument("--line", default="v0.2.3")
    parser.add_argument("--ca-cert", default=os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.docker:
        sys.path.insert(0, str(REPO))
        rows = time_in_docker(args)
    else:
        with tempfile.TemporaryDirectory() as work:
            rows = time_native(marlin_source(Path(args.source), Path(work)), args.arch, args.split)
    if args.json:
        print(json.dumps(rows))
        return 0
    base = rows[0]["seconds"]
    print(f"| --split-compile | seconds | ratio to {rows[0]['split']} | object bytes |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['split']} | {row['seconds']} | {row['seconds'] / base:.2f} | {row['object_bytes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
