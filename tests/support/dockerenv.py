"""Docker helpers shared by the image and stack tiers: the engine check, the
stand-in bases, cached source downloads, and image builds made once per run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOG_DIR = REPO / "build" / "test-logs"
CACHE_DIR = Path(os.environ.get("KTA_TEST_CACHE", Path.home() / ".cache" / "ktappliance-test"))
DEBIAN_BASE = "kta-test/debian:bookworm"
CUDA_DEVEL_BASE = "kta-test/cuda:12.4-devel"
CUDA_RUNTIME_BASE = "kta-test/cuda:12.4-runtime"
CA_BUNDLE = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def docker_client():
    """The SDK client, or a failure (CI) / skip (a developer's laptop) when
    no Docker engine answers."""
    try:
        import docker
        # Removing a container that installed Open-WebUI (the native-bundle
        # test) took over 60 s while the daemon was exporting an engine image
        # of the other build lane: the SDK's wait must outlast that.
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        message = f"no Docker engine: {exc}".splitlines()[0]
        if in_ci():
            pytest.fail(message + " (CI=true: run tests/support/ensure-docker.sh first)")
        pytest.skip(message)


def run_logged(argv: list[str], log_name: str, *, env: dict | None = None, timeout: int = 5400) -> float:
    """Run a long step with its output in build/test-logs/NAME.log; fail the
    test with the log's tail when it fails or outlasts timeout (by default the
    whole CI run's limit: a cold v0.3.2 build on two cores takes over an hour).
    Returns the seconds it took."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{log_name}.log"
    started = time.monotonic()
    print(f"\n[{log_name}] {' '.join(argv)}  (log: {log})", file=sys.stderr)
    with open(log, "w") as handle:
        try:
            done = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**os.environ, **(env or {})}, timeout=timeout)
        except subprocess.TimeoutExpired:
            done = None
    took = time.monotonic() - started
    if done is None or done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        why = f"was stopped after {timeout}s" if done is None else f"failed (exit {done.returncode}) after {took:.0f}s"
        pytest.fail(f"{log_name} {why}:\n{tail}")
    print(f"[{log_name}] done in {took:.0f}s", file=sys.stderr)
    return took


def ensure_bases() -> None:
    run_logged(["bash", str(REPO / "tests/support/build-bases.sh")], "bases", timeout=1800)


def pypi_sdist(name: str, version: str) -> Path:
    """A source distribution from PyPI, downloaded once per machine and checked
    against PyPI's sha256. (pip download would run the sdist's setup.py, and
    ktransformers' imports torch.)"""
    import hashlib
    import json
    import shutil
    import ssl
    import urllib.request

    target = CACHE_DIR / "sdists"
    target.mkdir(parents=True, exist_ok=True)
    context = ssl.create_default_context(cafile=CA_BUNDLE if Path(CA_BUNDLE).is_file() else None)
    request = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, context=context, timeout=60) as resp:
        files = json.load(resp)["files"]
    wanted = {f"{name.replace('-', '_')}-{version}.tar.gz", f"{name}-{version}.tar.gz"}
    sdist = next(f for f in files if f["filename"] in wanted)
    path = target / sdist["filename"]
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sdist["hashes"]["sha256"]:
        return path
    partial = path.with_suffix(".part")
    with urllib.request.urlopen(sdist["url"], context=context, timeout=300) as resp, open(partial, "wb") as out:
        shutil.copyfileobj(resp, out)
    assert hashlib.sha256(partial.read_bytes()).hexdigest() == sdist["hashes"]["sha256"], "sdist checksum mismatch"
    partial.replace(path)
    return path


def ktransformers_source(line: str) -> Path | None:
    """Upstream's tree at the line's pinned tag from ../shared/sources (KTA_SHARED
    to move it), or None: the build then clones the pinned tag itself."""
    shared = Path(os.environ.get("KTA_SHARED", REPO.parent / "shared"))
    tarball = shared / "sources" / f"ktransformers-{line}.tar.gz"
    return tarball if tarball.is_file() else None


def build_py_argv() -> list[str]:
    return [sys.executable, str(REPO / "build.py")]


def build_py(*args: str, log_name: str) -> float:
    return run_logged([*build_py_argv(), *args], log_name)


def tag_existing(image: str, test_tag: str) -> None:
    """An image built elsewhere (--image), tagged as the tests name it."""
    import docker
    try:
        docker_client().images.get(image).tag(test_tag)
    except docker.errors.ImageNotFound:
        pytest.fail(f"--image: no image {image} on this Docker engine", pytrace=False)


def published_port(container, port: str) -> int:
    container.reload()
    return int(container.ports[port][0]["HostPort"])


def wait_healthy(container, timeout: float = 300) -> None:
    """Until Docker's own HEALTHCHECK says healthy; fail with the logs otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs["State"]
        if state.get("Health", {}).get("Status") == "healthy":
            return
        if state["Status"] in ("exited", "dead"):
            break
        time.sleep(1)
    logs = container.logs(tail=40).decode(errors="replace")
    pytest.fail(f"{container.name} not healthy (state {container.attrs['State'].get('Status')}):\n{logs}")


def llamacpp_build_args(tag: str) -> list[str]:
    sdist = pypi_sdist("llama-cpp-python", "0.3.36")
    return ["--engine", "llamacpp", "--target", "avx2", "--cpu-only", "--llamacpp-src", str(sdist),
            "--base-image", DEBIAN_BASE, "--runtime-base-image", DEBIAN_BASE, "--jobs", "2",
            "--ca-cert", CA_BUNDLE, "--tag", tag, "--min-free-gb", "5", "--no-configure"]
