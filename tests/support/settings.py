"""Tags and build arguments of the images the tests build (once per run)."""

from support import dockerenv

LLAMACPP_TAG = "kta-test/llamacpp:b11312-avx2-cpu"
API_TAG = "kta-test/api:latest"
WEBUI_TAG = "kta-test/webui:latest"
ENGINE_TAG = "kta-test/engine:v0.2.1-avx2-cu130-nonuma"
ENGINE_NUMA_TAG = "kta-test/engine:v0.2.1-avx2-cu130-numa"
# The index URL and proxy carry fake credentials so that the history test has
# something to look for; the proxy is bypassed for the hosts the build uses.
INDEX_WITH_CREDENTIALS = "https://kta-user:s3cr3t-index-token@pypi.org/simple"
PROXY_WITH_CREDENTIALS = "http://kta-user:s3cr3t-proxy-pass@127.0.0.1:9"


def engine_build_args(tag: str, numa: bool) -> list[str]:
    """Test-only settings: the stand-in bases, one CUDA arch, two jobs, and
    PyPI's self-contained ktransformers 0.2.1 sdist (no GitHub here)."""
    sdist = dockerenv.pypi_sdist("ktransformers", "0.2.1")
    return [
        "--target", "avx2", "--line", "v0.2.1", "--cuda", "13.0", "--numa" if numa else "--no-numa",
        "--ktransformers-src", str(sdist), "--cuda-arch", "9.0", "--jobs", "2", "--flash-attn", "skip",
        "--base-image", dockerenv.CUDA_DEVEL_BASE, "--runtime-base-image", dockerenv.CUDA_RUNTIME_BASE,
        "--ca-cert", dockerenv.CA_BUNDLE, "--pip-index-url", INDEX_WITH_CREDENTIALS,
        "--https-proxy", PROXY_WITH_CREDENTIALS,
        "--no-proxy", "pypi.org,files.pythonhosted.org,download.pytorch.org,localhost,127.0.0.1",
        "--tag", tag, "--min-free-gb", "8", "--no-configure",
    ]
