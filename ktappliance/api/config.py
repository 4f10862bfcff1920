"""API service settings, all from the environment (compose .env, supervisord)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ApplianceError

REASONING_MODES = ("inline", "split")


@dataclass(frozen=True)
class ApiConfig:
    upstream: str                    # the engine's base URL, without /v1
    upstream_key: str = ""           # the engine's own key, if it has one
    api_keys: frozenset[str] = frozenset()
    open_mode: bool = False          # no auth at all: only when asked for
    max_inflight: int = 1            # KTransformers serves one request at a time
    queue_size: int = 16
    queue_timeout: float = 600.0     # how long a request may wait for its turn
    # Silence from the engine before 504. One request runs at a time, so a hung
    # engine holds the only slot while the queue fills: long enough for
    # DeepSeek-R1's prefill of a long prompt on the CPU (minutes), no longer.
    stall_timeout: float = 300.0
    connect_timeout: float = 3.0
    read_timeout: float = 30.0       # to receive a request's headers, then its body
    max_connections: int = 256       # open client connections; more get 503 at once
    max_body_bytes: int = 1 << 20
    # Names clients use, all served by the one engine model. A name maps to
    # its default reasoning mode: DeepSeek's API splits for deepseek-reasoner.
    aliases: dict[str, str] = field(default_factory=lambda: {"DeepSeek-R1": "inline",
                                                             "deepseek-reasoner": "split"})
    reasoning_opened: bool = False   # the chat template opens <think> in the prompt
    # What the engine serves: choices per request, and whether the model reads images.
    engine_max_n: int = 1
    engine_images: bool = False
    # Web pages of these origins may call the API from a browser (CORS); none by default.
    cors_origins: frozenset[str] = frozenset()

    @property
    def auth_required(self) -> bool:
        return not self.open_mode


def _int(env: dict, name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApplianceError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise ApplianceError(f"{name}={raw}: must be at least {minimum}")
    return value


def _seconds(env: dict, name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApplianceError(f"{name}={raw!r}: expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ApplianceError(f"{name}={raw}: expected a number of seconds above 0")
    return value


def _aliases(raw: str) -> dict[str, str]:
    """"DeepSeek-R1=inline,deepseek-reasoner=split" (a bare name means inline)."""
    aliases = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, mode = item.partition("=")
        mode = mode or "inline"
        if mode not in REASONING_MODES:
            raise ApplianceError(f"KTA_MODEL_ALIASES: {item!r}: mode must be inline or split")
        aliases[name] = mode
    return aliases


def _origins(raw: str) -> frozenset[str]:
    """"https://chat.example.com,http://localhost:5173", or "*" for any page."""
    origins = frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins - {"*"}:
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not rest or "/" in rest:
            raise ApplianceError(f"KTA_CORS_ORIGINS: {origin!r} is no origin (scheme://host[:port], or *)")
    return origins


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def load_keys(env: dict) -> frozenset[str]:
    keys = {k.strip() for k in env.get("KTA_API_KEYS", "").split(",") if k.strip()}
    key_file = env.get("KTA_API_KEY_FILE", "")
    if key_file:
        path = Path(key_file)
        try:
            keys |= {line.strip() for line in path.read_text().splitlines()
                     if line.strip() and not line.startswith("#")}
        except OSError as exc:
            raise ApplianceError(f"KTA_API_KEY_FILE {key_file}: {exc.strerror}") from None
    return frozenset(keys)


def from_env(env: dict | None = None) -> ApiConfig:
    env = dict(os.environ if env is None else env)
    upstream = env.get("KTA_UPSTREAM", "").rstrip("/")
    if not upstream.startswith(("http://", "https://")):
        raise ApplianceError("KTA_UPSTREAM must be the engine's URL, e.g. http://engine:8080")
    keys = load_keys(env)
    open_mode = _truthy(env.get("KTA_OPEN", ""))
    if not keys and not open_mode:
        raise ApplianceError("no API key configured: set KTA_API_KEY_FILE or KTA_API_KEYS "
                             "(or KTA_OPEN=true to serve without auth)")
    config = ApiConfig(
        upstream=upstream.removesuffix("/v1"),
        upstream_key=env.get("KTA_UPSTREAM_KEY", ""),
        api_keys=keys,
        open_mode=open_mode,
        max_inflight=_int(env, "KTA_MAX_INFLIGHT", 1, minimum=1),
        queue_size=_int(env, "KTA_QUEUE_SIZE", 16),
        queue_timeout=_seconds(env, "KTA_QUEUE_TIMEOUT", ApiConfig.queue_timeout),
        stall_timeout=_seconds(env, "KTA_STALL_TIMEOUT", ApiConfig.stall_timeout),
        read_timeout=_seconds(env, "KTA_READ_TIMEOUT", ApiConfig.read_timeout),
        max_connections=_int(env, "KTA_MAX_CONNECTIONS", ApiConfig.max_connections, minimum=8),
        max_body_bytes=_int(env, "KTA_MAX_BODY_BYTES", 1 << 20, minimum=1024),
        reasoning_opened=_truthy(env.get("KTA_REASONING_OPENED", "")),
        cors_origins=_origins(env.get("KTA_CORS_ORIGINS", "")),
        engine_max_n=_int(env, "KTA_ENGINE_MAX_N", 1, minimum=1),
        engine_images=_truthy(env.get("KTA_ENGINE_IMAGES", "")),
    )
    if env.get("KTA_MODEL_ALIASES"):
        config = ApiConfig(**{**config.__dict__, "aliases": _aliases(env["KTA_MODEL_ALIASES"])})
    return config
