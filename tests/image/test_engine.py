"""The KTransformers engine image, compiled for real from the PyPI sdist on the
stand-in CUDA 13 bases, checked with testinfra in a running container.

Not covered here (no GitHub, no GPU): the pinned git tag download, flash-attn
(built with --flash-attn skip; its wheel comes from GitHub), and loading a
model on a GPU."""

import shutil
import subprocess

import pytest
import testinfra

from support import dockerenv
from support.settings import ENGINE_TAG, INDEX_WITH_CREDENTIALS, PROXY_WITH_CREDENTIALS

pytestmark = pytest.mark.image
SITE = "/opt/venv/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def engine(engine_image, docker_client):
    # Through the real entrypoint: the CPU guard passes on this AVX-512 host,
    # then a non-flag command runs instead of the server.
    container = docker_client.containers.run(ENGINE_TAG, ["sleep", "infinity"], detach=True, remove=True)
    try:
        yield testinfra.get_host(f"docker://{container.id}")
    finally:
        container.kill()


def extension(host, name):
    return host.check_output(f"ls {SITE}/{name}*.so")


def test_extensions_import_and_cli_runs(engine):
    engine.run_expect([0], "python -c 'import torch, cpuinfer_ext, KTransformersOps'")
    help_text = engine.check_output("ktransformers --help")
    assert "--gguf_path" in help_text and "--port" in help_text


def test_avx2_build_has_no_avx512_instructions(engine_image, tmp_path):
    objdump = shutil.which("objdump")
    assert objdump, "binutils missing on the test host"
    container = engine_image.client.containers.create(ENGINE_TAG, ["true"])
    try:
        path = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", ENGINE_TAG, "-c",
                               f"ls {SITE}/cpuinfer_ext*.so"], capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run(["docker", "cp", f"{container.id}:{path}", str(tmp_path / "ext.so")], check=True)
    finally:
        container.remove()
    disassembly = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(tmp_path / "ext.so")],
                                 capture_output=True, text=True, check=True).stdout
    assert disassembly.count("%zmm") == 0
    assert disassembly.count("%ymm") > 1000  # the AVX2 kernels are there


def test_labels_match_the_target(engine_image):
    labels = engine_image.labels
    assert labels["ai.ktappliance.target"] == "avx2"
    assert labels["ai.ktappliance.cpu-instruct"] == "AVX2"
    assert labels["ai.ktappliance.line"] == "v0.2.1"
    assert labels["ai.ktappliance.commit"] == "65d73ea3"
    assert labels["ai.ktappliance.numa"] == "false"
    assert labels["ai.ktappliance.cuda"] == "13.0"
    assert labels["ai.ktappliance.torch-cuda-arch-list"] == "9.0"


def test_numa_only_in_the_numa_build(engine, engine_numa_image, docker_client):
    assert "libnuma" not in engine.check_output(f"ldd {extension(engine, 'cpuinfer_ext')}")
    container = docker_client.containers.run(engine_numa_image.id, ["sleep", "infinity"], detach=True, remove=True)
    try:
        numa_host = testinfra.get_host(f"docker://{container.id}")
        assert "libnuma.so" in numa_host.check_output(f"ldd {extension(numa_host, 'cpuinfer_ext')}")
    finally:
        container.kill()
    assert engine_numa_image.labels["ai.ktappliance.numa"] == "true"


def test_runtime_is_lean_and_not_root(engine):
    for tool in ("nvcc", "gcc", "g++", "cc", "cmake", "ccache", "git"):
        assert not engine.exists(tool), f"{tool} in the runtime image"
    assert not engine.file("/build").exists
    assert not engine.file("/wheels").exists
    # The source tree's mark: its vendored llama.cpp and pybind11.
    # (The wheel ships setup.py and CMakeLists.txt as package data; no sign.)
    assert engine.run("find / -xdev -type d -path '*/third_party/llama.cpp' -not -path '*.dist-info/*' -not -path '/proc/*'").stdout == ""
    assert engine.run("find / -xdev -type d -path '*/third_party/pybind11' -not -path '*.dist-info/*' -not -path '/proc/*'").stdout == ""
    assert not engine.file("/src").exists
    assert engine.user().uid != 0
    assert engine.user().name == "kt"


def test_libstdcxx_fits_the_extensions(engine):
    out = engine.check_output("python /opt/ktappliance/engine/check-libstdcxx.py 2>&1 || true")
    assert "extensions fit this libstdc++" in out


def test_history_holds_no_secrets(engine_image):
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", ENGINE_TAG],
                             capture_output=True, text=True, check=True).stdout
    inspect = subprocess.run(["docker", "image", "inspect", ENGINE_TAG], capture_output=True, text=True,
                             check=True).stdout
    with open(dockerenv.CA_BUNDLE) as handle:
        ca_line = next(line for line in handle if line.strip() and "CERTIFICATE" not in line and not line.startswith("#"))
    for text in (history, inspect):
        assert "BEGIN CERTIFICATE" not in text and ca_line.strip() not in text
        assert "s3cr3t" not in text
        assert INDEX_WITH_CREDENTIALS not in text and PROXY_WITH_CREDENTIALS not in text


def flags_this_cpu_lacks() -> list[str]:
    """The amx target's flags where this CPU lacks them (an AVX-512-only
    EPYC); on an AMX Xeon, the AMD-only sse4a instead: real flags either way."""
    host = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
    amx = ["avx2", "fma", "avx512f", "amx_tile", "amx_int8", "amx_bf16"]
    lacking = [flag for flag in amx if flag not in host]
    return amx if lacking else amx + ["sse4a"]


def test_cpu_guard_refuses_a_target_this_cpu_lacks(docker_client):
    # The same entrypoint, told the image needs flags this CPU lacks: refused
    # with one line, before anything else runs.
    required = flags_this_cpu_lacks()
    done = subprocess.run(["docker", "run", "--rm", "-e", "KT_TARGET=amx", "-e", f"KT_REQUIRED_FLAGS={' '.join(required)}",
                           ENGINE_TAG, "echo", "should-not-run"], capture_output=True, text=True)
    assert done.returncode == 3
    assert "should-not-run" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "built for the amx target" in lines[0]
