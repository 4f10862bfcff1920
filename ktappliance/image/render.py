"""Render a build plan into a complete, deterministic build context.

The context is written under a temporary name next to its final place and
renamed into place only when complete, so a failure never leaves a
half-written build directory behind."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ktappliance.errors import ApplianceError
from ktappliance.paths import IMAGES_DIR, TEMPLATES_DIR
from ktappliance.image.plan import BuildPlan, LlamaCppPlan

CONTEXT_IGNORE = "secrets/\nbuild-command.sh\n"


@dataclass(frozen=True)
class RenderedContext:
    directory: Path
    dockerfile: Path
    plan: BuildPlan | LlamaCppPlan


def context_name(image_tag: str) -> str:
    repo, _, tag = image_tag.rpartition(":")
    return f"{repo.rsplit('/', 1)[-1]}-{tag}"


def template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_llamacpp_dockerfile(plan: LlamaCppPlan) -> str:
    template = template_environment().get_template("llamacpp.Dockerfile.j2")
    return template.render(
        target=plan.target, llamacpp=plan.llamacpp, cuda=plan.cuda, source=plan.source, jobs=plan.jobs,
        cuda_architectures=plan.cuda_architectures, build_image=plan.build_image,
        runtime_image=plan.runtime_image, labels=plan.labels(), cache_namespace=_namespace(plan),
    )


def llamacpp_record(plan: LlamaCppPlan) -> dict:
    return {
        "image": plan.image_tag,
        "engine": "llamacpp",
        "target": plan.target.name,
        "llamacpp": plan.llamacpp.tag,
        "commit": plan.llamacpp.commit,
        "cuda": plan.cuda.version if plan.cuda else None,
        "jobs": plan.jobs,
        "source": {"kind": plan.source.kind, "location": plan.source.label},
        "build_image": plan.build_image,
        "runtime_image": plan.runtime_image,
        "labels": plan.labels(),
    }


def render_dockerfile(plan: BuildPlan) -> str:
    sel = plan.selection
    template = template_environment().get_template("engine.Dockerfile.j2")
    return template.render(
        target=sel.target, line=sel.line, cuda=sel.cuda, numa=sel.numa, source=plan.source,
        labels=plan.labels(), compile_env=plan.compile_env(), install_env=plan.install_env(),
        runtime_env=plan.runtime_env(), cache_namespace=_namespace(plan),
    )


def _namespace(plan) -> str:
    return f"-{plan.cache_namespace}" if plan.cache_namespace else ""


def plan_record(plan: BuildPlan) -> dict:
    """What was chosen, for people and for replay; never secrets."""
    sel = plan.selection
    return {
        "image": plan.image_tag,
        "target": sel.target.name,
        "line": sel.line.name,
        "commit": sel.line.commit,
        "cuda": sel.cuda.version,
        "numa": sel.numa,
        "torch": sel.torch.version,
        "cuda_arch_list": plan.cuda_arch_list,
        "jobs": plan.jobs,
        "flash_attn": plan.flash_attn_pin,
        "source": {"kind": plan.source.kind, "location": plan.source.label},
        "devel_image": plan.devel_image,
        "runtime_image": plan.runtime_image,
        "labels": plan.labels(),
    }


def _deterministic_tarball(source_dir: Path, destination: Path, top: str = "source") -> None:
    """Pack a source tree so that the same tree always gives the same bytes
    (sorted names, zeroed times and owners), keeping BuildKit's cache valid."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if ".git" in parts or "__pycache__" in parts:
            return None
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(source_dir):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = Path(root) / name
                if path.is_dir() and not path.is_symlink():
                    continue
                arcname = str(Path(top) / path.relative_to(source_dir))
                info = clean(tar.gettarinfo(str(path), arcname))
                if info is None:
                    continue
                if info.isfile():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    with open(destination, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())


def _copy_scripts(context: Path, images: tuple[str, ...]) -> None:
    for image in images:
        shutil.copytree(IMAGES_DIR / image, context / "scripts" / image,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
    # The engines run the same model check as `build.py model check` at start.
    shutil.copyfile(Path(__file__).parent.parent / "models" / "modelcheck.py", context / "scripts" / "common" / "modelcheck.py")


def _write_context(plan: BuildPlan | LlamaCppPlan, context: Path) -> None:
    if isinstance(plan, LlamaCppPlan):
        dockerfile, record, scripts = render_llamacpp_dockerfile(plan), llamacpp_record(plan), ("common", "llamacpp")
    else:
        dockerfile, record, scripts = render_dockerfile(plan), plan_record(plan), ("common", "engine")
    (context / "Dockerfile").write_text(dockerfile)
    (context / ".dockerignore").write_text(CONTEXT_IGNORE)
    (context / "plan.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    _copy_scripts(context, scripts)
    if plan.source.kind != "git":
        (context / "src").mkdir()
        target = context / "src" / "source.tar.gz"
        if plan.source.kind == "tarball":
            shutil.copyfile(plan.source.location, target)
        else:
            _deterministic_tarball(Path(plan.source.location), target)


def render(plan: BuildPlan | LlamaCppPlan, out_root: Path) -> RenderedContext:
    out_root = Path(out_root)
    final = out_root / context_name(plan.image_tag)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out_root))
    except OSError as exc:
        raise ApplianceError(f"cannot write build context under {out_root}: {exc.strerror}") from None
    try:
        _write_context(plan, staging)
        staging.chmod(0o755)
        # Keep an earlier context's secrets dir (mode 0700) out of the swap.
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=out_root))
            final.rename(retired / "ctx")
            staging.rename(final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ApplianceError(f"cannot write build context {final}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RenderedContext(directory=final, dockerfile=final / "Dockerfile", plan=plan)
