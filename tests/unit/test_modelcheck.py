"""`model check` on real GGUF files made small with the gguf package, and on
corrupted copies of them. Each problem is one line naming the file."""

import json
import shutil
import struct
import time

import gguf
import numpy as np
import pytest

from ktappliance.target.matrix import supported_types
from ktappliance.models.modelcheck import TYPES, check_model
from support.tiny_gguf import write_model

from support.buildpy import run_cli


@pytest.fixture
def models(tmp_path):
    split = write_model(tmp_path / "Tiny-R1-F32" / "Tiny-R1-F32.gguf", split=3)
    single = write_model(tmp_path / "single" / "tiny-r1.gguf")[0]
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({
        "architectures": ["DeepseekV3ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                     "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}}))
    for name in ("tokenizer.json", "tokenizer_config.json", "configuration_deepseek.py", "modeling_deepseek.py"):
        (config / name).write_text("{}")
    return {"split": split, "single": single, "config": config, "dir": split[0].parent}


def lines(report):
    return [p.line() for p in report.problems]


def test_type_table_matches_gguf():
    for type_id, (name, block, size) in TYPES.items():
        quant = gguf.GGMLQuantizationType(type_id)
        assert quant.name == name and gguf.GGML_QUANT_SIZES[quant] == (block, size)


def test_good_split_model_passes_fast(models):
    started = time.monotonic()
    report = check_model(models["split"][0], config_dir=models["config"], supported_types={"F32"},
                         expected_arch="llama")
    assert report.ok, lines(report)
    assert time.monotonic() - started < 1.0
    assert [s.split_no for s in report.shards] == [0, 1, 2]
    assert sum(s.tensor_count for s in report.shards) == 30
    assert check_model(models["dir"]).ok  # the directory works as well as the first shard


def test_truncated_shard(models):
    second = models["split"][1]
    data = second.read_bytes()
    second.write_bytes(data[: len(data) - 1000])
    assert lines(check_model(models["split"][0])) == [
        f"{second}: truncated: tensor data ends at byte {len(data)}, the file has {len(data) - 1000}"]


def test_missing_shard(models):
    models["split"][2].unlink()
    assert lines(check_model(models["split"][0])) == [f"{models['split'][2]}: missing (shard 3 of 3)"]


def test_wrong_magic(models):
    path = models["single"]
    data = bytearray(path.read_bytes())
    data[:4] = b"GGML"
    path.write_bytes(bytes(data))
    (problem,) = lines(check_model(path))
    assert problem.startswith(f"{path}: not a GGUF file")


def test_header_cut_short(models):
    path = models["single"]
    path.write_bytes(path.read_bytes()[:100])
    [line] = lines(check_model(path))
    assert line.startswith(f"{path}: truncated")


def test_mismatched_split_count(models, tmp_path):
    # Rename the shards as if the set had 4 files: metadata says 3.
    renamed = []
    for shard in models["split"]:
        target = shard.with_name(shard.name.replace("-of-00003", "-of-00004"))
        shard.rename(target)
        renamed.append(target)
    problems = lines(check_model(renamed[0]))
    assert f"{renamed[0]}: split.count is 3, the file name says 4" in problems
    assert any("missing (shard 4 of 4)" in p for p in problems)


def test_disagreeing_split_tensor_counts(models):
    first = models["split"][0]
    data = first.read_bytes()
    # split.tensors.count is an i32 right after its key; patch 30 -> 31.
    key = b"split.tensors.count"
    at = data.index(key) + len(key) + 4
    assert struct.unpack("<i", data[at:at + 4])[0] == 30
    first.write_bytes(data[:at] + struct.pack("<i", 31) + data[at + 4:])
    problems = lines(check_model(first))
    assert any("disagree on split.tensors.count" in p for p in problems)


def test_unsupported_tensor_type(tmp_path):
    path = tmp_path / "iq3.gguf"
    writer = gguf.GGUFWriter(path, "deepseek2")
    _, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ3_XXS]
    writer.add_tensor("blk.0.ffn_down_exps.weight", np.zeros((1, size * 2), dtype=np.uint8),
                      raw_dtype=gguf.GGMLQuantizationType.IQ3_XXS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    report = check_model(path, supported_types={"F32", "IQ1_S", "Q4_K"}, engine="KTransformers v0.2.3")
    assert lines(report) == [f"{path}: tensor types IQ3_XXS are not supported by KTransformers v0.2.3"]


def test_wrong_architecture(models):
    assert lines(check_model(models["single"], expected_arch="deepseek2")) == [
        f"{models['single']}: architecture is 'llama', expected 'deepseek2'"]


def test_missing_config_files(models):
    (models["config"] / "modeling_deepseek.py").unlink()
    (models["config"] / "tokenizer.json").unlink()
    problems = lines(check_model(models["single"], config_dir=models["config"]))
    assert f"{models['config'] / 'modeling_deepseek.py'}: missing (named in config.json auto_map)" in problems
    assert any(p.startswith(str(models["config"] / "tokenizer.json")) for p in problems)


def test_two_models_in_one_directory(models):
    shutil.copy(models["single"], models["dir"])
    (problem,) = lines(check_model(models["dir"]))
    assert "more than one model" in problem


def test_cli_check_lines_and_exit_codes(models):
    good = run_cli("model", "check", str(models["split"][0]), "--engine", "llamacpp")
    assert good.returncode == 0 and good.stdout.startswith("ok: 3 file(s), 30 tensors")
    models["split"][1].unlink()
    bad = run_cli("model", "check", str(models["split"][0]), "--engine", "llamacpp")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [f"{models['split'][1]}: missing (shard 2 of 3)"]
    as_json = run_cli("model", "check", str(models["split"][0]), "--json")
    assert json.loads(as_json.stdout)["ok"] is False


def test_cli_rejects_unknown_line(models):
    done = run_cli("model", "check", str(models["single"]), "--line", "v9")
    assert done.returncode == 2 and "unknown KTransformers line" in done.stderr


def bf16_model(path):
    writer = gguf.GGUFWriter(path, "deepseek2")
    writer.add_tensor("blk.3.ffn_gate_exps.weight", np.zeros((4, 256), dtype=np.float32).astype(np.uint16),
                      raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("target, ok", [("avx2", False), ("avx512", False), ("avx512vnni", False),
                                        ("avx512bf16", True), ("amx", True)])
def test_bf16_weights_only_on_targets_with_avx512_bf16(tmp_path, target, ok):
    # Without __AVX512BF16__ the AVX2 build returns zeros and the AVX512 build wrong numbers, silently.
    path = bf16_model(tmp_path / "bf16.gguf")
    line = "v0.3.2" if target == "amx" else "v0.2.3"
    done = run_cli("model", "check", str(path), "--line", line, "--target", target)
    if ok:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "tensor types BF16 are not supported" in lines[0] and "--target avx512bf16 or amx" in lines[0]


def test_the_image_start_check_says_which_target_can(tmp_path):
    # The engine image runs the same module with the types and note its build stamps.
    import subprocess
    import sys
    from ktappliance.target.matrix import load_matrix
    selection = load_matrix().select("avx2", "v0.2.3")
    path = bf16_model(tmp_path / "bf16.gguf")
    done = subprocess.run([sys.executable, "-m", "ktappliance.models.modelcheck", str(path), "--types",
                           ",".join(supported_types(selection.line, selection.target)),
                           "--note", f"BF16={selection.type_notes['BF16']}"], capture_output=True, text=True)
    assert done.returncode == 1 and "BF16 needs --target avx512bf16 or amx" in done.stderr



# ------------------------------------------------ hostile files: one line each, never a traceback
def header(kvs: bytes = b"", kv_count: int = 0, tensors: bytes = b"", tensor_count: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count) + kvs + tensors


def gguf_string(text: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if length is None else length) + text


def kv(key: bytes, kind: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", kind) + payload


def nested_arrays(depth: int) -> bytes:
    # An array of arrays of ... of one empty u8 array.
    inner = struct.pack("<IQ", 0, 0)
    for _ in range(depth):
        inner = struct.pack("<IQ", 9, 1) + inner
    return inner


HOSTILE = {
    "string-2^33": header(gguf_string(b"general.name", 2**33), 1),
    "string-2^40": header(kv(b"general.name", 8, gguf_string(b"x", 2**40)), 1),
    "string-2^63": header(kv(b"general.name", 8, gguf_string(b"x", 2**63)), 1),
    "string-2^64-1": header(kv(b"general.name", 8, gguf_string(b"x", 2**64 - 1)), 1),
    "array-2^62": header(kv(b"tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2**62)), 1),
    "array-2^62-u32": header(kv(b"tokenizer.ggml.scores", 9, struct.pack("<IQ", 4, 2**62)), 1),
    "nested-5000": header(kv(b"x", 9, nested_arrays(5000)), 1),
    "alignment-0": header(kv(b"general.alignment", 4, struct.pack("<I", 0)), 1),
    "alignment-string": header(kv(b"general.alignment", 8, gguf_string(b"32")), 1),
    "split-no-string": header(kv(b"split.no", 8, gguf_string(b"one")), 1),
    "kv-count-2^62": header(b"", 2**62),
    "tensor-count-2^62": header(b"", 0, b"", 2**62),
    "dims-2^32": header(tensors=gguf_string(b"t") + struct.pack("<I", 2**32 - 1), tensor_count=1),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_get_one_line_fast(tmp_path, name):
    path = tmp_path / "model.gguf"
    path.write_bytes(HOSTILE[name] + b"\0" * 64)
    started = time.monotonic()
    report = check_model(path)
    assert time.monotonic() - started < 2
    assert len(report.problems) == 1 and report.problems[0].file == str(path), report.problems


def test_hostile_header_through_the_cli_is_one_line(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(HOSTILE["string-2^33"])
    done = run_cli("model", "check", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(path) in done.stderr


@pytest.mark.parametrize("kind, expected", [
    ("dangling", "a dangling symlink"), ("loop", "a symlink loop"), ("dev-zero", "a device"),
    ("fifo", "a FIFO"), ("directory", "a directory"),
])
def test_things_that_are_not_files(tmp_path, kind, expected):
    import os
    models_dir = tmp_path / "m"
    models_dir.mkdir()
    path = models_dir / "model.gguf"
    if kind == "dangling":
        path.symlink_to(tmp_path / "gone.gguf")
    elif kind == "loop":
        path.symlink_to(models_dir / "other.gguf")
        (models_dir / "other.gguf").symlink_to(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    for target in (path, models_dir):
        if kind == "loop" and target == models_dir:
            continue  # two model names in one directory: a different (also one-line) answer
        done = run_cli("model", "check", str(target))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], lines
