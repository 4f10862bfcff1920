"""CPU kernels per target against a native build, side by side in one run.

Builds KTransformers' CPU extension (cpuinfer_ext) from upstream's v0.3.2
tree once per CPU target this host can run, with exactly the flags an image
of that target compiles with (CPU_INSTRUCT's CMake switches as the tree's own
setup.py maps them, the target's cflags and cmake_args from targets.yaml, and
the `lscpu` the build script puts first on PATH), plus once with
`-march=native` (upstream's default). Then it times the MoE forward pass on
DeepSeek-R1's expert shapes (hidden 7168, intermediate 2048, 8 routed experts)
for prefill (64 tokens) and decode (1 token), for Q4_K_M, IQ1_S and BF16
experts, and checks each result: BF16 against a float32 reference computed
here, the quantized types against the native build's output.

The CMake project is configured with KTRANSFORMERS_USE_XPU=ON: that switch
only drops the CUDA-stream hooks (no CUDA toolkit needed); the kernels are the
same sources and flags.

    python bench/cpu_kernels.py [--source TARBALL] [--jobs N] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HIDDEN, INTERMEDIATE, EXPERTS, ROUTED = 7168, 2048, 8, 8
# ggml type ids and (block elements, block bytes, offset of the f16 scale(s) to make valid)
GGML = {"F32": 0, "Q4_K": 12, "Q6_K": 14, "IQ1_S": 19, "BF16": 30}
BLOCKS = {"Q4_K": (256, 144, (0, 2)), "Q6_K": (256, 210, (208,)), "IQ1_S": (256, 50, (0,)), "BF16": (1, 2, ())}
# gate, up, down types of each expert format (Q4_K_M keeps down in Q6_K).
FORMATS = {"q4_k_m": ("Q4_K", "Q4_K", "Q6_K"), "iq1_s": ("IQ1_S", "IQ1_S", "IQ1_S"), "bf16": ("BF16", "BF16", "BF16")}
QLENS = {"decode": 1, "prefill": 64}


def host_flags() -> set[str]:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def setup_cmake_args(tree: Path) -> dict[str, list[str]]:
    """CPU_INSTRUCT -> CMake switches, read from the tree's own setup.py."""
    text = (tree / "setup.py").read_text()
    return {name: value.split() for name, value in re.findall(r'CMAKE_(NATIVE|FANCY|AVX512|AVX2) = "([^"]*)"', text)}


def build_variant(name: str, tree: Path, out: Path, jobs: int) -> Path:
    from ktappliance.target.matrix import load_matrix
    build = out / f"build-{name}"
    if list(build.glob("cpuinfer_ext*.so")):
        return build
    mapping = setup_cmake_args(tree)
    env = {**os.environ, "CFLAGS": "", "CXXFLAGS": ""}
    if name == "native":
        cmake = mapping["NATIVE"]
    else:
        target = load_matrix().targets[name]
        # The build script itself says what lscpu and the flags are for this target.
        script_env = {**os.environ, "CPU_INSTRUCT": target.cpu_instruct, "TORCH_CUDA_ARCH_LIST": "9.0",
                      "KT_REQUIRED_FLAGS": " ".join(target.requires), "KT_CFLAGS": " ".join(target.cflags),
                      "KT_CMAKE_ARGS": " ".join(target.cmake_args)}
        script = REPO / "images/engine/build-ktransformers.sh"
        printed = subprocess.run(["sh", str(script), "--print-env"], env=script_env, capture_output=True,
                                 text=True, check=True).stdout
        values = dict(line.split("=", 1) for line in printed.splitlines())
        env.update(CFLAGS=values.get("CFLAGS", ""), CXXFLAGS=values.get("CXXFLAGS", ""))
        shim = out / f"lscpu-{name}"
        shim.mkdir(parents=True, exist_ok=True)
        lscpu = subprocess.run(["sh", str(script), "--print-lscpu"], env=script_env, capture_output=True,
                               text=True, check=True).stdout
        (shim / "lscpu").write_text("#!/bin/sh\ncat <<'EOF'\n" + lscpu + "EOF\n")
        (shim / "lscpu").chmod(0o755)
        env["PATH"] = f"{shim}:{env['PATH']}"
        cmake = values.get("CMAKE_ARGS", "").split() + mapping[target.cpu_instruct]
    started = time.monotonic()
    print(f"[{name}] configure + build ({' '.join(cmake)}; CFLAGS={env['CFLAGS']!r})", file=sys.stderr, flush=True)
    subprocess.run(["cmake", "-S", str(tree / "csrc/ktransformers_ext"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DKTRANSFORMERS_USE_XPU=ON", f"-DPYTHON_EXECUTABLE={sys.executable}",
                    "-D_GLIBCXX_USE_CXX11_ABI=1",  # setup.py passes torch's; no torch here
                    f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build}", *cmake],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), f"-j{jobs}"], env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"[{name}] built in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return build


# ------------------------------------------------------------------ measuring
def valid_blocks(rng, kind: str, rows: int, cols: int):
    """Random but valid weights of a ggml type: random bytes with finite, small
    f16 scales (random scale bytes would give NaN and Inf)."""
    import numpy as np
    elems, size, scale_offsets = BLOCKS[kind]
    if kind == "BF16":
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).view(np.uint32) >> 16
    raw = rng.integers(0, 256, size=(rows, cols // elems, size), dtype=np.uint8)
    for offset in scale_offsets:
        scale = rng.uniform(0.0005, 0.002, size=(rows, cols // elems)).astype(np.float16)
        raw[:, :, offset:offset + 2] = scale.view(np.uint8).reshape(rows, cols // elems, 2)
    return raw.reshape(rows, -1)


def measure(build: Path, threads: int, out: Path, name: str, seconds: float) -> dict:
    import numpy as np
    sys.path.insert(0, str(build))
    import cpuinfer_ext
    cpu = cpuinfer_ext.CPUInfer(threads)
    results = {}
    for fmt, kinds in FORMATS.items():
        rng = np.random.default_rng(7)
        projs = [valid_blocks(rng, k, EXPERTS * r, c) for k, (r, c) in
                 zip(kinds, ((INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)))]
        projs = [np.ascontiguousarray(p.astype(np.uint16) if kinds[0] == "BF16" else p) for p in projs]
        config = cpuinfer_ext.moe.MOEConfig(EXPERTS, ROUTED, HIDDEN, INTERMEDIATE, 16, 10, 1024,
                                            projs[0].ctypes.data, projs[1].ctypes.data, projs[2].ctypes.data,
                                            GGML[kinds[0]], GGML[kinds[1]], GGML[kinds[2]], GGML["BF16"])
        moe = cpuinfer_ext.moe.MOE(config)
        for phase, qlen in QLENS.items():
            ids = np.stack([rng.permutation(EXPERTS)[:ROUTED] for _ in range(qlen)]).astype(np.uint64)
            weights = rng.uniform(0.05, 0.2, size=(qlen, ROUTED)).astype(np.float32)
            x = (rng.standard_normal((qlen, HIDDEN), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
            y = np.zeros((qlen, HIDDEN), dtype=np.uint16)
            batch = np.zeros(1, dtype=np.int32)

            def once():
                batch[0] = qlen
                cpu.submit(moe.forward(qlen, ROUTED, ids.ctypes.data, weights.ctypes.data, x.ctypes.data,
                                       y.ctypes.data, batch.ctypes.data))
                cpu.sync()

            for _ in range(3):
                once()
            times, deadline = [], time.monotonic() + seconds
            while time.monotonic() < deadline or len(times) < 5:
                started = time.perf_counter()
                once()
                times.append(time.perf_counter() - started)
            result = (y.astype(np.uint32) << 16).view(np.float32)
            np.save(out / f"out-{name}-{fmt}-{phase}.npy", result)
            entry = {"ms": 1000 * float(np.median(times)), "runs": len(times)}
            if fmt == "bf16":
                entry["error"] = relative_error(result, bf16_reference(projs, ids, weights, x))
            results[f"{fmt}/{phase}"] = entry
    return results


def bf16_reference(projs, ids, weights, x):
    import numpy as np
    as_f32 = lambda a: (a.astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    gate, up, down = (as_f32(p) for p in projs)
    xs = as_f32(x)
    out = np.zeros_like(xs)
    for t in range(xs.shape[0]):
        for j, e in enumerate(ids[t]):
            e = int(e)
            g = gate[e * INTERMEDIATE:(e + 1) * INTERMEDIATE] @ xs[t]
            u = up[e * INTERMEDIATE:(e + 1) * INTERMEDIATE] @ xs[t]
            h = g / (1 + np.exp(-g)) * u
            out[t] += weights[t, j] * (down[e * HIDDEN:(e + 1) * HIDDEN] @ h)
    return out


def relative_error(got, want) -> float:
    import numpy as np
    denom = float(np.linalg.norm(want))
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.linalg.norm(got - want) / denom) if denom else float(np.linalg.norm(got))


# ------------------------------------------------------------------ report
def table(results: dict, variants: list[str], out: Path) -> str:
    import numpy as np
    lines = ["| kernel | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for key in results["native"]:
        fmt, phase = key.split("/")
        cells = []
        for v in variants:
            entry = results[v][key]
            ratio = entry["ms"] / results["native"][key]["ms"]
            if fmt == "bf16":
                err = entry["error"]
            else:
                err = relative_error(np.load(out / f"out-{v}-{fmt}-{phase}.npy"),
                                     np.load(out / f"out-native-{fmt}-{phase}.npy"))
            mark = "" if err < 0.05 else f" **wrong (err {err:.2f})**"
            cells.append(f"{entry['ms']:.1f} ms ({ratio:.2f}x){mark}")
        lines.append(f"| MoE {fmt} {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared/sources/ktransformers-v0.3.2.tar.gz"),
                        help="upstream's v0.3.2 tree as a .tar.gz (default: ../shared/sources)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPUInfer threads")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per kernel and variant")
    parser.add_argument("--out", default=str(REPO / "bench/out/cpu-kernels"))
    parser.add_argument("--variants", help="comma-separated subset (default: every target this CPU runs, and native)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.measure:
        name = Path(args.measure).name.removeprefix("build-")
        print(json.dumps(measure(Path(args.measure), args.threads, out, name, args.seconds)))
        return 0
    from ktappliance.target.matrix import load_matrix
    out.mkdir(parents=True, exist_ok=True)
    tree = out / "src"
    if not (tree / "setup.py").is_file():
        with tarfile.open(args.source) as tar:
            tar.extractall(out / "unpack", filter="data")
        shutil.move(str(next((out / "unpack").iterdir())), tree)
    flags = host_flags()
    variants = [name for name, t in load_matrix().targets.items() if set(t.requires) <= flags] + ["native"]
    if args.variants:
        wanted = args.variants.split(",")
        variants = [v for v in variants if v in wanted]
        if "native" not in variants:
            variants.append("native")  # every ratio is to native
    print(f"variants this CPU runs: {', '.join(variants)}", file=sys.stderr)
    builds = {v: build_variant(v, tree, out, args.jobs) for v in variants}
    results = {}
    for v in variants:  # one process each: two cpuinfer_ext builds cannot share one interpreter
        done = subprocess.run([sys.executable, __file__, "--measure", str(builds[v]), "--threads", str(args.threads),
                               "--seconds", str(args.seconds), "--out", str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"[{v}] measuring failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[v] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"[{v}] {results[v]}", file=sys.stderr, flush=True)
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    report = (f"{time.strftime('%Y-%m-%d')}, {model}, {os.cpu_count()} CPUs, {args.threads} threads. Median time per "
              f"MoE forward (ratio to native; >1 is slower):\n\n" + table(results, variants, out))
    (out / "report.md").write_text(report + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
