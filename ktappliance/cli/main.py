"""Command line: `python build.py [build options]` builds; subcommands do the rest."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ktappliance import __version__
from ktappliance.cli import detect
from ktappliance.cli import models as modelcli
from ktappliance.cli import stack as stackcli
from ktappliance.errors import ApplianceError
from ktappliance.host import probe
from ktappliance.image import builder
from ktappliance.image.plan import FLASH_ATTN_MODES, NetworkOptions, make_llamacpp_plan, make_plan
from ktappliance.image.render import context_name, render
from ktappliance.paths import IMAGES_DIR, REPO_ROOT
from ktappliance.stack import loadbench
from ktappliance.target import recommend
from ktappliance.target.matrix import BACKENDS, DEFAULT_MATRIX_FILE, Matrix, load_matrix

SUBCOMMANDS = ("build", "detect", "render", "api", "webui", "model", "plan", "configure", "up", "down", "status",
               "bench")
COMPONENTS = {
    # name: (Dockerfile under images/, default tag)
    "api": ("api/Dockerfile", f"ktappliance/api:{__version__}"),
    "webui": ("webui/Dockerfile", None),  # tag from targets.yaml (stack.webui_pypi_tag)
}
EPILOG = """subcommands:
  detect    report the host's CPU, NUMA, RAM and GPUs and what to build
  render    write the build context (Dockerfile and scripts) without building
  build     render, then build the image (the default when no subcommand is given)
  api       build the API service image (OpenAI-compatible front, port 10002)
  webui     build Open-WebUI from PyPI (for hosts that cannot pull ghcr.io)
  model     model fetch (ModelScope / Hugging Face) and model check (headers, shards, types)
  plan      RAM, VRAM and disk a model needs here, and the engine settings to use
  configure write compose/.env (builds do it too); then: cd compose && docker compose up -d
  up, down, status   docker compose up -d --wait / down / ps, from compose/
  bench     load the running stack like U users and report tokens/s, time to first token, errors

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
                       help="CPU target: avx2, avx512, avx512vnni, avx512bf16, amx, or auto to detect this host (default: auto)")
    numa = group.add_mutually_exclusive_group()
    numa.add_argument("--numa", dest="numa", action="store_true", default=None,
                      help="build with NUMA support (dual-socket hosts; needs about twice the RAM)")
    numa.add_argument("--no-numa", dest="numa", action="store_false", help="build without NUMA support")
    group.add_argument("--line", help="KTransformers line (default: the target's, see targets.yaml)")
    group.add_argument("--backend", choices=BACKENDS,
                       help="serving backend: balance_serve (several requests at once, v0.3.2) or single "
                            "(one at a time); default: the line's first in targets.yaml")
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
    group.add_argument("--cache-namespace", default="", metavar="NAME",
                       help="keep this build's BuildKit cache mounts (apt, pip, ccache) apart from the shared ones")
    group.add_argument("--targets-file", default=str(DEFAULT_MATRIX_FILE), help=argparse.SUPPRESS)


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("build environment")
    group.add_argument("--base-image", help="CUDA devel image to build in (default: nvidia/cuda per CUDA version)")
    group.add_argument("--runtime-base-image",
                       help="image the engine runs on (default: nvidia/cuda's -base for KTransformers, -runtime for llama.cpp)")
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
    if command == "configure":
        return stackcli.make_configure_parser()
    if command in ("up", "down", "status"):
        return stackcli.make_compose_parser(command)
    if command == "model":
        return modelcli.make_model_parser()
    if command == "plan":
        return modelcli.make_plan_parser()
    if command == "bench":
        return loadbench.make_parser()
    if command in COMPONENTS:
        parser = argparse.ArgumentParser(prog=f"build.py {command}", description=f"Build the {command} image.")
        default_tag = COMPONENTS[command][1] or load_matrix().stack.webui_pypi_tag
        parser.add_argument("--tag", default=default_tag, help="image tag (default: %(default)s)")
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
    stackcli.add_configure_options(parser)
    parser.add_argument("--no-configure", action="store_true", help="do not write compose/.env after the build")
    autodl = parser.add_argument_group("AutoDL")
    autodl.add_argument("--autodl", action="store_true",
                        help="also build the all-in-one image (engine + API + Open-WebUI under supervisord; UI 6006, API 6008)")
    autodl.add_argument("--export", action="store_true", help="with --autodl: docker save it to build/autodl/*.tar.gz "
                        "with its sha256 and a manifest")
    autodl.add_argument("--bundle", action="store_true", help="with --autodl: write the native bundle (setup.sh) "
                        "for an AutoDL instance instead of building images")
    return parser


def cmd_detect(args) -> int:
    matrix = load_matrix(Path(args.targets_file))
    facts = probe.host_facts(args.from_dir)
    rec = recommend.recommend(facts, matrix)
    print(detect.as_json(facts, rec, matrix) if args.json else detect.as_text(facts, rec, matrix))
    return 0


def _network_from_args(args) -> NetworkOptions:
    network = NetworkOptions(
        pip_index_url=getattr(args, "pip_index_url", ""), apt_mirror=getattr(args, "apt_mirror", ""),
        http_proxy=getattr(args, "http_proxy", ""), https_proxy=getattr(args, "https_proxy", ""),
        no_proxy=getattr(args, "no_proxy", ""), ca_cert=getattr(args, "ca_cert", ""))
    if network.ca_cert and not Path(network.ca_cert).is_file():
        raise ApplianceError(f"--ca-cert {network.ca_cert}: no such file")
    return network


def _plan_from_args(args, matrix: Matrix):
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
        if args.backend:
            raise ApplianceError("--backend is for KTransformers; llama.cpp serves several requests with --parallel")
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
    selection = matrix.select(target, args.line, args.cuda, numa, args.backend)
    if args.cache_namespace and not args.cache_namespace.replace("-", "").isalnum():
        raise ApplianceError(f"--cache-namespace {args.cache_namespace}: letters, digits and '-' only")
    return make_plan(
        selection, source=args.ktransformers_src, cuda_arch_list=args.cuda_arch,
        default_arch_list=matrix.torch_cuda_arch_list, jobs=args.jobs, default_jobs=matrix.default_jobs,
        flash_attn=args.flash_attn, base_image=getattr(args, "base_image", None),
        runtime_base_image=getattr(args, "runtime_base_image", None), network=network, tag=args.tag,
        cache_namespace=args.cache_namespace)


def cmd_render(args) -> int:
    plan = _plan_from_args(args, load_matrix(Path(args.targets_file)))
    ctx = render(plan, Path(args.out))
    print(f"rendered {plan.image_tag} -> {ctx.directory}")
    return 0


def _bundle_settings(plan, matrix: Matrix) -> dict[str, str]:
    values = {**plan.bundle_settings(), "KTA_TARGET": plan.target.name, "KT_REQUIRED_FLAGS": " ".join(plan.target.requires),
              "WEBUI_VERSION": matrix.stack.webui_version, "KTA_JOBS": str(plan.jobs)}
    return {k: shlex.quote(v) for k, v in values.items()}


def cmd_bundle(args, plan, matrix: Matrix) -> int:
    from ktappliance.image import autodl
    source = {"llamacpp": args.llamacpp_src, "ktransformers": args.ktransformers_src}[plan.engine]
    if args.dry_run:
        print(f"# write the AutoDL bundle for {plan.engine} {plan.target.name} into {Path(args.out) / 'autodl'}")
        return 0
    bundle = autodl.write_bundle(Path(args.out) / "autodl", engine=plan.engine, target=plan.target.name,
                                 settings=_bundle_settings(plan, matrix),
                                 extra_files=autodl.copy_source_into(source, plan.engine))
    print(f"wrote {bundle}: copy it to the instance, then: tar xzf {bundle.name} && sh ktappliance-autodl/setup.sh")
    return 0


def cmd_build(args) -> int:
    if (args.export or args.bundle) and not args.autodl:
        raise ApplianceError("--export and --bundle go with --autodl")
    matrix = load_matrix(Path(args.targets_file))
    plan = _plan_from_args(args, matrix)
    if args.bundle:
        return cmd_bundle(args, plan, matrix)
    cli = dry_run_cli() if args.dry_run else builder.find_buildkit_cli()
    context = Path(args.out) / context_name(plan.image_tag)
    secret_env = plan.network.secret_env()
    secrets = _secrets(plan.network, context)
    command = builder.build_command(cli, context=context, tag=plan.image_tag,
                                    build_args=plan.build_args(), secrets=secrets)
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
    builder.run(command, images=plan.base_images())
    print(f"built {plan.image_tag}")
    if args.autodl:
        from ktappliance.image import autodl
        aio, aio_command = autodl.build_aio(cli, engine=plan.engine, engine_image=plan.image_tag,
                                            webui_version=matrix.stack.webui_version,
                                            secrets=secrets, state_dir=Path(args.out) / "autodl")
        print(f"building {aio}", file=sys.stderr)
        builder.run(aio_command)
        print(f"built {aio}: on AutoDL, docker run -p 6006:6006 -p 6008:6008 -v /root/autodl-tmp:/root/autodl-tmp {aio}; "
              f"on other hosts publish on loopback only: -p 127.0.0.1:6006:6006 -p 127.0.0.1:6008:6008")
        if args.export:
            archive = autodl.export_image(aio, Path(args.out) / "autodl")
            print(f"exported {archive} (+ .sha256, manifest)")
    if not args.no_configure:
        path = stackcli.configure_stack(args, matrix, engine=plan.engine, engine_image=plan.image_tag,
                                        target=plan.target.name, numa=plan.numa, selection=plan.selection,
                                        facts=probe.host_facts())
        print(f"wrote {path}; start the stack with: {stackcli.start_hint(path)}")
    return 0


def dry_run_cli() -> builder.BuildKitCli:
    """A dry run needs no daemon and maybe no Docker: it says which CLI form
    it assumed when none is found here."""
    try:
        return builder.find_buildkit_cli()
    except ApplianceError as exc:
        print(f"# {exc}; showing the `docker buildx build` form", file=sys.stderr)
        return builder.BuildKitCli("docker", uses_buildx=True)


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
    if args.command == "webui":
        build_args["WEBUI_VERSION"] = load_matrix().stack.webui_version
    cli = dry_run_cli() if args.dry_run else builder.find_buildkit_cli()
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
    builder.run(command, images={"--base-image": args.base_image} if args.base_image else {})
    print(f"built {args.tag}")
    return 0


HANDLERS = {"detect": cmd_detect, "render": cmd_render, "build": cmd_build, "api": cmd_component,
            "webui": cmd_component,
            "model": modelcli.cmd_model, "plan": modelcli.cmd_plan, "configure": stackcli.cmd_configure,
            "up": stackcli.cmd_up, "down": stackcli.cmd_down, "status": stackcli.cmd_status,
            "bench": loadbench.cmd_bench}


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
