"""The compose files parse and wire the stack as documented (the stack tier
runs them for real)."""


import yaml

from support.buildpy import REPO

COMPOSE = REPO / "compose"


def load(name):
    return yaml.safe_load((COMPOSE / name).read_text())


def test_every_compose_file_parses():
    for path in COMPOSE.glob("docker-compose*.yml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_stack_wiring():
    services = load("docker-compose.yml")["services"]
    assert "ports" not in services["engine"]  # internal network only
    assert services["engine"]["networks"] == ["internal"]
    assert services["api"]["ports"] == ["${BIND_ADDRESS:-127.0.0.1}:${API_PORT:-10002}:10002"]
    assert services["api"]["depends_on"]["engine"]["condition"] == "service_healthy"
    webui = services["webui"]
    assert webui["environment"]["OPENAI_API_BASE_URL"].endswith("/v1")
    assert webui["volumes"] == ["webui-data:/app/backend/data"]
    env_file = (COMPOSE / webui["env_file"][0]).resolve()
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                    if line and not line.startswith("#"))
    assert settings["ENABLE_OLLAMA_API"] == "false" and settings["OFFLINE_MODE"] == "true"
    assert settings["ENABLE_TITLE_GENERATION"] == "false"
    assert services["fetch"]["profiles"] == ["fetch"]
    assert load("docker-compose.yml")["networks"]["internal"]["internal"] is True


def test_gpu_and_numa_overrides():
    gpu = load("docker-compose.gpu.yml")["services"]["engine"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == "all"
    assert load("docker-compose.numa.yml")["services"]["engine"]["cap_add"] == ["SYS_NICE"]
