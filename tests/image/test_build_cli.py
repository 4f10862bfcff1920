"""`build.py` against the Docker daemon: the one-line errors for daemon
problems, --dry-run, and the saved replay command. Fast: nothing is built."""

import os
import shutil
import subprocess

import pytest

from support.buildpy import REPO, assert_one_line_error, run_cli

pytestmark = pytest.mark.image
BUILD = ["--target", "avx2", "--no-configure"]


def test_dry_run_prints_the_command_and_writes_nothing(tmp_path):
    done = run_cli(*BUILD, "--dry-run", "--out", str(tmp_path / "out"), "--https-proxy", "http://u:pw@proxy:3128")
    assert done.returncode == 0, done.stderr
    assert "build --progress=plain -t ktappliance/engine:v0.2.3-avx2-cu124-nonuma" in done.stdout
    assert "--secret id=network_env" in done.stdout and "pw@proxy" not in done.stdout
    assert not (tmp_path / "out").exists()


def test_no_docker_cli(tmp_path):
    assert_one_line_error(run_cli(*BUILD, env={"KTA_DOCKER": str(tmp_path / "no-docker")}), "docker not found")


def test_daemon_not_running(docker_client):
    done = run_cli(*BUILD, "--out", "/nonexistent-never-written", env={"DOCKER_HOST": "unix:///tmp/kta-no-such.sock"})
    assert_one_line_error(done, "the Docker daemon is not running")


def test_permission_denied_on_the_socket(docker_client):
    # The venv's interpreter may sit under /root; the system one of the same
    # version runs the tool with the venv's packages as an unprivileged user.
    system_python = "/usr/bin/python3"
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
    same = subprocess.run([system_python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                          text=True).stdout.strip() == str(tuple(os.sys.version_info[:2]))
    if os.geteuid() != 0 or not shutil.which("runuser") or site is None or not same:
        pytest.skip("needs root, runuser and a system Python of the venv's version")
    if subprocess.run(["runuser", "-u", "nobody", "--", "test", "-r", str(site / "docker" / "__init__.py")]).returncode:
        pytest.skip(f"user nobody cannot read {site} (the checkout sits in a private directory)")
    done = subprocess.run(["runuser", "-u", "nobody", "--", system_python, str(REPO / "build.py"), *BUILD,
                           "--out", "/tmp/kta-nobody-out"], capture_output=True, text=True, cwd="/tmp",
                          env={"PATH": os.environ["PATH"], "HOME": "/tmp", "PYTHONPATH": f"{REPO}:{site}"})
    assert_one_line_error(done, "permission denied on the Docker socket")


def test_buildkit_missing():
    newer = "/usr/local/bin/docker"
    version = subprocess.run([newer, "--version"], capture_output=True, text=True).stdout if os.path.exists(newer) else ""
    has_buildx = os.path.exists(newer) and subprocess.run([newer, "buildx", "version"], capture_output=True).returncode == 0
    if not version or has_buildx or int(version.split()[2].split(".")[0]) < 23:
        pytest.skip("needs a docker CLI of 23+ without the buildx plugin (this machine image ships one)")
    assert_one_line_error(run_cli(*BUILD, env={"KTA_DOCKER": newer}), "BuildKit is not available")


def test_disk_too_small(docker_client, tmp_path):
    done = run_cli(*BUILD, "--min-free-gb", "1000000", "--out", str(tmp_path / "out"))
    assert_one_line_error(done, "not enough disk for the build", "1000000 GiB needed")
    assert not (tmp_path / "out").exists()


def test_unpullable_base_image_ends_with_one_line_naming_it(docker_client, tmp_path):
    # No registry is reachable here: BuildKit fails at once on the FROM.
    done = run_cli(*BUILD, "--base-image", "kta-test/no-such-devel:1", "--runtime-base-image", "kta-test/no-such-rt:1",
                   "--min-free-gb", "1", "--out", str(tmp_path / "out"))
    assert done.returncode == 3 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "the registry cannot be reached" in last, last
    # BuildKit cancels the second pull once the first fails: either may be named, with its own option.
    assert ("cannot pull kta-test/no-such-devel:1" in last and "--base-image" in last) or \
        ("cannot pull kta-test/no-such-rt:1" in last and "--runtime-base-image" in last), last
