"""The README's target table is written for people; targets.yaml is the
source. They must say the same thing."""

import re

from ktappliance.target.matrix import load_matrix
from support.buildpy import REPO


def readme_target_rows() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    header = "| target | CPU flags it needs (beyond the row above) |"
    lines = text[text.index(header):].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def expand(flags_cell: str) -> set[str]:
    """'avx512f/bw/dq/vl' -> avx512f avx512bw avx512dq avx512vl; 'amx_tile/int8' -> amx_tile amx_int8."""
    flags = set()
    for word in flags_cell.split():
        first, *rest = word.split("/")
        prefix = first.rsplit("_", 1)[0] + "_" if "_" in first else re.match(r"[a-z]+\d*", first).group()
        flags |= {first, *(prefix + suffix for suffix in rest)}
    return flags


def test_readme_target_table_matches_targets_yaml():
    matrix = load_matrix()
    rows = readme_target_rows()
    assert list(rows) == list(matrix.targets), "README lists other targets, or in another order"
    before: set[str] = set()
    for name, target in matrix.targets.items():
        _, flags, _, bf16, line, _ = rows[name]
        assert expand(flags) == set(target.requires) - before, (name, flags)
        assert bf16 == ("yes" if target.bf16 else "no"), (name, bf16)
        assert line.split()[0] == target.default_line, (name, line)
        before = set(target.requires)


def test_flag_shorthand_expands_as_the_table_means():
    assert expand("avx512f/bw/dq/vl") == {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
    assert expand("avx512_vpopcntdq amx_tile/int8/bf16") == {"avx512_vpopcntdq", "amx_tile", "amx_int8", "amx_bf16"}

