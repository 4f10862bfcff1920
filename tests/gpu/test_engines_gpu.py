"""The engines produce tokens on the GPU: KTransformers v0.2.3 and v0.3.2
started by the image's own entrypoint, llama.cpp with every layer offloaded,
each behind the API service and asked with the openai client."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

import gpuhost
from chat import PROMPT, engine_performance, prompt_tokens, stream_chat
from support import tiny_deepseek
from support.netwait import free_port

API_KEY = "gpu-tier-key"


def serve_and_chat(host, engine, model_dir: Path, name: str, upstream: str, ready_path: str) -> dict:
    """API in front of the running engine, two streamed chats; the figures."""
    import openai

    load_s = engine.wait_http(upstream + ready_path, 900)
    api, url = gpuhost.start_api(host.work / name, upstream, API_KEY)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, timeout=300)
        first = stream_chat(client, "DeepSeek-R1")
        assert first.chunks > 0 and first.text, f"{name}: no tokens came back; engine log:\n{engine.tail()}"
        listed = sorted(model.id for model in client.models.list())
        ready = httpx.get(f"{url}/ready", timeout=30).json()
        assert ready["ready"] is True and "DeepSeek-R1" in listed, (listed, ready)
        assert "DeepSeek-R1" in ready["models"] and set(ready["models"]) <= set(listed), (listed, ready)
        # A prompt that shares no prefix with the first, so that the second
        # chat's first token measures a real prefill (engines reuse a cached prefix).
        second_prompt = "Second question, from the start. " + PROMPT
        second = stream_chat(client, "DeepSeek-R1", prompt=second_prompt)
        assert second.chunks > 0, f"{name}: the second chat brought no tokens; engine log:\n{engine.tail()}"
        print(f"{name}: {first.chunks} chunks, then {second.chunks}: {second.text[:80]!r}")
        prompt_length = prompt_tokens(model_dir / "config", second_prompt)
        return {"load_s": round(load_s, 1), "prompt_tokens": prompt_length,
                "first_token_s": round(second.first_token_s, 3),
                "prefill_tok_s": round(prompt_length / second.first_token_s, 1),
                "decode_tok_s": round(second.decode_tokens_per_s, 1), "tokens": second.tokens}
    finally:
        api.stop()


@pytest.mark.parametrize("line, variant, rule", [
    ("v0.2.3", "q4k_iq1s", "DeepSeek-V3-Chat.yaml"),
    ("v0.3.2", "bf16", "DeepSeek-V3-Chat-amx.yaml"),
])
def test_ktransformers_serves_tiny_deepseek(line, variant, rule, gpu_host, builds, tmp_path):
    install = builds.engine(line)
    missing = set(install.runtime_env["KT_REQUIRED_FLAGS"].split()) - gpuhost.cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {' '.join(sorted(missing))}: the {install.runtime_env['KT_TARGET']} build cannot run here")
    model = tiny_deepseek.write_model(tmp_path / "model", variant)
    port = free_port()
    name = install.name
    triton_cache = gpu_host.work / name / "triton-cache"
    shutil.rmtree(triton_cache, ignore_errors=True)
    log_dir = install.home / ".ktransformers"
    # The single-request backend: the one both lines have.
    engine = gpuhost.start_engine(gpu_host, install, model, name=name, rule=rule, port=port)
    try:
        figures = serve_and_chat(gpu_host, engine, tmp_path / "model", name, f"http://127.0.0.1:{port}", "/v1/models")
        kernels = sorted(path.name for path in triton_cache.rglob("*") if "_fwd_grouped_kernel_stage1" in path.name)
        assert kernels, f"{name}: Triton's MLA decode kernel never compiled (cache: {triton_cache})"
        figures.update(engine_performance(engine.log, log_dir))
        figures.update({"rule": rule, "gguf": variant, "triton_kernels": len(kernels)})
        gpuhost.record_figures(gpu_host.work, f"KTransformers {name}", figures)
    finally:
        engine.stop()


def test_llamacpp_offloads_every_layer(gpu_host, builds, tmp_path):
    server = builds.llama_server()
    model = tiny_deepseek.write_model(tmp_path / "model", "q4k_iq1s")
    port = free_port()
    from ktappliance.target.matrix import load_matrix
    target = load_matrix().target(gpuhost.LLAMACPP_TARGET)
    env = {**os.environ, "KT_TARGET": target.name, "KT_REQUIRED_FLAGS": " ".join(target.requires),
           "LLAMA_SERVER": str(server), "LLAMA_ARG_MODEL": str(model["gguf_file"]),
           "LLAMA_ARG_HOST": "127.0.0.1", "LLAMA_ARG_PORT": str(port), "LLAMA_ARG_N_GPU_LAYERS": "999",
           "LLAMA_ARG_CTX_SIZE": "4096", "LLAMA_ARG_JINJA": "true", "LLAMA_ARG_ALIAS": "DeepSeek-R1"}
    app = gpuhost.image_layout(gpu_host.work / "llamacpp-app", "llamacpp")
    # --verbose: this llama.cpp prints the layer placement only at debug level.
    engine = gpuhost.Service("llama.cpp CUDA", ["sh", str(app / "llamacpp" / "entrypoint.sh"), "--verbose"], env,
                             gpu_host.work / "llamacpp-engine.log")
    try:
        figures = serve_and_chat(gpu_host, engine, tmp_path / "model", "llamacpp", f"http://127.0.0.1:{port}", "/health")
        log = engine.log.read_text(errors="replace")
        offloaded = [line for line in log.splitlines() if "offloaded" in line and "layers to GPU" in line]
        assert offloaded, f"llama.cpp did not report offloading; end of its log:\n{engine.tail()}"
        done, total = offloaded[-1].split("offloaded", 1)[1].split("layers")[0].strip().split("/")
        assert done == total, offloaded[-1]
        assert "CUDA0" in log, "llama.cpp did not use the CUDA backend"
        figures.update({"offloaded": offloaded[-1].split("offloaded", 1)[1].strip()})
        gpuhost.record_figures(gpu_host.work, "llama.cpp CUDA", figures)
    finally:
        engine.stop()
