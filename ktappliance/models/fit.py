"""`build.py plan`: will this model run on this host, and with which settings.

Figures it relies on (read from kvcache-ai/ktransformers, issues by number):
- KTransformers keeps the GGUF weights in RAM; Q4_K_M (377 GB) needs about
  382 GB of DRAM on one socket: weights + ~5 GB.
- With USE_NUMA the weights are copied once per NUMA node (upstream #321,
  #1147): a dual-socket host needs about twice the RAM ("about 1 TB").
- The default optimize rule (experts on CPU) needs at least 14 GB of VRAM for
  R1; UD-IQ1_S ran in 60 GB RAM + 16 GB VRAM with the rest paged from disk,
  slowly (PR #754).
- MLA KV cache: (512 + 64) values x 61 layers x 2 bytes per token (models.yaml).
- llama.cpp GPU layers: Unsloth's rule for its R1 dynamic quants,
  floor(VRAM / file size x (layers - 4)).
- balance_serve (doc/en/balance-serve.md at v0.3.2): all requests share one
  KV cache of cache_lens tokens, allocated on the GPU at start, and
  cache_lens > max_batch_size x max_new_tokens, or fewer requests run at once
  than max_batch_size says. Its KV-cache service keeps evicted pages in a RAM
  pool (upstream's default, 500 GB, is an allocation most hosts refuse).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ktappliance.models.catalogue import GB, ModelEntry
from ktappliance.target.matrix import Line, Target, supported_types
from ktappliance.host.probe import HostFacts

GIB = 2**30
RUNTIME_OVERHEAD = 5 * GB
KT_BASE_VRAM = 14 * GB
CACHE_LENS_MAX = 65536
CACHE_LENS_MIN = 4096
MAX_NEW_TOKENS = 8192
# balance_serve: FlashInfer's workspace, the CUDA graphs of each batch size
# and the chunked prefill's activations, on top of the weights' share.
SERVE_EXTRA_VRAM = 2 * GB
SERVE_CACHE_LENS_MAX = 131072
# Upstream measured up to 4 at once and reports stalls past about 6 (upstream #1086).
SERVE_MAX_BATCH = 8
KVC2_RAM_MAX_GB = 64


@dataclass
class FitPlan:
    engine: str
    weights_gb: float
    numa_copies: int
    ram_needed_gb: float
    ram_have_gb: float | None
    vram_needed_gb: float
    vram_have_gb: float | None
    disk_needed_gb: float
    # True, False, or "unknown" where a fact it depends on (RAM, VRAM) is not
    # known and nothing known already rules it out.
    fits: bool | str
    settings: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_text(self) -> str:
        def have(value):
            return "unknown" if value is None else f"{value:.0f} GB"
        lines = [
            f"Engine:  {self.engine}, weights {self.weights_gb:.1f} GB"
            + (f", {self.numa_copies} NUMA copies" if self.numa_copies > 1 else ""),
            f"RAM:     need {self.ram_needed_gb:.0f} GB, have {have(self.ram_have_gb)}",
            f"VRAM:    need {self.vram_needed_gb:.0f} GB, have {have(self.vram_have_gb)}",
            f"Disk:    need {self.disk_needed_gb:.0f} GB for the files",
            f"Verdict: {verdict_word(self.fits)}",
        ]
        if self.settings:
            lines.append("Settings:")
            lines += [f"  {key} = {value}" for key, value in self.settings.items()]
        lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def physical_cores(facts: HostFacts) -> int | None:
    return facts.cores or facts.threads


def _vram(facts: HostFacts) -> tuple[float | None, int]:
    if not facts.gpus:
        return None, 0
    sizes = [g.memory_mib for g in facts.gpus if g.memory_mib]
    return (min(sizes) * 2**20 if sizes else None), len(facts.gpus)


def optimize_rule(line: Line, gpu_count: int, bf16_weights: bool, amx_target: bool) -> tuple[str, str | None]:
    """The rule file and, when the obvious choice is not possible, why."""
    if amx_target and line.amx:
        if bf16_weights and "DeepSeek-V3-Chat-amx.yaml" in line.optimize_rules:
            return "DeepSeek-V3-Chat-amx.yaml", None
        reason = "the AMX rule needs BF16 GGUF weights; this quant uses the llamafile CPU kernels"
    else:
        reason = None
    for count in (8, 4):
        name = f"DeepSeek-V3-Chat-multi-gpu-{count}.yaml"
        if gpu_count >= count and name in line.optimize_rules:
            return name, reason
    if gpu_count >= 2:
        return "DeepSeek-V3-Chat-multi-gpu.yaml", reason
    return "DeepSeek-V3-Chat.yaml", reason


def serve_rule(amx_target: bool, bf16_weights: bool) -> tuple[str, str | None]:
    """balance_serve's rule: the AMX experts where the target and weights allow."""
    if amx_target and bf16_weights:
        return "DeepSeek-V3-Chat-serve-amx.yaml", None
    if amx_target:
        return "DeepSeek-V3-Chat-serve.yaml", ("the AMX rule needs BF16 GGUF weights; "
                                                "this quant uses the llamafile CPU kernels")
    return "DeepSeek-V3-Chat-serve.yaml", None


def serve_settings(model: ModelEntry, vram: float | None, spare_ram: float | None,
                   max_new_tokens: int) -> tuple[dict[str, object], list[str]]:
    """cache_lens, max_batch_size, chunk_size and kvc2's RAM for balance_serve."""
    settings: dict[str, object] = {"max_new_tokens": max_new_tokens}
    notes: list[str] = []
    if vram:
        free = max(0, vram - KT_BASE_VRAM - SERVE_EXTRA_VRAM)
        lens = int(free // model.kv_bytes_per_token) // 1024 * 1024
        cache_lens = max(CACHE_LENS_MIN, min(SERVE_CACHE_LENS_MAX, lens))
        batch = max(1, min(SERVE_MAX_BATCH, (cache_lens - 1) // max_new_tokens))
        settings.update(cache_lens=cache_lens, max_batch_size=batch, chunk_size=256 if vram < 40 * GB else 512)
        if batch == 1:
            notes.append(f"balance_serve: the KV cache ({cache_lens} tokens) holds one request of "
                         f"{max_new_tokens} new tokens, so requests run one at a time; lower --max-new-tokens "
                         "for more at once")
        else:
            notes.append(f"balance_serve: {batch} requests at once, sharing a KV cache of {cache_lens} tokens "
                         f"({cache_lens * model.kv_bytes_per_token / GB:.1f} GB of VRAM)")
    ram_gb = 1 if not spare_ram or spare_ram < 4 * GB else min(KVC2_RAM_MAX_GB, int(spare_ram / 4 / GB))
    settings["kvc2_ram_gb"] = ram_gb
    return settings, notes


def plan_fit(facts: HostFacts, model: ModelEntry, weights_bytes: int, weight_types: set[str], *,
             engine: str, line: Line | None, numa: bool, amx_target: bool = False,
             alternatives: dict[str, int] | None = None, target: Target | None = None,
             type_notes: dict[str, str] | None = None, backend: str = "single",
             max_new_tokens: int = MAX_NEW_TOKENS) -> FitPlan:
    nodes = facts.numa_node_count or 1
    copies = nodes if (numa and engine == "ktransformers") else 1
    ram_have = facts.ram_mib * 2**20 if facts.ram_mib else None
    vram_have, gpu_count = _vram(facts)
    cores = physical_cores(facts)
    ram_needed = weights_bytes * copies + RUNTIME_OVERHEAD
    notes: list[str] = []
    settings: dict[str, object] = {}
    unsupported: list[str] = []

    if engine == "ktransformers":
        vram_needed = KT_BASE_VRAM
        bf16_weights = weight_types <= {"BF16", "F32"}
        settings["backend"] = backend
        if backend == "balance_serve":
            rule, why = serve_rule(amx_target, bf16_weights)
            if gpu_count >= 2:
                notes.append("balance_serve uses one GPU (v0.3.2 has no multi-GPU serve rule)")
        else:
            rule, why = optimize_rule(line, gpu_count, bf16_weights, amx_target)
        settings["optimize_rule"] = rule
        if why:
            notes.append(why)
        if cores:
            settings["cpu_infer"] = max(1, cores - 2)
        if backend == "balance_serve":
            spare = ram_have - ram_needed if ram_have is not None else None
            serve, serve_notes = serve_settings(model, vram_have, spare, max_new_tokens)
            settings.update(serve)
            notes.extend(serve_notes)
            vram_needed += SERVE_EXTRA_VRAM
        elif vram_have:
            free = max(0, vram_have - KT_BASE_VRAM)
            lens = int(free // model.kv_bytes_per_token) // 1024 * 1024
            settings["cache_lens"] = max(CACHE_LENS_MIN, min(CACHE_LENS_MAX, lens))
        runnable = set(supported_types(line, target) if target else line.quant_types) if line else set()
        unsupported = sorted(weight_types - runnable) if line else []
        if unsupported:
            notes.append(f"KTransformers {line.name} cannot run tensor types {', '.join(unsupported)}: "
                         "pick a newer line or another quant")
            notes.extend(type_notes[t] for t in unsupported if t in (type_notes or {}))
    else:
        vram_needed = 0
        if vram_have:
            layers = int(vram_have / weights_bytes * (model.layers - 4))
            settings["n_gpu_layers"] = max(0, min(model.layers, layers))
        else:
            settings["n_gpu_layers"] = 0
        if cores:
            settings["threads"] = cores

    fits_ram = None if ram_have is None else ram_needed <= ram_have
    fits_vram = vram_needed == 0 or (vram_have is not None and vram_have >= vram_needed)
    fits_types = not (engine == "ktransformers" and line and unsupported)
    if engine == "ktransformers" and vram_have is None:
        notes.append("no NVIDIA GPU found (nvidia-smi gave nothing): KTransformers needs one; "
                     "--engine llamacpp runs on the CPU alone")
    elif not fits_vram:
        notes.append(f"KTransformers needs at least {vram_needed / GB:.0f} GB of VRAM; this GPU has "
                     f"{vram_have / GB:.0f} GB")
    if fits_ram is False:
        short = (ram_needed - ram_have) / GB
        notes.append(f"short of RAM by {short:.0f} GB")
        if copies > 1 and weights_bytes + RUNTIME_OVERHEAD <= ram_have:
            notes.append("it fits with NUMA off (one copy of the weights): build with --no-numa")
        smaller = [name for name, size in (alternatives or {}).items()
                   if size * copies + RUNTIME_OVERHEAD <= ram_have]
        if smaller:
            notes.append(f"quants that fit this RAM: {', '.join(smaller)}")
        if engine == "ktransformers" and ram_have >= 60 * GB:
            notes.append("KTransformers can page the rest from disk (UD-IQ1_S was reported running in "
                         "60 GB RAM + 16 GB VRAM, PR 754), but slowly")
    if ram_have is None:
        notes.append("RAM unknown (no meminfo.txt and no NUMA node sizes): whether it fits is unknown")
    known = [fits_vram, fits_types, engine != "ktransformers" or bool(vram_have)]
    fits: bool | str = False if not all(known) or fits_ram is False else ("unknown" if fits_ram is None else True)
    return FitPlan(engine=engine, weights_gb=weights_bytes / GB, numa_copies=copies,
                   ram_needed_gb=ram_needed / GB, ram_have_gb=ram_have / GB if ram_have else None,
                   vram_needed_gb=vram_needed / GB, vram_have_gb=vram_have / GB if vram_have else None,
                   disk_needed_gb=(weights_bytes + 1 * GB) / GB,
                   fits=fits,
                   settings=settings, notes=notes)


def verdict_word(fits: bool | str) -> str:
    return {True: "fits", False: "does NOT fit"}.get(fits, "unknown (RAM not known)")
