"""API service overhead: the same requests straight to the engine and through
the API, side by side in one run (llama.cpp CPU image, tiny GGUF model).

  latency     non-streamed, max_tokens=1: p50 and p99 per request
  throughput  streamed, max_tokens=256: tokens per second over all clients,
              and from the two the API's added cost per streamed token
              (1/API tok/s - 1/direct tok/s)
at 1 and 8 concurrent clients (8: a balance_serve engine's batch). The
engine and the API both allow 8 requests in flight (llama.cpp slots /
KTA_MAX_INFLIGHT), so queueing is alike.

Run: .venv/bin/python bench/api_bench.py   (needs the test images; a few minutes)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import docker
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support import dockerenv  # noqa: E402
from support.settings import API_TAG, LLAMACPP_TAG  # noqa: E402
from support.tiny_gguf import write_test_models  # noqa: E402

KEY = "bench-" + uuid.uuid4().hex[:8]
BODY = {"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hello"}]}


async def one(http: httpx.AsyncClient, stream: bool, max_tokens: int) -> tuple[float, int]:
    try:
        return await _one(http, stream, max_tokens)
    except httpx.RemoteProtocolError:
        # llama-server closes some keep-alive connections after a stream; the
        # API service retries such a send once, so the direct path does too.
        return await _one(http, stream, max_tokens)


async def _one(http: httpx.AsyncClient, stream: bool, max_tokens: int) -> tuple[float, int]:
    body = {**BODY, "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}
    started = time.perf_counter()
    tokens = 0
    if stream:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    tokens += sum(1 for c in event.get("choices", []) if (c.get("delta") or {}).get("content"))
    else:
        response = await http.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        tokens = response.json()["usage"]["completion_tokens"]
    return time.perf_counter() - started, tokens


async def measure(base: str, clients: int, rounds: int, stream: bool, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        await one(http, stream, max_tokens)  # warm-up

        async def client() -> list[tuple[float, int]]:
            # One client sends its requests one after the other.
            return [await one(http, stream, max_tokens) for _ in range(rounds)]

        started = time.perf_counter()
        per_client = await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
        results = [r for chunk in per_client for r in chunk]
    latencies = sorted(r[0] for r in results)
    return {"p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "tokens_per_s": sum(r[1] for r in results) / wall}


def main() -> int:
    client = docker.from_env()
    models = write_test_models(REPO / "bench" / "out" / "models")
    models_dir = models["single"].parent
    for path in [models_dir, *models_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    network = client.networks.create("kta-bench-" + uuid.uuid4().hex[:6])
    engine = client.containers.run(
        LLAMACPP_TAG, detach=True, name="kta-bench-engine-" + uuid.uuid4().hex[:6], network=network.name,
        volumes={str(models_dir): {"bind": "/models", "mode": "ro"}}, ports={"8080/tcp": ("127.0.0.1", None)},
        environment={"LLAMA_ARG_MODEL": "/models/tiny-r1.gguf", "LLAMA_ARG_CTX_SIZE": "4096",
                     "LLAMA_ARG_N_PARALLEL": "8", "LLAMA_ARG_THREADS": "1", "LLAMA_API_KEY": KEY})
    api = client.containers.run(
        API_TAG, detach=True, network=network.name, ports={"10002/tcp": ("127.0.0.1", None)},
        environment={"KTA_UPSTREAM": f"http://{engine.name}:8080", "KTA_API_KEYS": KEY, "KTA_UPSTREAM_KEY": KEY,
                     "KTA_MAX_INFLIGHT": "8", "KTA_QUEUE_SIZE": "256"})
    try:
        dockerenv.wait_healthy(engine, 180)
        dockerenv.wait_healthy(api, 60)
        direct = f"http://127.0.0.1:{dockerenv.published_port(engine, '8080/tcp')}"
        proxied = f"http://127.0.0.1:{dockerenv.published_port(api, '10002/tcp')}"
        print(f"{'clients':>7} {'path':>7} {'p50 ms':>8} {'p99 ms':>8} {'tok/s':>8}")
        summary = []
        for clients in (1, 8):
            rounds = 40 if clients == 1 else 8
            row = {}
            # Interleave the two paths so drift on this noisy machine hits both alike.
            for path, base in (("direct", direct), ("api", proxied), ("direct2", direct), ("api2", proxied)):
                lat = asyncio.run(measure(base, clients, rounds, stream=False, max_tokens=1))
                thr = asyncio.run(measure(base, clients, max(2, rounds // 4), stream=True, max_tokens=256))
                row.setdefault(path.rstrip("2"), []).append({**lat, "tokens_per_s": thr["tokens_per_s"]})
            for path in ("direct", "api"):
                runs = row[path]
                p50 = statistics.mean(r["p50_ms"] for r in runs)
                p99 = statistics.mean(r["p99_ms"] for r in runs)
                tps = statistics.mean(r["tokens_per_s"] for r in runs)
                print(f"{clients:>7} {path:>7} {p50:>8.2f} {p99:>8.2f} {tps:>8.1f}")
                row[path] = {"p50_ms": p50, "p99_ms": p99, "tokens_per_s": tps}
            added = row["api"]["p50_ms"] - row["direct"]["p50_ms"]
            ratio = row["api"]["tokens_per_s"] / row["direct"]["tokens_per_s"]
            per_token_us = 1e6 * (1 / row["api"]["tokens_per_s"] - 1 / row["direct"]["tokens_per_s"])
            print(f"{clients:>7} {'delta':>7} {added:>+8.2f} {row['api']['p99_ms'] - row['direct']['p99_ms']:>+8.2f} "
                  f"{ratio:>8.3f}   {per_token_us:+.0f} us a streamed token (goal at 8 streams: <= 50 us)")
            summary.append({"clients": clients, **{f"{k}_{m}": v for k in ("direct", "api") for m, v in row[k].items()},
                            "added_p50_ms": added, "throughput_ratio": ratio, "added_us_per_token": per_token_us})
        (REPO / "bench" / "out" / "api_bench.json").write_text(json.dumps(summary, indent=2))
    except Exception:
        print(engine.logs(tail=15).decode(errors="replace"), file=sys.stderr)
        raise
    finally:
        for container in (api, engine):
            container.remove(force=True)
        network.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
