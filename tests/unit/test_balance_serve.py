"""balance_serve, the multi-request backend: how it is chosen, sized, built
and started (the parts that need no Docker and no GPU)."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from ktappliance.models import catalogue

from ktappliance.models import fit as sizing
from ktappliance.errors import ApplianceError
from ktappliance.target.matrix import load_matrix
from ktappliance.image.plan import make_plan
from ktappliance.image.render import render
from support import isa

from support.buildpy import REPO, assert_one_line_error, run_cli

MATRIX = load_matrix()
PATCHES = REPO / "images" / "engine" / "patches"
GB = 1000**3
R1 = catalogue.model_entry("deepseek-r1")


def plan_for(target="amx", line=None, cuda=None, backend=None):
    return make_plan(MATRIX.select(target, line, cuda, False, backend), default_arch_list="9.0")


def test_patches_follow_the_backend_and_the_cuda_toolkit():
    assert plan_for(backend="single").patches == ()
    patches = plan_for().patches
    assert "v0.3.2-balance-serve-loopback.patch" in patches and "v0.3.2-balance-serve-target-flags.patch" in patches
    assert "custom-flashinfer-cuda13-sampling.patch" not in patches  # CUDA 12 compiles the sampler as it is
    assert "custom-flashinfer-cuda13-sampling.patch" in plan_for(cuda="13.0").patches
    env = plan_for().compile_env()
    assert env["KT_BALANCE_SERVE"] == "1" and env["KT_PATCHES"] == " ".join(patches)
    assert env["KT_TARGET_CFLAGS"] == " ".join(MATRIX.target("amx").machine_flags)
    assert plan_for(backend="single").compile_env()["KT_BALANCE_SERVE"] == "0"


def test_every_patch_the_matrix_names_is_there_and_says_why():
    named = {p.file for line in MATRIX.lines.values() if line.balance_serve for p in line.balance_serve.patches}
    assert named == {p.name for p in PATCHES.glob("*.patch")}
    for name in named:
        text = (PATCHES / name).read_text()
        assert text.startswith("ktappliance patch for KTransformers") and "\nWhy: " in text, name


@pytest.mark.skipif(not (REPO.parent / "shared" / "sources" / "ktransformers-v0.3.2.tar.gz").is_file(),
                    reason="upstream's v0.3.2 tree is in ../shared/sources only; the image builds apply them too")
def test_the_patches_apply_to_upstreams_tree(tmp_path):
    with tarfile.open(REPO.parent / "shared" / "sources" / "ktransformers-v0.3.2.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    tree = next(tmp_path.iterdir())
    for patch in plan_for(cuda="13.0").patches:
        done = subprocess.run(["patch", "-d", str(tree), "-p1", "--forward", "--batch"],
                              stdin=open(PATCHES / patch), capture_output=True, text=True)
        assert done.returncode == 0, (patch, done.stdout, done.stderr)
    cmake = "".join((tree / "csrc" / "balance_serve" / path / "CMakeLists.txt").read_text()
                    for path in ("", "kvc2", "sched"))
    assert "-march=native" not in "\n".join(l for l in cmake.splitlines() if not l.lstrip().startswith("#"))
    rpc = (tree / "ktransformers/server/balance_serve/sched_rpc.py").read_text()
    assert "tcp://127.0.0.1:" in rpc and "tcp://*" not in rpc
    for source in ("csrc/balance_serve/sched/scheduler.cpp", "csrc/balance_serve/kvc2/src/prefix.cpp"):
        assert '"0.0.0.0:"' not in (tree / source).read_text()
    rule = yaml.safe_load((tree / "ktransformers/optimize/optimize_rules/DeepSeek-V3-Chat-serve-amx.yaml").read_text())
    experts = next(r for r in rule if r["match"].get("name") == "^model\\.layers\\..*\\.mlp\\.experts$")
    assert experts["replace"]["kwargs"]["backend"] == "AMXInt8"


def test_the_rendered_engine_builds_balance_serve_with_its_packages(tmp_path):
    plan = plan_for(cuda="12.4")
    text = render(plan, tmp_path).dockerfile.read_text()
    assert 'KT_BALANCE_SERVE="1"' in text and "COPY scripts/engine/patches" in text
    assert "libaio-dev" in text and "pyzmq" in text and 'KT_BACKEND="balance_serve"' in text
    assert (tmp_path / plan.image_tag.split("/")[-1].replace(":", "-") / "scripts/engine/patches").is_dir()
    single = render(plan_for(cuda="12.4", backend="single"), tmp_path / "single").dockerfile.read_text()
    assert 'KT_BALANCE_SERVE="0"' in single and "libaio-dev" not in single and 'KT_BACKEND="single"' in single


def test_labels_name_the_backend_and_the_patches():
    labels = plan_for().labels()
    assert labels["ai.ktappliance.backend"] == "balance_serve"
    assert "v0.3.2-balance-serve-loopback.patch" in labels["ai.ktappliance.patches"]
    assert plan_for(backend="single").labels()["ai.ktappliance.patches"] == "none"


@pytest.mark.parametrize("vram_gb, max_new, lens, batch, chunk", [
    (24, 8192, 113664, 8, 256),       # (24 - 14 - 2) GB / 70272 bytes a token; at most 8 at once
    (24, 16384, 113664, 6, 256),
    (80, 8192, 131072, 8, 512),
    (16.5, 8192, 6144, 1, 256),       # one long answer at a time
])
def test_serve_settings_keep_upstreams_rule(vram_gb, max_new, lens, batch, chunk):
    settings, notes = sizing.serve_settings(R1, vram_gb * GB, 400 * GB, max_new)
    assert settings["cache_lens"] == lens
    assert settings["max_batch_size"] == batch and settings["chunk_size"] == chunk
    # cache_lens > max_batch_size x max_new_tokens, or concurrency quietly drops
    assert settings["cache_lens"] > settings["max_batch_size"] * max_new or batch == 1
    if batch == 1:
        assert any("one at a time" in note for note in notes)
    assert settings["kvc2_ram_gb"] == 64


def test_kvc2_ram_is_what_the_weights_leave_and_never_upstreams_500():
    assert sizing.serve_settings(R1, 24 * GB, 40 * GB, 8192)[0]["kvc2_ram_gb"] == 10
    assert sizing.serve_settings(R1, 24 * GB, -5 * GB, 8192)[0]["kvc2_ram_gb"] == 1
    assert sizing.serve_settings(R1, 24 * GB, None, 8192)[0]["kvc2_ram_gb"] == 1


def test_serve_rule_takes_amx_only_with_bf16_weights():
    assert sizing.serve_rule(True, True) == ("DeepSeek-V3-Chat-serve-amx.yaml", None)
    rule, why = sizing.serve_rule(True, False)
    assert rule == "DeepSeek-V3-Chat-serve.yaml" and "BF16" in why
    assert sizing.serve_rule(False, True) == ("DeepSeek-V3-Chat-serve.yaml", None)
    served = MATRIX.lines["v0.3.2"].balance_serve.optimize_rules
    assert {"DeepSeek-V3-Chat-serve.yaml", "DeepSeek-V3-Chat-serve-amx.yaml"} == set(served)


def test_plan_sizes_the_batch_for_the_h200_host(hosts_dir):
    done = run_cli("plan", "--from", str(hosts_dir / "xeon-amx-h200-1s"), "--json")
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)["settings"]
    assert settings["backend"] == "balance_serve" and settings["optimize_rule"] == "DeepSeek-V3-Chat-serve.yaml"
    assert settings["max_batch_size"] == 8 and settings["cache_lens"] > 8 * settings["max_new_tokens"]
    single = json.loads(run_cli("plan", "--from", str(hosts_dir / "xeon-amx-h200-1s"), "--backend", "single",
                                "--json").stdout)["settings"]
    assert single["backend"] == "single" and "max_batch_size" not in single


@pytest.mark.parametrize("args, fragment", [
    (["--target", "avx2", "--backend", "balance_serve"], "balance_serve needs --line v0.3.2"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--engine", "llamacpp", "--backend", "single"], "--backend is for KTransformers"),
])
def test_plan_bad_backend_input_is_one_line(hosts_dir, args, fragment):
    assert_one_line_error(run_cli("plan", "--from", str(hosts_dir / "xeon-amx-h200-1s"), *args), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--target", "avx2", "--backend", "balance_serve"], "balance_serve needs --line v0.3.2"),
    (["--engine", "llamacpp", "--target", "avx2", "--cpu-only", "--backend", "single"], "--backend is for KTransformers"),
])
def test_build_bad_backend_input_is_one_line(tmp_path, args, fragment):
    assert_one_line_error(run_cli("render", *args, "--out", str(tmp_path)), fragment)
    assert not any(tmp_path.iterdir())


def test_configure_writes_the_batch_for_engine_and_api(tmp_path, hosts_dir):
    done = run_cli("configure", "--from", str(hosts_dir / "xeon-amx-h200-1s"), "--env-file", str(tmp_path / "s.env"),
                   "--model-dir", str(tmp_path / "models"), "--max-new-tokens", "4096")
    assert done.returncode == 0, done.stderr
    from ktappliance.stack.env import read_env
    env, engine = read_env(tmp_path / "s.env"), read_env(tmp_path / "s.env.engine")
    assert engine["KT_BACKEND"] == "balance_serve" and engine["KT_MAX_NEW_TOKENS"] == "4096"
    assert engine["KT_OPTIMIZE_RULE"] == "DeepSeek-V3-Chat-serve.yaml"
    assert int(engine["KT_CACHE_LENS"]) > int(engine["KT_MAX_BATCH_SIZE"]) * 4096
    assert env["API_MAX_INFLIGHT"] == engine["KT_MAX_BATCH_SIZE"] == "8"
    assert engine["KT_KVC2_RAM_GB"] and engine["KT_CHUNK_SIZE"] == "512"
    run_cli("configure", "--from", str(hosts_dir / "xeon-amx-h200-1s"), "--env-file", str(tmp_path / "s.env"),
            "--model-dir", str(tmp_path / "models"), "--backend", "single")
    env, engine = read_env(tmp_path / "s.env"), read_env(tmp_path / "s.env.engine")
    assert engine["KT_BACKEND"] == "single" and env["API_MAX_INFLIGHT"] == "1"
    assert "KT_MAX_BATCH_SIZE" not in engine and env["ENGINE_IMAGE"].endswith("-single")


def test_detect_says_where_concurrency_comes_from(hosts_dir):
    zen4 = run_cli("detect", "--from", str(hosts_dir / "epyc-zen4-2c"))
    assert "several at once (balance_serve) come with --line v0.3.2" in zen4.stdout
    amx = json.loads(run_cli("detect", "--from", str(hosts_dir / "xeon-amx-h200-1s"), "--json").stdout)
    assert amx["concurrency"]["backend"] == "balance_serve"


def test_a_line_listing_balance_serve_needs_its_section(tmp_path):
    raw = yaml.safe_load((REPO / "ktappliance" / "target" / "targets.yaml").read_text())
    del raw["lines"]["v0.3.2"]["balance_serve"]
    bad = tmp_path / "targets.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ApplianceError, match="lines.v0.3.2.balance_serve"):
        load_matrix(bad)
    raw["lines"]["v0.3.2"]["backends"] = ["turbo"]
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ApplianceError, match="turbo"):
        load_matrix(bad)


def kt_user_config(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "images/engine/kt-user-config.py"), *args],
                          env={**os.environ, "HOME": str(home)}, capture_output=True, text=True)


def test_kvc2_settings_land_in_the_users_config_and_nothing_else_changes(tmp_path):
    store = tmp_path / ".ktransformers"
    store.mkdir()
    (store / "config.yaml").write_text(yaml.safe_dump({
        "kvc2": {"gpu_only": False, "cpu_memory_size_GB": 500, "disk_path": "/mnt/data/kvc"},
        "server": {"port": 10002}, "mine": "kept"}))
    done = kt_user_config(tmp_path, "--kvc2", "12")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((store / "config.yaml").read_text())
    assert config["kvc2"]["cpu_memory_size_GB"] == 12
    assert config["kvc2"]["disk_path"] == str(store / "kvc2-cache") and (store / "kvc2-cache").is_dir()
    assert config["mine"] == "kept" and config["kvc2"]["gpu_only"] is False


@pytest.mark.parametrize("value", ["0", "-3", "lots", "nan"])
def test_bad_kvc2_ram_is_one_line(tmp_path, value):
    store = tmp_path / ".ktransformers"
    store.mkdir()
    (store / "config.yaml").write_text("kvc2: {cpu_memory_size_GB: 500}\n")
    done = kt_user_config(tmp_path, "--kvc2", value)
    assert done.returncode == 2 and "KT_KVC2_RAM_GB" in done.stderr and "Traceback" not in done.stderr
    assert "500" in (store / "config.yaml").read_text()


SNIPPET = r"""
#include <immintrin.h>
__m512h fp16(__m512h a, __m512h b) { return _mm512_add_ph(a, b); }
__m512i vbmi(__m512i a, __m512i b) { return _mm512_permutexvar_epi8(a, b); }
__m256i avx_vnni(__m256i s, __m256i a, __m256i b) { return _mm256_dpbusd_avx_epi32(s, a, b); }
__m512i vnni(__m512i s, __m512i a, __m512i b) { return _mm512_dpbusd_epi32(s, a, b); }
void tile(void *cfg, void *p) { _tile_loadconfig(cfg); _tile_loadd(0, p, 64); _tile_dpbssd(2, 0, 1); _tile_stored(2, p, 64); }
__m256 avx2(__m256 a, __m256 b) { return _mm256_fmadd_ps(a, b, a); }
"""


def compiled(tmp_path, flags: list[str], source: str = SNIPPET) -> str:
    (tmp_path / "s.c").write_text(source)
    subprocess.run(["gcc", "-O2", "-c", *flags, str(tmp_path / "s.c"), "-o", str(tmp_path / "s.o")], check=True)
    return isa.disassemble(tmp_path / "s.o")


def test_the_isa_check_sees_what_march_native_brings_on_a_sapphire_rapids(tmp_path):
    code = compiled(tmp_path, ["-march=sapphirerapids"])
    beyond = isa.beyond_target(code, set(MATRIX.target("amx").requires))
    assert set(beyond) == {"avx512_fp16", "avx512_vbmi", "avx_vnni"}
    used = isa.extensions_used(code)
    assert {"avx512f", "avx512_vnni", "amx_tile", "amx_int8"} <= set(used)


def test_the_isa_check_passes_code_built_with_the_targets_flags(tmp_path):
    avx2 = compiled(tmp_path, list(MATRIX.target("avx2").machine_flags),
                    "#include <immintrin.h>\n__m256 f(__m256 a, __m256 b) { return _mm256_fmadd_ps(a, b, a); }\n")
    assert isa.beyond_target(avx2, set(MATRIX.target("avx2").requires)) == {}
    assert isa.beyond_target(avx2, set()) == {}  # AVX2 and FMA have no signature: the baseline of every target
    wide = compiled(tmp_path, list(MATRIX.target("avx512").machine_flags),
                    "#include <immintrin.h>\n__m512 f(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }\n")
    assert isa.beyond_target(wide, set(MATRIX.target("avx2").requires)) == {"avx512f": "vaddps %zmm1,%zmm0,%zmm0"}


def test_the_autodl_bundle_carries_the_values_the_image_is_built_and_stamped_with(tmp_path):
    done = run_cli("--target", "amx", "--autodl", "--bundle", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "autodl" / "ktappliance-autodl-ktransformers-amx.tar.gz") as tar:
        text = tar.extractfile("ktappliance-autodl/bundle.env").read().decode()
    import shlex
    values = {k: shlex.split(v)[0] if v else "" for k, _, v in (line.partition("=") for line in text.splitlines())}
    plan = make_plan(MATRIX.select("amx"), default_arch_list=MATRIX.torch_cuda_arch_list)
    for key, value in {**plan.compile_env(), **plan.install_env(), **plan.runtime_env()}.items():
        assert values[key] == value, key
    assert values["KT_BALANCE_SERVE"] == "1" and values["KT_BACKEND"] == "balance_serve"


def test_the_llamacpp_bundle_installs_the_images_package_lists(tmp_path):
    done = run_cli("--engine", "llamacpp", "--target", "avx2", "--cpu-only", "--autodl", "--bundle", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with tarfile.open(next((tmp_path / "autodl").glob("*.tar.gz"))) as tar:
        text = tar.extractfile("ktappliance-autodl/bundle.env").read().decode()
        setup = tar.extractfile("ktappliance-autodl/setup.sh").read().decode()
    import shlex
    values = {k: shlex.split(v)[0] if v else "" for k, _, v in (line.partition("=") for line in text.splitlines())}
    assert values["LLAMA_APT_BUILD"].split() == list(MATRIX.llamacpp.apt_build)
    assert values["LLAMA_APT_RUNTIME"].split() == list(MATRIX.llamacpp.apt_runtime)
    assert "apt-install.sh\" $LLAMA_APT_BUILD $LLAMA_APT_RUNTIME" in setup
