"""The llama.cpp engine image: built CPU-only from the llama.cpp tree inside
llama-cpp-python's PyPI sdist, run on the tiny real GGUF model."""

import shutil
import subprocess

import httpx
import openai
import pytest
import testinfra

from support import dockerenv
from support.settings import LLAMACPP_TAG

pytestmark = pytest.mark.image


def start_engine(client, tiny_models, model_path):
    return client.containers.run(
        LLAMACPP_TAG, detach=True, remove=True,
        volumes={str(tiny_models["dir"]): {"bind": "/models", "mode": "ro"}},
        environment={"LLAMA_ARG_MODEL": model_path, "LLAMA_ARG_CTX_SIZE": "512", "LLAMA_ARG_THREADS": "2"},
        ports={"8080/tcp": ("127.0.0.1", None)},
    )


@pytest.fixture(scope="module")
def engine(llamacpp_image, docker_client, tiny_models):
    container = start_engine(docker_client, tiny_models, "/models/tiny-r1.gguf")
    try:
        dockerenv.wait_healthy(container, timeout=180)
        yield container
    finally:
        container.kill()


@pytest.fixture(scope="module")
def client(engine):
    port = dockerenv.published_port(engine, "8080/tcp")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60)


def test_models_lists_the_alias(client):
    assert [m.id for m in client.models.list().data] == ["DeepSeek-R1"]


def test_chat_completion_non_streamed(client):
    reply = client.chat.completions.create(model="DeepSeek-R1", max_tokens=8,
                                           messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens >= 1


def test_chat_completion_streamed(client):
    stream = client.chat.completions.create(model="DeepSeek-R1", max_tokens=8, stream=True,
                                            messages=[{"role": "user", "content": "hello"}])
    chunks = [c for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 2 and text
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_split_model_loads_from_its_first_shard(llamacpp_image, docker_client, tiny_models):
    first = "/models/" + tiny_models["split_first"].relative_to(tiny_models["dir"]).as_posix()
    container = start_engine(docker_client, tiny_models, first)
    try:
        dockerenv.wait_healthy(container, timeout=180)
        port = dockerenv.published_port(container, "8080/tcp")
        split_client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60)
        reply = split_client.completions.create(model="DeepSeek-R1", prompt="hello", max_tokens=4)
        assert reply.usage.completion_tokens >= 1  # every layer, so every shard, took part
        props = httpx.get(f"http://127.0.0.1:{port}/props", timeout=10).json()
        assert props["model_path"] == first
    finally:
        container.kill()


def test_model_check_at_start_stops_a_missing_shard(llamacpp_image, tiny_models, tmp_path):
    broken = tmp_path / "Tiny-R1-F32"
    shutil.copytree(tiny_models["split_first"].parent, broken)
    (broken / "Tiny-R1-F32-00002-of-00003.gguf").unlink()
    tmp_path.chmod(0o755)
    done = subprocess.run(["docker", "run", "--rm", "-v", f"{tmp_path}:/models:ro",
                           "-e", "LLAMA_ARG_MODEL=/models/Tiny-R1-F32/Tiny-R1-F32-00001-of-00003.gguf", LLAMACPP_TAG],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ktappliance: model check: /models/Tiny-R1-F32/Tiny-R1-F32-00002-of-00003.gguf: missing (shard 2 of 3)"]


def test_missing_model_fails_with_one_line(llamacpp_image):
    done = subprocess.run(["docker", "run", "--rm", "-e", "LLAMA_ARG_MODEL=/models/absent.gguf", LLAMACPP_TAG],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model file /models/absent.gguf not found" in lines[0]


def test_runtime_image_is_lean_and_not_root(engine, llamacpp_image):
    host = testinfra.get_host(f"docker://{engine.id}")
    server = host.process.get(comm="llama-server")
    assert server.user == "llama"
    assert host.socket("tcp://0.0.0.0:8080").is_listening
    for tool in ("gcc", "cc", "cmake", "git", "ninja"):
        assert not host.exists(tool)
    assert not host.file("/build").exists
    labels = llamacpp_image.labels
    assert labels["ai.ktappliance.engine"] == "llamacpp" and labels["ai.ktappliance.target"] == "avx2"
    assert labels["ai.ktappliance.cuda"] == "none"
