"""Shared test settings: where the repository and the shared fixtures are."""

from pathlib import Path

import pytest

from support.buildpy import HOSTS


@pytest.fixture(scope="session")
def hosts_dir() -> Path:
    if not HOSTS.is_dir():
        pytest.fail(f"host captures not found at {HOSTS}")
    return HOSTS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny real GGUF model, single-file and split in three shards."""
    from support.tiny_gguf import write_test_models
    out = tmp_path_factory.mktemp("models")
    paths = write_test_models(out)
    out.chmod(0o755)
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"dir": out, **paths}


# ---------------------------------------------------------------- Docker tiers
# Each image is built once per run (session fixtures) and shared by the tests
# of both tiers that need it.
from support.isa import amx_image_runs_here  # noqa: E402
from support.settings import (API_TAG, ENGINE_AMX_TAG, ENGINE_NUMA_TAG, ENGINE_SERVE_AVX2_TAG,  # noqa: E402
                              ENGINE_TAG, LLAMACPP_TAG, WEBUI_TAG, engine_build_args)


IMAGE_TAGS = {"engine-amx": ENGINE_AMX_TAG, "llamacpp": LLAMACPP_TAG, "api": API_TAG, "webui": WEBUI_TAG,
              "engine-avx2": ENGINE_TAG, "engine-avx2-numa": ENGINE_NUMA_TAG,
              "engine-serve-avx2": ENGINE_SERVE_AVX2_TAG}


def pytest_addoption(parser):
    parser.addoption("--image", action="append", default=[], metavar="NAME=TAG",
                     help="test an image you already built instead of building one; NAME is one of "
                          f"{', '.join(IMAGE_TAGS)}; may be given once per NAME")


def pytest_configure(config):
    given_images(config)  # a bad --image stops the run before anything is built


def given_images(config) -> dict[str, str]:
    given = {}
    for value in config.getoption("--image"):
        name, _, tag = value.partition("=")
        if name not in IMAGE_TAGS or not tag:
            raise pytest.UsageError(f"--image {value}: expected NAME=TAG with NAME one of {', '.join(IMAGE_TAGS)}")
        given[name] = tag
    return given


@pytest.fixture(scope="session")
def docker_client():
    from support import dockerenv
    return dockerenv.docker_client()


@pytest.fixture(scope="session")
def bases(docker_client):
    from support import dockerenv
    dockerenv.ensure_bases()


def _build_component(name: str, tag: str):
    from support import dockerenv
    dockerenv.build_py(name, "--base-image", dockerenv.DEBIAN_BASE, "--ca-cert", dockerenv.CA_BUNDLE,
                       "--tag", tag, "--min-free-gb", "5", log_name=name)


def _build_lanes():
    """What the image and stack tiers build, in two lanes (support/prebuild.py):
    v0.3.2 with balance_serve alone (the longest compile by far: two serial
    Marlin files on CUDA 12.4, the scheduler, FlashInfer's kernels); in the
    other, the llama.cpp engine first (most test files run on it), the API and
    Open-WebUI, then v0.2.3 and its NUMA variant (which reuses the ccache the
    plain build fills). Where this CPU cannot run the amx image's code, the
    first lane then builds v0.3.2 with balance_serve for avx2 (its CUDA objects
    come from the ccache the amx build filled), so that the scheduler is still
    started and probed here."""
    from support import dockerenv
    serve_avx2 = [] if amx_image_runs_here() else [
        ("engine-serve-avx2", lambda: dockerenv.build_py(
            *engine_build_args(ENGINE_SERVE_AVX2_TAG, line="v0.3.2", target="avx2"), log_name="engine-serve-avx2"))]
    return [
        [("engine-amx", lambda: dockerenv.build_py(*engine_build_args(ENGINE_AMX_TAG, line="v0.3.2", target="amx"),
                                                   log_name="engine-amx")), *serve_avx2],
        [("llamacpp", lambda: dockerenv.build_py(*dockerenv.llamacpp_build_args(LLAMACPP_TAG),
                                                 log_name="llamacpp-avx2-cpu")),
         ("api", lambda: _build_component("api", API_TAG)),
         ("webui", lambda: _build_component("webui", WEBUI_TAG)),
         ("engine-avx2", lambda: dockerenv.build_py(*engine_build_args(ENGINE_TAG), log_name="engine-avx2")),
         ("engine-avx2-numa", lambda: dockerenv.build_py(*engine_build_args(ENGINE_NUMA_TAG, numa=True),
                                                         log_name="engine-avx2-numa"))],
    ]


@pytest.fixture(scope="session", autouse=True)
def prebuilt_images(request):
    """Start every image build at once when the run holds image or stack tests."""
    if not any(item.get_closest_marker("image") or item.get_closest_marker("stack")
               for item in request.session.items):
        return
    from support import prebuild
    try:
        request.getfixturevalue("bases")
    except (pytest.skip.Exception, pytest.fail.Exception):
        return  # no Docker: the image fixtures fail (CI) or skip in their own tests, not here
    given = given_images(request.config)

    def use_given(name: str):
        # The tests name images by their test tags: the user's image gets that tag too.
        from support import dockerenv
        return dockerenv.tag_existing(given[name], IMAGE_TAGS[name])
    prebuild.start([[(name, (lambda name=name: use_given(name)) if name in given else build) for name, build in lane]
                    for lane in _build_lanes()])


def _image_fixture(name: str):
    """A session fixture: the image built by its prebuild lane (or given with --image)."""
    @pytest.fixture(scope="session")
    def image(bases, docker_client):
        from support import prebuild
        prebuild.wait(name)  # started by prebuilt_images, which every image fixture's `bases` follows
        return docker_client.images.get(IMAGE_TAGS[name])
    return image


llamacpp_image = _image_fixture("llamacpp")
api_image = _image_fixture("api")
webui_image = _image_fixture("webui")
engine_image = _image_fixture("engine-avx2")
engine_numa_image = _image_fixture("engine-avx2-numa")
engine_amx_image = _image_fixture("engine-amx")
engine_serve_avx2_image = _image_fixture("engine-serve-avx2")


@pytest.fixture(scope="session")
def engine_serve_image(request):
    """A v0.3.2 balance_serve image whose code runs on this CPU: the amx one
    where it can, else the avx2 one built for that reason."""
    return request.getfixturevalue("engine_amx_image" if amx_image_runs_here() else "engine_serve_avx2_image")


@pytest.fixture(scope="session")
def stack(llamacpp_image, api_image, webui_image, tiny_models, tmp_path_factory):
    """The compose stack, once per run, shared by the stack tier's modules."""
    from support.stack import run_stack
    yield from run_stack(tiny_models["split_first"].parent, tmp_path_factory)
