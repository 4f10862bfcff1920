"""The model catalogue (models.yaml): repos, file patterns and sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ktappliance.errors import ApplianceError

CATALOGUE_FILE = Path(__file__).with_name("models.yaml")
GB = 1000**3


@dataclass(frozen=True)
class Quant:
    name: str
    description: str
    include: str
    directory: str
    files: dict[str, float]  # file name -> size in GB (10^9 bytes)
    size_bytes: int
    needs_types: tuple[str, ...]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    architecture: str
    layers: int
    kv_bytes_per_token: int
    config_repo: str
    config_exclude: tuple[str, ...]
    weights_repo: str
    quants: dict[str, Quant]

    def quant(self, name: str) -> Quant:
        if name not in self.quants:
            raise ApplianceError(f"unknown quant {name!r} for {self.name}; known: {', '.join(self.quants)} "
                                 "(or give --repo and --include)")
        return self.quants[name]


def load_catalogue(path: Path = CATALOGUE_FILE) -> dict[str, ModelEntry]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        models = {}
        for name, entry in raw["models"].items():
            quants = {}
            for qname, q in entry["quants"].items():
                files = {str(k): float(v) for k, v in (q.get("files") or {}).items()}
                size = int(sum(files.values()) * GB) if files else int(float(q["size_gb"]) * GB)
                quants[qname] = Quant(qname, str(q["description"]), str(q["include"]), str(q["directory"]),
                                      files, size, tuple(q.get("needs_types") or ()))
            models[name] = ModelEntry(name, str(entry["description"]), str(entry["architecture"]),
                                      int(entry["layers"]), int(entry["kv_bytes_per_token"]),
                                      str(entry["config_repo"]), tuple(entry.get("config_exclude") or ()),
                                      str(entry["weights_repo"]), quants)
        return models
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ApplianceError(f"malformed model catalogue {path}: {exc}") from None


def model_entry(name: str, catalogue: dict[str, ModelEntry] | None = None) -> ModelEntry:
    catalogue = catalogue if catalogue is not None else load_catalogue()
    if name not in catalogue:
        raise ApplianceError(f"unknown model {name!r}; known: {', '.join(catalogue)}")
    return catalogue[name]
