"""Hostile and careless clients against the real API service (uvicorn on
loopback, as the image runs it). No engine is behind it: everything here must
be answered before the engine is asked. Engine-side faults (5xx, a stream cut
mid-event) are fed to the proxy as raw bytes."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ktappliance.api import errors
from ktappliance.api.metrics import Metrics
from ktappliance.api.proxy import Exchange
from support.apiservice import running_api
from support.netwait import free_port

KEY = "test-key"


@pytest.fixture(scope="module")
def api():
    with running_api({"KTA_UPSTREAM": f"http://127.0.0.1:{free_port()}", "KTA_API_KEYS": KEY,
                      "KTA_READ_TIMEOUT": "2", "KTA_MAX_CONNECTIONS": "40"}) as (_, base):
        yield base


def post(base, raw: bytes, path="/v1/chat/completions"):
    return httpx.post(f"{base}{path}", content=raw, timeout=10,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})


def bad_requests_counted(base) -> float:
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kta_api_requests_total{") and 'status="400"' in line)


def chat(**extra) -> bytes:
    return json.dumps({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


@pytest.mark.parametrize("raw", [
    chat()[:-1] + b', "temperature": NaN}',
    chat()[:-1] + b', "max_tokens": 1e999}',
    b'{"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "DeepSeek-R1", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"model": "DeepSeek-R1", "x": ' + b"[" * 100_000 + b"}",
    b'{"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], "n": 1' + b"9" * 5000 + b"}",
], ids=["nan", "1e999", "lone-surrogate", "nested-100000", "unclosed-100000", "huge-int"])
def test_json_python_cannot_reencode_is_a_400_and_counted(api, raw):
    before = bad_requests_counted(api)
    response = post(api, raw)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"
    assert bad_requests_counted(api) == before + 1
    assert httpx.get(f"{api}/health").status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"model": "DeepSeek-R1", "messages": []}, "messages"),
    ({"model": "DeepSeek-R1"}, "messages"),
    ({"model": "DeepSeek-R1", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": [5]}]}, "messages[0].content"),
    ({"model": "DeepSeek-R1", "messages": ["hi"]}, "messages[0]"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], "top_p": -1}, "top_p"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}, "max_tokens"),
    ({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
])
def test_request_shape_is_checked_here(api, body, param):
    response = post(api, json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_completions_need_a_prompt(api):
    response = post(api, json.dumps({"model": "DeepSeek-R1", "prompt": {"x": 1}}).encode(), "/v1/completions")
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_a_valid_request_passes_the_checks_and_meets_the_missing_engine(api):
    assert post(api, chat(temperature=0.6, max_tokens=64, stream=True)).status_code == 503


def test_body_sent_one_byte_a_second_is_cut_off(api):
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = chat()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        started = time.monotonic()
        answer = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(1.0)
            try:
                answer += sock.recv(65536)
            except socket.timeout:
                continue
            if answer:
                break
        assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]
        assert time.monotonic() - started < 6


def test_half_open_connections_are_closed_and_capped(api):
    host, port = api.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(60)]
    try:
        # Over KTA_MAX_CONNECTIONS (40) uvicorn answers 503 rather than holding more.
        statuses = []
        for _ in range(3):
            try:
                statuses.append(httpx.get(f"{api}/health", timeout=5).status_code)
            except httpx.HTTPError:
                statuses.append("closed")
        assert 503 in statuses or "closed" in statuses, statuses
        time.sleep(3)  # past KTA_READ_TIMEOUT=2 for the headers
        for sock in idle:
            sock.settimeout(2)
            try:
                assert sock.recv(1) == b""  # closed by the service
            except ConnectionResetError:
                pass
        assert httpx.get(f"{api}/health", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("name, value", [("KTA_STALL_TIMEOUT", "-1"), ("KTA_STALL_TIMEOUT", "nan"),
                                         ("KTA_QUEUE_TIMEOUT", "-5"), ("KTA_READ_TIMEOUT", "inf"),
                                         ("KTA_QUEUE_TIMEOUT", "soon")])
def test_bad_settings_are_refused_at_start_with_one_line(name, value):
    env = {**os.environ, "KTA_UPSTREAM": "http://127.0.0.1:9", "KTA_API_KEYS": KEY, name: value}
    done = subprocess.run([sys.executable, "-m", "ktappliance.api", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], done.stderr


def test_compose_and_code_share_one_stall_default():
    from ktappliance.api.config import ApiConfig
    from support.buildpy import REPO
    compose = (REPO / "compose/docker-compose.yml").read_text()
    assert f"KTA_STALL_TIMEOUT: ${{API_STALL_TIMEOUT:-{ApiConfig.stall_timeout:g}}}" in compose


# ---------------------------------------------------------------- engine faults, as bytes

async def engine_answering(raw_parts: list[bytes], pause: float = 0.0):
    """A TCP server on loopback that answers any request with these bytes, in
    these writes, then closes: an engine that breaks off mid-answer."""
    async def answer(reader, writer):
        await reader.read(65536)
        for part in raw_parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def exchange_with(upstream, body=None, stall_timeout=5.0):
    body = body or {"model": "DeepSeek-R1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return Exchange(upstream=upstream, metrics=Metrics(), path="/v1/chat/completions", body=body,
                    client_model="DeepSeek-R1", split=False, opened=False, stall_timeout=stall_timeout,
                    upstream_key="")


def chunked(*pieces: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def streamed(raw_parts: list[bytes], stall_timeout: float = 5.0, pause: float = 0.0) -> bytes:
    async def scenario():
        from contextlib import AsyncExitStack
        server, url = await engine_answering(raw_parts, pause)
        try:
            exchange = exchange_with(url, stall_timeout=stall_timeout)
            stack = AsyncExitStack()
            response = await exchange.open(stack)
            return b"".join([chunk async for chunk in exchange.events(response, stack)])
        finally:
            server.close()
    return asyncio.run(scenario())


def test_passthrough_drops_a_partial_event_before_the_error_event():
    whole = b'data: {"id": "x", "choices": [{"delta": {"content": "a"}}]}\n\n'
    cut = b'data: {"id": "x", "choi'
    out = streamed([SSE_HEAD, *chunked(whole, cut)], pause=0.05)
    events = [e for e in out.split(b"\n\n") if e]
    assert events[0] + b"\n\n" == whole
    for event in events:
        assert event.startswith(b"data: ")
        json.loads(event[6:])  # every event parses, the error one included
    assert json.loads(events[-1][6:])["error"]["code"] == "engine_error"


def test_events_split_across_writes_and_several_in_one_pass_through_whole():
    events = [b'data: {"id": "x", "choices": [{"delta": {"content": "%d"}}]}\n\n' % n for n in range(5)]
    glued = events[1] + events[2][:10]
    parts = [SSE_HEAD, *chunked(events[0], glued, events[2][10:] + events[3] + events[4], b"data: [DONE]\n\n"),
             b"0\r\n\r\n"]
    assert streamed(parts) == b"".join(events) + b"data: [DONE]\n\n"


def test_an_engine_silent_mid_stream_ends_it_with_a_stall_event():
    first = b'data: {"id": "x", "choices": [{"delta": {"content": "a"}}]}\n\n'
    out = streamed([SSE_HEAD + chunked(first)[0]], stall_timeout=0.3, pause=2)
    assert out.startswith(first)
    assert json.loads(out[len(first):].split(b"\n\n")[0][6:])["error"]["code"] == "engine_timeout"


def test_an_engine_that_never_answers_is_a_stall_before_the_headers():
    from ktappliance.api.errors import ApiError

    async def scenario():
        from contextlib import AsyncExitStack
        # Takes the connection and says nothing.
        server = await asyncio.start_server(lambda reader, writer: asyncio.sleep(5), "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started = asyncio.get_running_loop().time()
        try:
            async with AsyncExitStack() as stack:
                await exchange_with(url, stall_timeout=0.3).open(stack)
        except ApiError as exc:
            return exc, asyncio.get_running_loop().time() - started
        finally:
            server.close()
        return None, 0.0

    error, waited = asyncio.run(scenario())
    assert error is not None and error.status == 504 and error.code == "engine_timeout"
    assert 0.3 <= waited < 2.0


def test_a_slow_client_between_tokens_is_no_engine_stall():
    # The stall clock runs only while the API waits on the engine: a client
    # that takes longer than the stall timeout to take each token is not one.
    events = [b'data: {"id": "x", "choices": [{"delta": {"content": "%d"}}]}\n\n' % n for n in range(4)]
    parts = [SSE_HEAD, *chunked(*events, b"data: [DONE]\n\n"), b"0\r\n\r\n"]

    async def scenario():
        from contextlib import AsyncExitStack
        server, url = await engine_answering(parts, pause=0.02)
        try:
            exchange = exchange_with(url, stall_timeout=0.3)
            stack = AsyncExitStack()
            response = await exchange.open(stack)
            out = []
            async for chunk in exchange.events(response, stack):
                out.append(chunk)
                await asyncio.sleep(0.5)
            return b"".join(out)
        finally:
            server.close()

    assert asyncio.run(scenario()) == b"".join(events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("status, expected", [(500, 502), (503, 502), (400, 400)])
def test_engine_errors_map_to_openai_bodies(status, expected):
    body = json.dumps({"error": {"message": "boom"}}).encode()
    raw = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)

    async def scenario():
        from contextlib import AsyncExitStack
        server, url = await engine_answering([raw])
        try:
            await exchange_with(url).open(AsyncExitStack())
        finally:
            server.close()

    with pytest.raises(errors.ApiError) as caught:
        asyncio.run(scenario())
    assert caught.value.status == expected and "boom" in caught.value.message


def test_an_engine_that_is_not_there_is_503():
    async def scenario():
        from contextlib import AsyncExitStack
        await exchange_with(f"http://127.0.0.1:{free_port()}").open(AsyncExitStack())

    with pytest.raises(errors.ApiError) as caught:
        asyncio.run(scenario())
    assert caught.value.status == 503


def test_metrics_need_the_key_and_probes_do_not(api):
    assert httpx.get(f"{api}/metrics").status_code == 401
    assert httpx.get(f"{api}/health").status_code == 200
    assert httpx.get(f"{api}/ready").status_code == 503  # open, and honest: no engine here
