"""Write the compose stack's settings: compose/.env and compose/engine.env.

Both files are written to a temporary name with mode 0600 and renamed into
place. Only the keys the tool owns change: a user's own lines (ENGINE_MEMLOCK,
comments) survive every rebuild. Keys (the API key, Open-WebUI's secret) are
generated once and kept on later runs, so rebuilding does not log anyone out."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ktappliance.errors import ApplianceError
from ktappliance.paths import COMPOSE_DIR

KEPT_KEYS = ("API_KEY", "WEBUI_SECRET_KEY", "WEBUI_ADMIN_EMAIL", "WEBUI_ADMIN_PASSWORD", "WEBUI_ADMIN_NAME")


@dataclass
class StackSettings:
    engine: str                       # "ktransformers" or "llamacpp"
    engine_image: str
    model_dir: Path
    api_image: str
    webui_image: str
    engine_env: dict[str, str] = field(default_factory=dict)
    gpus: str = "all"                 # "all", "none" or "0,1"
    numa: bool = False
    bind_address: str = "127.0.0.1"
    api_port: int = 10002
    webui_port: int = 3000
    max_inflight: int = 1
    reasoning_opened: bool = False
    project: str = "ktappliance"


def read_env(path: Path) -> dict[str, str]:
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


BEGIN = "# >>> ktappliance settings: rewritten by build.py; put your own settings below the end marker"
END = "# <<< end of ktappliance settings (lines after this one are yours and are kept)"


def merge_env(existing: str, owned: dict[str, str], header: str) -> str:
    """The tool's settings in their marked block, rewritten whole; every other
    line (the user's keys, comments, blank lines) kept as it was. In a file
    from before the markers, lines setting a key the tool owns are the tool's."""
    outside: list[str] = []
    inside = False
    for line in existing.splitlines():
        if line == BEGIN:
            inside = True
        elif line == END:
            inside = False
        elif not inside:
            key = line.partition("=")[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
            if key not in owned and not line.startswith("# Written by ktappliance"):
                outside.append(line)
    block = [BEGIN, *header.rstrip("\n").splitlines(), *(f"{k}={v}" for k, v in owned.items()), END]
    return "\n".join(block + outside) + "\n"


def _write_private(path: Path, header: str, values: dict[str, str]) -> None:
    for key, value in values.items():
        if "\n" in str(value):
            raise ApplianceError(f"{key}: a setting cannot span lines")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        existing = path.read_text() if path.is_file() else ""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(merge_env(existing, values, header))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ApplianceError(f"cannot write {path}: {exc.strerror}") from None


API_USER = 10001  # the API image's own user


def write_key_file(path: Path, key: str) -> tuple[Path, int, int]:
    """The API key as a compose secret: a 0600 file in a 0700 folder, owned
    by the uid the API container runs as (the image's user when run as root,
    else the caller, whose uid compose then gives the container)."""
    uid, gid = (API_USER, API_USER) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        if os.geteuid() == 0:
            os.chown(tmp, uid, gid)
        tmp.replace(path)
    except OSError as exc:
        raise ApplianceError(f"cannot write {path}: {exc.strerror}") from None
    return path, uid, gid


def _gpu_override(settings: StackSettings, compose_dir: Path) -> list[str]:
    if settings.gpus == "none":
        return []
    if settings.gpus == "all":
        return ["docker-compose.gpu.yml"]
    ids = [i.strip() for i in settings.gpus.split(",") if i.strip()]
    if not all(i.isdigit() for i in ids):
        raise ApplianceError(f"--gpus {settings.gpus}: use all, none, or GPU indexes like 0,1")
    override = compose_dir / "docker-compose.gpu-ids.yml"
    override.write_text(
        "# Written by ktappliance for --gpus " + settings.gpus + "\nservices:\n  engine:\n    deploy:\n"
        "      resources:\n        reservations:\n          devices:\n            - driver: nvidia\n"
        f"              device_ids: [{', '.join(repr(i) for i in ids)}]\n              capabilities: [gpu]\n")
    return [override.name]


def write_stack_env(settings: StackSettings, env_file: Path | None = None,
                    compose_dir: Path = COMPOSE_DIR) -> Path:
    env_file = Path(env_file) if env_file else compose_dir / ".env"
    engine_env_file = env_file.with_name(env_file.name + ".engine")
    kept = read_env(env_file)
    files = ["docker-compose.yml", *_gpu_override(settings, compose_dir)]
    if settings.numa:
        files.append("docker-compose.numa.yml")
    values = {
        "COMPOSE_PROJECT_NAME": settings.project,
        "COMPOSE_FILE": ":".join(files),
        "ENGINE_IMAGE": settings.engine_image,
        "ENGINE_ENV_FILE": str(engine_env_file.resolve()),
        "ENGINE_PORT": "10002" if settings.engine == "ktransformers" else "8080",
        "MODEL_DIR": str(Path(settings.model_dir).resolve()),
        "API_IMAGE": settings.api_image,
        "API_KEY": kept.get("API_KEY") or "sk-kta-" + secrets.token_urlsafe(32),
        "API_MAX_INFLIGHT": str(settings.max_inflight),
        "API_REASONING_OPENED": "true" if settings.reasoning_opened else "false",
        "API_PORT": str(settings.api_port),
        "WEBUI_IMAGE": settings.webui_image,
        "WEBUI_SECRET_KEY": kept.get("WEBUI_SECRET_KEY") or secrets.token_urlsafe(32),
        "WEBUI_PORT": str(settings.webui_port),
        "BIND_ADDRESS": settings.bind_address,
    }
    for key in KEPT_KEYS[2:]:
        if kept.get(key):
            values[key] = kept[key]
    try:
        env_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ApplianceError(f"cannot write {env_file}: {exc.strerror}") from None
    key_file, uid, gid = write_key_file(env_file.with_name(env_file.name + ".secrets") / "api_key", values["API_KEY"])
    values.update({"API_KEY_FILE": str(key_file.resolve()), "API_UID": str(uid), "API_GID": str(gid)})
    _write_private(engine_env_file, "# Engine settings, written by ktappliance.\n", settings.engine_env)
    _write_private(env_file, "# Written by ktappliance: the stack's settings and keys (mode 0600).\n", values)
    return env_file


def first_shard(model_dir: Path, fallback: str) -> str:
    """The in-container path of the model file llama.cpp loads: the first
    shard of the first model found under MODEL_DIR/gguf, else the catalogue's."""
    gguf_root = Path(model_dir) / "gguf"
    if gguf_root.is_dir():
        candidates = sorted(gguf_root.rglob("*.gguf"))
        firsts = [p for p in candidates if "-of-" not in p.name or "-00001-of-" in p.name]
        if firsts:
            return "/models/" + firsts[0].relative_to(model_dir).as_posix()
    return fallback
