"""Host probe: what CPU, memory, NUMA layout and GPUs a machine has.

The live host and a captured directory go through the same parsers: a live
probe first captures the same texts (`lscpu`, /proc/cpuinfo, /proc/meminfo,
`numactl -H`, nvidia-smi's CSV) that `detect --from DIR` reads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ktappliance.errors import ApplianceError

CAPTURE_FILES = ("lscpu.txt", "cpuinfo.txt", "meminfo.txt", "numa.txt", "nvidia-smi.csv")

# The flags detect reports: what the targets need plus what users ask about.
FLAGS_OF_INTEREST = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_vpopcntdq", "amx_tile", "amx_int8", "amx_bf16",
)
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                    "--format=csv"]


@dataclass
class NumaNode:
    node: int
    cpus: list[int]
    memory_mib: int | None = None


@dataclass
class Gpu:
    name: str
    memory_mib: int | None
    driver: str | None
    compute_capability: str | None


@dataclass
class HostFacts:
    vendor: str | None = None
    model: str | None = None
    flags: set[str] = field(default_factory=set)
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    numa_nodes: list[NumaNode] = field(default_factory=list)
    numa_node_count: int | None = None
    ram_mib: int | None = None
    gpus: list[Gpu] = field(default_factory=list)
    hypervisor: str | None = None
    sources: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- lscpu

def parse_lscpu(text: str) -> dict[str, str]:
    """Key/value pairs of `lscpu` output, in any of its layouts: the old flat
    one, the indented tree of util-linux >= 2.37, and either of them wrapped
    at terminal width. A wrapped value continues on lines indented to the
    value's column; joining the text from that column on restores the line,
    breaks in mid-token included."""
    fields: dict[str, str] = {}
    key = None
    value_col = 0
    for raw in text.splitlines():
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if key is not None and indent >= value_col and value_col > 0:
            fields[key] += line[value_col:]
            continue
        match = re.match(r"^\s*([^:]+?):(\s*)(.*)$", line)
        if not match or line.lstrip().startswith("$"):
            key = None
            continue
        key = match.group(1).strip()
        value_col = match.start(3) if match.group(3) else len(line)
        fields[key] = match.group(3)
    return {k: v.strip() for k, v in fields.items()}


def _cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    # `numactl -H --cpu-compress` appends the count: "0-15 (16)".
    for part in re.split(r"[,\s]+", re.sub(r"\(\d+\)", " ", text).strip()):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return cpus


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match else None


def apply_lscpu(facts: HostFacts, text: str) -> None:
    fields = parse_lscpu(text)
    facts.vendor = facts.vendor or fields.get("Vendor ID")
    facts.model = facts.model or fields.get("Model name")
    if "Flags" in fields:
        facts.flags |= set(fields["Flags"].split())
    sockets = _int(fields.get("Socket(s)"))
    per_socket = _int(fields.get("Core(s) per socket"))
    per_core = _int(fields.get("Thread(s) per core"))
    facts.sockets = sockets or facts.sockets
    if sockets and per_socket:
        facts.cores = sockets * per_socket
    facts.threads = _int(fields.get("CPU(s)")) or (
        facts.cores * per_core if facts.cores and per_core else facts.threads)
    facts.numa_node_count = _int(fields.get("NUMA node(s)")) or facts.numa_node_count
    facts.hypervisor = facts.hypervisor or fields.get("Hypervisor vendor")
    if not facts.numa_nodes:
        for key, value in fields.items():
            match = re.fullmatch(r"NUMA node(\d+) CPU\(s\)", key)
            if match and value:
                facts.numa_nodes.append(NumaNode(int(match.group(1)), _cpu_list(value)))


# ---------------------------------------------------------------- /proc/cpuinfo

def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """One dict per processor block (blocks are separated by blank lines)."""
    blocks, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        if ":" in line:
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return [b for b in blocks if "flags" in b or "model name" in b or "vendor_id" in b]


def apply_cpuinfo(facts: HostFacts, text: str) -> None:
    blocks = parse_cpuinfo(text)
    if not blocks:
        return
    first = blocks[0]
    facts.vendor = facts.vendor or first.get("vendor_id")
    facts.model = facts.model or first.get("model name")
    if not facts.flags:
        facts.flags = set(first.get("flags", "").split())
    if "hypervisor" in facts.flags and not facts.hypervisor:
        facts.hypervisor = "unknown hypervisor"
    if facts.sockets is None:
        # A capture may hold only some processor blocks: per-package fields
        # (cpu cores, siblings) scale better than counting blocks.
        packages = {b.get("physical id", "0") or "0" for b in blocks}
        facts.sockets = len(packages)
        cores, siblings = _int(first.get("cpu cores")), _int(first.get("siblings"))
        facts.cores = cores * facts.sockets if cores else None
        facts.threads = siblings * facts.sockets if siblings else len(blocks)


# ---------------------------------------------------------------- memory, NUMA, GPUs

def apply_meminfo(facts: HostFacts, text: str) -> None:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    if match:
        facts.ram_mib = int(match.group(1)) // 1024


def apply_numactl(facts: HostFacts, text: str) -> None:
    nodes: dict[int, NumaNode] = {}
    for match in re.finditer(r"^node (\d+) cpus:(.*)$", text, re.M):
        nodes[int(match.group(1))] = NumaNode(int(match.group(1)), _cpu_list(match.group(2)))
    for match in re.finditer(r"^node (\d+) size: (\d+) MB", text, re.M):
        node = nodes.setdefault(int(match.group(1)), NumaNode(int(match.group(1)), []))
        node.memory_mib = int(match.group(2))
    if nodes:
        facts.numa_nodes = [nodes[n] for n in sorted(nodes)]
        facts.numa_node_count = len(nodes)


def apply_nvidia_smi(facts: HostFacts, text: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].lower().startswith("name"):
        return
    for line in lines[1:]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4:
            continue
        facts.gpus.append(Gpu(name=cells[0], memory_mib=_int(cells[1]), driver=cells[2] or None,
                              compute_capability=cells[3] or None))


APPLIERS = {
    "lscpu.txt": apply_lscpu,
    "cpuinfo.txt": apply_cpuinfo,
    "meminfo.txt": apply_meminfo,
    "numa.txt": apply_numactl,
    "nvidia-smi.csv": apply_nvidia_smi,
}


def facts_from_texts(texts: dict[str, str]) -> HostFacts:
    """Parse captured texts, keyed by capture file name, lscpu first so its
    socket/core counts win over a partial /proc/cpuinfo."""
    facts = HostFacts()
    for name in CAPTURE_FILES:
        if name in texts:
            try:
                APPLIERS[name](facts, texts[name])
            except (ValueError, IndexError) as exc:
                raise ApplianceError(f"{name}: cannot parse this capture ({exc})") from None
            facts.sources.append(name)
    if facts.numa_node_count is None and facts.numa_nodes:
        facts.numa_node_count = len(facts.numa_nodes)
    sizes = [node.memory_mib for node in facts.numa_nodes]
    if facts.ram_mib is None and sizes and None not in sizes:
        # numactl gives each node's memory; without meminfo that is the RAM.
        facts.ram_mib = sum(sizes)
    return facts


def probe_directory(directory: Path) -> HostFacts:
    directory = Path(directory)
    if not directory.is_dir():
        raise ApplianceError(f"--from {directory}: not a directory")
    texts = {}
    for name in CAPTURE_FILES:
        path = directory / name
        if path.is_file():
            texts[name] = path.read_text(errors="replace")
    if not texts:
        raise ApplianceError(f"--from {directory}: none of {', '.join(CAPTURE_FILES)} found")
    try:
        return facts_from_texts(texts)
    except ApplianceError as exc:
        raise ApplianceError(f"--from {directory}/{exc}") from None


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                              env={"LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def capture_live() -> dict[str, str]:
    """The live host's texts, under the names `--from DIR` reads."""
    texts: dict[str, str] = {}
    for name, argv in (("lscpu.txt", ["lscpu"]), ("numa.txt", ["numactl", "-H"]),
                       ("nvidia-smi.csv", NVIDIA_SMI_QUERY)):
        out = _run(argv)
        if out:
            texts[name] = out
    for name, path in (("cpuinfo.txt", "/proc/cpuinfo"), ("meminfo.txt", "/proc/meminfo")):
        try:
            texts[name] = Path(path).read_text()
        except OSError:
            pass
    return texts


def probe_live() -> HostFacts:
    return facts_from_texts(capture_live())


def host_facts(from_dir: str | Path | None = None) -> HostFacts:
    """The captures in from_dir when given, else the live host."""
    return probe_directory(Path(from_dir)) if from_dir else probe_live()
