"""Build benchmark for the KTransformers engine image (issue: real builds).

Measured side by side in one run, on the same inputs the image tests use
(ktransformers 0.2.1 sdist, CUDA 13 stand-in bases, avx2, one CUDA arch, two jobs):

  cold          a fresh --cache-namespace: its apt/pip/ccache mounts start empty and
                every RUN step misses the layer cache (the mount ids are part of it)
  runtime-only  the same context with a changed entrypoint
  flag change   the NUMA variant (a compile flag), with the ccache mount warm
  size          the runtime image against a single-stage image from the same
                inputs the way upstream builds: the devel base with torch,
                compilers and the source tree left in, the wheel installed there

Run: .venv/bin/python bench/build_bench.py   (about 30 minutes on 2 cores, ~20 GB of disk)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from support import dockerenv  # noqa: E402
from support.settings import engine_build_args  # noqa: E402

OUT = REPO / "bench" / "out"
TAG = "kta-bench/engine:avx2"
NUMA_TAG = "kta-bench/engine:avx2-numa"
SINGLE_TAG = "kta-bench/engine:single-stage"


def run(argv, **kwargs) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, cwd=REPO, **kwargs)
    return time.monotonic() - started


# A fresh cache namespace makes the cold build cold without touching the shared
# caches; KTA_BENCH_NAMESPACE="" measures in the shared one (cold only when
# its cache mounts are empty, which the run checks and reports).
NAMESPACE = os.environ.get("KTA_BENCH_NAMESPACE", f"bench{int(time.time())}")


def build(tag: str, numa: bool, log: Path) -> float:
    args = engine_build_args(tag, numa) + ["--out", str(OUT)]
    if NAMESPACE:
        args += ["--cache-namespace", NAMESPACE]
    with open(log, "w") as handle:
        return run([sys.executable, "build.py", *args], stdout=handle, stderr=subprocess.STDOUT)


def context_of(tag: str) -> Path:
    from ktappliance.image.render import context_name
    return OUT / context_name(tag)


def image_size(tag: str) -> int:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    dockerenv.ensure_bases()
    for tag in (TAG, NUMA_TAG, SINGLE_TAG):
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    mounts = subprocess.run(["docker", "system", "df", "-v"], capture_output=True, text=True).stdout
    cache_mounts = [line for line in mounts.splitlines() if "exec.cachemount" in line]
    print(f"cache namespace: {NAMESPACE or '(shared)'}; cache mounts present before the cold build: "
          f"{len(cache_mounts)}", flush=True)

    cold = build(TAG, False, OUT / "cold.log")

    entrypoint = context_of(TAG) / "scripts" / "engine" / "entrypoint.sh"
    entrypoint.write_text(entrypoint.read_text() + f"\n# bench touch {time.time()}\n")
    replay = context_of(TAG) / "build-command.sh"
    with open(OUT / "runtime-only.log", "w") as handle:
        runtime_only = run(["sh", str(replay)], stdout=handle, stderr=subprocess.STDOUT)

    flag = build(NUMA_TAG, True, OUT / "flag-change.log")

    # Single stage the upstream way: the builder stage (devel base, compilers,
    # torch, source tree) with the wheel installed into it.
    replay_text = replay.read_text()
    with open(OUT / "builder-stage.log", "w") as handle:
        run(["sh", "-c", replay_text.split("exec env ", 1)[1].replace("--target runtime", "--target builder")
             .replace(f"-t {TAG}", "-t kta-bench/engine:builder")], stdout=handle, stderr=subprocess.STDOUT)
    single = OUT / "single-stage"
    single.mkdir(exist_ok=True)
    (single / "Dockerfile").write_text(
        "FROM kta-bench/engine:builder\n"
        "RUN /opt/venv/bin/pip install --no-deps /wheels/*.whl\n")
    run(["docker", "build", "-q", "-t", SINGLE_TAG, str(single)], capture_output=True)

    runtime_size, single_size = image_size(TAG), image_size(SINGLE_TAG)
    rows = [
        ("cold build", f"{cold:.0f} s", "1.000", ""),
        ("rebuild, entrypoint changed", f"{runtime_only:.1f} s", f"{runtime_only / cold:.3f}", "<= 0.03"),
        ("rebuild, NUMA flag changed (ccache)", f"{flag:.0f} s", f"{flag / cold:.3f}", "<= 0.50"),
        ("runtime image size", f"{runtime_size / 1e9:.2f} GB", "", ""),
        ("single-stage image size", f"{single_size / 1e9:.2f} GB", f"{runtime_size / single_size:.3f}",
         "<= 0.60 (runtime / single)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'ratio':>6}  goal")
    for name, value, ratio, goal in rows:
        print(f"{name:<{width}}  {value:>10}  {ratio:>6}  {goal}")
    record = {"date": datetime.date.today().isoformat(), "machine": f"{platform.node()} {platform.processor()}",
              "cold_s": cold, "runtime_only_s": runtime_only, "flag_change_s": flag,
              "runtime_bytes": runtime_size, "single_stage_bytes": single_size}
    (OUT / "build_bench.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
