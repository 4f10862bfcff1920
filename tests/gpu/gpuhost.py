"""The GPU tier's host side: build the engines natively with the same
images/ scripts the Dockerfiles and the AutoDL bundle run, then start them the
way the images do.

Settings (environment):
  KTA_WHEELHOUSE     folders of wheels (space separated): the host has no
                     network and pip installs only from there
  KTA_KT_SOURCES     folder with ktransformers-<tag>.tar.gz (default ../shared/sources
                     when it exists, else the pinned tag from GitHub)
  KTA_LLAMACPP_SRC   llama.cpp tree or .tar.gz (default: the pinned tag from GitHub)
  KTA_GPU_WORK       where builds and logs go (default build/gpu)
Builds resume: a finished step is skipped and a stopped compile goes on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
STANDIN = REPO / "tests" / "support" / "flash_attn_standin"
# The CPU target each engine is compiled for in this tier.
KT_CASES = {"v0.2.3": "avx512", "v0.3.2": "amx"}
LLAMACPP_TARGET = "avx512"


def gpu_problem() -> str | None:
    """None when an NVIDIA GPU, nvcc and a CUDA torch are here, else why not."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no nvidia-smi on PATH: this tier needs an NVIDIA GPU and its driver"
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True)
    if listed.returncode != 0 or "GPU" not in listed.stdout:
        return f"nvidia-smi lists no GPU ({(listed.stderr or listed.stdout).strip()[:120]})"
    if not (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc").exists():
        return "no CUDA toolkit: nvcc not found under $CUDA_HOME (default /usr/local/cuda)"
    probe = subprocess.run(["python3", "-c", "import torch; assert torch.cuda.is_available(); print(torch.version.cuda)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return "python3 has no torch that sees the GPU (pip install torch for your CUDA first)"
    return None


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@dataclass(frozen=True)
class GpuHost:
    compute_cap: str        # "9.0"
    torch_cuda: str         # "13.0"
    jobs: int
    work: Path
    wheelhouse: str

    @classmethod
    def probe(cls) -> "GpuHost":
        cap = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout.split()[0]
        cuda = subprocess.run(["python3", "-c", "import torch; print(torch.version.cuda)"],
                              capture_output=True, text=True, check=True).stdout.strip()
        work = Path(os.environ.get("KTA_GPU_WORK", REPO / "build" / "gpu")).resolve()
        work.mkdir(parents=True, exist_ok=True)
        return cls(compute_cap=cap, torch_cuda=cuda, jobs=os.cpu_count() or 2, work=work,
                   wheelhouse=os.environ.get("KTA_WHEELHOUSE", ""))

    def base_env(self) -> dict[str, str]:
        env = {**os.environ, "KTA_SKIP_APT": "1", "PYTHONUNBUFFERED": "1"}
        if self.wheelhouse:
            env["KT_WHEELHOUSE"] = self.wheelhouse
        return env


def run_step(name: str, command: list[str], env: dict[str, str], log: Path, done: Path) -> None:
    """Run one build step unless its stamp says it finished; its output goes to
    the log (and the last lines into the failure)."""
    if done.exists():
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"\n=== {name}: {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{name} failed (exit {result.returncode}); end of {log}:\n{tail}")
    done.write_text(f"{time.monotonic() - started:.0f}\n")
    print(f"gpu tier: {name} done in {time.monotonic() - started:.0f} s", flush=True)


def ktransformers_sources() -> Path:
    """The folder of ktransformers-<tag>.tar.gz: KTA_KT_SOURCES, else ../shared/sources."""
    return Path(os.environ.get("KTA_KT_SOURCES") or REPO.parent / "shared" / "sources")


def ktransformers_source(tag: str) -> str:
    tarball = ktransformers_sources() / f"ktransformers-{tag}.tar.gz"
    return str(tarball) if tarball.is_file() else "https://github.com/kvcache-ai/ktransformers.git"


def unpin_numpy(pins) -> list[str]:
    """The host's torch was built against the host's numpy: a numpy<2 pin in
    the venv in front of it would break torch, so numpy follows the host."""
    return ["numpy" if re.match(r"numpy(?![\w.-])", pin) else pin for pin in pins]


def image_layout(work: Path, image: str) -> Path:
    """images/<image> and images/common as its image lays them out under
    /opt/ktappliance (the model check beside the CPU guard)."""
    app = work / "app"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(IMAGES / image, app / image)
    shutil.copytree(IMAGES / "common", app / "common")
    shutil.copy(REPO / "ktappliance" / "models" / "modelcheck.py", app / "common" / "modelcheck.py")
    return app


@dataclass(frozen=True)
class EngineInstall:
    name: str
    venv: Path
    runtime_env: dict[str, str]
    app: Path
    home: Path


def build_ktransformers(host: GpuHost, line: str, target: str) -> EngineInstall:
    """install-build-deps.sh, build-ktransformers.sh, install-runtime.sh: the
    Dockerfile's three steps, for this GPU's arch only, with the host's torch."""
    from ktappliance.target.matrix import load_matrix
    from ktappliance.image.plan import make_plan

    matrix = load_matrix()
    selection = matrix.select(target, line=line, cuda=host.torch_cuda if host.torch_cuda in
                              matrix.lines[line].torch_by_cuda else None, numa=False)
    plan = make_plan(selection, cuda_arch_list=host.compute_cap, default_arch_list=host.compute_cap,
                     jobs=host.jobs, flash_attn="skip")
    name = f"{line}-{target}"
    root = host.work / name
    install = plan.install_env()
    build_pip = " ".join(unpin_numpy(install["KT_BUILD_PIP"].split()))
    env = {**host.base_env(), **install, **plan.compile_env(), "KT_TORCH": "system", "KT_BUILD_PIP": build_pip,
           "KT_SOURCE": ktransformers_source(selection.line.tag), "KT_WORKDIR": str(root / "src"),
           "KT_WHEEL_DIR": str(root / "wheels"), "KT_RESUME": "1",
           "PYTHONPATH": str(STANDIN)}
    log = root / "build.log"
    build_venv, venv = root / "build-venv", root / "venv"
    run_step(f"{name}: build deps", ["sh", str(IMAGES / "engine" / "install-build-deps.sh")],
             {**env, "KT_VENV": str(build_venv)}, log, root / ".deps-done")
    run_step(f"{name}: compile", ["sh", str(IMAGES / "engine" / "build-ktransformers.sh")],
             {**env, "KT_VENV": str(build_venv)}, log, root / ".compile-done")
    run_step(f"{name}: runtime", ["sh", str(IMAGES / "engine" / "install-runtime.sh"), "all"],
             {**env, "KT_VENV": str(venv)}, log, root / ".runtime-done")
    return EngineInstall(name=name, venv=venv, runtime_env=plan.runtime_env(), app=image_layout(root, "engine"),
                         home=root / "home")


def build_llamacpp(host: GpuHost, target: str) -> Path:
    """images/llamacpp/build-llamacpp.sh with CUDA for this GPU: the llama-server binary."""
    from ktappliance.target.matrix import load_matrix

    matrix = load_matrix()
    llamacpp, chosen = matrix.llamacpp, matrix.target(target)
    root = host.work / f"llamacpp-{target}-cuda"
    env = {**host.base_env(), "LLAMA_SOURCE": os.environ.get("KTA_LLAMACPP_SRC") or llamacpp.git,
           "LLAMA_TAG": llamacpp.tag, "LLAMA_COMMIT": llamacpp.commit,
           "LLAMA_CPU_CMAKE": " ".join(chosen.llamacpp_cmake),
           "LLAMA_CUDA_ARCHS": host.compute_cap.replace(".", ""), "LLAMA_JOBS": str(host.jobs),
           "LLAMA_WORKDIR": str(root / "src"), "LLAMA_PREFIX": str(root), "LLAMA_RESUME": "1",
           "CUDA_HOME": os.environ.get("CUDA_HOME", "/usr/local/cuda")}
    env["PATH"] = f"{env['CUDA_HOME']}/bin:{env['PATH']}"
    run_step(f"llama.cpp {target}+CUDA: compile", ["sh", str(IMAGES / "llamacpp" / "build-llamacpp.sh")],
             env, root / "build.log", root / ".compile-done")
    return root / "bin" / "llama-server"


class Service:
    """A process started in the background, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path,
                 side_logs: tuple[Path, ...] = ()):
        self.name, self.log, self.side_logs = name, log, side_logs
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out = log.open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def tail(self, lines: int = 40) -> str:
        parts = ["\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])]
        for side in self.side_logs:  # balance_serve's scheduler writes only to its own log
            if side.is_file():
                parts.append(f"--- {side}:\n" + "\n".join(side.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def wait_http(self, url: str, timeout: float) -> float:
        """Seconds from the start until url answers 200; fails with the log's end if the process dies or time runs out."""
        from support.netwait import wait_for_ok

        def still_alive():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; end of its log:\n{self.tail()}")
        if not wait_for_ok(url, timeout, still_alive=still_alive):
            raise RuntimeError(f"{self.name} did not answer {url} within {timeout:.0f} s; end of its log:\n{self.tail()}")
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self._out.close()


def start_engine(host: GpuHost, install: EngineInstall, model: dict[str, Path], *, name: str, rule: str,
                 port: int, backend: str = "single", settings: dict[str, str] | None = None) -> Service:
    """The engine through its image's entrypoint (CPU guard, backend and model
    checks, server), with the image's stamped values and the test's settings."""
    home = install.home
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **install.runtime_env, "KT_VENV": str(install.venv), "KT_HOST": "127.0.0.1",
           "KT_PORT": str(port), "KT_MODEL_PATH": str(model["config"]), "KT_GGUF_PATH": str(model["gguf"]),
           "KT_MODEL_NAME": "DeepSeek-R1", "KT_OPTIMIZE_RULE": rule, "KT_BACKEND": backend,
           "KT_MAX_NEW_TOKENS": "32", "KT_CACHE_LENS": "4096", "HOME": str(home),
           "TRITON_CACHE_DIR": str(host.work / name / "triton-cache"), "PYTHONPATH": str(STANDIN),
           **(settings or {})}
    return Service(f"KTransformers {name}", ["sh", str(install.app / "engine" / "entrypoint.sh")], env,
                   host.work / name / "engine.log", side_logs=(home / ".ktransformers" / "logs" / "rpc.log",))


def start_api(work: Path, upstream: str, key: str, inflight: int = 1) -> tuple[Service, str]:
    from support.netwait import free_port
    port = free_port()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "KTA_UPSTREAM": upstream, "KTA_API_KEYS": key, "PYTHONPATH": path,
           "KTA_MAX_INFLIGHT": str(inflight)}
    service = Service("API service", [sys.executable, "-m", "ktappliance.api", "--host", "127.0.0.1", "--port", str(port)],
                      env, work / "api.log")
    url = f"http://127.0.0.1:{port}"
    service.wait_http(f"{url}/health", 60)
    return service, url


def record_figures(work: Path, name: str, figures: dict) -> None:
    """bench/RESULTS.md's GPU table reads these: one JSON file per engine."""
    path = work / "figures.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = figures
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    """Compile ahead of the tests (in parallel, resumable): on a host whose
    commands are cut off, start this detached and let `make test-gpu` find
    the finished steps."""
    import argparse
    from concurrent.futures import ThreadPoolExecutor

    parser = argparse.ArgumentParser(prog="python3 tests/gpu/gpuhost.py", description=main.__doc__)
    parser.add_argument("what", nargs="+", choices=[*KT_CASES, "llamacpp"])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    problem = gpu_problem()
    if problem:
        print(f"GPU tier: {problem}", file=sys.stderr)
        return 1
    host = GpuHost.probe()
    with ThreadPoolExecutor(max_workers=len(args.what)) as pool:
        futures = {name: pool.submit(build_llamacpp, host, LLAMACPP_TARGET) if name == "llamacpp"
                   else pool.submit(build_ktransformers, host, name, KT_CASES[name]) for name in args.what}
    failed = [name for name, future in futures.items() if future.exception()]
    for name in failed:
        print(f"GPU tier: {futures[name].exception()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
