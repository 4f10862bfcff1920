"""What tests that start servers share: a free local port, and waiting for a
URL to answer 200 while the thing behind it may die."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ok(url: str, timeout: float, *, interval: float = 1.0,
                still_alive: Callable[[], None] | None = None) -> bool:
    """True once url answers 200, False when timeout passes first. still_alive
    runs before each try and raises to stop at once (a process that exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if still_alive is not None:
            still_alive()
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False
