"""Images built once per test run and shared by the image tests."""

import pytest

from support import dockerenv

# Test-only build settings: the stand-in bases, one CUDA arch, two jobs, and
# PyPI's self-contained ktransformers 0.2.1 sdist (no GitHub here). The index
# URL and proxy carry fake credentials so that test_history_holds_no_secrets
# has something to look for; the proxy is bypassed for the hosts the build uses.
INDEX_WITH_CREDENTIALS = "https://kta-user:s3cr3t-index-token@pypi.org/simple"
PROXY_WITH_CREDENTIALS = "http://kta-user:s3cr3t-proxy-pass@127.0.0.1:9"
ENGINE_TAG = "kta-test/engine:v0.2.1-avx2-cu130-nonuma"
ENGINE_NUMA_TAG = "kta-test/engine:v0.2.1-avx2-cu130-numa"


def engine_build_args(tag: str, numa: bool) -> list[str]:
    sdist = dockerenv.pypi_sdist("ktransformers", "0.2.1")
    return [
        "--target", "avx2", "--line", "v0.2.1", "--cuda", "13.0", "--numa" if numa else "--no-numa",
        "--ktransformers-src", str(sdist), "--cuda-arch", "9.0", "--jobs", "2", "--flash-attn", "skip",
        "--base-image", dockerenv.CUDA_DEVEL_BASE, "--runtime-base-image", dockerenv.CUDA_RUNTIME_BASE,
        "--ca-cert", dockerenv.CA_BUNDLE, "--pip-index-url", INDEX_WITH_CREDENTIALS,
        "--https-proxy", PROXY_WITH_CREDENTIALS,
        "--no-proxy", "pypi.org,files.pythonhosted.org,download.pytorch.org,localhost,127.0.0.1",
        "--tag", tag, "--min-free-gb", "15",
    ]


@pytest.fixture(scope="session")
def engine_image(bases, docker_client):
    dockerenv.build_py(*engine_build_args(ENGINE_TAG, numa=False), log_name="engine-avx2")
    return docker_client.images.get(ENGINE_TAG)


@pytest.fixture(scope="session")
def engine_numa_image(engine_image, docker_client):
    # Built after the non-NUMA image so the ccache mount serves the CUDA part.
    dockerenv.build_py(*engine_build_args(ENGINE_NUMA_TAG, numa=True), log_name="engine-avx2-numa")
    return docker_client.images.get(ENGINE_NUMA_TAG)
