# ktappliance: the two commands a fresh machine needs are `make appliance`
# (set up, then build the engine image for this host) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TARGET ?= auto
BUILD_FLAGS ?=

.PHONY: setup appliance build render detect test test-fast test-image test-stack test-gpu lint docker browser bases clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed  ## virtualenv with the tool and its test tools

detect: setup  ## what this host is and what to build
	$(PY) build.py detect

render: setup  ## write the build context for TARGET without building
	$(PY) build.py render --target $(TARGET) $(BUILD_FLAGS)

build: setup  ## render and build the engine image for TARGET
	$(PY) build.py --target $(TARGET) $(BUILD_FLAGS)

appliance: docker  ## set up (Docker too, as root) and build the engine image for this host
	$(PY) build.py detect
	$(PY) build.py --target $(TARGET) $(BUILD_FLAGS)

docker: setup  ## a Docker engine with BuildKit and Compose v2 (installs Debian's docker.io as root if none)
	KTA_VENV=$(VENV) bash tests/support/ensure-docker.sh

browser:  ## Chromium and chromedriver for the browser test (installs Debian's as root if none)
	bash tests/support/ensure-browser.sh

bases: docker  ## the stand-in base images the image and stack tests build FROM
	bash tests/support/build-bases.sh

test-fast: setup  ## unit tests only: no Docker
	$(PY) -m pytest -q tests/unit

test-image: bases
	$(PY) -m pytest -q tests/image

test-stack: bases browser
	$(PY) -m pytest -q tests/stack

test: lint bases browser  ## the linters, then every tier: unit, image builds, the running stack
	$(PY) -m pytest -q tests/unit tests/image tests/stack

# The GPU tier (tests/gpu): on a host with an NVIDIA GPU, nvcc and a CUDA torch
# in python3; not part of `test` (CI has no GPU). GPU_PY=python3 runs it with a
# python that already holds the test tools (a host without network).
GPU_PY ?= $(PY)
test-gpu: $(if $(filter $(PY),$(GPU_PY)),setup)  ## compile the engines here and serve a tiny DeepSeek on the GPU
	$(GPU_PY) -m pytest -q -s tests/gpu $(PYTEST_ARGS)

SHELL_SCRIPTS = git ls-files -- 'images/*.sh' 'tests/*.sh' .ci/run

lint: setup  ## pyflakes on the code, shellcheck on every script, hadolint on every shipped Dockerfile
	$(PY) -m pyflakes ktappliance tests bench build.py
	command -v shellcheck >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; }
	$(SHELL_SCRIPTS) | xargs shellcheck -x
	$(VENV)/bin/hadolint images/api/Dockerfile images/webui/Dockerfile images/autodl/Dockerfile tests/support/bases/*.Dockerfile
	$(PY) build.py render --target avx2 --out build/lint >/dev/null
	$(PY) build.py render --target amx --numa --out build/lint >/dev/null
	$(PY) build.py render --engine llamacpp --target avx2 --cpu-only --out build/lint >/dev/null
	$(VENV)/bin/hadolint build/lint/*/Dockerfile

clean:
	rm -rf build
