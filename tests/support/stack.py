"""The compose stack the stack tier runs, as a user runs it: `build.py
configure` writes the settings, plain `docker compose up --wait` starts engine
+ API + Open-WebUI. One stack per test run, shared by the tier's modules.

Stand-ins: the llama.cpp CPU engine on the tiny GGUF model (no GPU here),
made to answer like DeepSeek-R1 (a <think> block, then the answer) by a
grammar (tests/stack/think.gbnf, through a compose override that only adds
the engine's arguments), and Open-WebUI built from PyPI (no ghcr.io here);
the compose file is the real one."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx

from support.netwait import free_port, wait_for_ok
from support.settings import API_TAG, LLAMACPP_TAG, WEBUI_TAG

REPO = Path(__file__).resolve().parents[2]
PROJECT = "kta-stack-test"
ADMIN = {"name": "Admin", "email": "admin@example.com", "password": "correct-horse-battery"}
OVERRIDE = REPO / "tests" / "stack" / "engine-reasoning.override.yml"
GRAMMAR = REPO / "tests" / "stack" / "think.gbnf"


def memlock_limit() -> str:
    """The stack asks for unlimited locked memory; a Docker daemon started
    under a lower hard limit (as here) can grant at most that."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return "-1" if hard == resource.RLIM_INFINITY else str(hard)


def compose(env_file: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "-p", PROJECT, "--env-file", str(env_file), *args],
                          cwd=REPO / "compose", capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ENGINE_MEMLOCK": memlock_limit(),
                               "COMPOSE_FILE": f"docker-compose.yml{os.pathsep}{OVERRIDE}"})


def engine_load_seconds(container_id: str) -> float:
    """From the engine container's start to its first passing healthcheck,
    as Docker recorded them."""
    state = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .State}}", container_id],
                                      capture_output=True, text=True, check=True).stdout)

    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
    passed = [entry for entry in state["Health"]["Log"] if entry["ExitCode"] == 0]
    return (parse(passed[0]["End"]) - parse(state["StartedAt"])).total_seconds()


def read_env(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))


def container(stack: dict, service: str) -> str:
    cid = compose(stack["env_file"], "ps", "-q", service).stdout.strip()
    assert cid, f"no {service} container"
    return cid


def signin(stack: dict) -> str:
    with httpx.Client(base_url=stack["webui"], timeout=60) as http:
        response = http.post("/api/v1/auths/signin", json={"email": ADMIN["email"], "password": ADMIN["password"]})
        if response.status_code != 200:
            response = http.post("/api/v1/auths/signup", json=ADMIN)
        assert response.status_code == 200, response.text
        return response.json()["token"]


def wait_healthy(url: str, timeout: float = 120) -> None:
    if not wait_for_ok(url, timeout):
        raise AssertionError(f"{url} did not come back within {timeout:.0f} s")


def run_stack(split_model_dir: Path, tmp_path_factory):
    """Configure and start the stack; yields its settings and URLs, then takes it down."""
    from support.buildpy import run_cli
    model_dir = tmp_path_factory.mktemp("stack-models")
    (model_dir / "gguf").mkdir()
    shutil.copytree(split_model_dir, model_dir / "gguf" / split_model_dir.name)
    shutil.copy(GRAMMAR, model_dir / GRAMMAR.name)
    for path in [model_dir, *model_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env_file = tmp_path_factory.mktemp("stack-env") / "stack.env"
    api_port, webui_port = free_port(), free_port()
    done = run_cli("configure", "--engine", "llamacpp", "--cpu-only", "--target", "avx2",
                   "--engine-image", LLAMACPP_TAG, "--api-image", API_TAG, "--webui-image", WEBUI_TAG,
                   "--model-dir", str(model_dir), "--gpus", "none", "--api-port", str(api_port),
                   "--webui-port", str(webui_port), "--ctx-size", "2048", "--env-file", str(env_file))
    assert done.returncode == 0, done.stderr
    compose(env_file, "down", "-v")
    started = time.monotonic()
    up = compose(env_file, "up", "-d", "--wait", "--wait-timeout", "600")
    took = time.monotonic() - started
    assert up.returncode == 0, up.stdout + up.stderr + compose(env_file, "logs", "--tail", "60").stdout
    info = {"env_file": env_file, "env": read_env(env_file), "api": f"http://127.0.0.1:{api_port}",
            "webui": f"http://127.0.0.1:{webui_port}", "up_seconds": took, "model_dir": model_dir}
    engine_load = engine_load_seconds(compose(env_file, "ps", "-q", "engine").stdout.strip())
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "stack-timing.json").write_text(json.dumps({
        "up_to_healthy_s": round(took, 1), "engine_start_to_healthy_s": round(engine_load, 1),
        "stack_overhead_s": round(took - engine_load, 1)}))
    try:
        yield info
    finally:
        compose(env_file, "down", "-v")
