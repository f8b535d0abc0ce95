"""Evaluation: what a model scores, and what a pruned model kept of its original.

STS: Spearman of cosine similarity. Retrieval: nDCG@10, MRR@10, Recall@100 (and for BGE-M3 the
dense, sparse, multi-vector and combined scores). Index compatibility: how close the pruned
model's vectors are to the original's, and retrieval with pruned-model queries against an index
of original-model documents.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import metrics
from .data import RetrievalTask, ScoredPairs, load_eval_data
from .embedder import Embedder

REPORTED_RETRIEVAL = ("ndcg_at_10", "mrr_at_10", "recall_at_100")


def evaluate_sts(embedder: Embedder, pairs: ScoredPairs, batch_size: int = 64, show_progress: bool = False) -> dict:
    first = embedder.encode(pairs.sentences1, batch_size, show_progress, "sentences 1")
    second = embedder.encode(pairs.sentences2, batch_size, show_progress, "sentences 2")
    return {"spearman": metrics.sts_spearman(first, second, pairs.scores)}


def _pick(scores: dict) -> dict:
    return {key: scores[key] for key in REPORTED_RETRIEVAL}


def evaluate_retrieval(
    embedder: Embedder,
    task: RetrievalTask,
    batch_size: int = 64,
    show_progress: bool = False,
    document_encoder: Embedder | None = None,
) -> dict:
    """Dense retrieval scores; with `document_encoder`, documents come from that model (the old index)."""
    query_ids, doc_ids = list(task.queries), list(task.corpus)
    query_texts = [task.queries[i] for i in query_ids]
    doc_texts = [task.corpus[i] for i in doc_ids]
    if embedder.has_multi_output and document_encoder is None:
        queries = embedder.encode_multi(query_texts, batch_size, show_progress, "queries")
        docs = embedder.encode_multi(doc_texts, batch_size, show_progress, "documents")
        dense = metrics.retrieval_scores(np.stack(queries["dense"]), np.stack(docs["dense"]))
        modes = {"dense": dense}
        if queries["sparse"][0] is not None:
            modes["sparse"] = metrics.sparse_lexical_scores(queries["sparse"], docs["sparse"])
        if queries["colbert"][0] is not None:
            modes["colbert"] = metrics.colbert_scores(queries["colbert"], docs["colbert"])
        if len(modes) == 3:
            modes["dense+sparse+colbert"] = metrics.combine_scores(modes["dense"], modes["sparse"], modes["colbert"])
        result = {}
        for mode, scores in modes.items():
            ranked = metrics.rank_from_scores(query_ids, doc_ids, scores, k=100)
            scored = _pick(metrics.retrieval_metrics(ranked, task.qrels))
            result.update(scored if mode == "dense" else {f"{mode}/{k}": v for k, v in scored.items()})
        return result
    query_emb = embedder.encode(query_texts, batch_size, show_progress, "queries")
    doc_emb = (document_encoder or embedder).encode(doc_texts, batch_size, show_progress, "documents")
    ranked = metrics.rank_corpus(query_ids, query_emb, doc_ids, doc_emb, k=100)
    return _pick(metrics.retrieval_metrics(ranked, task.qrels))


def evaluate(embedder: Embedder, data, batch_size: int = 64, show_progress: bool = False) -> dict:
    if isinstance(data, ScoredPairs):
        return evaluate_sts(embedder, data, batch_size, show_progress)
    if isinstance(data, RetrievalTask):
        return evaluate_retrieval(embedder, data, batch_size, show_progress)
    raise TypeError(f"cannot evaluate on {type(data).__name__}")


def index_compatibility(original: Embedder, pruned: Embedder, data, batch_size: int = 64, show_progress: bool = False) -> dict:
    """Mean cosine between the two models' vectors of the same texts, and (for retrieval) the
    pruned model's queries searched against the original's document vectors."""
    if isinstance(data, ScoredPairs):
        texts = list(dict.fromkeys(data.sentences1 + data.sentences2))[:2000]
    else:
        texts = list(data.queries.values())[:1000]
    result = {
        "mean_cosine_to_original": metrics.embedding_agreement(
            original.encode(texts, batch_size, show_progress, "original"),
            pruned.encode(texts, batch_size, show_progress, "pruned"),
        )
    }
    if isinstance(data, RetrievalTask):
        mixed = evaluate_retrieval(pruned, data, batch_size, show_progress, document_encoder=original)
        result.update({f"pruned_queries_original_index/{k}": v for k, v in mixed.items()})
    return result


def compare(original: Embedder, pruned: Embedder, dataset: str, splits=("test",), batch_size: int = 64,
            show_progress: bool = False) -> dict:
    """Each figure for the original and the pruned model, with the fraction retained."""
    report = {"dataset": dataset, "splits": {}}
    for split in splits:
        data = load_eval_data(dataset, split)
        before = evaluate(original, data, batch_size, show_progress)
        after = evaluate(pruned, data, batch_size, show_progress)
        rows = {
            name: {"original": before[name], "pruned": after[name], "retained": after[name] / before[name] if before[name] else None}
            for name in before
        }
        rows.update({name: {"pruned": value} for name, value in index_compatibility(original, pruned, data, batch_size, show_progress).items()})
        report["splits"][split] = {"source": data.source, "metrics": rows}
    return report


def format_report(report: dict) -> str:
    lines = []
    for split, block in report["splits"].items():
        lines.append(f"{report['dataset']} [{split}]  ({block['source']})")
        lines.append(f"  {'metric':<48} {'original':>9} {'pruned':>9} {'retained':>9}")
        for name, row in block["metrics"].items():
            original = f"{row['original']:9.2f}" if "original" in row else " " * 9
            retained = f"{row['retained']:9.1%}" if row.get("retained") is not None else " " * 9
            pruned = row["pruned"]
            pruned_text = f"{pruned:9.4f}" if abs(pruned) <= 1.0 else f"{pruned:9.2f}"
            lines.append(f"  {name:<48} {original} {pruned_text} {retained}")
    return "\n".join(lines)


def _eval_command(args: argparse.Namespace) -> int:
    from .cli import run_dir_or_model
    from .sources import load_embedder

    source, run_dir = run_dir_or_model(args.model)
    model = load_embedder(source, trust_remote_code=True)
    original_source = args.against
    if original_source is None and (Path(source) / "pruning_info.json").is_file():
        original_source = json.loads((Path(source) / "pruning_info.json").read_text())["source_model"]
    splits = tuple(args.split)
    if original_source:
        report = compare(load_embedder(original_source), model, args.dataset, splits, args.batch_size, True)
    else:
        report = {"dataset": args.dataset, "splits": {}}
        for split in splits:
            data = load_eval_data(args.dataset, split)
            scores = evaluate(model, data, args.batch_size, True)
            report["splits"][split] = {"source": data.source, "metrics": {k: {"pruned": v} for k, v in scores.items()}}
    report["model"] = source
    report["original"] = original_source
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"report written to {args.json}", file=sys.stderr)
    return 0


def add_eval_command(commands) -> None:
    parser = commands.add_parser("eval", help="evaluate a model, an export or a run directory")
    parser.add_argument("model", help="run directory, export directory, hub id or 'minilm'")
    parser.add_argument("--dataset", required=True, help="sts | sts-<lang> | mteb/scifact | msmarco | demo | a local file or BEIR folder")
    parser.add_argument("--split", nargs="+", default=["test"], help="split(s) to score (default: test)")
    parser.add_argument("--against", help="the original model to compare with (default: the export's source model)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--json", help="also write the report as JSON here")
    parser.set_defaults(handler=_eval_command)
