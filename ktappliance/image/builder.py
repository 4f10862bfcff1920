"""Build a rendered context with BuildKit through the docker CLI.

The docker SDK cannot drive BuildKit, so builds go through the CLI: `docker
buildx build` where the buildx plugin exists, else a CLI older than 23 whose
built-in BuildKit runs with DOCKER_BUILDKIT=1 (Debian's docker.io). The SDK is
used for what it can do: talking to the daemon."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ktappliance.errors import ApplianceError, DockerError

DOCKER_CANDIDATES = ("docker", "/usr/bin/docker", "/usr/local/bin/docker")


@dataclass(frozen=True)
class BuildKitCli:
    docker: str
    uses_buildx: bool

    @property
    def env(self) -> dict[str, str]:
        return {} if self.uses_buildx else {"DOCKER_BUILDKIT": "1"}

    def build_prefix(self) -> list[str]:
        return [self.docker, "buildx", "build", "--load"] if self.uses_buildx else [self.docker, "build"]


@dataclass(frozen=True)
class BuildCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def _quiet(argv: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _candidates() -> list[str]:
    forced = os.environ.get("KTA_DOCKER")  # use exactly this docker CLI
    if forced:
        return [forced] if os.access(forced, os.X_OK) else []
    seen, found = set(), []
    for name in DOCKER_CANDIDATES:
        path = shutil.which(name) if "/" not in name else (name if os.access(name, os.X_OK) else None)
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            found.append(path)
    return found


def find_buildkit_cli() -> BuildKitCli:
    candidates = _candidates()
    if not candidates:
        raise DockerError("docker not found: install Docker (Debian/Ubuntu: apt-get install docker.io)")
    for docker in candidates:
        done = _quiet([docker, "buildx", "version"])
        if done is not None and done.returncode == 0:
            return BuildKitCli(docker, uses_buildx=True)
    for docker in candidates:
        done = _quiet([docker, "--version"])
        match = re.search(r"version (\d+)\.", done.stdout) if done else None
        # CLIs from 23.0 on hand BuildKit builds to buildx; older ones run it themselves.
        if match and int(match.group(1)) < 23:
            return BuildKitCli(docker, uses_buildx=False)
    raise DockerError("BuildKit is not available: install the buildx plugin "
                      "(apt-get install docker-buildx, or docker-buildx-plugin from Docker's repository)")


def check_daemon() -> dict:
    """Ask the daemon for its facts through the SDK; one clear line when it cannot answer."""
    try:
        import docker  # the SDK; imported here so detect/render work without it
        client = docker.from_env(timeout=20)
        return client.info()
    except ImportError:
        raise DockerError("the docker Python SDK is missing: pip install -e . (or pip install docker)") from None
    except Exception as exc:  # the SDK wraps socket errors in several types
        text = str(exc)
        if "Permission denied" in text or "PermissionError" in text:
            raise DockerError("permission denied on the Docker socket: add your user to the docker group "
                              "(then log in again) or run as root") from None
        if any(s in text for s in ("FileNotFoundError", "No such file", "Connection refused", "ConnectionRefused")):
            raise DockerError("the Docker daemon is not running: start it (systemctl start docker, or dockerd)") from None
        raise DockerError(f"cannot talk to the Docker daemon: {text.splitlines()[0] if text else type(exc).__name__}") from None


def check_disk(info: dict, needed_gib: float) -> None:
    root = Path(info.get("DockerRootDir") or "/var/lib/docker")
    probe = root if root.exists() else Path("/")
    try:
        free_gib = shutil.disk_usage(probe).free / 2**30
    except OSError:
        return  # a remote daemon: its disk cannot be seen from here
    if free_gib < needed_gib:
        raise DockerError(f"not enough disk for the build: {free_gib:.0f} GiB free under {probe}, "
                          f"about {needed_gib:.0f} GiB needed (free space or pass --min-free-gb)")


def build_command(cli: BuildKitCli, *, context: Path, tag: str, build_args: dict[str, str],
                  secrets: dict[str, Path], target: str | None = "runtime",
                  dockerfile: Path | None = None) -> BuildCommand:
    argv = cli.build_prefix() + ["--progress=plain", "-t", tag, "-f", str(dockerfile or context / "Dockerfile")]
    if target:
        argv += ["--target", target]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for name, path in secrets.items():
        argv += ["--secret", f"id={name},src={path}"]
    argv.append(str(context))
    return BuildCommand(argv, cli.env)


def save_replay(context: Path, command: BuildCommand) -> Path:
    """Every build command is kept next to its context, to be run again by hand."""
    script = context / "build-command.sh"
    tmp = script.with_suffix(".tmp")
    tmp.write_text("#!/bin/sh\n# Written by ktappliance: the exact build command for this context.\n"
                   f"exec env {command.shell_line()}\n")
    tmp.chmod(0o755)
    tmp.replace(script)
    return script


def write_secret_env(context: Path, values: dict[str, str]) -> Path | None:
    """Proxy credentials and index URLs go to a 0600 file outside the build
    context (.dockerignore) that BuildKit mounts as a secret."""
    if not values:
        return None
    directory = context / "secrets"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / "network.env"
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        for key, value in values.items():
            handle.write(f"{key}={shlex.quote(value)}\n")
    path.with_suffix(".tmp").replace(path)
    return path


# Pull failures as BuildKit and the daemon word them, with what the user can do.
PULL_FAILURES = (
    (re.compile(r"pull access denied|requested access to the resource is denied|unauthorized|"
                r"authentication required|no basic auth credentials|denied: "),
     "the registry refused access", "log in first: docker login {registry}"),
    (re.compile(r"manifest unknown|: not found\b|repository does not exist|name unknown"),
     "no such image or tag there", "check the name, or point {option} at a registry that has it"),
    (re.compile(r"no such host|dial tcp|i/o timeout|connection refused|connection reset|network is unreachable|"
                r"TLS handshake timeout|x509: |proxyconnect"),
     "the registry cannot be reached", "point {option} at a mirror you can reach (or set --https-proxy)"),
)


def _normal(ref: str) -> str:
    ref = ref.removeprefix("docker.io/")
    return ref.removeprefix("library/")


def _refs_in(line: str) -> list[str]:
    refs = re.findall(r"load metadata for (\S+?):?\s*$", line)
    refs += [f"{host}/{repo}:{tag}".removeprefix("registry-1.docker.io/") for host, repo, tag in
             re.findall(r'https://([^/\s"]+)/v2/(\S+?)/manifests/([^"\s]+)', line)]
    refs += re.findall(r"ERROR: (\S+:\S+): not found", line)
    return refs


def pull_failure(output: str, images: dict[str, str]) -> str | None:
    """One line naming the images that could not be pulled and the fix, or
    None when the build failed for another reason. `images` maps an option
    (--base-image, --runtime-base-image) to the image it set."""
    failed: dict[str, str] = {}  # image -> option
    kind = None
    step_refs: dict[str, str] = {}  # BuildKit step "#3" -> the image it loads
    for line in output.splitlines():
        step = re.match(r"(#\d+) \[internal\] load metadata for (\S+)\s*$", line)
        if step:
            step_refs[step.group(1)] = step.group(2)
        if not ("ERROR" in line or "failed to solve" in line):
            continue
        for pattern, reason, fix in PULL_FAILURES:
            if pattern.search(line):
                refs = _refs_in(line) or [step_refs[s] for s in re.findall(r"^(#\d+) ERROR", line) if s in step_refs]
                if refs:
                    kind = kind or (reason, fix)
                    for ref in refs:
                        option = next((o for o, image in images.items() if _normal(image) == _normal(ref)),
                                      "--base-image / --runtime-base-image")
                        image = images.get(option, _normal(ref))
                        failed.setdefault(image, option)
                break
    if not failed or kind is None:
        return None
    reason, fix = kind
    options = " / ".join(dict.fromkeys(failed.values()))
    first = next(iter(failed))
    registry = first.split("/", 1)[0] if "/" in first and "." in first.split("/", 1)[0] else "docker.io"
    return f"cannot pull {', '.join(failed)}: {reason}; {fix.format(option=options, registry=registry)}"


def run(command: BuildCommand, images: dict[str, str] | None = None) -> None:
    """Run with the output streamed live (BuildKit's plain progress shows each
    step) and its tail kept, to name a base image that could not be pulled."""
    tail: deque[str] = deque(maxlen=400)
    try:
        process = subprocess.Popen(command.argv, env={**os.environ, **command.env}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise DockerError(f"cannot run {command.argv[0]}: {exc.strerror}") from None
    assert process.stdout is not None
    for line in process.stdout:
        sys.stderr.write(line)
        tail.append(line)
    returncode = process.wait()
    if returncode != 0:
        sys.stderr.flush()
        message = pull_failure("".join(tail), images or {})
        if message:
            raise DockerError(message)
        raise ApplianceError(f"the image build failed (exit {returncode}); see the log above")
