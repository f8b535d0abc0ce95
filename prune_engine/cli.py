"""Command line: `python -m prune_engine {prune,eval,size} ...`, over the same engine the workbench uses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .accounting import Structure, size_report
from .config import ConfigError, load_config
from .presets import ORIGINAL_PRESETS, bge_m3_config


def _prune(args: argparse.Namespace) -> int:
    from .trainer import PruningRun

    overrides = list(args.overrides)
    for key in ("dataset", "model", "output_dir"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    run = PruningRun(config, show_progress=True)
    print(f"run directory: {run.run_dir.resolve()}", file=sys.stderr)
    result = run.run(resume=args.resume)
    if result.cancelled:
        print(f"cancelled; resume with: python -m prune_engine prune {args.config} --resume", file=sys.stderr)
        return 1
    info = json.loads((result.export_dir / "pruning_info.json").read_text())
    after, before = info["parameters_after"], info["parameters_before"]
    print(f"exported to {result.export_dir}")
    print(f"structure: {info['structure_description']}")
    print(f"parameters: {after['total']:,} of {before['total']:,} (encoder {after['encoder']:,} of {before['encoder']:,})")
    return 0


def format_size_table(rows: list[tuple[str, object]]) -> str:
    header = f"{'target':<28} {'total':>14} {'cut':>7} {'encoder':>14} {'enc cut':>8} {'FLOP speedup':>13}"
    lines = [header, "-" * len(header)]
    for name, report in rows:
        lines.append(
            f"{name:<28} {report.after.total:>14,} {report.total_reduction:>7.1%} {report.after.encoder:>14,} "
            f"{report.encoder_reduction:>8.1%} {report.predicted_speedup:>12.2f}x"
        )
    return "\n".join(lines)


def _size(args: argparse.Namespace) -> int:
    if args.model:
        from .sources import load_embedder

        config = load_embedder(args.model).config
    else:
        config = bge_m3_config()
    vocab = args.vocab or config.vocab_size
    rows = [("unpruned", size_report(config, Structure(tuple(config.heads_per_layer), tuple(config.intermediate_sizes), vocab), args.length))]
    if args.layers is not None:
        structure = Structure.uniform(args.layers, args.heads, args.ffn, vocab)
        rows.append((f"{args.layers}/{args.heads}/{args.ffn}", size_report(config, structure, args.length)))
    elif not args.model:
        for name, preset in ORIGINAL_PRESETS.items():
            structure = Structure.uniform(preset["n_layers"], preset["n_heads"], preset["intermediate_size"], vocab)
            rows.append((f"{name} claimed ({preset['n_layers']}/{preset['n_heads']}/{preset['intermediate_size']})",
                         size_report(config, structure, args.length)))
    print(format_size_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prune_engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="learn L0 masks with distillation, prune, export")
    prune.add_argument("config", help="YAML run configuration (see configs/)")
    prune.add_argument("--dataset", help="sts | sts-<lang> | msmarco | mteb/<task> | demo | a local file or folder")
    prune.add_argument("--model", help="hub id (BAAI/bge-m3), local directory, or 'minilm'")
    prune.add_argument("--output-dir", dest="output_dir", help="run directory")
    prune.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    prune.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key, e.g. optimizer.lr=1e-4")
    prune.set_defaults(handler=_prune)

    size = commands.add_parser("size", help="exact parameter and FLOP counts of a structure (no weights needed)")
    size.add_argument("--model", help="a model to count (default: BGE-M3's shape, no download)")
    size.add_argument("--layers", type=int)
    size.add_argument("--heads", type=int)
    size.add_argument("--ffn", type=int)
    size.add_argument("--vocab", type=int, help="vocabulary size after trimming")
    size.add_argument("--length", type=int, default=512, help="sequence length for FLOPs")
    size.set_defaults(handler=_size)

    from .evaluate import add_eval_command

    add_eval_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .export import ExportError
    from .sources import ModelSourceError
    from .targets import TargetError
    from .trainer import TrainingError

    parser = build_parser()
    # key=value overrides may come before or after options, which argparse's positionals do not allow.
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    if len(overrides) != len(extra) or (overrides and args.command != "prune"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "prune":
        args.overrides = list(args.overrides) + overrides
    if args.command == "size" and args.layers is not None and (args.heads is None or args.ffn is None):
        parser.error("--layers needs --heads and --ffn too")
    try:
        return args.handler(args)
    except (ConfigError, DataError, ModelSourceError, TargetError, TrainingError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_dir_or_model(path: str) -> tuple[str, Path | None]:
    """A run directory evaluates its export; anything else is a model source."""
    candidate = Path(path)
    if (candidate / "export" / "config.json").is_file():
        return str(candidate / "export"), candidate
    return path, None
