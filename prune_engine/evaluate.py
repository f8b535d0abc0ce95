"""Evaluation: what a model scores, and what a pruned model kept of its original.

STS: Spearman of cosine similarity. Retrieval: nDCG@10, MRR@10, Recall@100 (and for BGE-M3 the
dense, sparse, multi-vector and combined scores). Index compatibility: how close the pruned
model's vectors are to the original's, and retrieval with pruned-model queries against an index
of original-model documents. The figures are MTEB's (see metrics.py); `--mteb` runs any MTEB task
through the `mteb` package itself (mteb_adapter.py).

Each model encodes each split once; every figure, the mixed ones included, comes from those vectors.
The `eval` command keeps the original's encodings in a disk cache (encoding_cache.py), so a second
candidate pruned from the same original costs only its own encodes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .data import DataError, RetrievalTask, ScoredPairs, load_eval_data
from .embedder import Embedder
from .encoding_cache import CACHE_ENV, EncodingCache

REPORTED_RETRIEVAL = ("ndcg_at_10", "mrr_at_10", "recall_at_100")
MIXED_PREFIX = "pruned_queries_original_index/"
AGREEMENT = "mean_cosine_to_original"
# Figures in [0, 1]; every other figure is x100, as MTEB's leaderboard shows them.
FRACTION_FIGURES = (AGREEMENT,)


@dataclass(frozen=True)
class Encoded:
    """One model's outputs for a list of texts. Sparse weights are keyed by token text, not id,
    so a model with a trimmed vocabulary can be scored against the original's index."""

    dense: np.ndarray
    sparse: list[dict[str, float]] | None = None
    colbert: list[np.ndarray] | None = None


def encode(embedder: Embedder, texts: list[str], batch_size: int = 64, show_progress: bool = False,
           description: str = "encode", all_outputs: bool = True) -> Encoded:
    """Dense vectors, and BGE-M3's sparse and multi-vector outputs when the model has them and
    `all_outputs` asks for them (retrieval does; STS scores dense vectors only)."""
    if not (all_outputs and embedder.has_multi_output):
        return Encoded(embedder.encode(texts, batch_size, show_progress, description))
    out = embedder.encode_multi(texts, batch_size, show_progress, description)
    sparse = None
    if out["sparse"][0] is not None:
        to_text = embedder.tokenizer.convert_ids_to_tokens
        sparse = [dict(zip(to_text(list(weights)), weights.values(), strict=True)) for weights in out["sparse"]]
    return Encoded(np.stack(out["dense"]), sparse, out["colbert"] if out["colbert"][0] is not None else None)


def encode_data(embedder: Embedder, data: ScoredPairs | RetrievalTask, batch_size: int = 64,
                show_progress: bool = False, label: str = "", cache: EncodingCache | None = None) -> dict[str, Encoded]:
    """The parts of a data set a model encodes: both sides of STS pairs, or queries and documents.
    With a `cache` (of this very model), encodings it holds for these texts are read, not computed."""
    prefix = f"{label}: " if label else ""
    if isinstance(data, ScoredPairs):
        parts, all_outputs = {"sentences 1": data.sentences1, "sentences 2": data.sentences2}, False
    elif isinstance(data, RetrievalTask):
        parts, all_outputs = {"queries": list(data.queries.values()), "documents": list(data.corpus.values())}, True
    else:
        raise TypeError(f"cannot evaluate on {type(data).__name__}")
    cached = cache.get(parts) if cache else None
    if cached is not None:
        if show_progress:
            print(f"{prefix}encodings read from the cache {cache.path_for(parts)}", file=sys.stderr)
        return cached
    encoded = {part: encode(embedder, texts, batch_size, show_progress, prefix + part, all_outputs)
               for part, texts in parts.items()}
    return cache.put(parts, encoded) if cache else encoded


def _ranked_figures(task: RetrievalTask, ranked: metrics.Ranking) -> dict[str, float]:
    scores = metrics.retrieval_metrics(ranked, task.qrels)
    return {key: scores[key] for key in REPORTED_RETRIEVAL}


def retrieval_figures(task: RetrievalTask, queries: Encoded, documents: Encoded) -> dict[str, float]:
    """Dense figures, and sparse / multi-vector / combined ones where both sides have those outputs."""
    query_ids, doc_ids = list(task.queries), list(task.corpus)
    result = _ranked_figures(task, metrics.rank_corpus(query_ids, queries.dense, doc_ids, documents.dense, k=100))
    modes = {}
    if queries.sparse is not None and documents.sparse is not None:
        modes["sparse"] = metrics.sparse_lexical_scores(queries.sparse, documents.sparse)
    if queries.colbert is not None and documents.colbert is not None:
        modes["colbert"] = metrics.colbert_scores(queries.colbert, documents.colbert)
    if len(modes) == 2:
        dense = metrics.retrieval_scores(queries.dense, documents.dense)
        modes["dense+sparse+colbert"] = metrics.combine_scores(dense, modes["sparse"], modes["colbert"])
    for mode, scores in modes.items():
        ranked = metrics.rank_from_scores(query_ids, doc_ids, scores, k=100)
        result.update({f"{mode}/{key}": value for key, value in _ranked_figures(task, ranked).items()})
    return result


def figures(data: ScoredPairs | RetrievalTask, encoded: Mapping[str, Encoded]) -> dict[str, float]:
    if isinstance(data, ScoredPairs):
        return {"spearman": metrics.sts_spearman(encoded["sentences 1"].dense, encoded["sentences 2"].dense, data.scores)}
    return retrieval_figures(data, encoded["queries"], encoded["documents"])


def compatibility_figures(data, original: Mapping[str, Encoded], pruned: Mapping[str, Encoded]) -> dict[str, float]:
    """Mean cosine over every encoded text, and for retrieval the pruned model's queries searched
    against the original's documents (can the pruned model share the original's index?)."""
    result = {
        AGREEMENT: metrics.embedding_agreement(
            np.concatenate([original[part].dense for part in original]),
            np.concatenate([pruned[part].dense for part in original]),
        )
    }
    if isinstance(data, RetrievalTask):
        mixed = retrieval_figures(data, pruned["queries"], original["documents"])
        result.update({MIXED_PREFIX + key: value for key, value in mixed.items()})
    return result


def evaluate(embedder: Embedder, data: ScoredPairs | RetrievalTask, batch_size: int = 64,
             show_progress: bool = False) -> dict[str, float]:
    return figures(data, encode_data(embedder, data, batch_size, show_progress))


evaluate_sts = evaluate  # the name tests/test_vocab.py imports


def retrieval_subset(task: RetrievalTask, n_queries: int, n_documents: int, seed: int = 0) -> RetrievalTask:
    """A smaller task for quick checks: `n_queries` judged queries, all their relevant documents,
    and random other documents up to `n_documents` (figures are not comparable with the full task's)."""
    rng = random.Random(seed)
    query_ids = sorted(rng.sample(sorted(task.qrels), min(n_queries, len(task.qrels))))
    relevant = dict.fromkeys(doc for q in query_ids for doc in task.qrels[q] if doc in task.corpus)
    others = [doc for doc in task.corpus if doc not in relevant]
    doc_ids = list(relevant) + rng.sample(others, max(0, min(n_documents - len(relevant), len(others))))
    return RetrievalTask(
        queries={q: task.queries[q] for q in query_ids},
        corpus={doc: task.corpus[doc] for doc in sorted(doc_ids)},
        qrels={q: task.qrels[q] for q in query_ids},
        source=f"{task.source}, {len(query_ids)} queries over {len(doc_ids)} documents",
    )


# --------------------------------------------------------------------------- reports


def comparison_rows(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, dict]:
    return {
        name: {"original": before[name], "pruned": after[name], "retained": after[name] / before[name] if before[name] else None}
        for name in before
    }


def compare(original: Embedder, pruned: Embedder, dataset: str, splits=("test",), batch_size: int = 64,
            show_progress: bool = False, original_cache: EncodingCache | None = None) -> dict:
    """Each figure for the original and the pruned model, with the fraction retained."""
    report = {"dataset": dataset, "splits": {}}
    for split in splits:
        data = load_eval_data(dataset, split)
        before = encode_data(original, data, batch_size, show_progress, "original", original_cache)
        after = encode_data(pruned, data, batch_size, show_progress, "pruned")
        rows = comparison_rows(figures(data, before), figures(data, after))
        rows.update({name: {"pruned": value} for name, value in compatibility_figures(data, before, after).items()})
        report["splits"][split] = {"source": data.source, "metrics": rows}
    return report


def score_report(embedder: Embedder, dataset: str, splits=("test",), batch_size: int = 64, show_progress: bool = False) -> dict:
    """One model's figures (no original to compare with)."""
    report = {"dataset": dataset, "splits": {}}
    for split in splits:
        data = load_eval_data(dataset, split)
        scores = evaluate(embedder, data, batch_size, show_progress)
        report["splits"][split] = {"source": data.source, "metrics": {k: {"score": v} for k, v in scores.items()}}
    return report


def _cell(name: str, column: str, value) -> str:
    if value is None:
        return ""
    if column == "retained":
        return f"{value:.1%}"
    return f"{value:.4f}" if name in FRACTION_FIGURES else f"{value:.2f}"


def format_report(report: dict) -> str:
    """A terminal table per split: the columns the rows have, of original / pruned / retained / score."""
    lines = []
    for split, block in report["splits"].items():
        rows = block["metrics"]
        columns = [c for c in ("original", "pruned", "retained", "score") if any(c in row for row in rows.values())]
        width = max([len("metric"), *map(len, rows)])
        lines.append(f"{report['dataset']} [{split}]  ({block['source']})")
        lines.append(f"  {'metric':<{width}} " + " ".join(f"{c:>9}" for c in columns))
        for name, row in rows.items():
            lines.append(f"  {name:<{width}} " + " ".join(f"{_cell(name, c, row.get(c)):>9}" for c in columns))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _source_model(model_dir: str) -> str | None:
    """The model an export was pruned from, as its pruning_info.json names it."""
    info = Path(model_dir) / "pruning_info.json"
    return json.loads(info.read_text())["source_model"] if info.is_file() else None


def _mteb_task(args, splits: tuple[str, ...]) -> tuple[object, str]:
    """The MTEB task with its data loaded (before any model, so a bad name or no network fails fast)."""
    from . import mteb_adapter

    task = mteb_adapter.get_task(args.mteb, splits)
    if args.dataset:
        mteb_adapter.use_local_data(task, {split: load_eval_data(args.dataset, split) for split in splits})
        return task, f"MTEB {args.mteb}, data from {args.dataset}"
    return mteb_adapter.load_own_data(task), f"MTEB {args.mteb}, its own data (hub, pinned revision)"


def _mteb_report(task, source: str, model: Embedder, original: Embedder | None, batch_size: int) -> dict:
    from . import mteb_adapter

    after = mteb_adapter.task_scores(model, task, batch_size, True, original.source if original else None)
    before = mteb_adapter.task_scores(original, task, batch_size, True) if original else None
    report = {"dataset": f"mteb:{task.metadata.name}", "splits": {}}
    for split, scores in after.items():
        rows = comparison_rows(before[split], scores) if before else {k: {"score": v} for k, v in scores.items()}
        report["splits"][split] = {"source": source, "metrics": rows}
    return report


def _eval_command(args: argparse.Namespace) -> int:
    from .cli import run_dir_or_model
    from .sources import load_embedder, resolve_model_dir

    if not (args.dataset or args.mteb):
        raise DataError("eval needs --dataset, --mteb TASK, or both (an MTEB task on local data)")
    splits = tuple(args.split)
    mteb_task = _mteb_task(args, splits) if args.mteb else None
    source, _ = run_dir_or_model(args.model)
    original_source = args.against or _source_model(source)
    load = lambda name: load_embedder(name, args.trust_remote_code, args.max_length)  # noqa: E731
    model = load(source)
    original = load(original_source) if original_source else None
    if mteb_task is not None:
        report = _mteb_report(*mteb_task, model, original, args.batch_size)
    elif original is not None:
        cache = None if args.no_cache else EncodingCache(resolve_model_dir(original_source), original)
        report = compare(original, model, args.dataset, splits, args.batch_size, show_progress=True, original_cache=cache)
    else:
        report = score_report(model, args.dataset, splits, args.batch_size, show_progress=True)
    report.update(model=source, original=original_source,
                  max_length={"model": model.max_length, **({"original": original.max_length} if original else {})})
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return 0
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"report written to {args.json}", file=sys.stderr)
    return 0


EVAL_HELP = """Scores a model on STS or retrieval data; a pruned model (an export, or a run directory's
export) is compared with the model its pruning_info.json names, with the fraction it retained and
how well it can share the original's index. Figures are MTEB's (x100). Examples:
  python -m prune_engine eval minilm --dataset sts
  python -m prune_engine eval runs/my-run --dataset mteb/scifact --json report.json
  python -m prune_engine eval runs/my-run --mteb Banking77Classification   (needs the hub)
  python -m prune_engine eval runs/my-run --mteb SciFact --dataset mteb/scifact   (offline)
"""


def add_eval_command(commands) -> None:
    parser = commands.add_parser("eval", help="evaluate a model, an export or a run directory against its original",
                                 description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory, export directory, hub id or 'minilm'")
    parser.add_argument("--dataset", help="sts | sts-<lang> | mteb/scifact | msmarco | demo | a local file or BEIR folder")
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
                        help="allow a hub model's own tokenizer code")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="also write the report as JSON to PATH; with no PATH, print JSON instead of the table")
    parser.set_defaults(handler=_eval_command)
