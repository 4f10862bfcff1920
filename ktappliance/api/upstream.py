"""One completion request to the engine, over a connection of its own, its
answer parsed by httptools (the C parser uvicorn reads requests with).

A streamed answer arrives one token per write, so every token costs one
parse of the HTTP framing: httpx's pure-Python h11 spent most of the API's
time there with eight streams at once (bench/api_bench.py). Here a token
costs a read and a few microseconds of C. A fresh connection per request
also leaves nothing to a keep-alive the engine may close between streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

READ_SIZE = 1 << 16


class EngineUnreachable(Exception):
    """No connection: the engine is down or not listening yet."""


class EngineStalled(Exception):
    """Connected, but the engine said nothing for the stall timeout."""


class EngineBroken(Exception):
    """The engine closed or garbled the answer before its end."""


class _Message:
    """httptools' callbacks: the status, then the body as it comes."""

    def __init__(self) -> None:
        self.headers_done = False
        self.complete = False
        self.framed = False   # a length or chunks: else the body ends with the connection
        self.body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.framed |= name.lower() in (b"content-length", b"transfer-encoding")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class EngineResponse:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stall_timeout: float):
        self._reader, self._writer, self._stall = reader, writer, stall_timeout
        self._message = _Message()
        self._parser = httptools.HttpResponseParser(self._message)
        self.status_code = 0
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None   # a read is waiting on the engine since then
        self._waiting_task: asyncio.Task | None = None
        self._stalled = False

    # One timer per response, re-armed only when it fires. A streamed answer
    # reads once per token: a timeout of its own around every read (a timer
    # made, pushed and cancelled each time) was a measurable part of the
    # API's cost per token at eight streams (bench/api_bench.py).
    def _check_stall(self) -> None:
        self._watchdog = None
        if self._waiting_since is None:
            return  # not waiting on the engine (writing to a slow client): the next read re-arms
        silent = self._loop.time() - self._waiting_since
        if silent >= self._stall:
            self._stalled = True
            self._waiting_task.cancel()
        else:
            self._watchdog = self._loop.call_later(self._stall - silent, self._check_stall)

    async def _read(self) -> bytes:
        self._waiting_since, self._waiting_task = self._loop.time(), asyncio.current_task()
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._stall, self._check_stall)
        try:
            return await self._reader.read(READ_SIZE)
        except asyncio.CancelledError:
            if not self._stalled:
                raise
            self._waiting_task.uncancel()
            raise EngineStalled() from None
        finally:
            self._waiting_since = None

    async def _feed(self) -> bool:
        """Read what the engine sent and parse it; False once the answer is whole."""
        if self._message.complete:
            return False
        try:
            data = await self._read()
        except OSError as exc:
            raise EngineBroken(type(exc).__name__) from None
        if not data:
            # The end of the connection ends a body sent without a length.
            if self._message.headers_done and not self._message.framed:
                self._message.complete = True
            if not self._message.complete:
                raise EngineBroken("the engine closed the connection mid-answer")
            return False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise EngineBroken(f"HttpParserError: {exc}") from None
        return True

    async def read_headers(self) -> None:
        while not self._message.headers_done:
            if not await self._feed():
                raise EngineBroken("the engine closed the connection before answering")
        self.status_code = self._parser.get_status_code()

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in (chunked framing removed)."""
        while True:
            if self._message.body:
                piece = b"".join(self._message.body)
                self._message.body.clear()
                yield piece
            if not await self._feed():
                if self._message.body:
                    yield b"".join(self._message.body)
                    self._message.body.clear()
                return

    async def aiter_lines(self) -> AsyncIterator[str]:
        pending = b""
        async for piece in self.aiter_raw():
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        if pending:
            yield pending.decode("utf-8", errors="replace")

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.aiter_raw()])

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


async def post(base_url: str, path: str, payload: dict, *, key: str, connect_timeout: float,
               stall_timeout: float) -> EngineResponse:
    """Send the request; the response once the engine's headers are in."""
    target = urlsplit(base_url)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(target.hostname, port, limit=READ_SIZE,
                                                           ssl=True if target.scheme == "https" else None)
    except (OSError, TimeoutError) as exc:
        raise EngineUnreachable(type(exc).__name__) from None
    body = json.dumps(payload, ensure_ascii=False).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {target.hostname}:{port}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Accept: text/event-stream, application/json", "Connection: close"]
    if key:
        head.append(f"Authorization: Bearer {key}")
    response = EngineResponse(reader, writer, stall_timeout)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        await response.read_headers()
    except OSError as exc:
        await response.aclose()
        raise EngineUnreachable(type(exc).__name__) from None
    except BaseException:
        await response.aclose()
        raise
    return response
