"""`build.py model fetch`: download a model's GGUF shards and its config files
into the layout the compose stack mounts:

    DIR/gguf/<quant directory>/*.gguf     -> the engine's GGUF directory
    DIR/config/                          -> KTransformers' --model_path

ModelScope by default (reachable from China and AutoDL); Hugging Face with
--source hf (honours HF_ENDPOINT, e.g. a mirror). Both libraries resume
interrupted files and show progress; ModelScope checks each file's SHA256."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ktappliance.errors import ApplianceError

SOURCES = ("modelscope", "hf")


@dataclass(frozen=True)
class FetchRequest:
    weights_repo: str
    include: str
    config_repo: str | None
    config_exclude: tuple[str, ...]
    dest: Path
    source: str = "modelscope"


def _snapshot(source: str):
    try:
        if source == "hf":
            from huggingface_hub import snapshot_download
        else:
            from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        package = "huggingface_hub" if source == "hf" else "modelscope"
        raise ApplianceError(f"{package} is not installed: pip install {package}") from None
    return snapshot_download


def fetch(request: FetchRequest) -> tuple[Path, Path | None]:
    if request.source not in SOURCES:
        raise ApplianceError(f"--source {request.source}: choose modelscope or hf")
    snapshot = _snapshot(request.source)
    # Followed as given (a relative path, `..`, a link), so say where before
    # a download of many gigabytes starts.
    dest = Path(os.path.realpath(request.dest))
    weights_dir = dest / "gguf"
    config_dir = dest / "config" if request.config_repo else None
    print(f"fetching {request.weights_repo} ({request.include}) into {weights_dir}"
          + (f", config from {request.config_repo} into {config_dir}" if config_dir else ""), file=sys.stderr)
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ApplianceError(f"cannot write to {request.dest}: {exc.strerror}") from None
    try:
        snapshot(request.weights_repo, allow_patterns=[request.include], local_dir=str(weights_dir))
        if config_dir is not None:
            snapshot(request.config_repo, ignore_patterns=list(request.config_exclude), local_dir=str(config_dir))
    except ApplianceError:
        raise
    except Exception as exc:  # both hubs raise their own error types
        raise ApplianceError(f"download failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return weights_dir, config_dir
