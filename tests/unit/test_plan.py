"""`build.py plan` on the fixture hosts and on synthetic captures for the
edge cases no published capture covers (made here, marked as such)."""

import json

import pytest

from support.buildpy import assert_one_line_error, run_cli

GIB_KB = 1024 * 1024


def synthetic_host(tmp_path, hosts_dir, lscpu_from, ram_gib, gpus):
    """A real lscpu capture plus a made-up meminfo and nvidia-smi CSV."""
    host = tmp_path / "synthetic-host"
    host.mkdir()
    (host / "lscpu.txt").write_text((hosts_dir / lscpu_from / "lscpu.txt").read_text())
    (host / "meminfo.txt").write_text(f"MemTotal:       {ram_gib * GIB_KB} kB\n")
    rows = [f"{name}, {mib} MiB, 560.35.03, 8.9" for name, mib in gpus]
    (host / "nvidia-smi.csv").write_text("name, memory.total [MiB], driver_version, compute_cap\n" + "\n".join(rows))
    return host


def plan(*args):
    done = run_cli("plan", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_h200_box_is_short_of_ram_for_ud_iq1_s(hosts_dir):
    result = plan("--from", str(hosts_dir / "xeon-amx-h200-1s"), "--backend", "single")
    assert result["fits"] is False
    assert round(result["ram_needed_gb"]) == 145 and round(result["ram_have_gb"]) == 135
    assert result["settings"]["optimize_rule"] == "DeepSeek-V3-Chat.yaml"
    assert result["settings"]["cache_lens"] == 65536
    assert any("AMX rule needs BF16" in n for n in result["notes"])
    assert any("page the rest from disk" in n for n in result["notes"])


def test_gpu_less_box(hosts_dir):
    kt = plan("--from", str(hosts_dir / "epyc-zen4-2c"))
    assert kt["fits"] is False and any("no NVIDIA GPU" in n for n in kt["notes"])
    llama = plan("--from", str(hosts_dir / "epyc-zen4-2c"), "--engine", "llamacpp")
    assert llama["settings"] == {"n_gpu_layers": 0, "threads": 2}


def test_numa_doubles_ram_and_says_what_would_fit(tmp_path, hosts_dir):
    host = synthetic_host(tmp_path, hosts_dir, "public/gold6248_2s_linuxhw", 256, [("NVIDIA GeForce RTX 4090", 24564)])
    numa = plan("--from", str(host), "--numa")  # detect alone would say NUMA off here
    assert numa["numa_copies"] == 2 and numa["fits"] is False
    assert any("fits with NUMA off" in n for n in numa["notes"])
    single = plan("--from", str(host), "--no-numa")
    assert single["numa_copies"] == 1 and single["fits"] is True
    assert single["settings"]["cpu_infer"] == 38  # 40 physical cores - 2


def test_big_dual_socket_runs_q4_k_m_with_numa(tmp_path, hosts_dir):
    host = synthetic_host(tmp_path, hosts_dir, "public/gold6248_2s_linuxhw", 1024, [("NVIDIA GeForce RTX 4090", 24564)])
    result = plan("--from", str(host), "--quant", "Q4_K_M")
    assert result["fits"] is True and round(result["ram_needed_gb"]) == 759


def test_llamacpp_gpu_layers_follow_unsloths_rule(tmp_path, hosts_dir):
    host = synthetic_host(tmp_path, hosts_dir, "public/ryzen9-7950x_1s", 192, [("NVIDIA GeForce RTX 4090", 24564)])
    result = plan("--from", str(host), "--engine", "llamacpp")
    vram_gb = 24564 * 2**20 / 1e9
    assert result["settings"]["n_gpu_layers"] == int(vram_gb / 140.2 * (61 - 4))  # 10 layers


def test_four_gpus_pick_the_multi_gpu_rule(tmp_path, hosts_dir):
    host = synthetic_host(tmp_path, hosts_dir, "public/ryzen9-7950x_1s", 192, [("NVIDIA A100", 81920)] * 4)
    result = plan("--from", str(host), "--target", "avx512")
    assert result["settings"]["optimize_rule"] == "DeepSeek-V3-Chat-multi-gpu-4.yaml"


def test_plan_on_real_files(tmp_path, hosts_dir):
    from support.tiny_gguf import write_model
    write_model(tmp_path / "m" / "Tiny.gguf", split=3)
    result = plan("--from", str(hosts_dir / "epyc-zen4-2c"), "--engine", "llamacpp", "--gguf", str(tmp_path / "m"))
    assert result["fits"] is True and result["weights_gb"] < 0.01


@pytest.mark.parametrize("args, fragment", [
    (["--quant", "Q9_Z"], "unknown quant 'Q9_Z'"),
    (["--model", "llama-9"], "unknown model 'llama-9'"),
    (["--gguf", "/nonexistent"], "--gguf /nonexistent"),
])
def test_plan_bad_input(hosts_dir, args, fragment):
    assert_one_line_error(run_cli("plan", "--from", str(hosts_dir / "epyc-zen4-2c"), *args), fragment)


def test_plan_refuses_bf16_weights_on_a_target_without_avx512_bf16(tmp_path, hosts_dir):
    from test_modelcheck import bf16_model
    (tmp_path / "m").mkdir()
    bf16_model(tmp_path / "m" / "bf16.gguf")
    host = synthetic_host(tmp_path, hosts_dir, "public/gold6248_2s_linuxhw", 512, [("NVIDIA A100", 81920)])
    refused = plan("--from", str(host), "--gguf", str(tmp_path / "m"), "--no-numa")
    assert refused["fits"] is False
    assert any("BF16 needs --target avx512bf16 or amx" in note for note in refused["notes"])
    (tmp_path / "zen4").mkdir()
    able = synthetic_host(tmp_path / "zen4", hosts_dir, "public/ryzen9-7950x_1s", 512, [("NVIDIA A100", 81920)])
    assert plan("--from", str(able), "--gguf", str(tmp_path / "m"))["fits"] is True
