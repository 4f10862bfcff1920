"""`build.py detect`: report what the host is and what to build for it."""

from __future__ import annotations

import json
from dataclasses import asdict

from ktappliance.target.matrix import Matrix
from ktappliance.host.probe import FLAGS_OF_INTEREST, HostFacts
from ktappliance.target.recommend import Recommendation


def _cpu_ranges(cpus: list[int]) -> str:
    if not cpus:
        return "-"
    ranges, start, prev = [], cpus[0], cpus[0]
    for cpu in cpus[1:] + [None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(f"{start}-{prev}" if start != prev else str(start))
        if cpu is not None:
            start = prev = cpu
    return ",".join(ranges)


def build_command(rec: Recommendation) -> str | None:
    if rec.target is None:
        return None
    return f"python build.py --target {rec.target}" + (" --numa" if rec.numa else "")


def concurrency(rec: Recommendation, matrix: Matrix) -> dict | None:
    """The serving backend the recommended build gets, and how to get
    several requests at once where its line serves one at a time."""
    if rec.target is None:
        return None
    selection = matrix.select(rec.target, numa=rec.numa)
    serving = [name for name, line in matrix.lines.items()
               if "balance_serve" in line.backends and (line.amx or not selection.target.has_amx)]
    answer = {"line": selection.line.name, "backend": selection.backend, "balance_serve_line": None}
    if selection.backend == "balance_serve":
        answer["text"] = (f"balance_serve: several requests at once (KTransformers {selection.line.name}); "
                          "--backend single serves one at a time")
    elif serving:
        answer["balance_serve_line"] = serving[-1]
        answer["text"] = (f"KTransformers {selection.line.name} serves one request at a time; several at once "
                          f"(balance_serve) come with --line {serving[-1]}")
    else:
        answer["text"] = f"KTransformers {selection.line.name} serves one request at a time"
    return answer


def what_fits(facts: HostFacts, rec: Recommendation, matrix: Matrix) -> dict[str, dict]:
    """Each catalogue quant against this host, for the engine it would run on."""
    from ktappliance.models.catalogue import load_catalogue
    from ktappliance.models.fit import plan_fit
    out = {}
    for model in load_catalogue().values():
        for quant in model.quants.values():
            engine = "ktransformers" if rec.target and facts.gpus else "llamacpp"
            selection = matrix.select(rec.target, numa=rec.numa) if engine == "ktransformers" else None
            fit = plan_fit(facts, model, quant.size_bytes, set(quant.needs_types), engine=engine,
                           line=selection.line if selection else None, numa=rec.numa,
                           amx_target=rec.target == "amx", backend=selection.backend if selection else "single")
            out[f"{model.name} {quant.name}"] = {"engine": engine, "fits": fit.fits,
                                                 "ram_needed_gb": round(fit.ram_needed_gb)}
    return out


def as_json(facts: HostFacts, rec: Recommendation, matrix: Matrix) -> str:
    host = asdict(facts)
    host["flags"] = {flag: flag in facts.flags for flag in FLAGS_OF_INTEREST}
    payload = {
        "target": rec.target,
        "numa": rec.numa,
        "reasons": rec.reasons,
        "build_command": build_command(rec),
        "concurrency": concurrency(rec, matrix),
        "fits": what_fits(facts, rec, matrix),
        "host": host,
    }
    return json.dumps(payload, indent=2)


def as_text(facts: HostFacts, rec: Recommendation, matrix: Matrix) -> str:
    def known(value, unit=""):
        return "unknown" if value is None else f"{value}{unit}"

    out = [
        f"CPU:      {facts.model or 'unknown model'} ({facts.vendor or 'unknown vendor'})"
        + (f", under {facts.hypervisor}" if facts.hypervisor else ""),
        "Flags:    " + " ".join(f"{flag}{'+' if flag in facts.flags else '-'}" for flag in FLAGS_OF_INTEREST),
        f"Topology: {known(facts.sockets)} socket(s), {known(facts.cores)} cores, {known(facts.threads)} threads, "
        f"{known(facts.numa_node_count)} NUMA node(s)",
    ]
    for node in facts.numa_nodes:
        memory = f", {node.memory_mib} MiB" if node.memory_mib is not None else ""
        out.append(f"          node {node.node}: CPUs {_cpu_ranges(node.cpus)}{memory}")
    out.append(f"RAM:      {known(facts.ram_mib and round(facts.ram_mib / 1024, 1), ' GiB')}")
    if facts.gpus:
        for index, gpu in enumerate(facts.gpus):
            out.append(f"GPU {index}:    {gpu.name}, {known(gpu.memory_mib, ' MiB')}, "
                       f"compute {known(gpu.compute_capability)}, driver {known(gpu.driver)}")
    else:
        out.append("GPUs:     none found (no nvidia-smi output)")
    out.append(f"Read:     {', '.join(facts.sources)}")
    out.append("")
    if rec.target is None:
        out.append("Recommendation: no supported target for this CPU")
    else:
        target = matrix.targets[rec.target]
        out.append(f"Recommendation: target {rec.target} (KTransformers {target.default_line}, "
                   f"CPU_INSTRUCT={target.cpu_instruct}), NUMA {'on' if rec.numa else 'off'}")
    out.extend(f"  - {reason}" for reason in rec.reasons)
    serving = concurrency(rec, matrix)
    if serving:
        out.append(f"Serving:   {serving['text']}")
    command = build_command(rec)
    if command:
        out.append(f"Build it:  {command}")
    out.append("What fits (python build.py plan --quant Q for details):")
    for name, fit in what_fits(facts, rec, matrix).items():
        verdict = {True: "fits", False: "does not fit"}.get(fit["fits"], "unknown (RAM not known)")
        out.append(f"  {name}: {verdict} with {fit['engine']} (needs ~{fit['ram_needed_gb']} GB RAM)")
    return "\n".join(out)
