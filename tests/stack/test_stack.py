"""The compose stack end to end (tests/support/stack.py starts it as a user
does): requests go UI -> API -> engine, settings and accounts survive, the
services are hardened."""

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import testinfra

from support.buildpy import REPO, run_cli
from support.stack import compose, container, memlock_limit, signin

pytestmark = pytest.mark.stack


def test_settings_file_is_private_and_complete(stack):
    assert stack["env_file"].stat().st_mode & 0o777 == 0o600
    assert Path(stack["env"]["ENGINE_ENV_FILE"]).stat().st_mode & 0o777 == 0o600
    assert stack["env"]["API_KEY"].startswith("sk-kta-")


def test_chat_through_open_webui_reaches_the_engine(stack):
    token = signin(stack)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack["webui"], headers=headers, timeout=120) as http:
        models = http.get("/api/models").json()["data"]
        assert "DeepSeek-R1" in [m["id"] for m in models]
        body = {"model": "DeepSeek-R1", "stream": True, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hello"}]}
        text = ""
        with http.stream("POST", "/api/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    for choice in event.get("choices", []):
                        text += (choice.get("delta") or {}).get("content") or ""
        assert text
    metrics = httpx.get(stack["api"] + "/metrics",
                        headers={"Authorization": f"Bearer {stack['env']['API_KEY']}"}).text
    assert 'kta_api_requests_total{endpoint="chat",status="200"}' in metrics  # it went through the API


def test_open_webui_points_nothing_at_a_route_the_api_lacks(stack):
    # The API serves no embeddings: Open-WebUI must neither call /v1/embeddings
    # nor load a local model; documents go into the prompt whole.
    headers = {"Authorization": f"Bearer {signin(stack)}"}
    embedding = httpx.get(stack["webui"] + "/api/v1/retrieval/embedding", headers=headers, timeout=60).json()
    assert embedding["RAG_EMBEDDING_ENGINE"] == "" and embedding["RAG_EMBEDDING_MODEL"] == ""
    assert "api:10002" not in embedding["openai_config"]["url"]
    retrieval = httpx.get(stack["webui"] + "/api/v1/retrieval/config", headers=headers, timeout=60).json()
    assert retrieval["BYPASS_EMBEDDING_AND_RETRIEVAL"] is True
    refused = httpx.post(stack["api"] + "/v1/embeddings", json={"model": "DeepSeek-R1", "input": "x"},
                         headers={"Authorization": f"Bearer {stack['env']['API_KEY']}"})
    assert refused.status_code == 404 and "no embeddings model" in refused.json()["error"]["message"]


def test_openai_client_through_the_api(stack):
    client = openai.OpenAI(base_url=stack["api"] + "/v1", api_key=stack["env"]["API_KEY"], timeout=60)
    reply = client.chat.completions.create(model="DeepSeek-R1", max_tokens=8,
                                           messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content is not None


def test_api_refuses_without_the_key(stack):
    response = httpx.post(stack["api"] + "/v1/chat/completions",
                          json={"model": "DeepSeek-R1", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_engine_is_not_published(stack):
    assert compose(stack["env_file"], "port", "engine", "8080").stdout.strip() == ""
    ports = subprocess.run(["docker", "port", container(stack, "engine")], capture_output=True, text=True).stdout
    assert ports.strip() == ""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 8080), timeout=2).close()


def test_containers_with_testinfra(stack):
    engine = testinfra.get_host(f"docker://{container(stack, 'engine')}")
    assert engine.process.get(comm="llama-server").user == "llama"
    assert "ro" in engine.mount_point("/models").options
    assert engine.socket("tcp://0.0.0.0:8080").is_listening
    api = testinfra.get_host(f"docker://{container(stack, 'api')}")
    assert api.process.get(comm="python").user == "kta"
    assert api.socket("tcp://0.0.0.0:10002").is_listening
    webui = testinfra.get_host(f"docker://{container(stack, 'webui')}")
    assert webui.user().name == "webui"
    assert webui.socket("tcp://0.0.0.0:8080").is_listening
    assert webui.mount_point("/app/backend/data").exists


def test_account_and_chats_survive_down_and_up(stack):
    token = signin(stack)
    headers = {"Authorization": f"Bearer {token}"}
    title = "kept-" + uuid.uuid4().hex[:6]
    chat = {"chat": {"title": title, "models": ["DeepSeek-R1"],
                     "messages": [{"role": "user", "content": "hello"}]}}
    response = httpx.post(stack["webui"] + "/api/v1/chats/new", json=chat, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert compose(stack["env_file"], "down").returncode == 0
    up = compose(stack["env_file"], "up", "-d", "--wait", "--wait-timeout", "600")
    assert up.returncode == 0, up.stderr
    token = signin(stack)  # signin, not signup: the account is still there
    chats = httpx.get(stack["webui"] + "/api/v1/chats/", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert title in [c["title"] for c in chats.json()]


def inspect(cid: str) -> dict:
    return json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True, check=True).stdout)[0]


def test_services_are_hardened_and_the_key_is_a_file(stack):
    for service in ("engine", "api", "webui"):
        host_config = inspect(container(stack, service))["HostConfig"]
        assert "ALL" in (host_config["CapDrop"] or []), service
        assert "no-new-privileges:true" in (host_config["SecurityOpt"] or []), service
    api = inspect(container(stack, "api"))
    assert api["HostConfig"]["ReadonlyRootfs"] is True
    key = stack["env"]["API_KEY"]
    assert not any(key in item for item in api["Config"]["Env"])  # not in what `docker inspect` shows
    host = testinfra.get_host(f"docker://{container(stack, 'api')}")
    assert host.file("/run/secrets/api_key").content_string.strip() == key
    key_file = Path(stack["env"]["API_KEY_FILE"])
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.parent.stat().st_mode & 0o777 == 0o700


def test_a_refusal_no_restart_can_fix_stops_the_engine_for_good(stack, tmp_path):
    # The stack's own settings, with a model directory that lost its second shard.
    import shutil
    broken = tmp_path / "broken-models"
    shutil.copytree(stack["model_dir"], broken)
    next(broken.rglob("*-00002-of-00003.gguf")).unlink()
    env_file = tmp_path / "broken.env"
    env_file.write_text("\n".join(f"MODEL_DIR={broken}" if line.startswith("MODEL_DIR=") else line
                                  for line in stack["env_file"].read_text().splitlines()) + "\n")
    project = ["docker", "compose", "-p", "kta-refusal-test", "--env-file", str(env_file)]
    run = dict(cwd=REPO / "compose", capture_output=True, text=True, timeout=300,
               env={**os.environ, "ENGINE_MEMLOCK": memlock_limit()})
    try:
        assert subprocess.run([*project, "up", "-d", "engine"], **run).returncode == 0
        time.sleep(15)  # restart: on-failure would have started it again by now
        cid = subprocess.run([*project, "ps", "-a", "-q", "engine"], **run).stdout.strip()
        state = inspect(cid)
        assert state["State"]["Status"] == "exited" and state["State"]["ExitCode"] == 0
        assert state["RestartCount"] == 0
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr.strip().splitlines()
        assert len(logs) == 1 and "missing (shard 2 of 3)" in logs[0], logs
    finally:
        subprocess.run([*project, "down", "-v"], **run)


def test_bench_command_loads_the_stack_like_its_users(stack):
    # Two users, a request each every half second, through the API with the
    # key from the stack's own env file, as a user runs it on their box.
    done = run_cli("bench", "--env-file", str(stack["env_file"]), "--users", "2", "--interval", "0.5",
                   "--requests", "6", "--max-tokens", "12", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requests"] == 6 and report["completed"] == 6 and report["errors"] == 0, report
    assert report["ttft_p50_s"] > 0 and report["ttft_p95_s"] >= report["ttft_p50_s"]
    assert set(report["per_user_decode_tokens_per_s"]) == {"0", "1"} and report["total_tokens_per_s"] > 0
    assert all(rate > 0 for rate in report["per_user_end_to_end_tokens_per_s"].values())
    assert set(report["per_user_end_to_end_tokens_per_s"]) == {"0", "1"}
    assert "6/6 done, 0 failed" in done.stderr  # the progress it shows as it goes
    wrong_key = run_cli("bench", "--env-file", str(stack["env_file"]), "--key", "not-the-key", "--requests", "2",
                        "--users", "1", "--json")
    assert wrong_key.returncode == 1 and json.loads(wrong_key.stdout)["error_kinds"] == {"HTTP 401": 2}
