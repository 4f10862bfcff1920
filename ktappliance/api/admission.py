"""Admission to the engine: a fixed number of requests in flight, a bounded
FIFO queue in front of them, and a limit on how long a request may wait.

asyncio.Lock/Semaphore wake waiters in arrival order, which gives FIFO; the
queue bound and the wait limit are counted here."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable

# Until a request has finished, the time one takes is a guess.
FIRST_GUESS_S = 5.0
RETRY_AFTER_MAX_S = 60  # the OpenAI SDK waits a server's hint only up to a minute


class QueueFull(Exception):
    pass


class WaitTooLong(Exception):
    pass


class ClientGone(Exception):
    pass


class Admission:
    def __init__(self, max_inflight: int, queue_size: int, queue_timeout: float):
        self._slots = asyncio.Semaphore(max_inflight)
        self.max_inflight = max_inflight
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.waiting = 0
        self.inflight = 0
        self.seconds_per_request: float | None = None  # measured, a moving average

    @contextlib.asynccontextmanager
    async def slot(self, client_gone: Awaitable | None = None) -> AsyncIterator[None]:
        """Hold one engine slot for the body of the `async with`. Raises
        QueueFull at once when the queue is full, WaitTooLong after
        queue_timeout, ClientGone when `client_gone` finishes first."""
        if self.waiting >= self.queue_size and (self._slots.locked() or self.waiting):
            raise QueueFull()
        self.waiting += 1
        acquire = asyncio.ensure_future(self._slots.acquire())
        watcher = asyncio.ensure_future(client_gone) if client_gone is not None else None
        try:
            waits = {acquire} | ({watcher} if watcher else set())
            done, _ = await asyncio.wait(waits, timeout=self.queue_timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(acquire)
            raise
        finally:
            self.waiting -= 1
            if watcher is not None and not watcher.done():
                watcher.cancel()
        if acquire not in done:
            self._abandon(acquire)
            raise ClientGone() if watcher in done else WaitTooLong()
        self.inflight += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.inflight -= 1
            self._slots.release()
            self._measured(time.monotonic() - started)

    def _measured(self, seconds: float) -> None:
        last = self.seconds_per_request
        self.seconds_per_request = seconds if last is None else 0.8 * last + 0.2 * seconds

    def _abandon(self, acquire: asyncio.Future) -> None:
        # The acquire may have won the race just now: give the slot back.
        if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
            self._slots.release()
        else:
            acquire.cancel()

    def retry_after(self) -> int:
        """Seconds until a request sent now would find a slot: everyone
        queued goes first, max_inflight at a time, each taking about the
        measured time a request holds its slot."""
        per_request = self.seconds_per_request or FIRST_GUESS_S
        ahead = self.waiting + 1
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(ahead * per_request / self.max_inflight)))
