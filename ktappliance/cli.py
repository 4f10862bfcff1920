"""Command line: `python build.py [build options]` builds; subcommands do the rest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, builder, detect, probe, recommend
from .paths import IMAGES_DIR, REPO_ROOT
from .errors import ApplianceError
from .matrix import load_matrix, DEFAULT_MATRIX_FILE
from .plan import FLASH_ATTN_MODES, LlamaCppPlan, NetworkOptions, make_llamacpp_plan, make_plan
from .render import context_name, render

SUBCOMMANDS = ("build", "detect", "render", "api")
COMPONENTS = {
    # name: (Dockerfile under images/, default tag)
    "api": ("api/Dockerfile", f"ktappliance/api:{__version__}"),
}
EPILOG = """subcommands:
  detect    report the host's CPU, NUMA, RAM and GPUs and what to build
  render    write the build context (Dockerfile and scripts) without building
  build     render, then build the image (the default when no subcommand is given)
  api       build the API service image (OpenAI-compatible front, port 10002)

examples:
  python build.py detect
  python build.py --target auto
  python build.py --target amx --numa
  python build.py render --target avx2 --out build/
"""


def _add_matrix_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to build")
    group.add_argument("--engine", choices=("ktransformers", "llamacpp"), default="ktransformers",
                       help="ktransformers (default) or llamacpp (llama.cpp's server, Unsloth's recipe)")
    group.add_argument("--target", default="auto",
                       help="CPU target: avx2, avx512, amx, or auto to detect this host (default: auto)")
    numa = group.add_mutually_exclusive_group()
    numa.add_argument("--numa", dest="numa", action="store_true", default=None,
                      help="build with NUMA support (dual-socket hosts; needs about twice the RAM)")
    numa.add_argument("--no-numa", dest="numa", action="store_false", help="build without NUMA support")
    group.add_argument("--line", help="KTransformers line (default: the target's, see targets.yaml)")
    group.add_argument("--cuda", help="CUDA version (default: the line's first)")
    group.add_argument("--cpu-only", action="store_true", help="llamacpp: build without CUDA, for hosts with no GPU")
    group.add_argument("--ktransformers-src", metavar="PATH",
                       help="build from a local source directory or .tar.gz instead of the pinned git tag")
    group.add_argument("--llamacpp-src", metavar="PATH",
                       help="llamacpp: a local llama.cpp tree or a .tar.gz holding one (e.g. llama-cpp-python's sdist)")
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
    if command in COMPONENTS:
        parser = argparse.ArgumentParser(prog=f"build.py {command}", description=f"Build the {command} image.")
        parser.add_argument("--tag", default=COMPONENTS[command][1], help="image tag (default: %(default)s)")
        _add_build_options(parser)
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


def _network_from_args(args) -> NetworkOptions:
    network = NetworkOptions(
        pip_index_url=getattr(args, "pip_index_url", ""), apt_mirror=getattr(args, "apt_mirror", ""),
        http_proxy=getattr(args, "http_proxy", ""), https_proxy=getattr(args, "https_proxy", ""),
        no_proxy=getattr(args, "no_proxy", ""), ca_cert=getattr(args, "ca_cert", ""))
    if network.ca_cert and not Path(network.ca_cert).is_file():
        raise ApplianceError(f"--ca-cert {network.ca_cert}: no such file")
    return network


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
    network = _network_from_args(args)
    if args.engine == "llamacpp":
        if args.cpu_only and args.cuda:
            raise ApplianceError("--cpu-only and --cuda exclude each other")
        chosen = matrix.target(target)
        cuda = None if args.cpu_only else matrix.cuda_base(
            args.cuda or matrix.lines[chosen.default_line].default_cuda)
        return make_llamacpp_plan(
            chosen, matrix.llamacpp, cuda, source=args.llamacpp_src, jobs=args.jobs,
            default_jobs=matrix.default_jobs, cuda_architectures=args.cuda_arch,
            base_image=getattr(args, "base_image", None),
            runtime_base_image=getattr(args, "runtime_base_image", None), network=network, tag=args.tag)
    for option, value in (("--cpu-only", args.cpu_only), ("--llamacpp-src", args.llamacpp_src)):
        if value:
            raise ApplianceError(f"{option} is for --engine llamacpp")
    selection = matrix.select(target, args.line, args.cuda, numa)
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
    """The Dockerfile's ARG defaults stay the real images; the plan's choices are
    passed explicitly so that the saved command replays exactly this build."""
    build_args = {}
    if isinstance(plan, LlamaCppPlan):
        build_args["BUILD_IMAGE"] = plan.build_image
        build_args["RUNTIME_IMAGE"] = plan.runtime_image
    else:
        build_args["CUDA_DEVEL_IMAGE"] = plan.devel_image
        build_args["CUDA_RUNTIME_IMAGE"] = plan.runtime_image
    if plan.network.apt_mirror:
        build_args["APT_MIRROR"] = plan.network.apt_mirror
    return build_args


def cmd_build(args) -> int:
    plan = _plan_from_args(args)
    cli = builder.find_buildkit_cli()
    context = Path(args.out) / context_name(plan.image_tag)
    secret_env = plan.network.secret_env()
    secrets = _secrets(plan.network, context)
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


def _secrets(network: NetworkOptions, secret_dir: Path) -> dict[str, Path]:
    secrets = {}
    if network.secret_env():
        secrets["network_env"] = secret_dir / "secrets" / "network.env"
    if network.ca_cert:
        secrets["ca_cert"] = Path(network.ca_cert).resolve()
    return secrets


def cmd_component(args) -> int:
    """Images built straight from a Dockerfile under images/ with the
    repository as context (no per-target rendering needed)."""
    dockerfile = IMAGES_DIR / COMPONENTS[args.command][0]
    network = _network_from_args(args)
    state_dir = REPO_ROOT / "build" / f"{args.command}-image"
    build_args = {"BASE_IMAGE": args.base_image} if args.base_image else {}
    if network.apt_mirror:
        build_args["APT_MIRROR"] = network.apt_mirror
    cli = builder.find_buildkit_cli()
    command = builder.build_command(cli, context=REPO_ROOT, tag=args.tag, build_args=build_args,
                                    secrets=_secrets(network, state_dir), target=None, dockerfile=dockerfile)
    if args.dry_run:
        print(command.shell_line())
        return 0
    builder.check_disk(builder.check_daemon(), args.min_free_gb)
    state_dir.mkdir(parents=True, exist_ok=True)
    builder.write_secret_env(state_dir, network.secret_env())
    replay = builder.save_replay(state_dir, command)
    print(f"building {args.tag} (replay: {replay})", file=sys.stderr)
    builder.run(command)
    print(f"built {args.tag}")
    return 0


HANDLERS = {"detect": cmd_detect, "render": cmd_render, "build": cmd_build, "api": cmd_component}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "build"
    if argv and argv[0] == command:
        argv = argv[1:]
    args = make_parser(command).parse_args(argv)
    args.command = command
    try:
        return HANDLERS[command](args)
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
