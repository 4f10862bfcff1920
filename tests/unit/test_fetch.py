"""`model fetch --source hf` against files served from this machine (no hub
is reachable here): the files chosen for a quant, the layout written, resume
after an interrupted file, and the check that runs afterwards. Not reached:
ModelScope's and Hugging Face's real servers (authentication, xet storage,
mirrors); the test catalogue names the real repos, served locally."""

import json

import pytest

from support.hubserver import Hub
from support.tiny_gguf import write_model

from support.buildpy import assert_one_line_error, run_cli


@pytest.fixture
def hub_repos(tmp_path):
    weights = tmp_path / "hub" / "unsloth" / "DeepSeek-R1-GGUF"
    # 12 MiB in the last shard: more than one 10 MiB download chunk, so an
    # interrupted download has something on disk to resume from.
    write_model(weights / "DeepSeek-R1-UD-IQ1_S" / "DeepSeek-R1-UD-IQ1_S.gguf", split=3, padding_mib=12)
    write_model(weights / "DeepSeek-R1-Q4_K_M" / "DeepSeek-R1-Q4_K_M.gguf", split=2)
    (weights / "README.md").write_text("model card\n")
    config = tmp_path / "hub" / "deepseek-ai" / "DeepSeek-R1"
    config.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"}}))
    for name in ("tokenizer.json", "tokenizer_config.json", "configuration_deepseek.py"):
        (config / name).write_text("{}")
    (config / "model-00001-of-000163.safetensors").write_bytes(b"\0" * 4096)
    return {"unsloth/DeepSeek-R1-GGUF": weights, "deepseek-ai/DeepSeek-R1": config}


def fetch(hub, dest, *extra):
    return run_cli("model", "fetch", "--source", "hf", "--dir", str(dest), *extra,
                   env={"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                        "HF_HOME": str(dest.parent / "hf-home")})


def test_fetch_writes_the_layout_and_checks_it(tmp_path, hub_repos):
    with Hub(hub_repos) as hub:
        done = fetch(hub, tmp_path / "models")
    assert done.returncode == 0, done.stderr
    assert "checked ok" in done.stdout
    shards = sorted(p.name for p in (tmp_path / "models" / "gguf" / "DeepSeek-R1-UD-IQ1_S").glob("*.gguf"))
    assert shards == [f"DeepSeek-R1-UD-IQ1_S-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert not (tmp_path / "models" / "gguf" / "DeepSeek-R1-Q4_K_M").exists()  # only the chosen quant
    config = tmp_path / "models" / "config"
    assert (config / "config.json").is_file() and (config / "configuration_deepseek.py").is_file()
    assert not list(config.glob("*.safetensors"))  # the original weights are left out


def test_interrupted_file_resumes(tmp_path, hub_repos):
    big = "DeepSeek-R1-UD-IQ1_S-00003-of-00003.gguf"
    with Hub(hub_repos, interrupt={big: 11_000_000}) as hub:
        done = fetch(hub, tmp_path / "models")
        resumed = [r[2] for r in hub.requests if r[1] == big and r[0] == "GET" and r[2]]
    assert done.returncode == 0, done.stderr
    assert resumed and int(resumed[0].removeprefix("bytes=").rstrip("-")) > 0  # not from the start
    fetched = tmp_path / "models" / "gguf" / "DeepSeek-R1-UD-IQ1_S" / big
    assert fetched.read_bytes() == (hub_repos["unsloth/DeepSeek-R1-GGUF"] / "DeepSeek-R1-UD-IQ1_S" / big).read_bytes()


def test_corrupt_download_fails_the_check(tmp_path, hub_repos):
    shard = hub_repos["unsloth/DeepSeek-R1-GGUF"] / "DeepSeek-R1-UD-IQ1_S" / "DeepSeek-R1-UD-IQ1_S-00003-of-00003.gguf"
    shard.write_bytes(shard.read_bytes()[:-4096])  # the hub itself holds a truncated file
    with Hub(hub_repos) as hub:
        done = fetch(hub, tmp_path / "models")
    assert done.returncode == 1 and "check FAILED" in done.stdout
    assert any("truncated" in line for line in done.stderr.splitlines())


def test_unknown_repo_and_bad_options(tmp_path, hub_repos):
    with Hub(hub_repos) as hub:
        done = fetch(hub, tmp_path / "models", "--repo", "nobody/nothing", "--include", "*.gguf")
    # Where the files would go, then the one-line error.
    assert done.returncode != 0 and "Traceback" not in done.stderr
    said = done.stderr.strip().splitlines()
    assert len(said) == 2 and said[0].startswith("fetching nobody/nothing") and "download failed" in said[1]
    assert_one_line_error(run_cli("model", "fetch", "--dir", str(tmp_path), "--repo", "a/b"), "--repo needs --include")
    assert_one_line_error(run_cli("model", "fetch", "--dir", str(tmp_path), "--quant", "Q9"), "unknown quant 'Q9'")


def test_fetch_says_where_files_go_before_it_starts(tmp_path, hub_repos):
    # `--dir ../x` is followed as given; the absolute place is said first.
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    with Hub(hub_repos) as hub:
        done = run_cli("model", "fetch", "--source", "hf", "--dir", "../elsewhere", cwd=work,
                       env={"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                            "HF_HOME": str(tmp_path / "hf-home")})
    assert done.returncode == 0, done.stderr
    target = (tmp_path / "work" / "elsewhere").resolve()
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("fetching unsloth/DeepSeek-R1-GGUF") and f"into {target}/gguf" in first
    assert list((target / "gguf").rglob("*.gguf"))
