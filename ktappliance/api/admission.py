"""Admission to the engine: a fixed number of requests in flight, a bounded
FIFO queue in front of them, and a limit on how long a request may wait.

asyncio.Lock/Semaphore wake waiters in arrival order, which gives FIFO; the
queue bound and the wait limit are counted here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable


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
        try:
            yield
        finally:
            self.inflight -= 1
            self._slots.release()

    def _abandon(self, acquire: asyncio.Future) -> None:
        # The acquire may have won the race just now: give the slot back.
        if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
            self._slots.release()
        else:
            acquire.cancel()

    def retry_after(self) -> int:
        """A rough hint in seconds for 429 answers."""
        return max(1, min(60, 5 * (self.waiting + self.inflight)))
