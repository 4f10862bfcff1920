"""`build.py configure` and the compose wrappers `up`, `down`, `status`.
Plain `docker compose` in compose/ works just as well: these only save typing."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from ktappliance.host import probe
from ktappliance.target import recommend
from ktappliance.models.catalogue import model_entry
from ktappliance.errors import ApplianceError, DockerError
from ktappliance.target.matrix import BACKENDS, DEFAULT_MATRIX_FILE, Matrix, Selection, load_matrix
from ktappliance.paths import COMPOSE_DIR
from ktappliance.host.probe import HostFacts
from ktappliance.models.fit import MAX_NEW_TOKENS, plan_fit
from ktappliance.stack.env import StackSettings, first_shard, write_stack_env


def add_configure_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stack settings (compose/.env)")
    group.add_argument("--model-dir", type=Path, default=Path("models"),
                       help="host directory with gguf/ and config/ (build.py model fetch --dir); default: ./models")
    group.add_argument("--model", default="deepseek-r1", help="catalogue model (default: %(default)s)")
    group.add_argument("--quant", default="UD-IQ1_S", help="catalogue quant (default: %(default)s)")
    group.add_argument("--gpus", help="all, none, or indexes like 0,1 (default: all if nvidia-smi sees GPUs)")
    group.add_argument("--bind", default="127.0.0.1", help="address the API and UI listen on (0.0.0.0 for the LAN)")
    group.add_argument("--api-port", type=int, default=10002)
    group.add_argument("--webui-port", type=int, default=3000)
    group.add_argument("--api-image", help="API image (default: from targets.yaml)")
    group.add_argument("--webui", choices=("official", "build"), default="official",
                       help="official: ghcr.io's Open-WebUI image (pinned); build: the one `build.py webui` makes "
                            "from PyPI, for hosts that cannot reach ghcr.io")
    group.add_argument("--webui-image", help="any other Open-WebUI image")
    group.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                       help="KTransformers: longest answer in tokens (default: %(default)s); with balance_serve "
                            "the plan fits max_new_tokens x requests at once into the KV cache")
    group.add_argument("--parallel", type=int, default=1, help="llama.cpp: requests served at once (slots)")
    group.add_argument("--ctx-size", type=int, default=8192, help="llama.cpp: context size")
    group.add_argument("--env-file", type=Path, help="where to write the settings (default: compose/.env)")


ENGINE_SETTINGS = (("KT_CPU_INFER", "cpu_infer"), ("KT_CACHE_LENS", "cache_lens"),
                   ("KT_MAX_NEW_TOKENS", "max_new_tokens"), ("KT_MAX_BATCH_SIZE", "max_batch_size"),
                   ("KT_CHUNK_SIZE", "chunk_size"), ("KT_KVC2_RAM_GB", "kvc2_ram_gb"))


def configure_stack(args, matrix: Matrix, *, engine: str, engine_image: str, target: str | None,
                    numa: bool, facts: HostFacts, selection: Selection | None = None) -> Path:
    """compose/.env for an engine image; selection: the KTransformers build it holds (None for llama.cpp)."""
    entry = model_entry(args.model)
    quant = entry.quant(args.quant)
    backend = selection.backend if selection else "single"
    if args.max_new_tokens < 1:
        raise ApplianceError(f"--max-new-tokens {args.max_new_tokens}: must be 1 or more")
    fit = plan_fit(facts, entry, quant.size_bytes, set(quant.needs_types), engine=engine,
                   line=selection.line if selection else None, numa=numa, amx_target=target == "amx",
                   backend=backend, max_new_tokens=args.max_new_tokens)
    if engine == "ktransformers":
        engine_env = {
            "KT_MODEL_PATH": "/models/config",
            "KT_GGUF_PATH": f"/models/gguf/{quant.directory}",
            "KT_MODEL_NAME": "DeepSeek-R1",
            "KT_BACKEND": backend,
            "KT_OPTIMIZE_RULE": str(fit.settings.get("optimize_rule", "DeepSeek-V3-Chat.yaml")),
            "KT_FORCE_THINK": "true",
            "KT_MAX_NEW_TOKENS": str(args.max_new_tokens),
        }
        for key, setting in ENGINE_SETTINGS:
            if setting in fit.settings:
                engine_env[key] = str(fit.settings[setting])
    else:
        fallback = f"/models/gguf/{quant.directory}/{next(iter(quant.files), quant.directory + '.gguf')}"
        engine_env = {
            "LLAMA_ARG_MODEL": first_shard(args.model_dir, fallback),
            "LLAMA_ARG_N_GPU_LAYERS": str(fit.settings.get("n_gpu_layers", 0)),
            "LLAMA_ARG_CTX_SIZE": str(args.ctx_size),
            "LLAMA_ARG_N_PARALLEL": str(args.parallel),
        }
        if "threads" in fit.settings:
            engine_env["LLAMA_ARG_THREADS"] = str(fit.settings["threads"])
    gpus = args.gpus or ("all" if facts.gpus else "none")
    settings = StackSettings(
        engine=engine, engine_image=engine_image, model_dir=args.model_dir,
        api_image=args.api_image or matrix.stack.api_image,
        webui_image=args.webui_image or (matrix.stack.webui_pypi_tag if args.webui == "build"
                                         else matrix.stack.webui_image),
        engine_env=engine_env, gpus=gpus, numa=numa and engine == "ktransformers", bind_address=args.bind,
        api_port=args.api_port, webui_port=args.webui_port,
        max_inflight=int(fit.settings.get("max_batch_size", 1)) if engine == "ktransformers" else max(1, args.parallel),
        reasoning_opened=engine == "llamacpp")
    return write_stack_env(settings, args.env_file)


def make_configure_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build.py configure",
                                     description="Write compose/.env for `docker compose up` (keys kept across runs).")
    parser.add_argument("--engine", choices=("ktransformers", "llamacpp"), default="ktransformers")
    parser.add_argument("--engine-image", help="engine image tag (default: the tag build.py would build)")
    parser.add_argument("--target", default="auto")
    parser.add_argument("--line")
    parser.add_argument("--backend", choices=BACKENDS, help="KTransformers serving backend (default: the line's)")
    parser.add_argument("--cpu-only", action="store_true", help="llamacpp: the CPU-only image")
    numa = parser.add_mutually_exclusive_group()
    numa.add_argument("--numa", dest="numa", action="store_true", default=None)
    numa.add_argument("--no-numa", dest="numa", action="store_false")
    parser.add_argument("--from", dest="from_dir", metavar="DIR", help="host captures instead of this host")
    parser.add_argument("--targets-file", default=str(DEFAULT_MATRIX_FILE), help=argparse.SUPPRESS)
    add_configure_options(parser)
    return parser


def cmd_configure(args) -> int:
    matrix = load_matrix(Path(args.targets_file))
    facts = probe.host_facts(args.from_dir)
    rec = recommend.recommend(facts, matrix)
    target = rec.target if args.target == "auto" else matrix.target(args.target).name
    if target is None:
        raise ApplianceError("no supported target for this CPU (it needs AVX2 and FMA)")
    numa = rec.numa if args.numa is None else args.numa
    selection = matrix.select(target, args.line, None, numa, args.backend) if args.engine == "ktransformers" else None
    image = args.engine_image
    if not image:
        if selection is None:
            cuda = None if args.cpu_only else matrix.lines[matrix.targets[target].default_line].default_cuda
            image = matrix.llamacpp.image_tag(target, cuda)
        else:
            image = selection.image_tag
    path = configure_stack(args, matrix, engine=args.engine, engine_image=image, target=target, numa=numa,
                           selection=selection, facts=facts)
    print(f"wrote {path} (mode 0600); start the stack with: {start_hint(path)}")
    return 0


def start_hint(env_file: Path) -> str:
    """A command that starts the stack from these settings, wherever they were written."""
    if env_file.resolve() == (COMPOSE_DIR / ".env").resolve():
        return f"cd {COMPOSE_DIR} && docker compose up -d"
    return f"cd {COMPOSE_DIR} && docker compose --env-file {env_file.resolve()} up -d (or: python build.py up --env-file {env_file})"


def compose(*arguments: str, env_file: Path | None = None) -> int:
    env_file = env_file or COMPOSE_DIR / ".env"
    if not env_file.is_file():
        raise ApplianceError(f"{env_file} not found: run python build.py --target T (or build.py configure) first")
    argv = ["docker", "compose", "--env-file", str(env_file), *arguments]
    try:
        return subprocess.run(argv, cwd=COMPOSE_DIR).returncode
    except FileNotFoundError:
        raise DockerError("docker not found: install Docker and its compose plugin") from None


def cmd_up(args) -> int:
    return compose("up", "-d", "--wait", env_file=args.env_file)


def cmd_down(args) -> int:
    return compose("down", env_file=args.env_file)


def cmd_status(args) -> int:
    return compose("ps", env_file=args.env_file)


def make_compose_parser(command: str) -> argparse.ArgumentParser:
    helps = {"up": "start the stack and wait until it is healthy", "down": "stop the stack (data is kept)",
             "status": "show the stack's containers"}
    parser = argparse.ArgumentParser(prog=f"build.py {command}", description=helps[command])
    parser.add_argument("--env-file", type=Path, help="settings file (default: compose/.env)")
    return parser
