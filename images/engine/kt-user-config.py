"""Write ~/.ktransformers/config.yaml with the log and database directories
under the user's home. KTransformers copies its packaged config there on
first start and resolves relative paths against its own package directory,
which a non-root user cannot write: the server then dies at import time
(PermissionError on site-packages/ktransformers/logs)."""

import os
import sys
from pathlib import Path

import ktransformers
import yaml


def main() -> int:
    home = Path(sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~"))
    store = home / ".ktransformers"
    target = store / "config.yaml"
    if target.is_file():
        return 0
    packaged = Path(ktransformers.__file__).parent / "configs" / "config.yaml"
    config = yaml.safe_load(packaged.read_text())
    config.setdefault("log", {})["dir"] = str(store / "logs")
    config.setdefault("db", {})["host"] = str(store)
    (store / "logs").mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
