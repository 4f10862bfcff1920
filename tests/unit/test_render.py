"""Rendered build contexts: every valid combination, hadolint-clean, flags in place."""

import hashlib
import os
import subprocess
import tarfile
import shutil

import pytest
from dockerfile_parse import DockerfileParser

from ktappliance.image import render as render_module
from ktappliance.errors import ApplianceError
from ktappliance.target.matrix import load_matrix
from ktappliance.image.plan import make_plan
from ktappliance.image.render import render

from support.buildpy import REPO, assert_one_line_error, run_cli

MATRIX = load_matrix()
COMBOS = [(t, l, c, numa) for t, l, c in MATRIX.valid_combinations() for numa in (False, True)]
HADOLINT = shutil.which("hadolint") or os.path.join(os.path.dirname(os.sys.executable), "hadolint")


def plan_for(target, line=None, cuda=None, numa=False, **options):
    return make_plan(MATRIX.select(target, line, cuda, numa), default_arch_list=MATRIX.torch_cuda_arch_list,
                     default_jobs=MATRIX.default_jobs, **options)


def parsed(context):
    parser = DockerfileParser(path=str(context.dockerfile))
    return parser


@pytest.mark.parametrize("target, line, cuda, numa", COMBOS)
def test_every_valid_combination_renders_and_passes_hadolint(tmp_path, target, line, cuda, numa):
    ctx = render(plan_for(target, line, cuda, numa), tmp_path)
    parser = parsed(ctx)
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    assert [s["value"] for s in stages] == ["${CUDA_DEVEL_IMAGE} AS builder", "${CUDA_RUNTIME_IMAGE} AS runtime"]
    args_before_from = parser.content.split("\nFROM ", 1)[0]
    cuda_base = MATRIX.cuda[cuda]
    assert f"ARG CUDA_DEVEL_IMAGE={cuda_base.devel_image}" in args_before_from
    # The engine runs on CUDA's -base image: torch's wheels bring the math libraries.
    assert f"ARG CUDA_RUNTIME_IMAGE={cuda_base.base_image}" in args_before_from
    assert "-base-" in cuda_base.base_image
    labels = parser.labels
    assert labels["ai.ktappliance.target"] == target
    assert labels["ai.ktappliance.line"] == line
    assert labels["ai.ktappliance.commit"] == MATRIX.lines[line].commit
    assert labels["ai.ktappliance.numa"] == str(numa).lower()
    chosen = MATRIX.targets[target]
    assert f'CPU_INSTRUCT="{chosen.cpu_instruct}"' in parser.content and f'KT_NUMA="{int(numa)}"' in parser.content
    assert f'KT_REQUIRED_FLAGS="{" ".join(chosen.requires)}"' in parser.content
    assert f'KT_CFLAGS="{" ".join(chosen.cflags)}"' in parser.content
    assert labels["ai.ktappliance.bf16"] == str(chosen.bf16).lower()
    types = parser.envs["KT_QUANT_TYPES"].split(",")
    assert ("BF16" in types) == chosen.bf16
    assert f'KT_COMMIT="{MATRIX.lines[line].commit}"' in parser.content
    assert "USE_NUMA" not in parser.content  # only the build script may set it, and only when on
    assert "NATIVE" not in parser.content
    assert any(i["instruction"] == "HEALTHCHECK" for i in parser.structure)
    assert any(i["instruction"] == "USER" and not i["value"].startswith("0") for i in parser.structure)
    lint = subprocess.run([HADOLINT, "--failure-threshold", "info", str(ctx.dockerfile)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_render_is_deterministic_including_a_source_dir(tmp_path):
    src = tmp_path / "kt-src"
    (src / "ktransformers").mkdir(parents=True)
    (src / "setup.py").write_text("# modified offline source\n")
    (src / "ktransformers" / "__init__.py").write_text("__version__ = '0.2.3'\n")
    digests = []
    for out in ("a", "b"):
        ctx = render(plan_for("avx2", source=str(src)), tmp_path / out)
        os.utime(src / "setup.py", (1, 1))  # touching the tree must not change the bytes
        digests.append({p.relative_to(ctx.directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(ctx.directory.rglob("*")) if p.is_file()})
    assert digests[0] == digests[1]
    with tarfile.open(tmp_path / "a" / "engine-v0.2.3-avx2-cu124-nonuma-single" / "src" / "source.tar.gz") as tar:
        assert "source/setup.py" in tar.getnames()


def test_local_source_is_bind_mounted_not_copied(tmp_path):
    tarball = tmp_path / "ktransformers-0.2.3.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(REPO / "build.py", arcname="ktransformers-0.2.3/setup.py")
    content = render(plan_for("avx512", source=str(tarball)), tmp_path / "out").dockerfile.read_text()
    assert "--mount=type=bind,source=src,target=/src" in content
    assert 'KT_SOURCE="/src/source.tar.gz"' in content
    git_content = render(plan_for("avx512"), tmp_path / "git").dockerfile.read_text()
    assert "type=bind,source=src" not in git_content
    assert 'KT_SOURCE="https://github.com/kvcache-ai/ktransformers.git"' in git_content
    assert 'KT_TAG="v0.2.3"' in git_content


def test_narrowed_arch_list_and_jobs(tmp_path):
    content = render(plan_for("avx2", cuda_arch_list="8.9", jobs=4), tmp_path).dockerfile.read_text()
    assert 'TORCH_CUDA_ARCH_LIST="8.9"' in content and 'KT_JOBS="4"' in content


@pytest.mark.parametrize("numa, expected", [(False, None), (True, "1")])
def test_build_script_sets_use_numa_only_when_on(numa, expected):
    env = {"PATH": os.environ["PATH"], "CPU_INSTRUCT": "AVX2", "TORCH_CUDA_ARCH_LIST": "9.0",
           "KT_REQUIRED_FLAGS": "avx2 fma f16c", "KT_NUMA": "1" if numa else "0", "USE_NUMA": "0"}  # a stray USE_NUMA=0 would turn NUMA on upstream
    done = subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh"), "--print-env"],
                          env=env, capture_output=True, text=True, check=True)
    values = dict(line.split("=", 1) for line in done.stdout.split())
    assert values.get("USE_NUMA") == expected
    assert values["KTRANSFORMERS_FORCE_BUILD"] == "TRUE"


def test_build_script_refuses_native():
    env = {"PATH": os.environ["PATH"], "CPU_INSTRUCT": "NATIVE", "TORCH_CUDA_ARCH_LIST": "9.0"}
    done = subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh"), "--print-env"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "NATIVE" in done.stderr


@pytest.mark.parametrize("capture, target, ok", [
    ("epyc-zen4-2c/cpuinfo.txt", "avx512bf16", True),
    ("public/gold6248_2s_linuxhw/lscpu.txt", "avx512vnni", True),
    ("public/gold6248_2s_linuxhw/lscpu.txt", "avx512bf16", False),
    ("epyc-zen4-2c/cpuinfo.txt", "amx", False),
    ("public/ryzen9-5950x_1proc_archspec/cpuinfo.txt", "avx512", False),
    ("public/e5-2650v2_1proc_avxonly_archspec/cpuinfo.txt", "avx2", False),
    ("xeon-amx-h200-1s/cpuinfo.txt", "amx", True),
    ("public/e5-2680v4_2s_linuxhw/lscpu.txt", "avx2", True),
])
def test_cpu_guard_on_captures(hosts_dir, capture, target, ok):
    env = {"PATH": os.environ["PATH"], "KT_TARGET": target,
           "KT_REQUIRED_FLAGS": " ".join(MATRIX.targets[target].requires)}
    done = subprocess.run(["sh", str(REPO / "images/common/cpu-guard.sh"), str(hosts_dir / capture)],
                          env=env, capture_output=True, text=True)
    if ok:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 3
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"built for the {target} target" in lines[0]


def test_cli_render_writes_context(tmp_path):
    done = run_cli("render", "--target", "amx", "--numa", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    ctx = tmp_path / "engine-v0.3.2-amx-cu126-numa-balance_serve"
    assert (ctx / "Dockerfile").is_file() and (ctx / "scripts/engine/build-ktransformers.sh").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [ctx.name]


def test_missing_source_is_one_line(tmp_path):
    done = run_cli("render", "--target", "avx2", "--ktransformers-src", str(tmp_path / "nope.tar.gz"),
                   "--out", str(tmp_path / "out"))
    assert_one_line_error(done, "--ktransformers-src", "no such file")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_cli("render", "--target", "avx2", "--out", str(blocker / "build"))
    assert_one_line_error(done, "cannot write build context")


def test_failure_mid_render_leaves_nothing_behind(tmp_path, monkeypatch):
    def half_then_fail(plan, context):
        (context / "Dockerfile").write_text("FROM half\n")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(render_module, "_write_context", half_then_fail)
    with pytest.raises(ApplianceError, match="No space left"):
        render(plan_for("avx2"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rerender_replaces_the_old_context(tmp_path):
    render(plan_for("avx2", jobs=1), tmp_path)
    ctx = render(plan_for("avx2", jobs=3), tmp_path)
    assert 'KT_JOBS="3"' in ctx.dockerfile.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [ctx.directory.name]


@pytest.mark.parametrize("args, fragment", [
    (["--jobs", "0"], "--jobs 0"),
    (["--cuda-arch", "sm_90"], "--cuda-arch sm_90"),
])
def test_bad_build_options(tmp_path, args, fragment):
    assert_one_line_error(run_cli("render", "--target", "avx2", *args, "--out", str(tmp_path)), fragment)


@pytest.mark.parametrize("dockerfile", ["images/api/Dockerfile", "images/webui/Dockerfile", "images/autodl/Dockerfile",
                                        "tests/support/bases/cuda13.Dockerfile"])
def test_static_dockerfiles_pass_hadolint(dockerfile):
    parser = DockerfileParser(path=str(REPO / dockerfile))
    assert parser.content.split("\nFROM ", 1)[0].count("ARG ") >= 1  # image references are build args
    lint = subprocess.run([HADOLINT, "--failure-threshold", "info", str(REPO / dockerfile)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("target", list(MATRIX.targets))
@pytest.mark.parametrize("cuda", [None, "12.4"])
def test_llamacpp_renders_per_target(tmp_path, target, cuda):
    from ktappliance.image.plan import make_llamacpp_plan
    plan = make_llamacpp_plan(MATRIX.targets[target], MATRIX.llamacpp, MATRIX.cuda[cuda] if cuda else None)
    content = render(plan, tmp_path).dockerfile.read_text()
    for flag in MATRIX.targets[target].llamacpp_cmake:
        assert flag in content
    assert ('LLAMA_CUDA_ARCHS=""' in content) == (cuda is None)
    assert "ARG BUILD_IMAGE=" + (MATRIX.cuda[cuda].devel_image if cuda else "ubuntu:24.04") in content
    lint = subprocess.run([HADOLINT, "--failure-threshold", "info", str(tmp_path / plan.image_tag.split("/")[-1].replace(":", "-") / "Dockerfile")],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("target", list(MATRIX.targets))
def test_lscpu_during_the_compile_reports_the_target_not_this_machine(target):
    # v0.3.2's CMakeLists looks for "avx512" and "amx" in lscpu's output.
    chosen = MATRIX.targets[target]
    env = {"PATH": os.environ["PATH"], "CPU_INSTRUCT": chosen.cpu_instruct, "TORCH_CUDA_ARCH_LIST": "9.0",
           "KT_REQUIRED_FLAGS": " ".join(chosen.requires), "KT_CFLAGS": " ".join(chosen.cflags)}
    done = subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh"), "--print-lscpu"],
                          env=env, capture_output=True, text=True, check=True)
    assert ("avx512" in done.stdout) == ("avx512f" in chosen.requires)
    assert ("amx" in done.stdout) == chosen.has_amx
    printed = subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh"), "--print-env"],
                             env=env, capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in printed.splitlines())
    assert values.get("CFLAGS", "") == values.get("CXXFLAGS", "") == " ".join(chosen.cflags)


def test_every_target_flag_is_one_the_cpu_guard_requires():
    # -mavx512X in cflags without the matching CPU flag would let the image
    # start on a CPU that then dies with SIGILL.
    needs = {"-mavx512vl": "avx512vl", "-mavx512dq": "avx512dq", "-mavx512vnni": "avx512_vnni",
             "-mavx512bf16": "avx512_bf16", "-mamx-tile": "amx_tile", "-mamx-int8": "amx_int8",
             "-mamx-bf16": "amx_bf16"}
    for target in MATRIX.targets.values():
        for flag in target.cflags:
            assert needs[flag] in target.requires, (target.name, flag)
        if target.cpu_instruct == "FANCY":
            assert "avx512_vpopcntdq" in target.requires  # FANCY adds -mavx512vpopcntdq


def test_build_script_refuses_march_native():
    env = {"PATH": os.environ["PATH"], "CPU_INSTRUCT": "AVX512", "TORCH_CUDA_ARCH_LIST": "9.0",
           "KT_REQUIRED_FLAGS": "avx512f", "KT_CFLAGS": "-march=native"}
    done = subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh"), "--print-env"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "native" in done.stderr


@pytest.mark.parametrize("target, line", [("amx", "v0.3.2"), ("avx512bf16", "v0.2.3"), ("avx2", "v0.2.3")])
def test_native_installs_get_the_values_the_image_stamps(tmp_path, target, line):
    """The GPU tier and the AutoDL bundle take these from the plan; the image from its template."""
    plan = plan_for(target, line)
    content = render(plan, tmp_path).dockerfile.read_text()
    for key, value in {**plan.runtime_env(), **plan.install_env()}.items():
        assert f'{key}="{value}"' in content or f"{key}={value} " in content, (key, value)


@pytest.mark.parametrize("extra, expected", [
    ({}, "--split-compile=4"),
    ({"KT_SPLIT_COMPILE": "1"}, None),
    ({"NVCC_APPEND_FLAGS": "-lineinfo"}, "-lineinfo --split-compile=4"),
])
def test_nvcc_splits_one_file_over_the_build_jobs(extra, expected):
    env = {"PATH": os.environ["PATH"], "CPU_INSTRUCT": "AVX2", "TORCH_CUDA_ARCH_LIST": "9.0",
           "KT_REQUIRED_FLAGS": "avx2 fma f16c", "KT_JOBS": "4", **extra}
    done = subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh"), "--print-env"],
                          env=env, capture_output=True, text=True, check=True)
    values = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert (values.get("NVCC_APPEND_FLAGS") or None) == expected
