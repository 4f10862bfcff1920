"""compose/.env writing: private, complete, keys kept across runs."""

import pytest

from ktappliance.errors import ApplianceError
from ktappliance.stack.env import StackSettings, read_env, write_stack_env

from support.buildpy import run_cli


def settings(tmp_path, **overrides):
    base = dict(engine="llamacpp", engine_image="e:1", model_dir=tmp_path / "models", api_image="a:1",
                webui_image="w:1", engine_env={"LLAMA_ARG_MODEL": "/models/gguf/x.gguf"}, gpus="none")
    return StackSettings(**{**base, **overrides})


def test_private_files_and_kept_keys(tmp_path):
    env_file = write_stack_env(settings(tmp_path), tmp_path / "stack.env", compose_dir=tmp_path)
    first = read_env(env_file)
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "stack.env.engine").stat().st_mode & 0o777 == 0o600
    assert first["ENGINE_PORT"] == "8080" and first["COMPOSE_FILE"] == "docker-compose.yml"
    again = read_env(write_stack_env(settings(tmp_path, engine_image="e:2"), env_file, compose_dir=tmp_path))
    assert again["API_KEY"] == first["API_KEY"] and again["WEBUI_SECRET_KEY"] == first["WEBUI_SECRET_KEY"]
    assert again["ENGINE_IMAGE"] == "e:2"


def test_gpu_ids_and_numa_overrides(tmp_path):
    env = read_env(write_stack_env(settings(tmp_path, engine="ktransformers", gpus="0,2", numa=True),
                                   tmp_path / "stack.env", compose_dir=tmp_path))
    assert env["COMPOSE_FILE"] == "docker-compose.yml:docker-compose.gpu-ids.yml:docker-compose.numa.yml"
    assert "device_ids: ['0', '2']" in (tmp_path / "docker-compose.gpu-ids.yml").read_text()
    assert env["ENGINE_PORT"] == "10002"


@pytest.mark.parametrize("gpus", ["first", "0;1"])
def test_bad_gpu_selection(tmp_path, gpus):
    with pytest.raises(ApplianceError, match="--gpus"):
        write_stack_env(settings(tmp_path, gpus=gpus), tmp_path / "stack.env", compose_dir=tmp_path)


def test_configure_cli_for_a_ktransformers_host(tmp_path, hosts_dir):
    done = run_cli("configure", "--from", str(hosts_dir / "xeon-amx-h200-1s"), "--env-file", str(tmp_path / "s.env"),
                   "--model-dir", str(tmp_path / "models"))
    assert done.returncode == 0, done.stderr
    env = read_env(tmp_path / "s.env")
    engine = read_env(tmp_path / "s.env.engine")
    assert env["ENGINE_IMAGE"] == "ktappliance/engine:v0.3.2-amx-cu126-nonuma-balance_serve"
    assert env["COMPOSE_FILE"] == "docker-compose.yml:docker-compose.gpu.yml"
    assert engine["KT_GGUF_PATH"] == "/models/gguf/DeepSeek-R1-UD-IQ1_S" and engine["KT_CPU_INFER"] == "14"


def test_the_users_own_lines_survive_a_rebuild(tmp_path):
    env_file = write_stack_env(settings(tmp_path), tmp_path / "stack.env", compose_dir=tmp_path)
    with open(env_file, "a") as handle:
        handle.write("\n# the daemon caps locked memory here\nENGINE_MEMLOCK=68719476736\nMY_NOTE=keep me\n")
    with open(tmp_path / "stack.env.engine", "a") as handle:
        handle.write("LLAMA_ARG_THREADS=12\n")
    before = read_env(env_file)
    write_stack_env(settings(tmp_path, engine_image="e:2"), env_file, compose_dir=tmp_path)
    text = env_file.read_text()
    after = read_env(env_file)
    assert after["ENGINE_MEMLOCK"] == "68719476736" and after["MY_NOTE"] == "keep me"
    assert "# the daemon caps locked memory here" in text
    assert after["ENGINE_IMAGE"] == "e:2" and after["API_KEY"] == before["API_KEY"]
    assert text.count("ENGINE_IMAGE=") == 1
    assert read_env(tmp_path / "stack.env.engine")["LLAMA_ARG_THREADS"] == "12"
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_keys_the_tool_no_longer_owns_leave_with_its_block(tmp_path):
    write_stack_env(settings(tmp_path), tmp_path / "stack.env", compose_dir=tmp_path)
    write_stack_env(settings(tmp_path, engine="ktransformers", engine_env={"KT_CPU_INFER": "14"}),
                    tmp_path / "stack.env", compose_dir=tmp_path)
    engine = read_env(tmp_path / "stack.env.engine")
    assert engine == {"KT_CPU_INFER": "14"}


def test_a_file_from_before_the_markers_keeps_the_users_lines(tmp_path):
    env_file = tmp_path / "stack.env"
    env_file.write_text("# Written by ktappliance: the stack's settings and keys (mode 0600).\n"
                        "ENGINE_IMAGE=old:1\nAPI_KEY=sk-kta-kept\nENGINE_MEMLOCK=1024\n")
    write_stack_env(settings(tmp_path), env_file, compose_dir=tmp_path)
    env = read_env(env_file)
    assert env["ENGINE_MEMLOCK"] == "1024" and env["API_KEY"] == "sk-kta-kept" and env["ENGINE_IMAGE"] == "e:1"
