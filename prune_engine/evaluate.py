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

import sys
from collections.abc import Mapping

import numpy as np

from . import metrics
from .data import EvalData, RetrievalTask, ScoredPairs, load_eval_data
from .embedder import Embedder, Encoded
from .encoding_cache import EncodingCache

REPORTED_RETRIEVAL = ("ndcg_at_10", "mrr_at_10", "recall_at_100")
MIXED_PREFIX = "pruned_queries_original_index/"
AGREEMENT = "mean_cosine_to_original"
# Figures in [0, 1]; every other figure is x100, as MTEB's leaderboard shows them.
FRACTION_FIGURES = (AGREEMENT,)


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


def encode_data(embedder: Embedder, data: EvalData, batch_size: int = 64,
                show_progress: bool = False, label: str = "", cache: EncodingCache | None = None) -> dict[str, Encoded]:
    """The parts of a data set a model encodes: both sides of STS pairs, or queries and documents.
    With a `cache` (of this very model), encodings it holds for these texts are read, not computed."""
    prefix = f"{label}: " if label else ""
    parts, all_outputs = data.parts(), data.kind == RetrievalTask.kind  # STS scores dense vectors only
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


def figures(data: EvalData, encoded: Mapping[str, Encoded]) -> dict[str, float]:
    if data.kind == ScoredPairs.kind:
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
    if data.kind == RetrievalTask.kind:
        mixed = retrieval_figures(data, pruned["queries"], original["documents"])
        result.update({MIXED_PREFIX + key: value for key, value in mixed.items()})
    return result


def evaluate(embedder: Embedder, data: EvalData, batch_size: int = 64,
             show_progress: bool = False) -> dict[str, float]:
    return figures(data, encode_data(embedder, data, batch_size, show_progress))


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
