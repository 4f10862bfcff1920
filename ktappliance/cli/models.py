"""`build.py model fetch|check` and `build.py plan`: model files and what fits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ktappliance.host import probe
from ktappliance.target import recommend
from ktappliance.errors import ApplianceError
from ktappliance.target.matrix import BACKENDS, DEFAULT_MATRIX_FILE, load_matrix, supported_types, type_notes
from ktappliance.models.fit import MAX_NEW_TOKENS


def make_model_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build.py model", description="Fetch and check model files.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{fetch,check}")
    fetch = actions.add_parser("fetch", help="download GGUF shards and config files")
    fetch.add_argument("--model", default="deepseek-r1", help="catalogue model (default: %(default)s)")
    fetch.add_argument("--quant", default="UD-IQ1_S", help="catalogue quant (default: %(default)s)")
    fetch.add_argument("--repo", help="weights repository, for models not in the catalogue")
    fetch.add_argument("--include", help="file pattern in --repo, e.g. '*Q2_K_XL*'")
    fetch.add_argument("--config-repo", help="repository of config.json and tokenizer (default: the model's)")
    fetch.add_argument("--dir", required=True, type=Path, help="where to put gguf/ and config/")
    fetch.add_argument("--source", choices=("modelscope", "hf"), default="modelscope")
    check = actions.add_parser("check", help="check GGUF files (headers only) and the config directory")
    check.add_argument("path", type=Path, help="a .gguf file, the first shard, or the GGUF directory")
    check.add_argument("--config", type=Path, help="the config/tokenizer directory KTransformers reads")
    check.add_argument("--line", help="KTransformers line whose tensor types to allow (default: the newest)")
    check.add_argument("--engine", choices=("ktransformers", "llamacpp"), default="ktransformers")
    check.add_argument("--target", help="CPU target of the engine image (BF16 weights need avx512bf16 or amx)")
    check.add_argument("--arch", help="expected general.architecture (e.g. deepseek2)")
    check.add_argument("--json", action="store_true")
    check.add_argument("--targets-file", default=str(DEFAULT_MATRIX_FILE), help=argparse.SUPPRESS)
    return parser


def make_plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build.py plan", description="Will the model fit this host?")
    parser.add_argument("--from", dest="from_dir", metavar="DIR", help="host captures instead of this host")
    parser.add_argument("--model", default="deepseek-r1")
    parser.add_argument("--quant", default="UD-IQ1_S")
    parser.add_argument("--gguf", type=Path, help="size real files instead of the catalogue's figures")
    parser.add_argument("--engine", choices=("ktransformers", "llamacpp"), default="ktransformers")
    parser.add_argument("--target", default="auto")
    parser.add_argument("--line")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="KTransformers serving backend (default: the line's): balance_serve sizes the shared "
                             "KV cache and how many requests run at once")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                        help="longest answer in tokens (default: %(default)s)")
    numa = parser.add_mutually_exclusive_group()
    numa.add_argument("--numa", dest="numa", action="store_true", default=None)
    numa.add_argument("--no-numa", dest="numa", action="store_false")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--targets-file", default=str(DEFAULT_MATRIX_FILE), help=argparse.SUPPRESS)
    return parser


def cmd_model(args) -> int:
    from ktappliance.models import catalogue
    from ktappliance.models import fetch
    from ktappliance.models import modelcheck
    if args.action == "check":
        matrix = load_matrix(Path(args.targets_file))
        notes: dict[str, str] = {}
        if args.engine == "llamacpp":
            types, engine = None, "llama.cpp"
        else:
            line = matrix.lines[args.line] if args.line in matrix.lines else None
            if args.line and line is None:
                raise ApplianceError(f"unknown KTransformers line {args.line!r}; known lines: {', '.join(matrix.lines)}")
            line = line or list(matrix.lines.values())[-1]
            types, engine = set(line.quant_types), f"KTransformers {line.name}"
            if args.target:
                target = matrix.target(args.target)
                types, engine = set(supported_types(line, target)), f"{engine} for {target.name}"
                notes = type_notes(matrix, target)
        report = modelcheck.check_model(args.path, config_dir=args.config, supported_types=types,
                                        expected_arch=args.arch, engine=engine, type_notes=notes)
        if args.json:
            print(report.to_json())
        else:
            for problem in report.problems:
                print(problem.line(), file=sys.stderr)
            if report.ok:
                tensors = sum(s.tensor_count for s in report.shards)
                print(f"ok: {len(report.shards)} file(s), {tensors} tensors, "
                      f"types {', '.join(sorted({t for s in report.shards for t in s.types}))}")
        return 0 if report.ok else 1
    if args.repo:
        if not args.include:
            raise ApplianceError("--repo needs --include (the file pattern to download)")
        request = fetch.FetchRequest(args.repo, args.include, args.config_repo, ("*.safetensors",), args.dir,
                                     args.source)
    else:
        entry = catalogue.model_entry(args.model)
        quant = entry.quant(args.quant)
        request = fetch.FetchRequest(entry.weights_repo, quant.include, args.config_repo or entry.config_repo,
                                     entry.config_exclude, args.dir, args.source)
    weights_dir, config_dir = fetch.fetch(request)
    # The hubs keep their bookkeeping in hidden folders (.cache) next to the files.
    fetched = sorted(p for p in weights_dir.rglob("*.gguf")
                     if not any(part.startswith(".") for part in p.relative_to(weights_dir).parts))
    if not fetched:
        raise ApplianceError(f"nothing matching {request.include!r} was found in {request.weights_repo}")
    report = modelcheck.check_model(fetched[0].parent, config_dir=config_dir)
    for problem in report.problems:
        print(problem.line(), file=sys.stderr)
    print(f"fetched into {args.dir} ({'checked ok' if report.ok else 'check FAILED'})")
    return 0 if report.ok else 1


def cmd_plan(args) -> int:
    from ktappliance.models import catalogue
    from ktappliance.models import modelcheck
    from ktappliance.models import fit as sizing
    matrix = load_matrix(Path(args.targets_file))
    facts = probe.host_facts(args.from_dir)
    rec = recommend.recommend(facts, matrix)
    target = rec.target if args.target == "auto" else matrix.target(args.target).name
    numa = rec.numa if args.numa is None else args.numa
    entry = catalogue.model_entry(args.model)
    if args.gguf:
        report = modelcheck.check_model(args.gguf)
        if not report.shards:
            raise ApplianceError(f"--gguf {args.gguf}: " + (report.problems[0].line() if report.problems else "no GGUF"))
        weights = sum(s.file_size for s in report.shards)
        types = {t for s in report.shards for t in s.types}
        alternatives = {}
    else:
        quant = entry.quant(args.quant)
        weights, types = quant.size_bytes, set(quant.needs_types)
        alternatives = {name: q.size_bytes for name, q in entry.quants.items() if name != quant.name}
    selection = None
    if args.engine == "ktransformers":
        if target is None:
            raise ApplianceError("no supported target for this CPU (it needs AVX2 and FMA)")
        selection = matrix.select(target, args.line, None, numa, args.backend)
    elif args.backend:
        raise ApplianceError("--backend is for KTransformers; llama.cpp serves several requests with --parallel")
    if args.max_new_tokens < 1:
        raise ApplianceError(f"--max-new-tokens {args.max_new_tokens}: must be 1 or more")
    fit = sizing.plan_fit(facts, entry, weights, types, engine=args.engine,
                          line=selection.line if selection else None, numa=numa,
                          amx_target=target == "amx", alternatives=alternatives,
                          target=selection.target if selection else None,
                          type_notes=selection.type_notes if selection else {},
                          backend=selection.backend if selection else "single",
                          max_new_tokens=args.max_new_tokens)
    print(fit.to_json() if args.json else fit.to_text())
    return 0
