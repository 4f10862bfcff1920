"""Check GGUF model files before an engine spends minutes loading them.

Reads only headers: magic, version, key/values and tensor infos, so a 131 GiB
split model checks in well under a second. Catches missing and truncated
shards, split metadata that does not agree, an unexpected architecture, tensor
types the chosen engine line cannot run, and a config directory that lacks
what KTransformers reads.

Standard library only: the same file runs inside the engine images at start
(`python3 modelcheck.py ...`), where the `gguf` package is not installed.
gguf's GGUFReader is not used for the same reason, and because it maps every
tensor up front and fails with a reshape error on a truncated file; the type
table below is checked against gguf.GGML_QUANT_SIZES by the unit tests.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import re
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAGIC = b"GGUF"
# ggml type id -> (name, elements per block, bytes per block), as in ggml.h.
TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
# GGUF value types: id -> struct format (strings and arrays handled apart).
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
SPLIT_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# What KTransformers' --model_path must hold (it loads config and tokenizer
# with transformers, trust_remote_code for DeepSeek's own classes).
CONFIG_FILES = ("config.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class HeaderError(Exception):
    pass


@dataclass
class Shard:
    path: str
    version: int = 0
    architecture: str | None = None
    split_no: int | None = None
    split_count: int | None = None
    split_tensors: int | None = None
    tensor_count: int = 0
    types: dict[str, int] = field(default_factory=dict)
    data_end: int = 0
    file_size: int = 0


@dataclass
class Problem:
    file: str
    message: str

    def line(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class Report:
    shards: list[Shard] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "problems": [p.line() for p in self.problems],
                           "shards": [asdict(s) for s in self.shards]}, indent=2)


MAX_ARRAY_NESTING = 8
MAX_DIMS = 8


class _Reader:
    """Reads header values, checking every length and count against the bytes
    left in the file before it reads or allocates anything."""

    def __init__(self, handle, size: int):
        self.handle, self.size = handle, size

    def left(self) -> int:
        return self.size - self.handle.tell()

    def take(self, size: int) -> bytes:
        if size > self.left():
            raise HeaderError("truncated header")
        data = self.handle.read(size)
        if len(data) != size:
            raise HeaderError("truncated header")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, least_bytes_each: int) -> int:
        value = self.unpack("<Q")
        if value * least_bytes_each > self.left():
            raise HeaderError(f"truncated or corrupt header: {what} {value} runs past the end of the "
                              f"{self.size}-byte file")
        return value

    def string(self) -> str:
        return self.take(self.count("string length", 1)).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0):
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise HeaderError(f"arrays nested deeper than {MAX_ARRAY_NESTING} levels")
            item_kind = self.unpack("<I")
            if item_kind in SCALARS:  # skip the bulk (token scores, types) unread
                count = self.count("array length", struct.calcsize(SCALARS[item_kind]))
                self.handle.seek(count * struct.calcsize(SCALARS[item_kind]), os.SEEK_CUR)
            else:
                for _ in range(self.count("array length", 8 if item_kind == STRING else 12)):
                    self.value(item_kind, depth + 1)
            return None
        raise HeaderError(f"unknown value type {kind}")


def _number(key: str, value, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HeaderError(f"{key} is {type(value).__name__ if value is not None else 'an array'}, expected a number")
    if value < minimum:
        raise HeaderError(f"{key} is {value}, expected {minimum} or more")
    return value


def read_header(path: Path) -> Shard:
    size = path.stat().st_size
    shard = Shard(path=str(path), file_size=size)
    with open(path, "rb") as handle:
        reader = _Reader(handle, size)
        magic = handle.read(4)
        if magic != MAGIC:
            raise HeaderError(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        shard.version = reader.unpack("<I")
        if shard.version not in (2, 3):
            raise HeaderError(f"GGUF version {shard.version} is not supported (2 or 3)")
        shard.tensor_count = reader.count("tensor count", 24)
        kv_count = reader.count("key/value count", 12)
        alignment = 32
        for _ in range(kv_count):
            key = reader.string()
            value = reader.value(reader.unpack("<I"))
            if key == "general.architecture":
                if not isinstance(value, str):
                    raise HeaderError("general.architecture is not a string")
                shard.architecture = value
            elif key == "general.alignment":
                alignment = _number(key, value, minimum=1)
                if alignment & (alignment - 1) or alignment > 1 << 20:
                    raise HeaderError(f"general.alignment is {alignment}, expected a power of two up to 1 MiB")
            elif key == "split.no":
                shard.split_no = _number(key, value)
            elif key == "split.count":
                shard.split_count = _number(key, value, minimum=1)
            elif key == "split.tensors.count":
                shard.split_tensors = _number(key, value)
        ends = []
        for _ in range(shard.tensor_count):
            reader.string()
            n_dims = reader.unpack("<I")
            if n_dims > MAX_DIMS:
                raise HeaderError(f"a tensor with {n_dims} dimensions (at most {MAX_DIMS})")
            dims = [reader.unpack("<Q") for _ in range(n_dims)]
            type_id, offset = reader.unpack("<I"), reader.unpack("<Q")
            if type_id not in TYPES:
                raise HeaderError(f"unknown tensor type id {type_id}")
            name, block_elems, block_bytes = TYPES[type_id]
            elements = 1
            for dim in dims:
                elements *= dim
            shard.types[name] = shard.types.get(name, 0) + 1
            ends.append(offset + elements // block_elems * block_bytes)
        data_start = -(-handle.tell() // alignment) * alignment
        shard.data_end = data_start + max(ends, default=0)
    return shard


def _not_a_file(path: Path) -> str | None:
    """Why path cannot be read as a GGUF file, or None when it is a regular
    file (never opened otherwise: a FIFO would block, /dev/zero never ends)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return f"a dangling symlink (to {os.readlink(path)})"
        return "missing" if exc.errno == errno.ENOENT else f"cannot read ({exc.strerror})"
    if stat.S_ISREG(info.st_mode):
        return None
    if stat.S_ISDIR(info.st_mode):
        return "a directory, not a GGUF file"
    if stat.S_ISFIFO(info.st_mode):
        return "a FIFO, not a GGUF file"
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        return "a device, not a GGUF file"
    return "not a regular file"


def _model_files(path: Path) -> tuple[list[Path], list[Problem]]:
    """The shards of the model at path (a .gguf file, the first shard of a
    split, or a directory holding one model), missing ones included."""
    if path.is_dir() and not path.name.endswith(".gguf"):
        try:
            files = sorted(p for p in path.iterdir() if p.suffix == ".gguf")
        except OSError as exc:
            return [], [Problem(str(path), f"cannot list ({exc.strerror})")]
        if not files:
            return [], [Problem(str(path), "no .gguf files in this directory")]
        stems = {SPLIT_NAME.match(p.name).group("stem") if SPLIT_NAME.match(p.name) else p.stem for p in files}
        if len(stems) > 1:
            return [], [Problem(str(path), f"holds more than one model ({', '.join(sorted(stems))}); "
                                             "keep one model per directory")]
        first = files[0]
    else:
        why = _not_a_file(path)
        if why:
            return [], [Problem(str(path), "no such file or directory" if why == "missing" else why)]
        first = path
    match = SPLIT_NAME.match(first.name)
    if not match:
        return [first], []
    count = int(match.group("count"))
    stem = match.group("stem")
    return [first.with_name(f"{stem}-{n:05d}-of-{count:05d}.gguf") for n in range(1, count + 1)], []


def check_config(config_dir: Path) -> list[Problem]:
    if not config_dir.is_dir():
        return [Problem(str(config_dir), "config directory not found")]
    problems = [Problem(str(config_dir / name), "missing") for name in CONFIG_FILES if not (config_dir / name).is_file()]
    if not any((config_dir / name).is_file() for name in TOKENIZER_FILES):
        problems.append(Problem(str(config_dir / TOKENIZER_FILES[0]), "missing (no tokenizer.json or tokenizer.model)"))
    config_file = config_dir / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except ValueError as exc:
            return problems + [Problem(str(config_file), f"not valid JSON ({exc})")]
        # DeepSeek-V3/R1 ship their own configuration and modeling code.
        for reference in (config.get("auto_map") or {}).values():
            module = str(reference).split("--")[-1].split(".")[0]
            if not (config_dir / f"{module}.py").is_file():
                problems.append(Problem(str(config_dir / f"{module}.py"), "missing (named in config.json auto_map)"))
    return problems


def check_model(path: Path, *, config_dir: Path | None = None, supported_types: set[str] | None = None,
                expected_arch: str | None = None, engine: str = "the engine",
                type_notes: dict[str, str] | None = None) -> Report:
    report = Report()
    files, report.problems = _model_files(Path(path))
    for file in files:
        why = _not_a_file(file)
        if why:
            match = SPLIT_NAME.match(file.name)
            if why == "missing" and match:
                why = f"missing (shard {int(match.group('no'))} of {int(match.group('count'))})"
            report.problems.append(Problem(str(file), why))
            continue
        try:
            shard = read_header(file)
        except HeaderError as exc:
            report.problems.append(Problem(str(file), str(exc)))
            continue
        except OSError as exc:
            report.problems.append(Problem(str(file), f"cannot read ({exc.strerror})"))
            continue
        except (ValueError, OverflowError, MemoryError, RecursionError, struct.error) as exc:
            report.problems.append(Problem(str(file), f"malformed header ({type(exc).__name__})"))
            continue
        report.shards.append(shard)
        if shard.data_end > shard.file_size:
            report.problems.append(Problem(str(file), f"truncated: tensor data ends at byte {shard.data_end}, "
                                                      f"the file has {shard.file_size}"))
        match = SPLIT_NAME.match(file.name)
        if match:
            count, number = int(match.group("count")), int(match.group("no"))
            if shard.split_count is not None and shard.split_count != count:
                report.problems.append(Problem(str(file), f"split.count is {shard.split_count}, "
                                                          f"the file name says {count}"))
            if shard.split_no is not None and shard.split_no != number - 1:
                report.problems.append(Problem(str(file), f"split.no is {shard.split_no}, expected {number - 1}"))
        if supported_types is not None:
            unsupported = sorted(set(shard.types) - supported_types)
            if unsupported:
                notes = [type_notes[t] for t in unsupported if t in (type_notes or {})]
                report.problems.append(Problem(str(file), f"tensor types {', '.join(unsupported)} are not supported "
                                                          f"by {engine}" + "".join(f"; {n}" for n in notes)))
    if report.shards:
        first = report.shards[0]
        if expected_arch and first.architecture != expected_arch:
            report.problems.append(Problem(first.path, f"architecture is {first.architecture!r}, "
                                                       f"expected {expected_arch!r}"))
        declared = {s.split_tensors for s in report.shards if s.split_tensors is not None}
        if len(declared) > 1:
            report.problems.append(Problem(first.path, f"shards disagree on split.tensors.count: {sorted(declared)}"))
        elif declared and len(report.shards) == len(files):
            total = sum(s.tensor_count for s in report.shards)
            if declared.pop() != total:
                report.problems.append(Problem(first.path, f"split.tensors.count does not match the {total} "
                                                           "tensors found in the shards"))
    if config_dir is not None:
        report.problems.extend(check_config(Path(config_dir)))
    return report


def main(argv: list[str] | None = None) -> int:
    """The in-image entrypoint check: python3 modelcheck.py MODEL [--config DIR] [--types T,...]."""
    parser = argparse.ArgumentParser(description="Check GGUF model files before loading them.")
    parser.add_argument("model", type=Path, help="a .gguf file, the first shard, or a directory")
    parser.add_argument("--config", type=Path, help="the KTransformers config/tokenizer directory")
    parser.add_argument("--types", help="comma-separated tensor types the engine supports")
    parser.add_argument("--engine", default="this engine")
    parser.add_argument("--note", action="append", default=[], metavar="TYPE=TEXT",
                        help="what to say when a file holds tensors of TYPE")
    args = parser.parse_args(argv)
    types = set(args.types.split(",")) if args.types else None
    notes = dict(item.split("=", 1) for item in args.note if "=" in item)
    report = check_model(args.model, config_dir=args.config, supported_types=types, engine=args.engine,
                         type_notes=notes)
    for problem in report.problems:
        print(f"ktappliance: model check: {problem.line()}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
