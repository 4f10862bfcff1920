"""HTTP as clients speak it, against the real API service (uvicorn on
loopback, as the image runs it): model lookup, 405 with Allow, compressed
bodies, CORS, request ids, HTTP/1.0 streams, and the refusals that are the
request's fault. An engine, where one is needed, is a loopback socket that
answers with fixed bytes (the HTTP framing is what is under test)."""

import asyncio
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import zlib

import httpx
import pytest

from support.apicases import REQUEST_REFUSALS
from support.apiservice import running_api
from support.netwait import free_port

from support.buildpy import run_cli

KEY = "http-key"
SSE = b"".join(b'data: {"id":"c","object":"chat.completion.chunk","model":"DeepSeek-R1","choices":[{"index":0,'
               b'"delta":{"content":"w%d "},"finish_reason":null}]}\n\n' % n for n in range(3)) + b"data: [DONE]\n\n"


def serve_engine(port: int) -> threading.Thread:
    """Answers /v1/models and streams SSE for a chat, chunked, as engines do."""
    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /v1/models"):
            body = json.dumps({"object": "list", "data": [{"id": "engine-model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
        else:
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for event in SSE.split(b"\n\n")[:-1]:
                piece = event + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    def run():
        async def main():
            server = await asyncio.start_server(answer, "127.0.0.1", port)
            async with server:
                await server.serve_forever()
        asyncio.run(main())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def api_env(engine_port: int | None = None, **extra: str) -> dict[str, str]:
    return {"KTA_UPSTREAM": f"http://127.0.0.1:{engine_port or free_port()}", "KTA_API_KEYS": KEY, **extra}


@pytest.fixture(scope="module")
def api():
    engine_port = free_port()
    serve_engine(engine_port)
    with running_api(api_env(engine_port, KTA_CORS_ORIGINS="https://chat.example.com"), log_level="info") as (_, base):
        yield base


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_models_retrieve_answers_for_every_listed_name(api):
    listed = [m["id"] for m in httpx.get(f"{api}/v1/models", headers=AUTH).json()["data"]]
    assert {"DeepSeek-R1", "deepseek-reasoner", "engine-model"} <= set(listed)
    for name in listed:
        one = httpx.get(f"{api}/v1/models/{name}", headers=AUTH)
        assert one.status_code == 200 and one.json()["id"] == name and one.json()["object"] == "model"
    missing = httpx.get(f"{api}/v1/models/gpt-9", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    assert httpx.get(f"{api}/v1/models/DeepSeek-R1").status_code == 401


def test_a_405_says_which_methods_the_route_takes(api):
    response = httpx.get(f"{api}/v1/chat/completions", headers=AUTH)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("method, path, says", [
    ("POST", "/v1/embeddings", "no embeddings model"),
    ("GET", "/api/tags", "Ollama API is not offered"),
    ("POST", "/api/chat", "Ollama API is not offered"),
])
def test_routes_tools_try_say_why_they_are_not_served(api, method, path, says):
    response = httpx.request(method, f"{api}{path}", headers=AUTH, json={})
    assert response.status_code == 404
    assert says in response.json()["error"]["message"] and response.json()["error"]["code"] == "not_found"


def chat_body(**extra) -> bytes:
    return json.dumps({"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


@pytest.mark.parametrize("encoding, pack", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_bodies_are_read(api, encoding, pack):
    response = httpx.post(f"{api}/v1/chat/completions", content=pack(chat_body(stream=True)),
                          headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": encoding})
    assert response.status_code == 200 and "w2" in response.text


@pytest.mark.parametrize("encoding, raw, status, code", [
    ("br", b"\x8b\x00", 415, "unsupported_content_encoding"),
    ("gzip", b"\x1f\x8b not gzip at all", 400, "invalid_content_encoding"),
    ("gzip", gzip.compress(chat_body())[:-6], 400, "invalid_content_encoding"),
    ("gzip", gzip.compress(b"{" + b" " * (4 << 20) + b"}"), 413, "body_too_large"),  # 4 MiB of blanks, a few KB packed
])
def test_bad_compressed_bodies_are_refused(api, encoding, raw, status, code):
    response = httpx.post(f"{api}/v1/chat/completions", content=raw,
                          headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": encoding})
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_every_answer_has_its_own_request_id(api):
    answers = [httpx.get(f"{api}/health"), httpx.get(f"{api}/v1/models"), httpx.get(f"{api}/nowhere", headers=AUTH),
               httpx.post(f"{api}/v1/chat/completions", content=chat_body(), headers=AUTH)]
    ids = [a.headers.get("x-request-id", "") for a in answers]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids), ids


def test_cors_preflight_is_answered_and_closed_to_unnamed_origins(api):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    stranger = httpx.options(f"{api}/v1/chat/completions", headers={"Origin": "https://evil.example", **ask})
    assert stranger.status_code == 403 and "KTA_CORS_ORIGINS" in stranger.json()["error"]["message"]
    assert "access-control-allow-origin" not in stranger.headers
    named = httpx.options(f"{api}/v1/chat/completions", headers={"Origin": "https://chat.example.com", **ask})
    assert named.status_code == 204
    assert named.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "POST" in named.headers["access-control-allow-methods"]
    assert named.headers["access-control-allow-headers"] == "authorization, content-type"
    page = httpx.get(f"{api}/v1/models", headers={**AUTH, "Origin": "https://chat.example.com"})
    assert page.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "x-request-id" in page.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in httpx.get(f"{api}/v1/models", headers={
        **AUTH, "Origin": "https://evil.example"}).headers


def test_cors_stays_closed_without_the_setting():
    with running_api(api_env()) as (_, base):
        answer = httpx.options(f"{base}/v1/models", headers={"Origin": "http://localhost:5173",
                                                             "Access-Control-Request-Method": "GET"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "cors_origin_not_allowed"


@pytest.mark.parametrize("origins", ["chat.example.com", "ftp://x", "https://a.example/path"])
def test_bad_cors_origins_stop_the_service_with_one_line(origins):
    done = subprocess.run([sys.executable, "-m", "ktappliance.api", "--port", str(free_port())],
                          env={**os.environ, "KTA_UPSTREAM": "http://127.0.0.1:1", "KTA_API_KEYS": "k",
                               "KTA_CORS_ORIGINS": origins}, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1 and "KTA_CORS_ORIGINS" in done.stderr


def raw_request(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    return out


def test_an_http_10_client_gets_a_stream_it_can_read(api):
    body = chat_body(stream=True)
    answer = raw_request(api, b"POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer %s\r\n"
                              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (KEY.encode(), len(body), body))
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    # The events, unframed, until the connection closes (re-encoded: the
    # engine's model name goes back to the one the client asked for).
    events = [e for e in payload.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]] == ["w0 ", "w1 ", "w2 "]
    chunked = raw_request(api, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body))
    assert b"transfer-encoding: chunked" in chunked.partition(b"\r\n\r\n")[0].lower()


@pytest.mark.parametrize("extra, param", REQUEST_REFUSALS)
def test_what_the_engine_cannot_do_is_the_requests_fault(api, extra, param):
    response = httpx.post(f"{api}/v1/chat/completions", content=chat_body(**extra), headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and response.json()["error"]["code"] == "unsupported_value"


def test_configure_says_how_to_start_from_where_it_wrote(tmp_path, hosts_dir):
    env_file = tmp_path / "elsewhere.env"
    done = run_cli("configure", "--from", str(hosts_dir / "xeon-amx-h200-1s"), "--env-file", str(env_file),
                   "--model-dir", str(tmp_path / "models"))
    assert done.returncode == 0, done.stderr
    assert f"docker compose --env-file {env_file.resolve()} up -d" in done.stdout
    assert f"python build.py up --env-file {env_file}" in done.stdout
