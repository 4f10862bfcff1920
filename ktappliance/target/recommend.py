"""Host facts -> the target and NUMA setting to build for, with the reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from ktappliance.target.matrix import Matrix
from ktappliance.host.probe import HostFacts

# The smallest DeepSeek-R1 GGUF in the catalogue (Unsloth UD-IQ1_S, ~131 GiB
# in three shards, Unsloth's file listing; see models.yaml). NUMA mode copies the weights once per
# node (upstream #321, #1147), so it only pays when every copy fits.
SMALLEST_R1_GIB = 131


@dataclass
class Recommendation:
    target: str | None
    numa: bool
    reasons: list[str] = field(default_factory=list)
    missing_flags: dict[str, list[str]] = field(default_factory=dict)


def choose_target(facts: HostFacts, matrix: Matrix) -> tuple[str | None, list[str], dict[str, list[str]]]:
    """The most capable target whose required flags the CPU reports.
    Targets are listed in targets.yaml from least to most demanding."""
    reasons: list[str] = []
    missing = {name: [f for f in t.requires if f not in facts.flags] for name, t in matrix.targets.items()}
    fitting = [name for name in matrix.targets if not missing[name]]
    if not facts.flags:
        reasons.append("no CPU flags found in the capture: no supported target can be chosen")
        return None, reasons, missing
    if not fitting:
        lacking = ", ".join(missing[next(iter(matrix.targets))])
        reasons.append(f"no supported target: the CPU lacks {lacking} (every target needs AVX2 and FMA)")
        return None, reasons, missing
    best = fitting[-1]
    reasons.append(f"{best}: the CPU has {', '.join(matrix.targets[best].requires)}")
    for name in matrix.targets:
        if name not in fitting and missing[name]:
            reasons.append(f"not {name}: missing {', '.join(missing[name])}")
    model = (facts.model or "").lower()
    if best != "amx" and facts.hypervisor and ("platinum 84" in model or "sapphire" in model):
        reasons.append("this Sapphire Rapids CPU runs under a hypervisor that hides AMX; "
                       "ask the provider to expose amx_tile/amx_int8/amx_bf16 for the amx target")
    return best, reasons, missing


def choose_numa(facts: HostFacts) -> tuple[bool, list[str]]:
    sockets = facts.sockets or 1
    nodes = facts.numa_node_count or len(facts.numa_nodes) or 1
    if facts.sockets is None:
        return False, ["NUMA off: the capture does not show the socket count"]
    if sockets < 2 or nodes < 2:
        return False, [f"NUMA off: {sockets} socket(s), {nodes} NUMA node(s); nothing to gain"]
    if nodes != sockets:
        return False, [
            f"NUMA off: {nodes} NUMA nodes on {sockets} sockets would hold {nodes} copies of the "
            "weights; set the BIOS to one node per socket (NPS1 / SNC off) to use NUMA mode"]
    if facts.ram_mib is not None and facts.ram_mib / 1024 < nodes * SMALLEST_R1_GIB:
        return False, [
            f"NUMA off: NUMA mode keeps one copy of the weights per node ({nodes} x ~{SMALLEST_R1_GIB} GiB "
            f"for UD-IQ1_S) and this host has {facts.ram_mib // 1024} GiB of RAM"]
    reasons = [f"NUMA on: {sockets} sockets, one NUMA node each; KTransformers then keeps one copy "
               "of the weights per node, so it needs about twice the RAM"]
    if facts.ram_mib is None:
        reasons.append("RAM unknown (no meminfo.txt): check it holds two copies of the model")
    return True, reasons


def recommend(facts: HostFacts, matrix: Matrix) -> Recommendation:
    target, reasons, missing = choose_target(facts, matrix)
    numa, numa_reasons = choose_numa(facts)
    if target is None:
        # One decision for the text and the JSON: nothing is built, so no NUMA.
        numa, numa_reasons = False, ["NUMA off: there is no target to build"]
    return Recommendation(target=target, numa=numa, reasons=reasons + numa_reasons, missing_flags=missing)
