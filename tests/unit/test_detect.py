"""Host detection on real captures (tests/fixtures/hosts, see its README.md and public/SOURCES.md)."""

import json

import pytest

from ktappliance.target.matrix import load_matrix
from ktappliance.host.probe import parse_lscpu, probe_directory
from ktappliance.target.recommend import recommend

from support.buildpy import assert_one_line_error, run_cli

# capture -> (target, numa, sockets, numa nodes). Targets follow the flags
# columns of SOURCES.md (Zen 4/5 and SPR without AMX: avx512bf16; Cascade
# and Ice Lake: avx512vnni); NUMA is on only with one node per socket on >= 2 sockets.
EXPECTED = {
    "epyc-zen4-2c": ("avx512bf16", False, 1, 1),
    "xeon-amx-h200-1s": ("amx", False, 1, 1),
    "public/core-ultra9-285_1proc_archspec": ("avx2", False, 1, None),
    "public/e5-2650v2_1proc_avxonly_archspec": (None, False, 1, None),
    "public/e5-2680v4_2s_linuxhw": ("avx2", True, 2, 2),
    "public/e5-2690v2_2s_avxonly_linuxhw": (None, False, 2, 2),
    "public/e5-2696v3_2s_linuxhw": ("avx2", True, 2, 2),
    "public/epyc7742_2s_nps1_smtoff_linuxhw": ("avx2", True, 2, 2),
    "public/epyc7742_2s_nps4_linuxhw": ("avx2", False, 2, 8),
    "public/epyc9654_1proc_archspec": ("avx512bf16", False, 1, None),
    "public/epyc9754_lxc_8proc_ollama-5554": ("avx512bf16", False, 1, None),
    "public/gold5318y_2s_tree-wrapped80": ("avx512vnni", True, 2, 2),
    "public/gold6240_4s_linuxhw": ("avx512vnni", True, 4, 4),
    "public/gold6248_2s_linuxhw": ("avx512vnni", True, 2, 2),
    "public/gold6326_vmware-vm_8sock_ollama-7359": ("avx512vnni", False, 8, None),
    "public/gold6459c_2s_autodl-container": ("amx", True, 2, 2),
    "public/platinum8470q_2s_autodl-container": ("amx", True, 2, 2),
    "public/platinum8480plus_1proc_archspec": ("amx", False, 1, None),
    "public/platinum8481c_gcp-vm_2s_4numa_noamxflag": ("avx512bf16", False, 2, 4),
    "public/ryzen9-5950x_1proc_archspec": ("avx2", False, 1, None),
    "public/ryzen9-7950x_1s": ("avx512bf16", False, 1, 1),
    "public/ryzen9-9950x_1proc_archspec": ("avx512bf16", False, 1, None),
    "public/threadripper-pro-7975wx_1proc_ikllama-d477": ("avx512bf16", False, 1, None),
    "public/xeon6980p_granite-rapids_ikllama-pr541": ("amx", False, None, None),
}


def test_every_capture_has_an_expectation(hosts_dir):
    captures = {str(p.parent.relative_to(hosts_dir)) for p in hosts_dir.rglob("*.txt") if p.name != "SOURCES.md"}
    captures |= {str(p.parent.relative_to(hosts_dir)) for p in hosts_dir.rglob("*.csv")}
    assert captures == set(EXPECTED)


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_detect_json_on_capture(hosts_dir, capture):
    target, numa, sockets, nodes = EXPECTED[capture]
    done = run_cli("detect", "--from", str(hosts_dir / capture), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["target"] == target
    assert report["numa"] is numa
    assert report["host"]["sockets"] == sockets
    assert report["host"]["numa_node_count"] == nodes
    assert report["reasons"]
    if target is None:
        assert report["build_command"] is None
        assert any("no supported target" in r for r in report["reasons"])


def test_our_two_machines_in_full(hosts_dir):
    epyc = probe_directory(hosts_dir / "epyc-zen4-2c")
    assert (epyc.vendor, epyc.cores, epyc.threads, epyc.ram_mib) == ("AuthenticAMD", 2, 2, 24105)
    assert epyc.numa_nodes[0].cpus == [0, 1] and epyc.numa_nodes[0].memory_mib == 22874
    assert epyc.gpus == []  # its nvidia-smi.txt says "command not found"
    xeon = probe_directory(hosts_dir / "xeon-amx-h200-1s")
    assert {"amx_tile", "amx_int8", "amx_bf16", "avx512_bf16"} <= xeon.flags
    assert [(g.name, g.memory_mib, g.compute_capability) for g in xeon.gpus] == [("NVIDIA H200", 143771, "9.0")]


def test_lscpu_alone_decides(hosts_dir, tmp_path):
    (tmp_path / "lscpu.txt").write_text((hosts_dir / "public/gold6248_2s_linuxhw/lscpu.txt").read_text())
    rec = recommend(probe_directory(tmp_path), load_matrix())
    assert (rec.target, rec.numa) == ("avx512vnni", True)


def test_skylake_flags_pick_plain_avx512():
    # No published Skylake-SP capture here: its flag set (F/CD/BW/DQ/VL, no VNNI).
    from ktappliance.host.probe import HostFacts
    facts = HostFacts(flags={"avx2", "fma", "f16c", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
    assert recommend(facts, load_matrix()).target == "avx512"


def test_wrapped_tree_lscpu_rejoins_mid_token_breaks(hosts_dir):
    fields = parse_lscpu((hosts_dir / "public/gold5318y_2s_tree-wrapped80/lscpu.txt").read_text())
    flags = fields["Flags"].split()
    assert "mca" in flags and "cmov" in flags and "avx512bw" in flags and "avx512_vnni" in flags
    assert fields["NUMA node0 CPU(s)"].endswith("76,78,80,82,84,86,88,90,92,94")
    assert fields["Model name"].startswith("Intel(R) Xeon(R) Gold 5318Y")


def test_vm_hiding_amx_is_explained(hosts_dir):
    done = run_cli("detect", "--from", str(hosts_dir / "public/platinum8481c_gcp-vm_2s_4numa_noamxflag"))
    assert done.returncode == 0
    assert "hides AMX" in done.stdout
    assert "NPS1" in done.stdout  # 4 nodes on 2 sockets


def test_text_report_names_what_matters(hosts_dir):
    done = run_cli("detect", "--from", str(hosts_dir / "xeon-amx-h200-1s"))
    assert done.returncode == 0
    for fragment in ("amx_tile+", "NVIDIA H200", "compute 9.0", "target amx", "python build.py --target amx"):
        assert fragment in done.stdout


def test_live_detect_runs_here():
    done = run_cli("detect", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["target"] in (*load_matrix().targets, None)
    assert report["host"]["threads"] >= 1


@pytest.mark.parametrize("bad", ["missing-dir", "empty-dir"])
def test_detect_bad_from_dir(tmp_path, bad):
    path = tmp_path / bad
    if bad == "empty-dir":
        path.mkdir()
    assert_one_line_error(run_cli("detect", "--from", str(path)), "--from")


# ------------------------------------------------ issue: honest answers on every host
COMPRESSED_NUMACTL = """available: 2 nodes (0-1)
node 0 cpus: 0-15,32-47 (32)
node 0 size: 96256 MB
node 0 free: 90112 MB
node 1 cpus: 16-31,48-63 (32)
node 1 size: 96256 MB
node 1 free: 91008 MB
node distances:
node   0   1
  0:  10  21
  1:  21  10
"""


def capture_dir(tmp_path, hosts_dir, lscpu_from, **files):
    """A real lscpu capture plus files written here (synthetic, for layouts no
    published capture shows)."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "lscpu.txt").write_text((hosts_dir / lscpu_from / "lscpu.txt").read_text())
    for name, text in files.items():
        (host / name.replace("_", ".")).write_text(text)
    return host


def test_numactl_cpu_compress_layout_parses(tmp_path, hosts_dir):
    host = capture_dir(tmp_path, hosts_dir, "public/gold6248_2s_linuxhw", numa_txt=COMPRESSED_NUMACTL)
    done = run_cli("detect", "--from", str(host), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [len(n["cpus"]) for n in report["host"]["numa_nodes"]] == [32, 32]


def test_numa_node_sizes_are_the_ram_and_q4_k_m_does_not_fit(tmp_path, hosts_dir):
    host = capture_dir(tmp_path, hosts_dir, "public/gold6248_2s_linuxhw", numa_txt=COMPRESSED_NUMACTL)
    report = json.loads(run_cli("detect", "--from", str(host), "--json").stdout)
    assert report["host"]["ram_mib"] == 2 * 96256
    assert report["fits"]["deepseek-r1 Q4_K_M"]["fits"] is False
    text = run_cli("detect", "--from", str(host)).stdout
    assert "Q4_K_M: does not fit" in text


def test_unparsable_capture_is_one_line_naming_the_file(tmp_path, hosts_dir):
    host = capture_dir(tmp_path, hosts_dir, "public/gold6248_2s_linuxhw",
                       numa_txt="node 0 cpus: 0-x3 garbage\n")
    assert_one_line_error(run_cli("detect", "--from", str(host)), "numa.txt", "cannot parse")


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_no_fits_without_known_ram_and_text_agrees_with_json(hosts_dir, capture):
    report = json.loads(run_cli("detect", "--from", str(hosts_dir / capture), "--json").stdout)
    text = run_cli("detect", "--from", str(hosts_dir / capture)).stdout
    if report["host"]["ram_mib"] is None:
        assert all(fit["fits"] != True for fit in report["fits"].values())  # noqa: E712 - "unknown" is truthy
        assert ": fits with" not in text
    assert ("NUMA on" in text) == report["numa"]
    for name, fit in report["fits"].items():
        word = {True: "fits", False: "does not fit"}.get(fit["fits"], "unknown")
        assert f"{name}: {word}" in text


def test_two_sockets_without_flags_is_numa_off_in_text_and_json(tmp_path, hosts_dir):
    lscpu = (hosts_dir / "public/gold6248_2s_linuxhw/lscpu.txt").read_text()
    host = tmp_path / "noflags"
    host.mkdir()
    (host / "lscpu.txt").write_text("\n".join(line for line in lscpu.splitlines() if not line.startswith("Flags")))
    report = json.loads(run_cli("detect", "--from", str(host), "--json").stdout)
    text = run_cli("detect", "--from", str(host)).stdout
    assert report["target"] is None and report["numa"] is False
    assert "NUMA on" not in text
