"""The wheel folder a GPU host without network gets (tests/gpu/wheelhouse.py):
what it asks pip for, and its refusals. Fetching itself needs an index, so
it is exercised by hand (README, GPU section), not here."""

import io
import subprocess
import sys
import tarfile

import pytest

from support.buildpy import REPO

sys.path.insert(0, str(REPO / "tests" / "gpu"))
import wheelhouse  # noqa: E402

PYPROJECT = b'[project]\nname = "ktransformers"\ndependencies = ["torch >= 2.3.0", "transformers == 4.43.2", "fire"]\n'


def source_tarball(tmp_path, tag="v0.2.3", pyproject=PYPROJECT):
    path = tmp_path / f"ktransformers-{tag}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"ktransformers-{tag}/pyproject.toml")
        info.size = len(pyproject)
        tar.addfile(info, io.BytesIO(pyproject))
    return path


def test_a_line_asks_for_its_pins_and_declared_dependencies_without_torch(tmp_path):
    wanted = wheelhouse.line_requirements("v0.2.3", source_tarball(tmp_path))
    names = [wheelhouse.requirement_name(r) for r in wanted]
    assert "transformers == 4.43.2" in wanted and "fire" in wanted
    assert "sqlalchemy" in names and "cpufeature" in names     # runtime and build pins from targets.yaml
    assert "torch" not in names
    # numpy follows the host's torch, so the folder offers any numpy, not the image's numpy<2.
    assert "numpy" in wanted and not any(r.startswith("numpy<") for r in wanted)


def test_host_provided_packages_are_recognised_by_their_canonical_names():
    for name in ["torch", "triton", "nvidia-cublas-cu12", "cuda-bindings"]:
        assert wheelhouse.HOST_PROVIDED.match(wheelhouse.requirement_name(name))
    for name in ["certifi", "torchvision-extra", "transformers==4.51.3", "Jinja2>=3"]:
        assert not wheelhouse.HOST_PROVIDED.match(wheelhouse.requirement_name(name))


def test_the_tool_list_is_what_offline_host_installs():
    tools = wheelhouse.tool_requirements()
    assert {"pytest", "openai", "gguf", "tokenizers", "httpx"} <= set(tools)
    assert "tests/gpu/tool-requirements.txt" in (REPO / "tests/gpu/offline-host.sh").read_text()


@pytest.mark.parametrize("args, message", [
    (["--lines", "v9.9"], "unknown line v9.9"),
    (["--kt-sources", "{tmp}/empty"], "no ktransformers-v0.2.3.tar.gz in"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "tests/gpu/wheelhouse.py"), str(out),
                           *[a.format(tmp=tmp_path) for a in args]], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_source_without_pyproject_is_refused(tmp_path):
    path = tmp_path / "ktransformers-v0.2.3.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("ktransformers-v0.2.3/setup.py"), io.BytesIO(b""))
    with pytest.raises(SystemExit, match="has no pyproject.toml"):
        wheelhouse.declared_dependencies(path)
