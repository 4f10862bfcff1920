"""The KTransformers engine images a user's default build gives, compiled for
real from upstream's source at the pinned tags (../shared/sources, else the
git tag) on the stand-in CUDA 12.4 bases: v0.2.3 for avx2 with torch 2.5.1
(and its NUMA variant), v0.3.2 for amx with torch 2.6.0 and balance_serve,
and, on a CPU that cannot run the amx image's code, v0.3.2 for avx2 with
balance_serve, so that v0.3.2's code is run here too. Checked with testinfra
in running containers.

Not covered here (no GitHub, no GPU): flash-attn (its wheel is on GitHub; the
images are built with --flash-attn skip, which they must refuse to serve),
and running a model, which the GPU tier (tests/gpu) does."""

import json
import subprocess
from pathlib import Path

import pytest
import testinfra

from ktappliance.target.matrix import load_matrix
from support import dockerenv, isa
from support.settings import ENGINE_AMX_TAG, ENGINE_TAG, INDEX_WITH_CREDENTIALS, PROXY_WITH_CREDENTIALS

pytestmark = pytest.mark.image
SITE = "/opt/venv/lib/python3.11/site-packages"
PUBLISHED = Path(__file__).resolve().parents[1] / "fixtures" / "published"


def published(name: str) -> dict:
    return json.loads((PUBLISHED / name).read_text())
STANDIN = Path(__file__).resolve().parents[1] / "support" / "flash_attn_standin"
# Just enough of the CPU guard's list to pass on any x86-64 CI machine, for
# tests that only inspect an image built for a CPU this machine may lack.
GUARD_PASS = {"KT_REQUIRED_FLAGS": "avx2"}
# AMX tile instructions as objdump prints them.
AMX_MNEMONICS = ("ldtilecfg", "tileloadd", "tdpbssd", "tdpbf16ps", "tilestored")


def start(client, image, environment: dict | None = None):
    container = client.containers.run(image, ["sleep", "infinity"], detach=True, remove=True,
                                      environment=environment or {})
    return container, testinfra.get_host(f"docker://{container.id}")


ENGINES = {"v0.2.3-avx2": "engine_image", "v0.3.2-amx": "engine_amx_image",
           **({} if isa.amx_image_runs_here() else {"v0.3.2-avx2": "engine_serve_avx2_image"})}


@pytest.fixture(scope="module", params=list(ENGINES))
def engine(request, docker_client):
    image = request.getfixturevalue(ENGINES[request.param])
    container, host = start(docker_client, image.id, GUARD_PASS)
    host.image = image
    try:
        yield host
    finally:
        container.kill()


def extension(host, name):
    return host.check_output(f"ls {SITE}/{name}*.so")


def copied_out(image_id: str, pattern: str, tmp_path: Path) -> list[Path]:
    """The image's files matching a shell pattern, copied here."""
    paths = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", image_id, "-c", f"ls {pattern}"],
                           capture_output=True, text=True, check=True).stdout.split()
    container = subprocess.run(["docker", "create", "--entrypoint", "true", image_id],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        for path in paths:
            subprocess.run(["docker", "cp", "-L", f"{container}:{path}", str(tmp_path / Path(path).name)], check=True)
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True)
    return [tmp_path / Path(path).name for path in paths]


def disassembly(image_id: str, name: str, tmp_path: Path) -> str:
    return isa.disassemble(copied_out(image_id, f"{SITE}/{name}*.so", tmp_path)[0])


def runs_its_code_here(engine) -> None:
    """Importing the extensions runs the target's code: skip where this CPU cannot."""
    isa.skip_unless_runs_here(engine.image.labels["ai.ktappliance.cpu-flags"].split())


# The image's own stand-in for Triton's GPU driver where there is none (v0.3.2's
# loader asks for it at import; images/engine/check-server-imports.py says why).
WITHOUT_GPU = "import runpy; runpy.run_path('/opt/ktappliance/engine/check-server-imports.py')['without_gpu_driver']()"


def test_extensions_import_and_the_server_starts_its_imports(engine):
    runs_its_code_here(engine)
    out = engine.check_output("python /opt/ktappliance/engine/check-server-imports.py")
    assert "ktransformers.server.main cpuinfer_ext KTransformersOps import" in out
    help_text = engine.check_output(f"python -c \"{WITHOUT_GPU}; import sys; sys.argv = ['ktransformers', '--help']; "
                                    "from ktransformers.server.main import main; main()\"")
    assert "--gguf_path" in help_text and "--port" in help_text


def test_the_serving_path_imports_once_flash_attn_is_there(engine, tmp_path):
    # What the server loads for the DeepSeek rule, up to where upstream asks
    # the GPU at import time (the experts' marlin utils: the GPU tier covers
    # those). flash-attn is left out of these images: with the test stand-in on
    # PYTHONPATH the rest must import (v0.3.2 died here on `openai`).
    runs_its_code_here(engine)
    container = engine.backend.name
    subprocess.run(["docker", "cp", str(STANDIN), f"{container}:/tmp/standin"], check=True)
    modules = ["ktransformers.operators.attention", "ktransformers.operators.triton_attention",
               "ktransformers.operators.models", "ktransformers.models.modeling_deepseek_v3",
               "ktransformers.optimize.optimize", "ktransformers.util.custom_gguf",
               "ktransformers.server.schemas.endpoints.chat"]
    engine.run_expect([0], f"cd /tmp && PYTHONPATH=/tmp/standin python /opt/ktappliance/engine/check-server-imports.py "
                           f"{' '.join(modules)}")
    # Without it: v0.2.3 fails to import the attention rule; v0.3.2 imports it
    # and lacks flash_attn_func, which its prefill then calls.
    without = engine.run(f"cd /tmp && python -c \"{WITHOUT_GPU}; import {modules[0]} as a; "
                         "print(hasattr(a, 'flash_attn_func'))\"")
    assert (without.rc != 0 and "flash_attn" in without.stderr) or without.stdout.strip().endswith("False")


def test_triton_can_build_its_launcher_as_the_runtime_user(engine):
    # Triton compiles a C launcher against Python.h on the first kernel launch.
    assert engine.user().name == "kt"
    out = engine.check_output("python /opt/ktappliance/engine/check-triton-toolchain.py")
    assert "builds and loads Python extensions" in out


def test_flash_attn_skip_is_labelled_and_refused_at_start(engine, docker_client):
    assert engine.image.labels["ai.ktappliance.flash-attn"] == "skip"
    done = subprocess.run(["docker", "run", "--rm", "-e", "KT_REQUIRED_FLAGS=avx2", engine.image.id],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 4
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--flash-attn skip" in lines[0] and "build.py --flash-attn wheel" in lines[0]


def test_avx2_build_has_no_avx512_and_no_amx(engine_image, tmp_path):
    code = disassembly(engine_image.id, "cpuinfer_ext", tmp_path)
    assert code.count("%zmm") == 0
    assert code.count("%ymm") > 1000  # the AVX2 kernels are there
    assert not any(op in code for op in AMX_MNEMONICS)


def test_amx_build_has_the_amx_backends(engine_amx_image, tmp_path, docker_client):
    code = disassembly(engine_amx_image.id, "cpuinfer_ext", tmp_path)
    assert all(op in code for op in ("ldtilecfg", "tileloadd", "tdpbssd")), "no AMX tile instructions"
    assert "vdpbf16ps" in code and "%zmm" in code  # the AVX512-BF16 kernels the target's flags switch on
    isa.skip_unless_runs_here(load_matrix().target("amx").requires)
    out = docker_client.containers.run(
        engine_amx_image.id, ["python", "-c", "import cpuinfer_ext; print(cpuinfer_ext.moe.AMXInt8_MOE, "
                                              "cpuinfer_ext.moe.AMXBF16_MOE)"],
        environment=GUARD_PASS, remove=True).decode()
    assert "AMXInt8_MOE" in out


def test_avx2_image_lacks_the_amx_backends(engine_image, docker_client):
    out = docker_client.containers.run(
        engine_image.id, ["python", "-c", "import cpuinfer_ext; print(hasattr(cpuinfer_ext.moe, 'AMXInt8_MOE'))"],
        remove=True).decode()
    assert out.strip() == "False"


def test_labels_match_the_target(engine_image, engine_amx_image, request):
    built = [(engine_image, "avx2", "v0.2.3", "63b1c852", "AVX2"), (engine_amx_image, "amx", "v0.3.2", "495ae374", "FANCY")]
    if "v0.3.2-avx2" in ENGINES:
        built.append((request.getfixturevalue(ENGINES["v0.3.2-avx2"]), "avx2", "v0.3.2", "495ae374", "AVX2"))
    for image, target, line, commit, instruct in built:
        labels = image.labels
        assert labels["ai.ktappliance.target"] == target
        assert labels["ai.ktappliance.cpu-instruct"] == instruct
        assert labels["ai.ktappliance.line"] == line
        assert labels["org.opencontainers.image.version"] == line  # the tag, whatever the tree calls itself
        assert labels["ai.ktappliance.commit"] == commit
        assert labels["ai.ktappliance.numa"] == "false"
        assert labels["ai.ktappliance.cuda"] == "12.4"
        assert labels["ai.ktappliance.torch"] == {"v0.2.3": "2.5.1", "v0.3.2": "2.6.0"}[line]
        assert labels["ai.ktappliance.torch-cuda-arch-list"] == "9.0"
    assert engine_amx_image.labels["ai.ktappliance.bf16"] == "true"
    # BF16 weights only where the build has AVX512-BF16 kernels.
    for image, bf16 in ((engine_image, False), (engine_amx_image, True)):
        env = dict(item.split("=", 1) for item in image.attrs["Config"]["Env"])
        assert ("BF16" in env["KT_QUANT_TYPES"].split(",")) == bf16


def test_numa_only_in_the_numa_build(engine_image, engine_numa_image, docker_client):
    container, host = start(docker_client, engine_image.id)
    try:
        assert "libnuma" not in host.check_output(f"ldd {extension(host, 'cpuinfer_ext')}")
    finally:
        container.kill()
    container, numa_host = start(docker_client, engine_numa_image.id)
    try:
        assert "libnuma.so" in numa_host.check_output(f"ldd {extension(numa_host, 'cpuinfer_ext')}")
    finally:
        container.kill()
    assert engine_numa_image.labels["ai.ktappliance.numa"] == "true"


def test_runtime_is_lean_and_not_root(engine):
    # gcc, libc headers and Python.h stay (Triton); the rest of a build does not.
    for tool in ("nvcc", "g++", "c++", "cmake", "ccache", "git"):
        assert not engine.exists(tool), f"{tool} in the runtime image"
    assert engine.exists("gcc")
    assert not engine.file("/usr/local/cuda/bin/nvcc").exists
    assert not engine.file("/build").exists
    assert not engine.file("/wheels").exists
    for mark in ("third_party/llama.cpp", "third_party/pybind11"):
        assert engine.run(f"find / -xdev -type d -path '*/{mark}' -not -path '*.dist-info/*' "
                          "-not -path '/proc/*'").stdout == ""
    assert not engine.file("/src").exists
    assert engine.user().uid != 0


def test_libstdcxx_fits_the_extensions(engine):
    out = engine.check_output("python /opt/ktappliance/engine/check-libstdcxx.py 2>&1 || true")
    assert "extensions fit this libstdc++" in out


def test_history_holds_no_secrets(engine):
    tag = engine.image.id
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", tag],
                             capture_output=True, text=True, check=True).stdout
    inspect = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True,
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


def test_cpu_guard_refuses_a_target_this_cpu_lacks():
    # The same entrypoint, told the image needs flags this CPU lacks: refused
    # with one line, before anything else runs.
    required = flags_this_cpu_lacks()
    done = subprocess.run(["docker", "run", "--rm", "-e", "KT_TARGET=amx", "-e", f"KT_REQUIRED_FLAGS={' '.join(required)}",
                           ENGINE_TAG, "echo", "should-not-run"], capture_output=True, text=True)
    assert done.returncode == 3
    assert "should-not-run" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "built for the amx target" in lines[0]


def test_amx_image_refuses_this_cpu_unless_it_has_amx():
    host = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
    done = subprocess.run(["docker", "run", "--rm", ENGINE_AMX_TAG, "echo", "ran"], capture_output=True, text=True)
    if {"amx_tile", "amx_int8", "amx_bf16", "avx512_vpopcntdq"} <= host:
        assert done.returncode == 0 and "ran" in done.stdout
    else:
        assert done.returncode == 3 and "built for the amx target" in done.stderr


def test_flash_attn_plan_names_the_wheel_for_this_torch_and_estimates_a_compile(engine_image, docker_client):
    # What a default build (--flash-attn wheel) decides, asked of the image's
    # own torch: the prebuilt wheel flash-attn's release page would hold for
    # it, and, where none matches, the archs and time of the compile it announces.
    container, host = start(docker_client, engine_image.id)
    try:
        for script in ("build-flash-attn.sh", "flash-attn-wheel.py"):
            path = Path(__file__).resolve().parents[2] / "images/engine" / script
            subprocess.run(["docker", "cp", str(path), f"{container.id}:/tmp/{script}"], check=True)
        plan = host.check_output("KT_FLASH_ATTN=2.7.4.post1 TORCH_CUDA_ARCH_LIST='8.0;8.6;9.0+PTX' KT_JOBS=2 "
                                 "sh /tmp/build-flash-attn.sh --print-plan")
    finally:
        container.kill()
    values = dict(line.split(" ", 1) for line in plan.splitlines())
    # torch 2.5.1 from PyPI (CUDA 12.4, the pre-C++11 ABI) on this image's Python:
    # a wheel flash-attn publishes, so a user's default build downloads it.
    assert values["wheel"] == "flash_attn-2.7.4.post1+cu12torch2.5cxx11abiFALSE-cp311-cp311-linux_x86_64.whl"
    assert values["wheel"] in published("flash-attn-wheels.json")["wheels"]
    assert values["url"].startswith("https://github.com/Dao-AILab/flash-attention/releases/download/v2.7.4.post1/")
    assert "%2B" in values["url"] and values["archs"] == "80;90"
    assert int(values["estimate_minutes"]) == 85 * 6 * 2 // 2


# ------------------------------------------------------------------ balance_serve (the v0.3.2 images)

SERVE_LIBRARIES = ("sched_ext*.so", "libsched*.so", "libkvc2.so", "libasync_store.so", "libcache_entry.so",
                   "libgpu_cache.so", "libcuda_stream_manager.so", "libpage_aligned_memory_pool.so",
                   "libprometheus-cpp-*.so*")


def test_balance_serve_loads_without_its_build_tree_or_a_compiler(engine_serve_image, docker_client):
    labels = engine_serve_image.labels
    assert labels["ai.ktappliance.backend"] == "balance_serve"
    assert "v0.3.2-balance-serve-loopback.patch" in labels["ai.ktappliance.patches"]
    env = dict(item.split("=", 1) for item in engine_serve_image.attrs["Config"]["Env"])
    assert env["KT_BACKEND"] == "balance_serve"
    isa.skip_unless_runs_here(labels["ai.ktappliance.cpu-flags"].split())
    container, host = start(docker_client, engine_serve_image.id, GUARD_PASS)
    try:
        out = host.check_output("python /opt/ktappliance/engine/check-balance-serve.py /opt/venv/flashinfer-ops")
        assert "sched_ext and its libraries load from" in out and "4 FlashInfer kernels load" in out, out
        sched = extension(host, "sched_ext")
        assert "[$ORIGIN:$ORIGIN/torch/lib]" in host.check_output(f"readelf -d {sched}")  # not the build tree
        for name in ("libprometheus-cpp-core.so.1.3", "libprometheus-cpp-pull.so.1.3"):
            assert host.file(f"{SITE}/{name}").exists, name
        # The scheduler server's modules and the serve rules, AMX one included.
        host.run_expect([0], "python -c 'import zmq, flashinfer, ktransformers.server.balance_serve.settings'")
        rules = host.check_output(f"ls {SITE}/ktransformers/optimize/optimize_rules")
        assert "DeepSeek-V3-Chat-serve.yaml" in rules and "DeepSeek-V3-Chat-serve-amx.yaml" in rules
        # No compiler FlashInfer's JIT could use (ninja stays: ktransformers and
        # flashinfer-python both declare it, and it compiles nothing itself).
        assert not host.exists("nvcc") and not host.exists("g++") and not host.exists("c++")
        assert host.package("libaio1").is_installed
    finally:
        container.kill()


def test_balance_serve_server_runs_under_its_watcher(engine_amx_image):
    # Python alone, so it runs on any CPU: the watcher is in the image and
    # starts with the image's own interpreter (its behaviour: tests/unit/test_serve_watch.py).
    done = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", engine_amx_image.id,
                           "/opt/ktappliance/engine/serve-watch.py", "--"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "name the server's command line" in done.stderr, done.stderr
    entrypoint = subprocess.run(["docker", "run", "--rm", "--entrypoint", "cat", engine_amx_image.id,
                                 "/opt/ktappliance/engine/entrypoint.sh"], capture_output=True, text=True, timeout=120)
    assert 'serve-watch.py" -- "$venv/bin/ktransformers"' in entrypoint.stdout


# The v0.3.2 images of ENGINES (all balance_serve builds), by target.
SERVE_IMAGES = {name.split("-", 1)[1]: fixture for name, fixture in ENGINES.items() if name.startswith("v0.3.2-")}


@pytest.mark.parametrize("target", list(SERVE_IMAGES))
def test_balance_serve_has_no_instruction_beyond_the_target(target, request, tmp_path):
    # Upstream compiles the scheduler, the KV-cache service and PhotonLibOS
    # with -march=native; the build gives them the target's flags instead.
    image = request.getfixturevalue(SERVE_IMAGES[target])
    libraries = copied_out(image.id, " ".join(f"{SITE}/{p}" for p in SERVE_LIBRARIES), tmp_path)
    names = {path.name for path in libraries}
    assert {"libkvc2.so", "libsched.so", "libasync_store.so"} <= names and any(n.startswith("sched_ext") for n in names)
    required = set(load_matrix().target(target).requires)
    code = {path.name: isa.disassemble(path) for path in libraries}
    beyond = {name: isa.beyond_target(text, required) for name, text in code.items()}
    assert not any(beyond.values()), {name: found for name, found in beyond.items() if found}
    # Compiled for the target, not for a baseline x86-64.
    if target == "amx":
        assert "avx512f" in set().union(*(isa.extensions_used(text) for text in code.values()))
    else:
        assert sum(text.count("%ymm") for text in code.values()) > 100


@pytest.mark.parametrize("image, environment, fragment", [
    (ENGINE_TAG, {"KT_BACKEND": "balance_serve"}, "this image was built without it"),
    (ENGINE_TAG, {"KT_BACKEND": "turbo"}, "KT_BACKEND=turbo: choose single or balance_serve"),
    (ENGINE_AMX_TAG, {"KT_OPTIMIZE_RULE": "DeepSeek-V3-Chat-amx.yaml"}, "balance_serve needs a -serve rule"),
    (ENGINE_AMX_TAG, {"KT_BACKEND": "single", "KT_OPTIMIZE_RULE": "DeepSeek-V3-Chat-serve.yaml"},
     "KT_BACKEND=single needs a rule"),
    (ENGINE_AMX_TAG, {"KT_CACHE_LENS": "lots"}, "KT_CACHE_LENS=lots: expected a whole number"),
])
def test_backend_settings_that_cannot_work_are_refused_in_one_line(engine_image, engine_amx_image, image,
                                                                   environment, fragment):
    done = subprocess.run(["docker", "run", "--rm", "-e", "KT_REQUIRED_FLAGS=avx2", "-e", "KT_MODEL_CHECK=0",
                           *[arg for key, value in environment.items() for arg in ("-e", f"{key}={value}")], image],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 5 and len(lines) == 1 and fragment in lines[0], done.stderr
