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
