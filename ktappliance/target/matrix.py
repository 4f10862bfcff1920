"""The target matrix: targets.yaml read into typed records, and the rules that
say which combinations of target, KTransformers line, CUDA and NUMA are valid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ktappliance.errors import ApplianceError

DEFAULT_MATRIX_FILE = Path(__file__).with_name("targets.yaml")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    requires: tuple[str, ...]
    cpu_instruct: str
    cflags: tuple[str, ...]
    cmake_args: tuple[str, ...]
    bf16: bool
    default_line: str
    llamacpp_cmake: tuple[str, ...]

    @property
    def has_amx(self) -> bool:
        return any(flag.startswith("amx") for flag in self.requires)

    @property
    def machine_flags(self) -> tuple[str, ...]:
        """gcc's -m options for exactly the required flags (avx512_vnni ->
        -mavx512vnni, amx_tile -> -mamx-tile): what code built without
        CPU_INSTRUCT (balance_serve) compiles with instead of -march=native."""
        return tuple(f"-mamx-{flag[4:]}" if flag.startswith("amx_") else f"-m{flag.replace('_', '')}"
                     for flag in self.requires)


@dataclass(frozen=True)
class CudaBase:
    version: str
    devel_image: str
    runtime_image: str
    base_image: str
    python: str
    min_driver: str


@dataclass(frozen=True)
class TorchPin:
    version: str
    index_url: str


BACKENDS = ("balance_serve", "single")


@dataclass(frozen=True)
class SourcePatch:
    """A patch from images/engine/patches/ the build applies to upstream's tree."""

    file: str
    min_cuda: str = ""

    def applies_to(self, cuda_version: str) -> bool:
        return not self.min_cuda or _version(cuda_version) >= _version(self.min_cuda)


@dataclass(frozen=True)
class BalanceServe:
    """What the multi-request backend adds to a line's build and image."""

    apt_build: tuple[str, ...]
    apt_runtime: tuple[str, ...]
    runtime_pip: tuple[str, ...]
    optimize_rules: tuple[str, ...]
    patches: tuple[SourcePatch, ...]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True)
class Line:
    name: str
    tag: str
    commit: str
    description: str
    quant_types: tuple[str, ...]
    amx: bool
    torch_by_cuda: dict[str, TorchPin]
    build_pip: tuple[str, ...]
    runtime_pip: tuple[str, ...]
    flash_attn: str
    apt_build: tuple[str, ...]
    apt_runtime: tuple[str, ...]
    cmake_min: str
    optimize_rules: tuple[str, ...]
    supports_force_think: bool
    supports_api_key: bool
    supports_backend_type: bool = False
    backends: tuple[str, ...] = ("single",)
    balance_serve: BalanceServe | None = None

    @property
    def default_cuda(self) -> str:
        return next(iter(self.torch_by_cuda))

    @property
    def default_backend(self) -> str:
        return self.backends[0]

    @property
    def server_features(self) -> tuple[str, ...]:
        """What the engine entrypoint may pass to this line's server (KT_SERVER_FEATURES)."""
        return tuple(name for name, on in (("force_think", self.supports_force_think),
                                           ("auth", self.supports_api_key),
                                           ("backend_type", self.supports_backend_type)) if on)


@dataclass(frozen=True)
class LlamaCpp:
    tag: str
    commit: str
    git: str
    cpu_build_image: str
    cpu_runtime_image: str
    cuda_architectures: str
    apt_build: tuple[str, ...]
    apt_runtime: tuple[str, ...]
    tag_scheme: str

    def image_tag(self, target: str, cuda: str | None) -> str:
        accel = f"cu{cuda.replace('.', '')}" if cuda else "cpu"
        return self.tag_scheme.format(tag=self.tag, target=target, accel=accel)


@dataclass(frozen=True)
class StackDefaults:
    webui_version: str
    webui_image: str
    webui_pypi_tag: str
    api_image: str


@dataclass(frozen=True)
class Selection:
    """One valid point of the matrix: what a single engine image is built for."""

    target: Target
    line: Line
    cuda: CudaBase
    numa: bool
    torch: TorchPin
    tag_scheme: str
    type_notes: dict[str, str] = field(default_factory=dict)
    backend: str = "single"

    @property
    def balance_serve(self) -> BalanceServe | None:
        """The backend's additions when this build compiles balance_serve."""
        return self.line.balance_serve if self.backend == "balance_serve" else None

    @property
    def image_tag(self) -> str:
        return self.tag_scheme.format(
            line=self.line.name,
            target=self.target.name,
            cuda=self.cuda.version.replace(".", ""),
            numa="numa" if self.numa else "nonuma",
            backend=self.backend,
        )


@dataclass(frozen=True)
class Matrix:
    targets: dict[str, Target]
    cuda: dict[str, CudaBase]
    lines: dict[str, Line]
    torch_cuda_arch_list: str
    default_jobs: int
    default_numa: bool
    tag_scheme: str
    llamacpp: LlamaCpp
    stack: StackDefaults

    def target(self, name: str) -> Target:
        if name not in self.targets:
            raise ApplianceError(f"unknown target {name!r}; choose one of: {', '.join(self.targets)} (or auto)")
        return self.targets[name]

    def cuda_base(self, version: str) -> CudaBase:
        if version not in self.cuda:
            raise ApplianceError(f"unknown CUDA version {version!r}; known: {', '.join(self.cuda)}")
        return self.cuda[version]

    def valid_combinations(self) -> list[tuple[str, str, str]]:
        """(target, line, cuda) triples; NUMA on and off are valid for each."""
        combos = []
        for target in self.targets.values():
            for line in self.lines.values():
                if not _line_fits_target(line, target):
                    continue
                for cuda in line.torch_by_cuda:
                    combos.append((target.name, line.name, cuda))
        return combos

    def select(self, target: str, line: str | None = None, cuda: str | None = None,
               numa: bool | None = None, backend: str | None = None) -> Selection:
        chosen_target = self.target(target)
        line_name = line or chosen_target.default_line
        if line_name not in self.lines:
            raise ApplianceError(
                f"unknown KTransformers line {line_name!r}; known lines: {', '.join(self.lines)}")
        chosen_line = self.lines[line_name]
        cuda_version = cuda or chosen_line.default_cuda
        self.cuda_base(cuda_version)
        if not _line_fits_target(chosen_line, chosen_target) or cuda_version not in chosen_line.torch_by_cuda:
            valid = "; ".join(f"--target {t} --line {l} --cuda {c}" for t, l, c in self.valid_combinations())
            raise ApplianceError(
                f"invalid combination: target {target}, line {line_name}, CUDA {cuda_version}; valid: {valid}")
        backend = backend or chosen_line.default_backend
        if backend not in chosen_line.backends:
            able = ", ".join(name for name, other in self.lines.items() if backend in other.backends)
            raise ApplianceError(f"--backend {backend}: KTransformers {line_name} has only "
                                 f"{', '.join(chosen_line.backends)}" + (f"; {backend} needs --line {able}" if able else ""))
        return Selection(
            target=chosen_target,
            line=chosen_line,
            cuda=self.cuda[cuda_version],
            numa=self.default_numa if numa is None else numa,
            torch=chosen_line.torch_by_cuda[cuda_version],
            tag_scheme=self.tag_scheme,
            type_notes=type_notes(self, chosen_target),
            backend=backend,
        )


def _line_fits_target(line: Line, target: Target) -> bool:
    # The AMX target exists for the AMX kernels; a line without them would
    # just be the avx512 build under another name.
    return line.amx or not target.has_amx


def load_matrix(path: Path = DEFAULT_MATRIX_FILE) -> Matrix:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ApplianceError(f"cannot read targets file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ApplianceError(f"malformed targets file {path}{at}: {getattr(exc, 'problem', exc)}") from None
    try:
        return _parse(raw)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ApplianceError(f"malformed targets file {path}: missing or wrong entry {exc}") from None


def _parse(raw: dict) -> Matrix:
    if not isinstance(raw, dict) or raw.get("schema") != 1:
        raise ValueError("'schema: 1'")
    targets = {
        name: Target(name, str(t["description"]), tuple(t["requires"]), str(t["cpu_instruct"]),
                     tuple(t.get("cflags") or ()), tuple(t.get("cmake_args") or ()), bool(t.get("bf16", False)),
                     str(t["default_line"]), tuple(t["llamacpp_cmake"]))
        for name, t in raw["targets"].items()
    }
    cuda = {
        str(ver): CudaBase(str(ver), str(c["devel_image"]), str(c["runtime_image"]),
                           str(c.get("base_image") or c["runtime_image"]), str(c["python"]), str(c["min_driver"]))
        for ver, c in raw["cuda"].items()
    }
    lines = {}
    for name, entry in raw["lines"].items():
        torch_by_cuda = {str(ver): TorchPin(str(p["torch"]), str(p.get("torch_index") or ""))
                         for ver, p in entry["cuda"].items()}
        for ver in torch_by_cuda:
            if ver not in cuda:
                raise ValueError(f"lines.{name}.cuda.{ver} (no such CUDA base)")
        flags = entry.get("server_flags") or {}
        backends = tuple(entry.get("backends") or ("single",))
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"lines.{name}.backends ({', '.join(unknown)}: known are {', '.join(BACKENDS)})")
        serve = entry.get("balance_serve")
        if ("balance_serve" in backends) != bool(serve):
            raise ValueError(f"lines.{name}.balance_serve (needed exactly when backends lists balance_serve)")
        lines[name] = Line(
            name=name, tag=str(entry["tag"]), commit=str(entry["commit"]),
            description=str(entry["description"]), quant_types=tuple(entry["quant_types"]),
            amx=bool(entry["amx"]), torch_by_cuda=torch_by_cuda, build_pip=tuple(entry["build_pip"]),
            runtime_pip=tuple(entry.get("runtime_pip") or ()),
            flash_attn=str(entry["flash_attn"]), apt_build=tuple(entry["apt_build"]),
            apt_runtime=tuple(entry["apt_runtime"]), cmake_min=str(entry["cmake_min"]),
            optimize_rules=tuple(entry["optimize_rules"]),
            supports_force_think=bool(flags.get("force_think", False)),
            supports_api_key=bool(flags.get("api_key", False)),
            supports_backend_type=bool(flags.get("backend_type", False)),
            backends=backends,
            balance_serve=BalanceServe(
                apt_build=tuple(serve["apt_build"]), apt_runtime=tuple(serve["apt_runtime"]),
                runtime_pip=tuple(serve.get("runtime_pip") or ()), optimize_rules=tuple(serve["optimize_rules"]),
                patches=tuple(SourcePatch(str(p["file"]), str(p.get("min_cuda") or "")) for p in serve["patches"]),
            ) if serve else None,
        )
    for target in targets.values():
        if target.default_line not in lines:
            raise ValueError(f"targets.{target.name}.default_line ({target.default_line} is no line)")
        if target.cpu_instruct.upper() == "NATIVE" or "-march=native" in target.cflags:
            raise ValueError(f"targets.{target.name}.cpu_instruct (NATIVE ties the image to the build host)")
        if target.bf16 and "avx512_bf16" not in target.requires:
            raise ValueError(f"targets.{target.name}.bf16 (BF16 kernels need avx512_bf16 in requires)")
    defaults = raw["defaults"]
    llama = raw["llamacpp"]
    llamacpp = LlamaCpp(
        tag=str(llama["tag"]), commit=str(llama["commit"]), git=str(llama["git"]),
        cpu_build_image=str(llama["cpu_build_image"]), cpu_runtime_image=str(llama["cpu_runtime_image"]),
        cuda_architectures=str(llama["cuda_architectures"]), apt_build=tuple(llama["apt_build"]),
        apt_runtime=tuple(llama["apt_runtime"]), tag_scheme=str(raw["llamacpp_tag_scheme"]))
    return Matrix(targets=targets, cuda=cuda, lines=lines,
                  torch_cuda_arch_list=str(defaults["torch_cuda_arch_list"]),
                  default_jobs=int(defaults["jobs"]), default_numa=bool(defaults["numa"]),
                  tag_scheme=str(raw["tag_scheme"]), llamacpp=llamacpp,
                  stack=StackDefaults(**{k: str(v) for k, v in raw["stack"].items()}))


def supported_types(line: Line, target: Target) -> tuple[str, ...]:
    """Tensor types an engine image of this line and target computes correctly.
    BF16 needs __AVX512BF16__ (llamafile's BF16 path): without it the AVX2 build
    returns zeros and the AVX512 build wrong numbers, silently."""
    return tuple(t for t in line.quant_types if target.bf16 or t != "BF16")


def type_notes(matrix: "Matrix", target: Target) -> dict[str, str]:
    """What `model check` says about a tensor type this target's build lacks."""
    if target.bf16:
        return {}
    able = " or ".join(name for name, t in matrix.targets.items() if t.bf16)
    return {"BF16": f"the {target.name} build has no AVX512-BF16 kernels and would compute BF16 weights wrong; "
                    f"BF16 needs --target {able} (a CPU with avx512_bf16)"}
