"""The test suite's own options (tests/conftest.py)."""

import subprocess
import sys

from support.buildpy import REPO


def test_a_bad_image_option_stops_the_run_with_one_line():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "--image", "enigne-avx2=mine:1",
                           "tests/unit/test_readme_tables.py", "-k", "shorthand"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "--image enigne-avx2=mine:1: expected NAME=TAG with NAME one of engine-amx" in done.stderr


def test_the_ci_layer_prune_refuses_anything_but_two_whole_numbers():
    for bad in ([], ["5"], ["0", "40"], ["ten", "40"], ["5", "-1"], ["5", "40", "6"]):
        done = subprocess.run([sys.executable, str(REPO / "tests/support/prune_stale_layers.py"), *bad],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (bad, done.stderr)
        assert done.stderr.strip() == ("prune_stale_layers: usage: prune_stale_layers.py MINUTES FREE_GB "
                                       "(whole numbers, at least 1)"), bad
