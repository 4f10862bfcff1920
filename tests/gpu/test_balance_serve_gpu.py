"""balance_serve on the GPU: KTransformers v0.3.2's multi-request backend,
built by the images/ scripts (scheduler for the target's flags, FlashInfer's
kernels compiled ahead), started through the image's entrypoint with the API
service in front, serving the tiny DeepSeek-V3 to several clients at once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import gpuhost
from chat import stream_chat
from support import tiny_deepseek
from support.netwait import free_port

API_KEY = "gpu-tier-key"
LINE = "v0.3.2"
MAX_BATCH = 8
# Distinct prompts and a distinct max_tokens for each: a stream that carried
# another request's tokens would show the other's text or length.
PROMPTS = [f"Question {n}: {topic}" for n, topic in enumerate((
    "why is the sky blue?", "how do I bake bread?", "what is a mixture of experts?", "why do cats purr?",
    "how does a refrigerator work?", "what is the tallest mountain?", "how do tides work?",
    "what makes a good cup of tea?"), start=1)]
MAX_TOKENS = [17, 19, 23, 29, 31, 37, 41, 43]
SERVE_SETTINGS = {"KT_MAX_BATCH_SIZE": str(MAX_BATCH), "KT_CACHE_LENS": "16384", "KT_MAX_NEW_TOKENS": "512",
                  "KT_CHUNK_SIZE": "256", "KT_KVC2_RAM_GB": "2"}


def client_for(url: str):
    import openai
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, timeout=300, max_retries=0)


class Served:
    def __init__(self, host, install, model, backend: str, rule: str, settings: dict, inflight: int):
        self.port = free_port()
        self.name = f"{install.name}-{backend}"
        # On every interface, as in the compose network: the control that the
        # socket test's non-loopback probe reaches what is meant to be reached.
        self.engine = gpuhost.start_engine(host, install, model, name=self.name, rule=rule, port=self.port,
                                           backend=backend, settings={**settings, "KT_HOST": "0.0.0.0"})
        try:
            self.load_s = self.engine.wait_http(f"http://127.0.0.1:{self.port}/v1/models", 480)
            self.api, self.url = gpuhost.start_api(host.work / self.name, f"http://127.0.0.1:{self.port}",
                                                   API_KEY, inflight=inflight)
        except BaseException:
            self.engine.stop()
            raise
        self.client = client_for(self.url)

    def stop(self) -> None:
        self.api.stop()
        self.engine.stop()


@pytest.fixture(scope="module")
def install(builds):
    install = builds.engine(LINE)
    missing = set(install.runtime_env["KT_REQUIRED_FLAGS"].split()) - gpuhost.cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {' '.join(sorted(missing))}: the {install.runtime_env['KT_TARGET']} build cannot run here")
    assert install.runtime_env["KT_BACKEND"] == "balance_serve", "v0.3.2 builds balance_serve by default"
    return install


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_deepseek.write_model(tmp_path_factory.mktemp("serve") / "model", "q4k_iq1s")


@pytest.fixture(scope="module")
def served(gpu_host, install, model):
    started = time.monotonic()
    serving = Served(gpu_host, install, model, "balance_serve", "DeepSeek-V3-Chat-serve.yaml", SERVE_SETTINGS,
                     inflight=MAX_BATCH)
    # The first request to a fresh engine, timed: FlashInfer must find every
    # kernel it needs compiled ahead (the runtime has no compiler for them).
    first = stream_chat(serving.client, "DeepSeek-R1", max_tokens=8, temperature=0)
    serving.first_request = {"load_s": round(serving.load_s, 1), "first_request_s": round(first.total_s, 2),
                             "first_token_s": round(first.first_token_s, 2),
                             "start_to_first_answer_s": round(time.monotonic() - started, 1), "text": first.text}
    try:
        yield serving
    finally:
        serving.stop()


def test_the_scheduler_has_no_instruction_beyond_the_target(install):
    from support import isa
    site = next(install.venv.glob("lib/python3*/site-packages"))
    libraries = [*site.glob("sched_ext*.so"), *site.glob("libsched*.so"), *site.glob("libkvc2.so"),
                 *site.glob("libasync_store.so"), *site.glob("libprometheus-cpp-*.so*")]
    assert len(libraries) >= 5, libraries
    required = set(install.runtime_env["KT_REQUIRED_FLAGS"].split())
    beyond = {lib.name: isa.beyond_target(isa.disassemble(lib), required) for lib in libraries}
    assert not any(beyond.values()), beyond


def test_first_request_to_a_fresh_engine_needs_no_compiler(served, install, gpu_host):
    assert served.first_request["text"], f"no tokens came back; engine log:\n{served.engine.tail()}"
    jit = sorted(str(p) for p in (install.home / ".cache" / "flashinfer").rglob("*.so"))
    assert not jit, f"FlashInfer compiled kernels at run time: {jit}"
    log = served.engine.log.read_text(errors="replace")
    assert "was not compiled ahead" not in log
    gpuhost.record_figures(gpu_host.work, "balance_serve first request", served.first_request)


def run_together(client, indexes: list[int]):
    with ThreadPoolExecutor(max_workers=len(indexes)) as pool:
        futures = [pool.submit(stream_chat, client, "DeepSeek-R1", MAX_TOKENS[i], PROMPTS[i], 0.0) for i in indexes]
        return [f.result() for f in futures]


def common_prefix(a: str, b: str) -> int:
    size = 0
    for x, y in zip(a, b):
        if x != y:
            break
        size += 1
    return size


def test_concurrent_streams_each_carry_their_own_request(served, gpu_host, model):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(model["config"] / "tokenizer.json"))
    alone = [stream_chat(served.client, "DeepSeek-R1", MAX_TOKENS[i], PROMPTS[i], 0.0) for i in range(MAX_BATCH)]
    assert len({a.text for a in alone}) == MAX_BATCH, "distinct prompts gave the same answer alone"
    figures = {}
    for width in (1, 2, 4, 8):
        together = run_together(served.client, list(range(width)))
        drift = []
        for i, chat in enumerate(together):
            solo = alone[i]
            assert chat.finish_reason == solo.finish_reason, (width, i, chat.finish_reason, solo.finish_reason)
            assert chat.completion_tokens == solo.completion_tokens, (width, i, chat.completion_tokens,
                                                                      solo.completion_tokens)
            if chat.text == solo.text:
                drift.append(None)
                continue
            # Batched arithmetic may change a near-tie in a random-weight model's
            # greedy choice; from there the answers part. Before it, the stream
            # must be its own request's answer, closer to it than to any other's.
            own = common_prefix(chat.text, solo.text)
            others = max(common_prefix(chat.text, alone[j].text) for j in range(MAX_BATCH) if j != i)
            assert own > others, (width, i, chat.text[:80], solo.text[:80])
            drift.append(len(tokenizer.encode(solo.text[:own]).ids))
        figures[f"{width}_at_once"] = {"identical": sum(d is None for d in drift),
                                       "drift_after_tokens": [d for d in drift if d is not None],
                                       "tokens": [c.completion_tokens for c in together]}
        print(f"balance_serve {width} at once: {figures[f'{width}_at_once']}")
    gpuhost.record_figures(gpu_host.work, "balance_serve streams against alone", figures)


def tokens_per_s(chats) -> float:
    """Generated tokens per second over all streams, from the first request
    sent to the last answer finished. v0.3.2 sends several tokens per chunk,
    so the span between a stream's first and last chunk says nothing."""
    start = min(c.started_at for c in chats)
    end = max(c.started_at + c.total_s for c in chats)
    return sum(c.tokens for c in chats) / (end - start)


def test_four_at_once_give_at_least_twice_the_throughput(served, gpu_host):
    length = 200
    single = [stream_chat(served.client, "DeepSeek-R1", length, PROMPTS[0], 0.0) for _ in range(2)][-1]
    with ThreadPoolExecutor(max_workers=4) as pool:
        four = list(pool.map(lambda i: stream_chat(served.client, "DeepSeek-R1", length, PROMPTS[i], 0.0), range(4)))
    one_rate, four_rate = tokens_per_s([single]), tokens_per_s(four)
    figures = {"single_tok_s": round(one_rate, 1), "four_at_once_tok_s": round(four_rate, 1),
               "ratio": round(four_rate / one_rate, 2), "tokens_each": length}
    print(f"balance_serve decode: {figures}")
    gpuhost.record_figures(gpu_host.work, "balance_serve throughput", figures)
    assert four_rate >= 2 * one_rate, figures


def listeners(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process tree listens on."""
    import psutil
    root = psutil.Process(pid)
    pids = {root.pid, *(child.pid for child in root.children(recursive=True))}
    return sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
                   if c.status == psutil.CONN_LISTEN and c.pid in pids})


def outside_addresses() -> list[str]:
    import psutil
    return [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_the_schedulers_sockets_are_the_engines_alone(served, gpu_host):
    # The RPC socket (pickle.loads on what arrives) and both Prometheus
    # exposers: bound to loopback by the build's patch. Seen from any address
    # but loopback they refuse; the engine's own API port, bound to every
    # interface here, answers there: the probe reaches what is meant to be reached.
    found = listeners(served.engine.process.pid)
    internal = [(ip, port) for ip, port in found if port != served.port]
    assert len(internal) >= 3, f"expected the scheduler's RPC socket and two exposers, found {found}"
    assert all(ip == "127.0.0.1" for ip, _ in internal), found
    addresses = outside_addresses()
    assert addresses, "this host has no address but loopback to probe from"
    for address in addresses:
        assert reachable(address, served.port), (address, served.port)
        for _, port in internal:
            assert not reachable(address, port), f"{address}:{port} answers from outside loopback"
    for _, port in internal:
        assert reachable("127.0.0.1", port)
    gpuhost.record_figures(gpu_host.work, "balance_serve listeners", {"listeners": found, "probed_from": addresses})


def bench(url: str, name: str, work: Path) -> dict:
    out = work / f"bench-{name}.json"
    done = subprocess.run([sys.executable, str(gpuhost.REPO / "build.py"), "bench", "--url", url, "--key", API_KEY,
                           "--users", "4", "--interval", "0", "--requests", "16", "--max-tokens", "96", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out.write_text(done.stdout)
    return json.loads(done.stdout)


def test_bench_command_single_and_balance_serve_side_by_side(served, gpu_host, install, model):
    figures = {"balance_serve": bench(served.url, "balance_serve", gpu_host.work)}
    served.stop()
    single = Served(gpu_host, install, model, "single", "DeepSeek-V3-Chat.yaml",
                    {"KT_MAX_NEW_TOKENS": "512", "KT_CACHE_LENS": "4096"}, inflight=1)
    try:
        stream_chat(single.client, "DeepSeek-R1", max_tokens=8, temperature=0)  # Triton's first compile
        figures["single"] = bench(single.url, "single", gpu_host.work)
    finally:
        single.stop()
    for backend, report in figures.items():
        print(f"bench {backend}: {report['total_tokens_per_s']:.1f} tok/s, TTFT p50 {report['ttft_p50_s']} s, "
              f"errors {report['errors']}")
        assert report["completed"] == report["requests"] and report["errors"] == 0, (backend, report)
    gpuhost.record_figures(gpu_host.work, "bench: single vs balance_serve", figures)
