"""Which x86 instruction-set extensions a library's machine code uses, read
from `objdump -d`, against what a CPU target requires.

A build tied to its build machine (-march=native) shows itself by using an
extension the target does not list: AVX-512 in an avx2 build, or, on the
Sapphire Rapids machines that build amx images, AVX512-FP16, VBMI, GFNI or
AVX-VNNI, which the amx target does not require. Each extension is known by
mnemonics or registers only it has (AT&T syntax, as objdump prints it)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

_FP16_OPS = r"(add|sub|mul|div|max|min|sqrt|rcp|rsqrt|getexp|getmant|reduce|rndscale|scalef|fpclass|cmp)"
# cpuinfo flag -> a pattern found only in code that uses that extension.
SIGNATURES: dict[str, re.Pattern[str]] = {
    "avx512f": re.compile(r"%zmm\d|%k[1-7]\b|\{%k[0-7]\}|%[xy]mm(1[6-9]|2\d|3[01])\b|\{evex\}"),
    "avx512_vnni": re.compile(r"(?<!\{vex\} )\bvpdp(bu|ws)sds?\b"),
    "avx512_bf16": re.compile(r"\bv(dpbf16ps|cvtne2ps2bf16|cvtneps2bf16)\b"),
    "avx512_vpopcntdq": re.compile(r"\bvpopcnt[dq]\b"),
    "avx512_fp16": re.compile(rf"\bv{_FP16_OPS}[ps]h\b|\bvf(n?m(add|sub)|madd|msub)\w*[ps]h\b"
                              r"|\bvcvt\w*(ph2(psx|w|uw|dq|udq|qq|uqq|pd)|2ph|sh2\w+|2sh)\b|\bvmov(sh|w)\b"),
    "avx512_vbmi": re.compile(r"\bvperm(t2|i2)?b\b|\bvpmultishiftqb\b"),
    "avx512_vbmi2": re.compile(r"\bvp(compress|expand)[bw]\b|\bvpsh[lr]dv?[dqw]\b"),
    "avx512_bitalg": re.compile(r"\bvpopcnt[bw]\b|\bvpshufbitqmb\b"),
    "avx512ifma": re.compile(r"\bvpmadd52[lh]uq\b"),
    "avx512_vp2intersect": re.compile(r"\bvp2intersect[dq]\b"),
    "gfni": re.compile(r"\bv?gf2p8(affine(inv)?qb|mulb)\b"),
    "vaes": re.compile(r"\bvaes(enc|dec)(last)?\s+.*%[yz]mm"),
    "vpclmulqdq": re.compile(r"\bvpclmulqdq\s+.*%[yz]mm"),
    "avx_vnni": re.compile(r"\{vex\} vpdp(bu|ws)sds?\b"),
    "amx_tile": re.compile(r"\b(ldtilecfg|sttilecfg|tileloaddt?1?|tilestored|tilezero|tilerelease)\b"),
    "amx_int8": re.compile(r"\btdpb[su][su]d\b"),
    "amx_bf16": re.compile(r"\btdpbf16ps\b"),
    "amx_fp16": re.compile(r"\btdpfp16ps\b"),
    "amx_complex": re.compile(r"\btcmm[ir][mr]fp16ps\b"),
}


def disassemble(library: Path) -> str:
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                          check=True).stdout


def extensions_used(code: str) -> dict[str, str]:
    """extension -> the first instruction line that shows it."""
    found: dict[str, str] = {}
    for line in code.splitlines():
        instruction = line.split("\t", 1)[-1].strip() if "\t" in line else ""
        if not instruction:
            continue
        for name, pattern in SIGNATURES.items():
            if name not in found and pattern.search(instruction):
                found[name] = instruction
    return found


def beyond_target(code: str, required: set[str]) -> dict[str, str]:
    """What the code uses that a CPU with only the target's flags lacks."""
    return {name: line for name, line in extensions_used(code).items() if name not in required}


def lacking_here(required) -> list[str]:
    """The flags of `required` this machine's CPU lacks: a test that runs a
    target's code (not just reads it) can only run where this is empty."""
    text = Path("/proc/cpuinfo").read_text()
    line = next((l for l in text.splitlines() if re.match(r"\s*flags\s*:", l, re.I)), "")
    have = set(line.split(":", 1)[-1].split())
    return sorted(set(required) - have)


def skip_unless_runs_here(required) -> None:
    import pytest
    lacking = lacking_here(required)
    if lacking:
        pytest.skip(f"this CPU lacks {' '.join(lacking)}: the target's code cannot run here "
                    "(what can be read without running it is checked by the other tests)")


@functools.cache
def amx_image_runs_here() -> bool:
    """Whether this CPU runs the amx image's code (every flag the amx target requires)."""
    from ktappliance.target.matrix import load_matrix
    return not lacking_here(load_matrix().target("amx").requires)
