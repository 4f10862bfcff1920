"""images/engine/check-shared-libstdcxx.sh on real shared libraries, and the
link folder build-ktransformers.sh puts first for balance_serve."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "images" / "engine" / "check-shared-libstdcxx.sh"
SOURCE = '#include <sstream>\n#include <string>\nstd::string label(double x) { std::ostringstream s; s << x; return s.str(); }\n'

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the libraries it checks")


def shared_library(folder: Path, name: str, *extra: str) -> Path:
    source = folder / f"{name}.cpp"
    source.write_text(SOURCE)
    library = folder / f"lib{name}.so"
    subprocess.run(["g++", "-shared", "-fPIC", *extra, "-o", str(library), str(source)], check=True)
    return library


@needs_gxx
def test_a_library_linked_with_its_own_libstdcxx_fails_the_check(tmp_path):
    (tmp_path / "kvc2").mkdir()
    shared_library(tmp_path, "sched")
    private = shared_library(tmp_path / "kvc2", "gpu_cache", "-static-libstdc++")
    done = subprocess.run(["sh", str(CHECK), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert str(private) in done.stderr and "libsched.so" not in done.stderr


@needs_gxx
def test_libraries_on_the_shared_libstdcxx_pass_the_check(tmp_path):
    shared_library(tmp_path, "sched")
    shared_library(tmp_path, "kvc2")
    done = subprocess.run(["sh", str(CHECK), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_gxx
def test_libraries_named_one_by_one_are_checked_too(tmp_path):
    (tmp_path / "lib").mkdir()
    shared = shared_library(tmp_path / "lib", "sched")
    private = shared_library(tmp_path / "lib", "gpu_cache", "-static-libstdc++")
    assert subprocess.run(["sh", str(CHECK), str(shared)], capture_output=True).returncode == 0
    done = subprocess.run(["sh", str(CHECK), str(shared), str(private)], capture_output=True, text=True)
    assert done.returncode == 1 and "libgpu_cache.so" in done.stderr


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: [], "usage"),
    (lambda tmp: [str(tmp / "build" / "lib.*" / "lib*.so")], "no such library or folder"),
    (lambda tmp: [str(tmp)], "no shared library"),
])
def test_a_check_with_nothing_to_check_fails(tmp_path, make, fragment):
    # A layout change upstream must not turn the check into one that passes on nothing.
    done = subprocess.run(["sh", str(CHECK), *make(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and fragment in done.stderr


def print_env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "CPU_INSTRUCT": "FANCY", "TORCH_CUDA_ARCH_LIST": "9.0",
           "KT_REQUIRED_FLAGS": "avx512f amx_tile", **extra}
    done = subprocess.run(["sh", str(REPO / "images/engine/build-ktransformers.sh"), "--print-env"],
                          env=env, capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines())


@needs_gxx
def test_balance_serve_links_first_against_its_compilers_shared_libstdcxx():
    compiler = next(name for name in ("g++-13", "g++-12", "g++-11", "g++") if shutil.which(name))
    shared = subprocess.run([compiler, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                            check=True).stdout.strip()
    serve = {"KT_BALANCE_SERVE": "1", "KT_TARGET_CFLAGS": "-mavx512f -mamx-tile"}
    assert print_env(**serve)["LDFLAGS"] == f"-L{Path(shared).parent}"
    assert print_env(**serve, LDFLAGS="-Wl,-z,now")["LDFLAGS"] == f"-L{Path(shared).parent} -Wl,-z,now"
    assert "LDFLAGS" not in print_env()
