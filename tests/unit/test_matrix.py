"""targets.yaml: loading, valid combinations, and the errors for bad ones."""

import pytest

from ktappliance.errors import ApplianceError
from ktappliance.target.matrix import load_matrix

from support.buildpy import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def test_targets_and_lines_from_the_issue(matrix):
    assert list(matrix.targets) == ["avx2", "avx512", "avx512vnni", "avx512bf16", "amx"]
    # Each target needs every flag of the one before it: detection picks the last that fits.
    names = list(matrix.targets)
    for weaker, stronger in zip(names, names[1:]):
        assert set(matrix.targets[weaker].requires) <= set(matrix.targets[stronger].requires)
    assert [n for n, t in matrix.targets.items() if t.bf16] == ["avx512bf16", "amx"]
    assert matrix.lines["v0.2.3"].commit == "63b1c852"
    assert matrix.lines["v0.3.2"].commit == "495ae374"
    assert matrix.targets["avx2"].default_line == "v0.2.3"
    assert matrix.targets["avx512"].default_line == "v0.2.3"
    assert matrix.targets["amx"].default_line == "v0.3.2"
    assert "12.4" in matrix.lines["v0.2.3"].torch_by_cuda and "12.6" in matrix.lines["v0.3.2"].torch_by_cuda
    # CUDA 13.0 is the tested combination of both shipped lines; users' defaults stay 12.4 / 12.6.
    assert matrix.lines["v0.2.3"].default_cuda == "12.4" and matrix.lines["v0.3.2"].default_cuda == "12.6"
    assert "13.0" in matrix.lines["v0.2.3"].torch_by_cuda and "13.0" in matrix.lines["v0.3.2"].torch_by_cuda
    assert "openai" in matrix.lines["v0.3.2"].runtime_pip  # its server imports it undeclared
    for line in matrix.lines.values():
        assert {"gcc", "libc6-dev", "python3-dev"} <= set(line.apt_runtime)  # Triton's launcher compile
    assert all(t.cpu_instruct != "NATIVE" for t in matrix.targets.values())


def test_each_cuda_base_is_a_real_nvidia_image(matrix):
    for cuda in matrix.cuda.values():
        assert cuda.devel_image.startswith(f"nvidia/cuda:{cuda.version}") and "devel" in cuda.devel_image
        assert cuda.runtime_image.startswith(f"nvidia/cuda:{cuda.version}") and "runtime" in cuda.runtime_image
        assert cuda.base_image.startswith(f"nvidia/cuda:{cuda.version}") and "-base-" in cuda.base_image


def test_tag_names_line_target_cuda_numa_and_backend(matrix):
    assert matrix.select("amx", numa=True).image_tag == "ktappliance/engine:v0.3.2-amx-cu126-numa-balance_serve"
    assert matrix.select("amx", backend="single").image_tag == "ktappliance/engine:v0.3.2-amx-cu126-nonuma-single"
    assert matrix.select("avx2").image_tag == "ktappliance/engine:v0.2.3-avx2-cu124-nonuma-single"


def test_backend_defaults_per_line_and_balance_serve_needs_v032(matrix):
    assert matrix.select("amx").backend == "balance_serve"
    assert matrix.select("avx2").backend == "single"
    assert matrix.select("avx2", line="v0.3.2").backend == "balance_serve"
    with pytest.raises(ApplianceError, match="v0.2.3 has only single; balance_serve needs --line v0.3.2"):
        matrix.select("avx2", backend="balance_serve")
    with pytest.raises(ApplianceError, match="--backend both"):
        matrix.select("amx", backend="both")


def test_machine_flags_are_exactly_the_required_flags(matrix):
    amx = matrix.target("amx")
    assert amx.machine_flags == ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                                 "-mavx512vnni", "-mavx512bf16", "-mavx512vpopcntdq", "-mamx-tile", "-mamx-int8",
                                 "-mamx-bf16")
    assert matrix.target("avx2").machine_flags == ("-mavx2", "-mfma", "-mf16c")
    assert not any("native" in flag for t in matrix.targets.values() for flag in t.machine_flags)


def test_amx_needs_a_line_with_amx_kernels(matrix):
    with pytest.raises(ApplianceError, match="invalid combination.*valid: --target avx2"):
        matrix.select("amx", line="v0.2.3")


def test_line_without_that_cuda_is_rejected_with_the_valid_list(matrix):
    with pytest.raises(ApplianceError) as err:
        matrix.select("avx2", line="v0.2.3", cuda="12.6")
    message = str(err.value)
    for target, line, cuda in matrix.valid_combinations():
        assert f"--target {target} --line {line} --cuda {cuda}" in message


@pytest.mark.parametrize("args, fragment", [
    (["--target", "sse4"], "unknown target 'sse4'"),
    (["--target", "avx2", "--line", "v9"], "unknown KTransformers line 'v9'"),
    (["--target", "avx2", "--cuda", "11.8"], "unknown CUDA version '11.8'"),
    (["--target", "amx", "--line", "v0.2.3"], "invalid combination"),
])
def test_cli_rejects_bad_choices(tmp_path, args, fragment):
    done = run_cli("render", *args, "--out", str(tmp_path))
    assert_one_line_error(done, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, fragment", [
    ("targets: [unclosed", "malformed targets file"),
    ("schema: 2\n", "malformed targets file"),
    ("schema: 1\ntargets: {}\n", "malformed targets file"),
])
def test_malformed_targets_file(tmp_path, content, fragment):
    bad = tmp_path / "targets.yaml"
    bad.write_text(content)
    done = run_cli("render", "--target", "avx2", "--targets-file", str(bad), "--out", str(tmp_path / "out"))
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "out").exists()


def test_native_cpu_instruct_is_refused(tmp_path):
    from ktappliance.target.matrix import DEFAULT_MATRIX_FILE
    text = DEFAULT_MATRIX_FILE.read_text().replace("cpu_instruct: AVX2", "cpu_instruct: NATIVE")
    bad = tmp_path / "targets.yaml"
    bad.write_text(text)
    with pytest.raises(ApplianceError, match="NATIVE"):
        load_matrix(bad)
