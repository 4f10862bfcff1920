"""Every image a Docker-tier run needs, built once, in two lanes started
together at the beginning of the run.

Much of an image build is not compiling: torch and Open-WebUI downloads and
installs, layer exports. Two lanes let one compile while the other waits on
the network or the disk; on the two-core CI machine this keeps a cold run
well inside its time limit. Each lane runs its builds in order; a fixture
asks for an image and waits for that build alone. Lanes are ordered so that
what the first test files need comes first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

_futures: dict[str, Future] = {}
_lock = threading.Lock()


def start(lanes: list[list[tuple[str, Callable[[], object]]]]) -> None:
    """Start each lane's builds in a thread of its own; once per run."""
    with _lock:
        if _futures:
            return
        for lane in lanes:
            for name, _ in lane:
                _futures[name] = Future()
        for lane in lanes:
            threading.Thread(target=_run_lane, args=(lane,), daemon=True, name=f"prebuild-{lane[0][0]}").start()


def _run_lane(lane: list[tuple[str, Callable[[], object]]]) -> None:
    for name, build in lane:
        future = _futures[name]
        try:
            future.set_result(build())
        except BaseException as exc:  # noqa: BLE001 - pytest.fail raises a BaseException subclass
            future.set_exception(exc)


def wait(name: str):
    """The build's result, or its failure raised here, in the test that needs it."""
    return _futures[name].result()
