"""Build plan: a matrix selection plus every option that shapes one image build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ktappliance.errors import ApplianceError
from ktappliance.target.matrix import CudaBase, LlamaCpp, Selection, Target, supported_types

UPSTREAM_GIT = "https://github.com/kvcache-ai/ktransformers.git"
FLASH_ATTN_MODES = ("wheel", "skip")


@dataclass(frozen=True)
class SourceSpec:
    """Where the KTransformers source comes from: the pinned git tag, or a
    local tree / tarball (the modified offline source many users build from)."""

    kind: str  # "git", "dir" or "tarball"
    location: str

    @property
    def in_build(self) -> str:
        """The source location the build script sees inside the builder."""
        if self.kind == "git":
            return self.location
        return "/src/source.tar.gz"

    @property
    def label(self) -> str:
        return self.location if self.kind == "git" else f"local {self.kind}: {Path(self.location).name}"

    @classmethod
    def from_option(cls, value: str | None, *, option: str = "--ktransformers-src",
                    default_git: str = UPSTREAM_GIT, marker: str | None = "setup.py") -> "SourceSpec":
        if not value:
            return cls("git", default_git)
        path = Path(value).expanduser()
        if path.is_dir():
            if marker and not (path / marker).is_file():
                raise ApplianceError(f"{option} {value}: directory holds no {marker}")
            return cls("dir", str(path.resolve()))
        if path.is_file():
            if not path.name.endswith((".tar.gz", ".tgz")):
                raise ApplianceError(f"{option} {value}: expected a directory or a .tar.gz")
            return cls("tarball", str(path.resolve()))
        raise ApplianceError(f"{option} {value}: no such file or directory")


@dataclass(frozen=True)
class NetworkOptions:
    """What users behind slow or filtered networks set. Any of them may hold
    credentials (http://user:pass@mirror/...), so all travel as BuildKit
    secrets, never as build args that `docker history` shows."""

    pip_index_url: str = ""
    apt_mirror: str = ""
    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    ca_cert: str = ""

    def secret_env(self) -> dict[str, str]:
        env = {}
        if self.apt_mirror:
            env["APT_MIRROR"] = self.apt_mirror
        if self.pip_index_url:
            env["PIP_INDEX_URL"] = self.pip_index_url
        for name, value in (("http_proxy", self.http_proxy), ("https_proxy", self.https_proxy),
                            ("no_proxy", self.no_proxy)):
            if value:
                env[name] = value
                env[name.upper()] = value
        return env


@dataclass(frozen=True)
class BuildPlan:
    """A KTransformers engine image. What differs from a llama.cpp image is
    answered here and on LlamaCppPlan under the same names."""

    engine = "ktransformers"
    selection: Selection
    source: SourceSpec
    cuda_arch_list: str
    jobs: int
    flash_attn: str
    devel_image: str
    runtime_image: str
    network: NetworkOptions = field(default_factory=NetworkOptions)
    image_tag: str = ""
    cache_namespace: str = ""

    @property
    def target(self) -> Target:
        return self.selection.target

    @property
    def numa(self) -> bool:
        return self.selection.numa

    def build_args(self) -> dict[str, str]:
        """The Dockerfile's base-image ARGs, passed explicitly so that the saved command replays this build."""
        return {"CUDA_DEVEL_IMAGE": self.devel_image, "CUDA_RUNTIME_IMAGE": self.runtime_image}

    def base_images(self) -> dict[str, str]:
        """The base images by the option that names them (for a failed pull's message)."""
        return {"--base-image": self.devel_image, "--runtime-base-image": self.runtime_image}

    def bundle_settings(self) -> dict[str, str]:
        """The values the image is built and stamped with, for the AutoDL bundle's native build."""
        return {**self.compile_env(), **self.install_env(), **self.runtime_env()}

    @property
    def flash_attn_pin(self) -> str:
        return "skip" if self.flash_attn == "skip" else self.selection.line.flash_attn

    @property
    def patches(self) -> tuple[str, ...]:
        """images/engine/patches/ files this build applies to upstream's tree."""
        serve = self.selection.balance_serve
        cuda = self.selection.cuda.version
        return tuple(p.file for p in serve.patches if p.applies_to(cuda)) if serve else ()

    def compile_env(self) -> dict[str, str]:
        """What images/engine/build-ktransformers.sh compiles with: the same
        values in the Dockerfile, the AutoDL bundle and the GPU tier."""
        sel = self.selection
        return {
            "KT_TAG": sel.line.tag, "KT_COMMIT": sel.line.commit,
            "CPU_INSTRUCT": sel.target.cpu_instruct,
            "KT_REQUIRED_FLAGS": " ".join(sel.target.requires),
            "KT_CFLAGS": " ".join(sel.target.cflags),
            "KT_CMAKE_ARGS": " ".join(sel.target.cmake_args),
            "KT_NUMA": "1" if sel.numa else "0",
            "TORCH_CUDA_ARCH_LIST": self.cuda_arch_list,
            "KT_JOBS": str(self.jobs),
            "KT_FLASH_ATTN": self.flash_attn_pin,
            "KT_BALANCE_SERVE": "1" if sel.balance_serve else "0",
            "KT_TARGET_CFLAGS": " ".join(sel.target.machine_flags),
            "KT_PATCHES": " ".join(self.patches),
        }

    def install_env(self) -> dict[str, str]:
        """What install-build-deps.sh and install-runtime.sh install."""
        sel = self.selection
        serve = sel.balance_serve
        extra = (lambda name: getattr(serve, name)) if serve else (lambda name: ())
        return {
            "KT_TORCH": sel.torch.version, "KT_TORCH_INDEX": sel.torch.index_url,
            "KT_APT_BUILD": " ".join((*sel.line.apt_build, *extra("apt_build"))),
            "KT_BUILD_PIP": " ".join(sel.line.build_pip),
            "KT_APT_RUNTIME": " ".join((*sel.line.apt_runtime, *extra("apt_runtime"))),
            "KT_RUNTIME_PIP": " ".join((*sel.line.runtime_pip, *extra("runtime_pip"))),
        }

    def runtime_env(self) -> dict[str, str]:
        """What the engine entrypoint knows about its build (the image stamps it as ENV)."""
        sel = self.selection
        return {
            "KT_TARGET": sel.target.name, "KT_REQUIRED_FLAGS": " ".join(sel.target.requires),
            "KT_SERVER_FEATURES": " ".join(sel.line.server_features), "KT_LINE": sel.line.name,
            "KT_QUANT_TYPES": ",".join(supported_types(sel.line, sel.target)),
            "KT_BF16_NOTE": sel.type_notes.get("BF16", ""),
            "KT_BACKEND": sel.backend,
        }

    def labels(self) -> dict[str, str]:
        sel = self.selection
        return {
            "ai.ktappliance.engine": "ktransformers",
            "ai.ktappliance.target": sel.target.name,
            "ai.ktappliance.line": sel.line.name,
            "ai.ktappliance.commit": sel.line.commit,
            "ai.ktappliance.cuda": sel.cuda.version,
            "ai.ktappliance.numa": "true" if sel.numa else "false",
            "ai.ktappliance.cpu-instruct": sel.target.cpu_instruct,
            "ai.ktappliance.cpu-flags": " ".join(sel.target.requires),
            "ai.ktappliance.cflags": " ".join(sel.target.cflags),
            "ai.ktappliance.bf16": "true" if sel.target.bf16 else "false",
            "ai.ktappliance.torch": sel.torch.version,
            "ai.ktappliance.torch-cuda-arch-list": self.cuda_arch_list,
            "ai.ktappliance.flash-attn": self.flash_attn_pin,
            "ai.ktappliance.backend": sel.backend,
            "ai.ktappliance.patches": " ".join(self.patches) or "none",
        }


@dataclass(frozen=True)
class LlamaCppPlan:
    """A llama.cpp server image: one CPU target, CUDA or CPU-only."""

    engine = "llamacpp"
    selection = None  # no KTransformers line, backend or NUMA choice
    numa = False
    target: Target
    llamacpp: LlamaCpp
    cuda: CudaBase | None
    source: SourceSpec
    jobs: int
    cuda_architectures: str
    build_image: str
    runtime_image: str
    network: NetworkOptions = field(default_factory=NetworkOptions)
    image_tag: str = ""
    cache_namespace: str = ""

    def build_args(self) -> dict[str, str]:
        return {"BUILD_IMAGE": self.build_image, "RUNTIME_IMAGE": self.runtime_image}

    def base_images(self) -> dict[str, str]:
        return {"--base-image": self.build_image, "--runtime-base-image": self.runtime_image}

    def bundle_settings(self) -> dict[str, str]:
        return {"LLAMA_TAG": self.llamacpp.tag, "LLAMA_COMMIT": self.llamacpp.commit,
                "LLAMA_CPU_CMAKE": " ".join(self.target.llamacpp_cmake),
                "LLAMA_CUDA_ARCHS": self.cuda_architectures if self.cuda else "",
                "LLAMA_APT_BUILD": " ".join(self.llamacpp.apt_build),
                "LLAMA_APT_RUNTIME": " ".join(self.llamacpp.apt_runtime)}

    def labels(self) -> dict[str, str]:
        return {
            "ai.ktappliance.engine": "llamacpp",
            "ai.ktappliance.target": self.target.name,
            "ai.ktappliance.line": self.llamacpp.tag,
            "ai.ktappliance.commit": self.llamacpp.commit,
            "ai.ktappliance.cuda": self.cuda.version if self.cuda else "none",
            "ai.ktappliance.numa": "false",
            "ai.ktappliance.cpu-flags": " ".join(self.target.requires),
            "ai.ktappliance.cuda-architectures": self.cuda_architectures if self.cuda else "none",
        }


def make_llamacpp_plan(target: Target, llamacpp: LlamaCpp, cuda: CudaBase | None, *, source: str | None = None,
                       jobs: int | None = None, default_jobs: int = 2, cuda_architectures: str | None = None,
                       base_image: str | None = None, runtime_base_image: str | None = None,
                       network: NetworkOptions | None = None, tag: str | None = None) -> LlamaCppPlan:
    if jobs is not None and jobs < 1:
        raise ApplianceError(f"--jobs {jobs}: must be 1 or more")
    archs = cuda_architectures or llamacpp.cuda_architectures
    if not all(a.isdigit() for a in archs.split(";")):
        raise ApplianceError(f"--cuda-arch {archs}: llama.cpp takes CMake CUDA architectures like 86;90")
    return LlamaCppPlan(
        target=target, llamacpp=llamacpp, cuda=cuda,
        source=SourceSpec.from_option(source, option="--llamacpp-src", default_git=llamacpp.git, marker=None),
        jobs=jobs or default_jobs, cuda_architectures=archs,
        build_image=base_image or (cuda.devel_image if cuda else llamacpp.cpu_build_image),
        runtime_image=runtime_base_image or (cuda.runtime_image if cuda else llamacpp.cpu_runtime_image),
        network=network or NetworkOptions(),
        image_tag=tag or llamacpp.image_tag(target.name, cuda.version if cuda else None),
    )


def make_plan(selection: Selection, *, source: str | None = None, cuda_arch_list: str | None = None,
              default_arch_list: str, jobs: int | None = None, default_jobs: int = 2,
              flash_attn: str = "wheel", base_image: str | None = None,
              runtime_base_image: str | None = None, network: NetworkOptions | None = None,
              tag: str | None = None, cache_namespace: str = "") -> BuildPlan:
    if jobs is not None and jobs < 1:
        raise ApplianceError(f"--jobs {jobs}: must be 1 or more")
    if flash_attn not in FLASH_ATTN_MODES:
        raise ApplianceError(f"--flash-attn {flash_attn}: choose one of {', '.join(FLASH_ATTN_MODES)}")
    arch_list = cuda_arch_list or default_arch_list
    for arch in arch_list.split(";"):
        if not arch.removesuffix("+PTX").replace(".", "", 1).isdigit():
            raise ApplianceError(f"--cuda-arch {arch_list}: expected entries like 8.6 or 9.0+PTX separated by ';'")
    return BuildPlan(
        selection=selection,
        source=SourceSpec.from_option(source),
        cuda_arch_list=arch_list,
        jobs=jobs or default_jobs,
        flash_attn=flash_attn,
        devel_image=base_image or selection.cuda.devel_image,
        runtime_image=runtime_base_image or selection.cuda.base_image,
        network=network or NetworkOptions(),
        image_tag=tag or selection.image_tag,
        cache_namespace=cache_namespace,
    )
