"""AutoDL deliverables: the all-in-one image (engine + API + Open-WebUI under
supervisord), its `docker save` export, and the native bundle whose setup.sh
runs the same images/*/ install scripts inside an AutoDL instance."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ktappliance.image import builder
from ktappliance.errors import ApplianceError, DockerError
from ktappliance.paths import IMAGES_DIR, REPO_ROOT

BUNDLE_IMAGES = ("common", "engine", "llamacpp", "api", "webui", "autodl")


def aio_tag(engine_tag: str) -> str:
    repo, _, tag = engine_tag.rpartition(":")
    return f"ktappliance/autodl:{repo.rsplit('/', 1)[-1]}-{tag}"


def build_aio(cli: builder.BuildKitCli, *, engine: str, engine_image: str, webui_version: str,
              secrets: dict[str, Path], state_dir: Path, tag: str | None = None) -> tuple[str, builder.BuildCommand]:
    tag = tag or aio_tag(engine_image)
    build_args = {"ENGINE_IMAGE": engine_image, "KTA_ENGINE": engine, "WEBUI_VERSION": webui_version}
    command = builder.build_command(cli, context=REPO_ROOT, tag=tag, build_args=build_args, secrets=secrets,
                                    target=None, dockerfile=IMAGES_DIR / "autodl" / "Dockerfile")
    state_dir.mkdir(parents=True, exist_ok=True)
    builder.save_replay(state_dir, command)
    return tag, command


def export_image(tag: str, out_dir: Path) -> Path:
    """docker save | gzip, with its sha256 and a manifest, written under
    temporary names and renamed when complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = tag.replace("/", "_").replace(":", "_")
    archive = out_dir / f"{name}.tar.gz"
    partial = archive.with_name(f".{archive.name}.part")
    digest = hashlib.sha256()
    try:
        with subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE) as save, \
                open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for chunk in iter(lambda: save.stdout.read(1 << 20), b""):
                gz.write(chunk)
        if save.returncode != 0:
            raise DockerError(f"docker save {tag} failed (exit {save.returncode})")
        with open(partial, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        partial.replace(archive)
    except FileNotFoundError:
        raise DockerError("docker not found: install Docker") from None
    finally:
        partial.unlink(missing_ok=True)
    (out_dir / f"{archive.name}.sha256").write_text(f"{digest.hexdigest()}  {archive.name}\n")
    manifest = {"image": tag, "archive": archive.name, "sha256": digest.hexdigest(),
                "bytes": archive.stat().st_size, "load": f"gunzip -c {archive.name} | docker load"}
    (out_dir / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return archive


def _add_tree(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in info.name or info.name.endswith(".pyc"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info
    tar.add(str(source), arcname=arcname, filter=clean)


def write_bundle(out_dir: Path, *, engine: str, target: str, settings: dict[str, str],
                 extra_files: dict[str, Path] | None = None) -> Path:
    """A tarball with setup.sh at its top: the install scripts, the package
    source and the settings this bundle was made for."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = out_dir / f"ktappliance-autodl-{engine}-{target}.tar.gz"
    fd, partial_name = tempfile.mkstemp(prefix=f".{bundle.name}.", dir=out_dir)
    os.close(fd)
    partial = Path(partial_name)
    try:
        with tarfile.open(partial, "w:gz") as tar:
            top = "ktappliance-autodl"
            for image in BUNDLE_IMAGES:
                _add_tree(tar, IMAGES_DIR / image, f"{top}/images/{image}")
            _add_tree(tar, REPO_ROOT / "ktappliance", f"{top}/src/ktappliance")
            for name in ("pyproject.toml", "README.md"):
                _add_tree(tar, REPO_ROOT / name, f"{top}/src/{name}")
            tar.add(str(IMAGES_DIR / "autodl" / "setup.sh"), arcname=f"{top}/setup.sh")
            env = "".join(f"{key}={value}\n" for key, value in {"KTA_ENGINE": engine, **settings}.items())
            info = tarfile.TarInfo(f"{top}/bundle.env")
            info.size = len(env.encode())
            tar.addfile(info, io.BytesIO(env.encode()))
            for arcname, path in (extra_files or {}).items():
                tar.add(str(path), arcname=f"{top}/{arcname}")
        partial.replace(bundle)
    except OSError as exc:
        raise ApplianceError(f"cannot write the bundle under {out_dir}: {exc.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    return bundle


def copy_source_into(source: str | None, kind: str) -> dict[str, Path]:
    """A local engine source given to the build goes into the bundle too."""
    if not source:
        return {}
    path = Path(source)
    if path.is_file():
        return {f"sources/{kind}.tar.gz": path}
    raise ApplianceError(f"--{kind}-src {source}: the bundle takes a .tar.gz source")

