"""What a user's build fetches and CI cannot (no registry, no GitHub, no
PyTorch index here): each name the tool asks for, held against the names
their publishers list (tests/fixtures/published/, each file says where and
when it was read). A typo in targets.yaml, or a name upstream changes, fails
here rather than in a user's build."""

import importlib.util
import json

import pytest

from ktappliance.target.matrix import load_matrix

from support.buildpy import REPO

MATRIX = load_matrix()
PUBLISHED = REPO / "tests" / "fixtures" / "published"
spec = importlib.util.spec_from_file_location("flash_attn_wheel", REPO / "images/engine/flash-attn-wheel.py")
flash_attn_wheel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flash_attn_wheel)


def published(name: str) -> dict:
    return json.loads((PUBLISHED / name).read_text())


def pins():
    """(line, cuda, torch pin, the base image's Python) for every combination the tool builds."""
    return [(line.name, cuda, pin, MATRIX.cuda[cuda].python)
            for line in MATRIX.lines.values() for cuda, pin in line.torch_by_cuda.items()]


def test_every_cuda_image_the_tool_pulls_is_a_published_tag():
    cuda = published("nvidia-cuda-tags.json")
    known = set(cuda["tags"]) | set(cuda["later_tags"])
    for base in MATRIX.cuda.values():
        for image in (base.devel_image, base.runtime_image, base.base_image):
            repository, _, tag = image.partition(":")
            assert repository == "nvidia/cuda" and tag in known, image
    # The defaults users get are in NVIDIA's own list, not only seen elsewhere.
    for version in ("12.4", "12.6"):
        assert MATRIX.cuda[version].devel_image.split(":")[1] in cuda["tags"]


@pytest.mark.parametrize("line, cuda, pin, python", pins())
def test_every_torch_the_tool_installs_is_published_where_it_asks(line, cuda, pin, python):
    torch = published("torch-wheels.json")
    if pin.index_url:
        assert pin.index_url in torch["pytorch_index"]["indexes"][pin.version], (line, cuda, pin)
        return
    tag = "cp" + python.replace(".", "")
    wheels = [w for w in torch["pypi"]["wheels"] if w.startswith(f"torch-{pin.version}-{tag}-{tag}-")]
    assert wheels, f"PyPI has no torch {pin.version} wheel for Python {python} (line {line}, CUDA {cuda})"


@pytest.mark.parametrize("line, cuda, pin, python", pins())
def test_the_flash_attn_wheel_the_build_asks_for(line, cuda, pin, python):
    # CUDA 12 builds ask for a wheel flash-attn publishes; CUDA 13 has none, and
    # the build says so and compiles (README: flash-attn).
    version = MATRIX.lines[line].flash_attn
    release = published("flash-attn-wheels.json")
    abi = published("torch-wheels.json")["cxx11_abi"]["torch"].get(pin.version, "TRUE")
    name = flash_attn_wheel.wheel_name(version, pin.version, cuda, abi, python)
    assert release["release_url"].endswith(f"/v{version}/")
    assert (name in release["wheels"]) == cuda.startswith("12."), name
    assert flash_attn_wheel.wheel_url(version, name) == release["release_url"] + name.replace("+", "%2B")
