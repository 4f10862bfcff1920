"""Forwarding one completion request to the engine and shaping the answer:
model names back to what the client asked, reasoning inline or split."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
from starlette.responses import StreamingResponse

from . import errors
from .metrics import Metrics
from .reasoning import Piece, ReasoningSplitter, split_text
from .upstream import EngineBroken, EngineResponse, EngineStalled, EngineUnreachable, post


class EngineStream(StreamingResponse):
    """A StreamingResponse that always watches for the client leaving and then
    closes the body iterator at once, so the engine request is closed and the
    engine slot freed for the next client."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass
                    group.cancel_scope.cancel()

                async def listen() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(listen)
        finally:
            await self.body_iterator.aclose()


class Exchange:
    """One request's trip through the engine."""

    def __init__(self, *, upstream: str, metrics: Metrics, path: str, body: dict, client_model: str, split: bool,
                 opened: bool, stall_timeout: float, upstream_key: str, connect_timeout: float = 3.0):
        self.upstream, self.metrics, self.path, self.body = upstream, metrics, path, body
        self.client_model, self.split, self.opened = client_model, split, opened
        self.stall_timeout, self.upstream_key, self.connect_timeout = stall_timeout, upstream_key, connect_timeout
        self.chat = path.endswith("chat/completions")
        # Nothing to rewrite: the engine's bytes go to the client untouched.
        self.passthrough = not split and body.get("model") == client_model

    async def open(self, stack: AsyncExitStack) -> EngineResponse:
        """Send the request; map connection failures and silence to 503/504."""
        self.sent_at = time.monotonic()
        try:
            response = await post(self.upstream, self.path, self.body, key=self.upstream_key,
                                  connect_timeout=self.connect_timeout, stall_timeout=self.stall_timeout)
        except EngineUnreachable as exc:
            self.metrics.engine_errors.labels("connect").inc()
            raise errors.engine_down(str(exc)) from None
        except EngineStalled:
            self.metrics.engine_errors.labels("stall").inc()
            raise errors.engine_stalled(self.stall_timeout) from None
        except EngineBroken as exc:
            self.metrics.engine_errors.labels("transport").inc()
            raise errors.engine_down(str(exc)) from None
        stack.push_async_callback(response.aclose)
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except (EngineStalled, EngineBroken):
                raw = b""
            self.metrics.engine_errors.labels(f"http_{response.status_code}").inc()
            try:
                detail = json.loads(raw)
                error = detail.get("error") if isinstance(detail.get("error"), dict) else {}
            except (ValueError, AttributeError):
                error = {}
            raise errors.engine_refused(response.status_code,
                                        error.get("message") or raw.decode(errors="replace")[:300] or "engine error",
                                        error, list(self.body))
        return response

    # ---------------------------------------------------------------- non-streamed

    async def whole(self, response: EngineResponse) -> dict | bytes:
        """The answer as a dict to re-encode, or the engine's own bytes."""
        try:
            raw = await response.aread()
            if self.passthrough:
                self.metrics.ttft.observe(time.monotonic() - self.sent_at)
                return raw
            payload = json.loads(raw)
        except EngineStalled:
            self.metrics.engine_errors.labels("stall").inc()
            raise errors.engine_stalled(self.stall_timeout) from None
        except (EngineBroken, ValueError) as exc:
            self.metrics.engine_errors.labels("broken").inc()
            raise errors.engine_failed(type(exc).__name__) from None
        self.metrics.ttft.observe(time.monotonic() - self.sent_at)
        payload["model"] = self.client_model
        if self.split:
            for choice in payload.get("choices", []):
                if self.chat and isinstance(choice.get("message"), dict):
                    message = choice["message"]
                    piece = split_text(message.get("content") or "", self.opened)
                    message["content"] = piece.content
                    if piece.reasoning:
                        message["reasoning_content"] = piece.reasoning
                elif "text" in choice:
                    choice["text"] = split_text(choice.get("text") or "", self.opened).content
        return payload

    # ---------------------------------------------------------------- streamed

    async def events(self, response: EngineResponse, stack: AsyncExitStack) -> AsyncIterator[bytes]:
        """Re-emit the engine's SSE events; runs inside the response, and owns
        `stack` (the engine slot and the engine connection) until it ends."""
        splitters: dict[int, ReasoningSplitter] = {}
        first_at = None
        tokens = 0
        try:
            if self.passthrough:
                # Whole events only: an engine that dies mid-event must not
                # leave half a `data:` line for the error event to be glued to.
                pending = b""
                async for chunk in response.aiter_raw():
                    if first_at is None:
                        first_at = time.monotonic()
                        self.metrics.ttft.observe(first_at - self.sent_at)
                    pending += chunk
                    cut = pending.rfind(b"\n\n")
                    if cut >= 0:
                        complete, pending = pending[:cut + 2], pending[cut + 2:]
                        tokens += complete.count(b"data: {")
                        yield complete
                if pending:
                    yield pending
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    for event in self._flush(splitters):
                        yield event
                    yield b"data: [DONE]\n\n"
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if first_at is None and event.get("choices"):
                    first_at = time.monotonic()
                    self.metrics.ttft.observe(first_at - self.sent_at)
                tokens += sum(1 for c in event.get("choices", []) if _delta_text(c, self.chat))
                if self.split:
                    self._split_event(event, splitters)
                event["model"] = self.client_model
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
        except EngineStalled:
            self.metrics.engine_errors.labels("stall").inc()
            yield errors.engine_stalled(self.stall_timeout).sse_event()
        except EngineBroken as exc:
            self.metrics.engine_errors.labels("broken").inc()
            yield errors.engine_failed(type(exc).__name__).sse_event()
        finally:
            if first_at is not None and tokens > 1:
                elapsed = time.monotonic() - first_at
                if elapsed > 0:
                    self.metrics.tokens_per_second.observe((tokens - 1) / elapsed)
            await stack.aclose()

    def _split_event(self, event: dict, splitters: dict[int, ReasoningSplitter]) -> None:
        key = "delta" if self.chat else None
        for choice in event.get("choices", []):
            index = choice.get("index", 0)
            splitter = splitters.setdefault(index, ReasoningSplitter(self.opened))
            holder = choice.get(key) if key else choice
            if not isinstance(holder, dict):
                continue
            text_key = "content" if self.chat else "text"
            piece = splitter.feed(holder.get(text_key) or "")
            if choice.get("finish_reason"):
                rest = splitter.finish()
                piece = Piece(piece.reasoning + rest.reasoning, piece.content + rest.content)
                splitters.pop(index)
            holder[text_key] = piece.content
            if piece.reasoning and self.chat:
                holder["reasoning_content"] = piece.reasoning

    def _flush(self, splitters: dict[int, ReasoningSplitter]) -> list[bytes]:
        """Text still held when the stream ends without a finish_reason."""
        out = []
        for index, splitter in splitters.items():
            piece = splitter.finish()
            if not piece:
                continue
            delta = {"content": piece.content}
            if piece.reasoning:
                delta["reasoning_content"] = piece.reasoning
            choice = {"index": index, "delta": delta} if self.chat else {"index": index, "text": piece.content}
            out.append(f"data: {json.dumps({'model': self.client_model, 'choices': [choice]})}\n\n".encode())
        return out


def _delta_text(choice: dict, chat: bool) -> str:
    if chat:
        delta = choice.get("delta") or {}
        return delta.get("content") or delta.get("reasoning_content") or ""
    return choice.get("text") or ""

