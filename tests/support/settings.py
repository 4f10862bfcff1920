"""Tags and build arguments of the images the tests build (once per run)."""

from support import dockerenv

LLAMACPP_TAG = "kta-test/llamacpp:b11312-avx2-cpu"
API_TAG = "kta-test/api:latest"
WEBUI_TAG = "kta-test/webui:latest"
# What a user's default build is: v0.2.3 on CUDA 12.4 with torch 2.5.1; v0.3.2
# with torch 2.6.0 and balance_serve, on CUDA 12.4 (the default, 12.6, cannot
# be had here: PyPI's torch 2.6.0 is its CUDA 12.4 build).
ENGINE_TAG = "kta-test/engine:v0.2.3-avx2-cu124-nonuma-single"
ENGINE_NUMA_TAG = "kta-test/engine:v0.2.3-avx2-cu124-numa-single"
ENGINE_AMX_TAG = "kta-test/engine:v0.3.2-amx-cu124-nonuma-balance_serve"
# v0.3.2 with balance_serve for avx2 (what `detect` offers an avx2 host for
# concurrency): built only on a CI machine that cannot run the amx image's
# code, so that the scheduler's own tests still run there.
ENGINE_SERVE_AVX2_TAG = "kta-test/engine:v0.3.2-avx2-cu124-nonuma-balance_serve"
# The index URL and proxy carry fake credentials so that the history test has
# something to look for; the proxy is bypassed for the hosts the build uses.
INDEX_WITH_CREDENTIALS = "https://kta-user:s3cr3t-index-token@pypi.org/simple"
PROXY_WITH_CREDENTIALS = "http://kta-user:s3cr3t-proxy-pass@127.0.0.1:9"


def engine_build_args(tag: str, *, line: str = "v0.2.3", target: str = "avx2", numa: bool = False) -> list[str]:
    """Test-only settings: the stand-in CUDA 12.4 bases, one CUDA arch, two jobs,
    no flash-attn (its wheel is on GitHub, its compile takes hours), and the
    line's upstream source: the pinned tarball in ../shared/sources when it is
    there, else the pinned git tag, as a user's build would."""
    source = dockerenv.ktransformers_source(line)
    return [
        "--target", target, "--line", line, "--cuda", "12.4", "--numa" if numa else "--no-numa",
        *(["--ktransformers-src", str(source)] if source else []),
        "--cuda-arch", "9.0", "--jobs", "2", "--flash-attn", "skip",
        "--base-image", dockerenv.CUDA_DEVEL_BASE, "--runtime-base-image", dockerenv.CUDA_RUNTIME_BASE,
        "--ca-cert", dockerenv.CA_BUNDLE, "--pip-index-url", INDEX_WITH_CREDENTIALS,
        "--https-proxy", PROXY_WITH_CREDENTIALS,
        "--no-proxy", "pypi.org,files.pythonhosted.org,download.pytorch.org,github.com,localhost,127.0.0.1",
        "--tag", tag, "--min-free-gb", "8", "--no-configure",
    ]
