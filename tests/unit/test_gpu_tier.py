"""The GPU tier's parts that need no GPU: the tiny DeepSeek-V3 model it
serves, the resumable build, the one-line failure on a host without a GPU."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gguf
from ktappliance.models.modelcheck import check_model
from ktappliance.target.matrix import load_matrix, supported_types
from support import tiny_deepseek

from support.buildpy import REPO

MATRIX = load_matrix()


@pytest.fixture(scope="module")
def tiny_q4k(tmp_path_factory):
    return tiny_deepseek.write_model(tmp_path_factory.mktemp("tiny") / "model", "q4k_iq1s")


def test_tiny_deepseek_has_the_real_structure(tiny_q4k):
    reader = gguf.GGUFReader(tiny_q4k["gguf_file"])
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "deepseek2"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    shape = tiny_deepseek.SHAPE
    # Dense first layer, then MoE layers whose experts mix Q4_K and IQ1_S, as a dynamic quant does.
    assert "blk.0.ffn_gate.weight" in types and "blk.0.ffn_gate_exps.weight" not in types
    assert types["blk.1.ffn_gate_exps.weight"] == "Q4_K" and types["blk.2.ffn_down_exps.weight"] == "IQ1_S"
    assert "blk.1.exp_probs_b.bias" in types and "blk.1.ffn_up_shexp.weight" in types
    kv_a = next(t for t in reader.tensors if t.name == "blk.0.attn_kv_a_mqa.weight")
    assert list(kv_a.shape) == [shape.hidden, shape.kv_lora_rank + shape.qk_rope]
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.isfinite(values).all() and float(np.abs(values).max()) < 4, tensor.name
    config = json.loads((tiny_q4k["config"] / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["kv_lora_rank"] == 512
    assert (tiny_q4k["config"] / "configuration_deepseek.py").is_file()


def test_tiny_deepseek_passes_the_engine_start_check(tiny_q4k):
    line = MATRIX.lines["v0.2.3"]
    report = check_model(tiny_q4k["gguf"], config_dir=tiny_q4k["config"],
                         supported_types=set(supported_types(line, MATRIX.target("avx512"))), engine="v0.2.3")
    assert not report.problems, report.problems


def test_tiny_bf16_variant_is_refused_where_the_build_has_no_bf16(tmp_path):
    model = tiny_deepseek.write_model(tmp_path / "model", "bf16")
    target = MATRIX.target("avx512")
    report = check_model(model["gguf"], config_dir=model["config"], engine="v0.3.2 avx512",
                         supported_types=set(supported_types(MATRIX.lines["v0.3.2"], target)))
    assert any("BF16" in problem.message for problem in report.problems)
    amx = check_model(model["gguf"], config_dir=model["config"], engine="v0.3.2 amx",
                      supported_types=set(supported_types(MATRIX.lines["v0.3.2"], MATRIX.target("amx"))))
    assert not amx.problems, amx.problems


def test_tiny_tokenizer_round_trips_and_knows_the_chat_tokens(tiny_q4k):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(tiny_q4k["config"] / "tokenizer.json"))
    text = "<｜User｜>Why is the sky blue?<｜Assistant｜><think>\n"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.token_to_id("<think>") is not None and tokenizer.get_vocab_size() <= tiny_deepseek.SHAPE.vocab


def test_tiny_tokenizer_merges_are_strings_old_tokenizers_read(tiny_q4k):
    # v0.2.3 pins tokenizers 0.19, which fails on merges written as pairs
    # ("data did not match any variant of untagged enum ModelWrapper").
    merges = json.loads((tiny_q4k["config"] / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assert merges and all(isinstance(merge, str) and len(merge.split(" ")) == 2 for merge in merges)


def test_engine_figures_read_from_the_log_line_ktransformers_writes(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    from chat import engine_performance
    log = tmp_path / "engine.log"
    log.write_text("INFO base.py[65]: Performance(T/s): prefill 48.43982576092451, decode 10.153587090595677. "
                   "Time(s): tokenize 0.008, prefill 0.82, decode 2.95\n"
                   "INFO base.py[65]: Performance(T/s): prefill 446.9, decode 371.0. Time(s): tokenize 0.001\n")
    assert engine_performance(log, tmp_path / "no-such-dir") == {"engine_prefill_tok_s": 446.9, "engine_decode_tok_s": 371.0}


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="q4k_iq1s or bf16"):
        tiny_deepseek.write_model(tmp_path, "q2k")


def test_without_a_gpu_the_tier_fails_with_one_line(tmp_path):
    bare_path = str(tmp_path)  # no nvidia-smi on it
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PATH": bare_path}, timeout=120)
    assert done.returncode == 1, done.stdout
    lines = [line for line in done.stdout.splitlines() if "GPU tier:" in line]
    assert len(lines) == 1 and "no nvidia-smi" in lines[0], done.stdout
    assert "passed" not in done.stdout and "skipped" not in done.stdout


def run_build_script(tmp_path, resume: str):
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    (source / "setup.py").write_text("raise SystemExit('the compile itself is not under test')\n")
    work = tmp_path / "work"
    env = {"PATH": os.environ["PATH"], "CPU_INSTRUCT": "AVX2", "TORCH_CUDA_ARCH_LIST": "9.0",
           "KT_REQUIRED_FLAGS": "avx2 fma f16c", "KT_SOURCE": str(source), "KT_WORKDIR": str(work),
           "KT_WHEEL_DIR": str(tmp_path / "wheels"), "KT_VENV": str(tmp_path / "no-venv"), "KT_RESUME": resume}
    return subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh")], env=env,
                          capture_output=True, text=True), work


def test_build_resumes_only_a_tree_with_the_same_settings(tmp_path):
    first, work = run_build_script(tmp_path, "1")
    assert first.returncode != 0 and (work / ".ktappliance-settings").is_file()
    (work / "half-built.o").write_text("")
    again, _ = run_build_script(tmp_path, "1")
    assert "resuming" in again.stdout and (work / "half-built.o").exists()
    fresh, _ = run_build_script(tmp_path, "0")  # the default: a fresh tree every time
    assert "resuming" not in fresh.stdout and not (work / "half-built.o").exists()


def test_offline_host_needs_a_wheel_folder():
    done = subprocess.run(["sh", str(REPO / "tests/gpu/offline-host.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "offline-host.sh: name at least one wheel folder"


def test_building_ahead_without_a_gpu_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tests/gpu/gpuhost.py"), "v0.2.3"], capture_output=True,
                          text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0 and "GPU tier:" in done.stderr
