"""The API service's own CPU time per streamed token, two versions side by
side in one run: the working tree and an earlier commit (default HEAD~1).

CPU time of the API process (utime + stime), not wall time: on a loaded or
two-core machine the engine and the API share the cores, and throughput
figures mix the two (bench/api_bench.py). The engine here is a paced
synthetic SSE server (a bench instrument, not a test stand-in): it writes
each token on its own, as a real engine does at 5-500 tokens/s a stream, so
the API reads once per token.

Run: .venv/bin/python bench/api_cpu_per_token.py [--base REV] [--streams 8] [--tokens 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support.netwait import free_port, wait_for_ok  # noqa: E402
TICK = os.sysconf("SC_CLK_TCK")


def engine_main(port: int, pace_s: float) -> None:
    """Answers /v1/models and streams max_tokens chunked SSE events, one write each."""
    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), b"0"))
        body = json.loads(await reader.readexactly(length)) if length else {}
        if head.startswith(b"GET /v1/models"):
            data = json.dumps({"object": "list", "data": [{"id": "DeepSeek-R1", "object": "model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(data), data))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for n in range(int(body.get("max_tokens", 16))):
                event = b'data: {"id":"x","object":"chat.completion.chunk","model":"DeepSeek-R1",' \
                        b'"choices":[{"index":0,"delta":{"content":"t%d"}}]}\n\n' % n
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(pace_s)
            done = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()
    asyncio.run(main())


def wait_up(url: str) -> None:
    if not wait_for_ok(url, 60, interval=0.2):
        raise SystemExit(f"api_cpu_per_token: {url} did not answer")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def streams(url: str, count: int, tokens: int) -> int:
    body = {"model": "DeepSeek-R1", "stream": True, "max_tokens": tokens, "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        async def one() -> int:
            seen = 0
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    seen += line.startswith("data: {")
            return seen
        return sum(await asyncio.gather(*(one() for _ in range(count))))


def source_of(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "ktappliance"], capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD~1", help="the earlier commit to compare against")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1500, help="tokens a stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pace-ms", type=float, default=2.0, help="the engine's time between a stream's tokens")
    args = parser.parse_args()
    engine_port = free_port()
    engine = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
                               f"import api_cpu_per_token as b; b.engine_main({engine_port}, {args.pace_ms / 1000})"])
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        variants = {"base " + args.base: source_of(args.base, Path(scratch)), "working tree": REPO}
        try:
            wait_up(f"http://127.0.0.1:{engine_port}/v1/models")
            for round_no in range(args.rounds):
                for name, root in variants.items():
                    port = free_port()
                    env = {**os.environ, "PYTHONPATH": str(root), "KTA_UPSTREAM": f"http://127.0.0.1:{engine_port}",
                           "KTA_OPEN": "true", "KTA_MAX_INFLIGHT": str(args.streams)}
                    api = subprocess.Popen([sys.executable, "-m", "ktappliance.api", "--host", "127.0.0.1",
                                            "--port", str(port), "--log-level", "warning"], env=env, cwd=root)
                    try:
                        wait_up(f"http://127.0.0.1:{port}/health")
                        asyncio.run(streams(f"http://127.0.0.1:{port}", args.streams, 20))  # warm-up
                        before = cpu_seconds(api.pid)
                        tokens = asyncio.run(streams(f"http://127.0.0.1:{port}", args.streams, args.tokens))
                        used = cpu_seconds(api.pid) - before
                    finally:
                        api.terminate()
                        api.wait()
                    per_token_us = used / tokens * 1e6
                    results.setdefault(name, []).append(per_token_us)
                    print(f"round {round_no + 1}: {name}: {tokens} tokens, API CPU {used:.2f} s, "
                          f"{per_token_us:.1f} µs a token", flush=True)
        finally:
            engine.terminate()
    means = {name: sum(values) / len(values) for name, values in results.items()}
    base_name, tree_name = list(variants)
    print(f"\n{args.streams} streams x {args.tokens} tokens, {args.rounds} rounds, engine pace {args.pace_ms} ms:")
    for name, mean in means.items():
        print(f"  {name}: {mean:.1f} µs of API CPU a streamed token ({', '.join(f'{v:.1f}' for v in results[name])})")
    print(f"  ratio working tree / base: {means[tree_name] / means[base_name]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
