"""builder.py without a daemon: dry runs anywhere, and the one line that
names a base image BuildKit could not pull."""

import pytest

from ktappliance.image.builder import pull_failure

from support.buildpy import run_cli

# What BuildKit (Docker 20.10) printed here for a FROM whose registry has no
# route (recorded on this machine), and the wording registries use for the
# other two common failures.
UNREACHABLE = """#3 [internal] load metadata for docker.io/nvidia/cuda:12.4.1-devel-ubuntu22.04
#3 ERROR: failed to do request: Head "https://registry-1.docker.io/v2/nvidia/cuda/manifests/12.4.1-devel-ubuntu22.04": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host
------
 > [internal] load metadata for docker.io/nvidia/cuda:12.4.1-devel-ubuntu22.04:
------
failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to do request: Head "https://registry-1.docker.io/v2/nvidia/cuda/manifests/12.4.1-devel-ubuntu22.04": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host
"""
DENIED = """#4 [internal] load metadata for mirror.example.com/nvidia/cuda:12.6.3-base-ubuntu24.04
#4 ERROR: pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed
------
 > [internal] load metadata for mirror.example.com/nvidia/cuda:12.6.3-base-ubuntu24.04:
------
failed to solve with frontend dockerfile.v0: failed to create LLB definition: pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed
"""
TYPO = """#3 [internal] load metadata for docker.io/nvidia/cuda:12.4.1-devle-ubuntu22.04
#3 ERROR: docker.io/nvidia/cuda:12.4.1-devle-ubuntu22.04: not found
------
 > [internal] load metadata for docker.io/nvidia/cuda:12.4.1-devle-ubuntu22.04:
------
failed to solve with frontend dockerfile.v0: failed to create LLB definition: docker.io/nvidia/cuda:12.4.1-devle-ubuntu22.04: not found
"""
IMAGES = {"--base-image": "nvidia/cuda:12.4.1-devel-ubuntu22.04",
          "--runtime-base-image": "mirror.example.com/nvidia/cuda:12.6.3-base-ubuntu24.04"}


@pytest.mark.parametrize("output, expected", [
    (UNREACHABLE, "cannot pull nvidia/cuda:12.4.1-devel-ubuntu22.04: the registry cannot be reached; "
                  "point --base-image at a mirror you can reach"),
    (DENIED, "cannot pull mirror.example.com/nvidia/cuda:12.6.3-base-ubuntu24.04: the registry refused access; "
             "log in first: docker login mirror.example.com"),
    (TYPO, "cannot pull nvidia/cuda:12.4.1-devle-ubuntu22.04: no such image or tag there; check the name"),
])
def test_pull_failures_name_the_image_and_the_fix(output, expected):
    assert pull_failure(output, IMAGES).startswith(expected)


def test_other_build_failures_are_not_called_pull_failures():
    compile_error = "#16 12.3 error: 'foo' was not declared in this scope\nERROR: process did not complete successfully\n"
    assert pull_failure(compile_error, IMAGES) is None


def test_dry_run_needs_no_docker(tmp_path):
    done = run_cli("--target", "avx2", "--dry-run", "--no-configure", "--out", str(tmp_path / "out"),
                   env={"KTA_DOCKER": str(tmp_path / "no-docker")})
    assert done.returncode == 0, done.stderr
    assert "docker buildx build --load --progress=plain -t ktappliance/engine:v0.2.3-avx2-cu124-nonuma" in done.stdout
    assert "docker buildx build" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_apt_mirror_credentials_travel_as_a_secret_not_a_build_arg(tmp_path):
    mirror = "http://kta-user:s3cr3t-apt@mirror.example/debian"
    done = run_cli("--target", "avx2", "--dry-run", "--no-configure", "--apt-mirror", mirror,
                   "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-apt" not in done.stdout and "APT_MIRROR" not in done.stdout
    assert "--secret id=network_env" in done.stdout
    from ktappliance.image.plan import NetworkOptions
    assert NetworkOptions(apt_mirror=mirror).secret_env() == {"APT_MIRROR": mirror}
