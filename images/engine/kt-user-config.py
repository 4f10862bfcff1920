"""Write ~/.ktransformers/config.yaml with the log and database directories
under the user's home. KTransformers copies its packaged config there on
first start and resolves relative paths against its own package directory,
which a non-root user cannot write: the server then dies at import time
(PermissionError on site-packages/ktransformers/logs).

balance_serve's KV-cache service (kvc2) reads two settings only from this
file: the RAM it may hold cached KV pages in (upstream's default is 500 GB,
an allocation that fails on most hosts; its --cpu_memory_size_GB flag passes
a string the scheduler cannot take) and the folder it saves pages to (an
absolute /mnt path upstream). `--kvc2 GB` sets both on every start and leaves
the rest of the file, the user's own edits included, as it is.

Usage: kt-user-config.py [HOME]          write the file when it is missing
       kt-user-config.py --kvc2 GB       set kvc2's RAM and folder in it
"""

import os
import sys
from pathlib import Path

import yaml


def write_new(home: Path) -> int:
    import ktransformers

    store = home / ".ktransformers"
    target = store / "config.yaml"
    if target.is_file():
        return 0
    packaged = Path(ktransformers.__file__).parent / "configs" / "config.yaml"
    config = yaml.safe_load(packaged.read_text())
    config.setdefault("log", {})["dir"] = str(store / "logs")
    config.setdefault("db", {})["host"] = str(store)
    if "kvc2" in config:
        config["kvc2"]["disk_path"] = str(store / "kvc2-cache")
    (store / "logs").mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return 0


def set_kvc2(home: Path, ram_gb: str) -> int:
    try:
        gigabytes = float(ram_gb)
    except ValueError:
        gigabytes = -1.0
    if not gigabytes > 0:
        print(f"ktappliance: KT_KVC2_RAM_GB={ram_gb!r}: expected a number of GB above 0", file=sys.stderr)
        return 2
    store = home / ".ktransformers"
    target = store / "config.yaml"
    config = yaml.safe_load(target.read_text()) or {}
    kvc2 = config.setdefault("kvc2", {})
    kvc2["cpu_memory_size_GB"] = int(gigabytes) if gigabytes.is_integer() else gigabytes
    kvc2["disk_path"] = kvc2.get("disk_path") if str(kvc2.get("disk_path", "")).startswith(str(home)) \
        else str(store / "kvc2-cache")
    Path(kvc2["disk_path"]).mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.tmp")
    staged.write_text(yaml.safe_dump(config, sort_keys=False))
    staged.replace(target)
    return 0


def main(argv: list[str]) -> int:
    home = Path(os.path.expanduser("~"))
    if argv[:1] == ["--kvc2"] and len(argv) == 2:
        return set_kvc2(home, argv[1])
    return write_new(Path(argv[0]) if argv else home)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
