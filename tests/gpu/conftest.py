"""The GPU tier: `make test-gpu` on a host with an NVIDIA GPU (not in `make test`).

Without a GPU it stops with one line and a failing exit, never a skip: a run
that proved nothing must not look green. The engines the collected tests need
are compiled at once, in parallel, when the session starts."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

import gpuhost

from gpuhost import KT_CASES, LLAMACPP_TARGET


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def gpu_host() -> gpuhost.GpuHost:
    problem = gpuhost.gpu_problem()
    if problem:
        pytest.exit(f"GPU tier: {problem}", returncode=1)
    return gpuhost.GpuHost.probe()


class Builds:
    """Compiles started together; each test waits for the one it needs."""

    def __init__(self, host: gpuhost.GpuHost, lines: set[str], llamacpp: bool):
        self.host = host
        self._pool = ThreadPoolExecutor(max_workers=3)
        self.engines: dict[str, Future] = {
            line: self._pool.submit(gpuhost.build_ktransformers, host, line, KT_CASES[line]) for line in sorted(lines)}
        self.llamacpp = self._pool.submit(gpuhost.build_llamacpp, host, LLAMACPP_TARGET) if llamacpp else None

    def engine(self, line: str) -> gpuhost.EngineInstall:
        if line not in self.engines:  # a module that names its line in no test name
            self.engines[line] = self._pool.submit(gpuhost.build_ktransformers, self.host, line, KT_CASES[line])
        try:
            return self.engines[line].result()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)

    def llama_server(self):
        try:
            return self.llamacpp.result()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def builds(request, gpu_host) -> Builds:
    names = [item.name for item in request.session.items]
    lines = {line for line in KT_CASES if any(line in name for name in names)}
    lines |= {item.module.LINE for item in request.session.items if getattr(item.module, "LINE", None) in KT_CASES}
    return Builds(gpu_host, lines, any("llamacpp" in name for name in names))
