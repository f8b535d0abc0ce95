"""Command line: `python -m prune_engine {prune,eval,size} ...`, over the same engine the workbench uses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .accounting import Structure, size_report
from .config import ConfigError, load_config
from .data import DataError
from .encoding_cache import CACHE_ENV
from .export import ExportError
from .label_free import MAX_DISTRACTORS
from .presets import ORIGINAL_PRESETS, bge_m3_config
from .run_dir import TrainingError
from .sources import ModelSourceError
from .targets import TargetError

ENGINE_ERRORS = (ConfigError, DataError, ModelSourceError, TargetError, TrainingError, ExportError)


# --------------------------------------------------------------------------- prune


def _print_event(event) -> None:
    if event.kind == "warning":  # an error is printed once, by main, as the run's last line
        print(f"note: {event.message}", file=sys.stderr)


def _prune(args: argparse.Namespace) -> int:
    from .trainer import PruningRun

    values = {key: getattr(args, key) for key in ("dataset", "model", "output_dir", "documents")}
    overrides = [*args.overrides, *(["serving.onnx=true"] if args.onnx else [])]
    config = load_config(args.config, overrides, **values)
    run = PruningRun(config, show_progress=True, callbacks=[_print_event], allow_config_change=args.allow_config_change)
    print(f"run directory: {run.run_dir.resolve()}", file=sys.stderr)
    result = run.run(resume=args.resume)
    if result.cancelled:
        print(f"cancelled; resume with: python -m prune_engine prune {args.config} --resume", file=sys.stderr)
        return 1
    info = json.loads((result.export_dir / "pruning_info.json").read_text())
    after, before = info["parameters_after"], info["parameters_before"]
    report = result.run_dir / "report.txt"
    if report.is_file():
        print(report.read_text().rstrip())
    print(f"exported to {result.export_dir}")
    print(f"structure: {info['structure_description']}")
    print(f"parameters: {after['total']:,} of {before['total']:,} (encoder {after['encoder']:,} of {before['encoder']:,})")
    return 0


# --------------------------------------------------------------------------- size


def format_size_table(rows: list[tuple[str, object]]) -> str:
    header = f"{'target':<28} {'total':>14} {'cut':>7} {'encoder':>14} {'enc cut':>8} {'FLOP speedup':>13}"
    lines = [header, "-" * len(header)]
    for name, report in rows:
        lines.append(
            f"{name:<28} {report.after.total:>14,} {report.total_reduction:>7.1%} {report.after.encoder:>14,} "
            f"{report.encoder_reduction:>8.1%} {report.predicted_speedup:>12.2f}x"
        )
    return "\n".join(lines)


def _check_size_arguments(args: argparse.Namespace, config, parser: argparse.ArgumentParser) -> None:
    limits = {"--layers": (args.layers, 0, config.num_hidden_layers), "--heads": (args.heads, 1, max(config.heads_per_layer)),
              "--ffn": (args.ffn, 0, max(config.intermediate_sizes)), "--vocab": (args.vocab, 1, config.vocab_size),
              "--length": (args.length, 1, None)}
    for flag, (value, low, high) in limits.items():
        if value is not None and (value < low or (high is not None and value > high)):
            parser.error(f"{flag} {value} is outside what this model has: choose {low}..{high if high else 'any'}")


def _size(args: argparse.Namespace) -> int:
    if args.model:
        from .sources import read_encoder_config

        config = read_encoder_config(args.model)
    else:
        config = bge_m3_config()
    _check_size_arguments(args, config, args.parser)
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


# --------------------------------------------------------------------------- eval


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return int(text)


def run_dir_or_model(path: str) -> str:
    """A run directory evaluates its export; anything else is a model source."""
    candidate = Path(path)
    if (candidate / "export" / "config.json").is_file():
        return str(candidate / "export")
    return path


def _source_model(model_dir: str) -> str | None:
    """The model an export was pruned from, as its pruning_info.json names it."""
    info = Path(model_dir) / "pruning_info.json"
    return json.loads(info.read_text())["source_model"] if info.is_file() else None


def _documents_report(args, model, original) -> dict:
    from .label_free import held_out_task, label_free_report

    task = held_out_task(_held_out(args), max_distractors=args.documents_distractors)
    return label_free_report(original, model, task, args.batch_size, show_progress=True)


def _held_out(args):
    from .documents import load_documents, split_documents

    return split_documents(load_documents(args.documents), args.documents_held_out)


def _eval(args: argparse.Namespace) -> int:
    from .encoding_cache import EncodingCache
    from .evaluate import compare, format_report, score_report
    from .sources import load_embedder, resolve_model_dir

    if not (args.dataset or args.mteb or args.documents):
        raise DataError("eval needs --dataset, --documents, --mteb TASK, or a combination")
    splits = tuple(args.split)
    mteb_task = None
    if args.mteb:
        from .mteb_adapter import prepared_task

        mteb_task = prepared_task(args.mteb, splits, args.dataset)
    source = run_dir_or_model(args.model)
    original_source = args.against or _source_model(source)
    if args.documents and original_source is None:
        raise DataError("--documents compares a pruned model with its original: evaluate an export or a run, or "
                        "name the original with --against")
    load = lambda name: load_embedder(name, args.trust_remote_code, args.max_length)  # noqa: E731
    model = load(source)
    original = load(original_source) if original_source else None
    reports = []
    if mteb_task is not None:
        from .mteb_adapter import comparison_report

        reports.append(comparison_report(*mteb_task, model, original, args.batch_size))
    elif args.dataset and original is not None:
        cache = None if args.no_cache else EncodingCache(resolve_model_dir(original_source), original)
        reports.append(compare(original, model, args.dataset, splits, args.batch_size, show_progress=True,
                               original_cache=cache))
    elif args.dataset:
        reports.append(score_report(model, args.dataset, splits, args.batch_size, show_progress=True))
    if args.documents:
        reports.append(_documents_report(args, model, original))
    for report in reports:
        report.update(model=source, original=original_source,
                      max_length={"model": model.max_length, **({"original": original.max_length} if original else {})})
    result = reports[0] if len(reports) == 1 else {"reports": reports}
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print("\n".join(format_report(report) for report in reports))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"report written to {args.json}", file=sys.stderr)
    return 0


def _onnx(args: argparse.Namespace) -> int:
    """ONNX fp32 + int8 for an existing export or run, scored like a run's end when data is given."""
    from .finish import Evaluation, serving_variants
    from .label_free import held_out_task
    from .sources import load_embedder

    export_dir = Path(run_dir_or_model(args.model))
    original_source = args.against or _source_model(str(export_dir))
    if original_source is None:
        raise DataError(f"{export_dir} names no source model in a pruning_info.json: name the original with --against")
    task = held_out_task(_held_out(args), max_distractors=args.documents_distractors) if args.documents else None
    original = load_embedder(original_source, args.trust_remote_code)
    evaluation = Evaluation(original, args.dataset, tuple(args.split), task, args.batch_size)
    serving = serving_variants(export_dir, evaluation, args.threshold)
    for name, path in serving["onnx"]["files"].items():
        print(f"{name}: {path}")
    print(serving["quality_gate"]["decision"])
    return 0


EVAL_HELP = """Scores a model on STS or retrieval data; a pruned model (an export, or a run directory's
export) is compared with the model its pruning_info.json names, with the fraction it retained and
how well it can share the original's index. Figures are MTEB's (x100). Examples:
  python -m prune_engine eval minilm --dataset sts
  python -m prune_engine eval runs/my-run --dataset mteb/scifact --json report.json
  python -m prune_engine eval runs/my-run --documents corpus.jsonl   (label-free, on your documents)
  python -m prune_engine eval runs/my-run --mteb Banking77Classification   (needs the hub)
  python -m prune_engine eval runs/my-run --mteb SciFact --dataset mteb/scifact   (offline)
"""


# --------------------------------------------------------------------------- parser


def _add_prune(commands) -> None:
    prune = commands.add_parser("prune", help="learn L0 masks with distillation, prune, export")
    prune.add_argument("config", help="YAML run configuration (see configs/)")
    prune.add_argument("--documents", help="the texts the model will serve (.jsonl/.tsv/.csv/.txt/.parquet or a BEIR "
                                           "folder): distilled on, a held-out share measures what was kept")
    prune.add_argument("--dataset", help="task data: sts | sts-<lang> | msmarco | mteb/<task> | demo | a local file or folder")
    prune.add_argument("--model", help="hub id (BAAI/bge-m3), local directory, or 'minilm'")
    prune.add_argument("--output-dir", dest="output_dir", help="run directory")
    prune.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    prune.add_argument("--onnx", action="store_true",
                       help="also write ONNX fp32 and int8 beside the export, both scored; int8 recommended only when "
                            "it keeps 99%% of every fp32 figure (serving.int8_threshold)")
    prune.add_argument("--allow-config-change", dest="allow_config_change", action="store_true",
                       help="with --resume: continue even though settings that change the result differ from the run's")
    prune.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key, e.g. optimizer.lr=1e-4")
    prune.set_defaults(handler=_prune)


def _add_size(commands) -> None:
    size = commands.add_parser("size", help="exact parameter and FLOP counts of a structure (no weights needed)")
    size.add_argument("--model", help="a model to count (default: BGE-M3's shape, no download)")
    size.add_argument("--layers", type=int)
    size.add_argument("--heads", type=int)
    size.add_argument("--ffn", type=int)
    size.add_argument("--vocab", type=int, help="vocabulary size after trimming")
    size.add_argument("--length", type=int, default=512, help="sequence length for FLOPs")
    size.set_defaults(handler=_size, parser=size)


def _add_eval(commands) -> None:
    parser = commands.add_parser("eval", help="evaluate a model, an export or a run directory against its original",
                                 description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory, export directory, hub id or 'minilm'")
    parser.add_argument("--dataset", help="sts | sts-<lang> | mteb/scifact | msmarco | demo | a local file or BEIR folder")
    parser.add_argument("--documents", help="your documents: label-free retention on their held-out share (no labels)")
    parser.add_argument("--documents-held-out", dest="documents_held_out", type=float, default=0.05,
                        help="the share held out, as in the run's config (default 0.05)")
    parser.add_argument("--documents-distractors", dest="documents_distractors", type=_count, default=MAX_DISTRACTORS,
                        help=f"training documents sampled as distractors, as in the run's config (default {MAX_DISTRACTORS})")
    parser.add_argument("--mteb", metavar="TASK",
                        help="run this MTEB task (e.g. STSBenchmark, SciFact) through the mteb package; it loads its "
                             "own data from the hub unless --dataset gives local data for an STS or retrieval task. "
                             "Dense vectors only.")
    parser.add_argument("--split", nargs="+", default=["test"], help="split(s) to score (default: test)")
    parser.add_argument("--against", help="the original model to compare with (default: the export's source model)")
    parser.add_argument("--max-length", dest="max_length", type=int,
                        help="tokens per text (default: the model's declared max_seq_length, as MTEB and "
                             "sentence-transformers use it)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--no-cache", dest="no_cache", action="store_true",
                        help=f"encode the original again rather than reading its encodings of the same texts from "
                             f"${CACHE_ENV}/encodings (default ~/.cache/prune_engine/encodings)")
    parser.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true",
                        help="run the Python file a model's tokenizer_config.json names for its tokenizer "
                             "(auto_map.AutoTokenizer; transformers copies it into its module cache and imports "
                             "it); nothing else of the model's runs: the encoder is this tool's own code and the "
                             "config's module (config.json auto_map) is never imported. A pruning run reads "
                             "`trust_remote_code: true` from its config instead")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="also write the report as JSON to PATH; with no PATH, print JSON instead of the table")
    parser.set_defaults(handler=_eval)


def _add_onnx(commands) -> None:
    parser = commands.add_parser("onnx", help="write ONNX fp32 and int8 variants beside an export, with a quality gate")
    parser.add_argument("model", help="run directory or export directory")
    parser.add_argument("--dataset", help="score both variants on this data set (its --split)")
    parser.add_argument("--split", nargs="+", default=["test"])
    parser.add_argument("--documents", help="score both variants label-free on these documents' held-out share")
    parser.add_argument("--documents-held-out", dest="documents_held_out", type=float, default=0.05)
    parser.add_argument("--documents-distractors", dest="documents_distractors", type=_count, default=MAX_DISTRACTORS)
    parser.add_argument("--threshold", type=float, default=0.99, help="share of every fp32 figure int8 must keep")
    parser.add_argument("--against", help="the original model (default: the export's source model)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true")
    parser.set_defaults(handler=_onnx)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prune_engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_prune(commands)
    _add_eval(commands)
    _add_size(commands)
    _add_onnx(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
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
    except ENGINE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
