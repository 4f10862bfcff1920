"""Command line: `python build.py [build options]` builds; subcommands do the rest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import builder, detect, probe, recommend
from .errors import ApplianceError
from .matrix import load_matrix, DEFAULT_MATRIX_FILE
from .plan import FLASH_ATTN_MODES, NetworkOptions, make_plan
from .render import context_name, render

SUBCOMMANDS = ("build", "detect", "render")
EPILOG = """subcommands:
  detect    report the host's CPU, NUMA, RAM and GPUs and what to build
  render    write the build context (Dockerfile and scripts) without building
  build     render, then build the image (the default when no subcommand is given)

examples:
  python build.py detect
  python build.py --target auto
  python build.py --target amx --numa
  python build.py render --target avx2 --out build/
"""


def _add_matrix_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to build")
    group.add_argument("--target", default="auto",
                       help="CPU target: avx2, avx512, amx, or auto to detect this host (default: auto)")
    numa = group.add_mutually_exclusive_group()
    numa.add_argument("--numa", dest="numa", action="store_true", default=None,
                      help="build with NUMA support (dual-socket hosts; needs about twice the RAM)")
    numa.add_argument("--no-numa", dest="numa", action="store_false", help="build without NUMA support")
    group.add_argument("--line", help="KTransformers line (default: the target's, see targets.yaml)")
    group.add_argument("--cuda", help="CUDA version (default: the line's first)")
    group.add_argument("--ktransformers-src", metavar="PATH",
                       help="build from a local source directory or .tar.gz instead of the pinned git tag")
    group.add_argument("--cuda-arch", metavar="LIST",
                       help='TORCH_CUDA_ARCH_LIST, e.g. "8.9" or "8.6;9.0+PTX" (fewer archs compile faster)')
    group.add_argument("--jobs", type=int, help="parallel compile jobs; each can take GBs of RAM (default: 2)")
    group.add_argument("--flash-attn", choices=FLASH_ATTN_MODES, default="wheel",
                       help="wheel: install flash-attn (its prebuilt wheel, else a bounded compile); "
                            "skip: leave it out (default: wheel)")
    group.add_argument("--tag", help="image tag (default: from the tag scheme in targets.yaml)")
    group.add_argument("--out", default="build", metavar="DIR", help="where build contexts go (default: build)")
    group.add_argument("--targets-file", default=str(DEFAULT_MATRIX_FILE), help=argparse.SUPPRESS)


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("build environment")
    group.add_argument("--base-image", help="CUDA devel image to build in (default: nvidia/cuda per CUDA version)")
    group.add_argument("--runtime-base-image", help="CUDA runtime image to run on")
    group.add_argument("--pip-index-url", default="", help="pip index (mirror) URL; passed as a secret")
    group.add_argument("--apt-mirror", default="", help="Debian/Ubuntu mirror URL, e.g. http://mirrors.example/ubuntu")
    group.add_argument("--http-proxy", default="", help="HTTP proxy for the build; passed as a secret")
    group.add_argument("--https-proxy", default="", help="HTTPS proxy for the build; passed as a secret")
    group.add_argument("--no-proxy", default="", help="hosts that bypass the proxy")
    group.add_argument("--ca-cert", default="", metavar="FILE",
                       help="CA bundle of an intercepting proxy; mounted as a BuildKit secret, never stored")
    group.add_argument("--min-free-gb", type=float, default=30.0,
                       help="refuse to start with less free disk under Docker's root (default: 30)")
    group.add_argument("--dry-run", action="store_true", help="print the commands; write and build nothing")


def make_parser(command: str) -> argparse.ArgumentParser:
    if command == "detect":
        parser = argparse.ArgumentParser(prog="build.py detect", description="Report what this host is and what to build.")
        parser.add_argument("--json", action="store_true", help="machine-readable output; target and numa at top level")
        parser.add_argument("--from", dest="from_dir", metavar="DIR",
                            help="read captures (lscpu.txt, cpuinfo.txt, meminfo.txt, numa.txt, nvidia-smi.csv) "
                                 "instead of the live host")
        parser.add_argument("--targets-file", default=str(DEFAULT_MATRIX_FILE), help=argparse.SUPPRESS)
        return parser
    if command == "render":
        parser = argparse.ArgumentParser(prog="build.py render", description="Write a build context without building.")
        _add_matrix_options(parser)
        return parser
    parser = argparse.ArgumentParser(
        prog="build.py", description="Build KTransformers appliance images for this host's CPU.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_matrix_options(parser)
    _add_build_options(parser)
    return parser


def _host_facts(from_dir: str | None):
    return probe.probe_directory(Path(from_dir)) if from_dir else probe.probe_live()


def cmd_detect(args) -> int:
    matrix = load_matrix(Path(args.targets_file))
    facts = _host_facts(args.from_dir)
    rec = recommend.recommend(facts, matrix)
    print(detect.as_json(facts, rec) if args.json else detect.as_text(facts, rec, matrix))
    return 0


def _plan_from_args(args):
    matrix = load_matrix(Path(args.targets_file))
    target, numa = args.target, args.numa
    if target == "auto":
        rec = recommend.recommend(probe.probe_live(), matrix)
        if rec.target is None:
            raise ApplianceError("--target auto: " + (rec.reasons[0] if rec.reasons else "no supported target"))
        target = rec.target
        numa = rec.numa if numa is None else numa
        print(f"auto: target {target}, NUMA {'on' if numa else 'off'} ({'; '.join(rec.reasons)})", file=sys.stderr)
    selection = matrix.select(target, args.line, args.cuda, numa)
    network = NetworkOptions(
        pip_index_url=getattr(args, "pip_index_url", ""), apt_mirror=getattr(args, "apt_mirror", ""),
        http_proxy=getattr(args, "http_proxy", ""), https_proxy=getattr(args, "https_proxy", ""),
        no_proxy=getattr(args, "no_proxy", ""), ca_cert=getattr(args, "ca_cert", ""))
    if network.ca_cert and not Path(network.ca_cert).is_file():
        raise ApplianceError(f"--ca-cert {network.ca_cert}: no such file")
    return make_plan(
        selection, source=args.ktransformers_src, cuda_arch_list=args.cuda_arch,
        default_arch_list=matrix.torch_cuda_arch_list, jobs=args.jobs, default_jobs=matrix.default_jobs,
        flash_attn=args.flash_attn, base_image=getattr(args, "base_image", None),
        runtime_base_image=getattr(args, "runtime_base_image", None), network=network, tag=args.tag)


def cmd_render(args) -> int:
    plan = _plan_from_args(args)
    ctx = render(plan, Path(args.out))
    print(f"rendered {plan.image_tag} -> {ctx.directory}")
    return 0


def _build_args(plan) -> dict[str, str]:
    build_args = {}
    if plan.devel_image != plan.selection.cuda.devel_image:
        build_args["CUDA_DEVEL_IMAGE"] = plan.devel_image
    if plan.runtime_image != plan.selection.cuda.runtime_image:
        build_args["CUDA_RUNTIME_IMAGE"] = plan.runtime_image
    if plan.network.apt_mirror:
        build_args["APT_MIRROR"] = plan.network.apt_mirror
    return build_args


def cmd_build(args) -> int:
    plan = _plan_from_args(args)
    cli = builder.find_buildkit_cli()
    context = Path(args.out) / context_name(plan.image_tag)
    secrets = {}
    secret_env = plan.network.secret_env()
    if secret_env:
        secrets["network_env"] = context / "secrets" / "network.env"
    if plan.network.ca_cert:
        secrets["ca_cert"] = Path(plan.network.ca_cert).resolve()
    command = builder.build_command(cli, context=context, tag=plan.image_tag,
                                    build_args=_build_args(plan), secrets=secrets)
    if args.dry_run:
        print(f"# render {plan.image_tag} into {context}")
        print(command.shell_line())
        return 0
    info = builder.check_daemon()
    builder.check_disk(info, args.min_free_gb)
    ctx = render(plan, Path(args.out))
    builder.write_secret_env(ctx.directory, secret_env)
    replay = builder.save_replay(ctx.directory, command)
    print(f"building {plan.image_tag} from {ctx.directory} (replay: {replay})", file=sys.stderr)
    builder.run(command)
    print(f"built {plan.image_tag}")
    return 0


HANDLERS = {"detect": cmd_detect, "render": cmd_render, "build": cmd_build}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "build"
    if argv and argv[0] == command:
        argv = argv[1:]
    args = make_parser(command).parse_args(argv)
    try:
        return HANDLERS[command](args)
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
