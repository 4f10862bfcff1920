"""Shared test settings: where the repository and the shared fixtures are."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOSTS = Path(os.environ.get("KTA_SHARED", REPO.parent / "shared")) / "fixtures" / "hosts"


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run build.py as a user would, in a subprocess."""
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def hosts_dir() -> Path:
    if not HOSTS.is_dir():
        pytest.fail(f"host captures not found at {HOSTS} (set KTA_SHARED)")
    return HOSTS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny real GGUF model, single-file and split in three shards."""
    from support.tiny_gguf import write_test_models
    out = tmp_path_factory.mktemp("models")
    paths = write_test_models(out)
    out.chmod(0o755)
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"dir": out, **paths}


# ---------------------------------------------------------------- Docker tiers
# Each image is built once per run (session fixtures) and shared by the tests
# of both tiers that need it.
LLAMACPP_TAG = "kta-test/llamacpp:b11312-avx2-cpu"


@pytest.fixture(scope="session")
def docker_client():
    from support import dockerenv
    return dockerenv.docker_client()


@pytest.fixture(scope="session")
def bases(docker_client):
    from support import dockerenv
    dockerenv.ensure_bases()


@pytest.fixture(scope="session")
def llamacpp_image(bases, docker_client):
    from support import dockerenv
    dockerenv.build_py(*dockerenv.llamacpp_build_args(LLAMACPP_TAG), log_name="llamacpp-avx2-cpu")
    return docker_client.images.get(LLAMACPP_TAG)
