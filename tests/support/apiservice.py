"""The API service as the image runs it (uvicorn on loopback), for tests that
talk to it over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from support.netwait import free_port, wait_for_ok


@contextmanager
def running_api(env: dict[str, str], *, log_level: str = "warning") -> Iterator[tuple[subprocess.Popen, str]]:
    """(process, base URL) once /health answers; stopped on leaving."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ktappliance.api", "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", log_level], env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"

    def still_alive():
        if process.poll() is not None:
            raise RuntimeError(f"the API service exited with {process.returncode} before answering /health")
    try:
        if not wait_for_ok(f"{base}/health", 15, interval=0.1, still_alive=still_alive):
            raise RuntimeError("the API service did not answer /health within 15 s")
        yield process, base
    finally:
        process.terminate()
        process.wait(timeout=10)
