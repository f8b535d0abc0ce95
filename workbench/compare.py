"""The Evaluate and Similarity pages' engine side: the original against the pruned model on the
same texts, scored by the engine's evaluator (and, on the user's documents, its label-free
evaluation) and timed in turns."""

from __future__ import annotations

import time

import numpy as np

from prune_engine.atomic import write_json_atomic
from prune_engine.data import load_eval_data
from prune_engine.documents import HELD_OUT_SHARE, load_documents, split_documents
from prune_engine.embedder import Embedder
from prune_engine.encoding_cache import EncodingCache
from prune_engine.evaluate import compare
from prune_engine.label_free import MAX_DISTRACTORS, held_out_task, label_free_report
from prune_engine.sources import resolve_model_dir

from .runs import EVALUATION_FILE, RunRecord, WorkbenchError

SPEED_TEXTS = 256  # texts timed per model for the measured speedup


def measure_speedup(original: Embedder, pruned: Embedder, texts: list[str], batch_size: int = 32,
                    repeats: int = 5) -> dict:
    """Best wall-clock time of each model encoding the same texts, after a warm-up batch. The two
    are timed in turns, so a busy machine slows both alike rather than whichever ran second."""
    for model in (original, pruned):
        model.encode(texts[:batch_size], batch_size)
    best = {"original": float("inf"), "pruned": float("inf")}
    for _ in range(repeats):
        for name, model in (("original", original), ("pruned", pruned)):
            start = time.perf_counter()
            model.encode(texts, batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    return {"texts": len(texts), "batch_size": batch_size, "repeats": repeats, "original_s": best["original"],
            "pruned_s": best["pruned"], "speedup": best["original"] / max(best["pruned"], 1e-9)}


def evaluate_run(record: RunRecord, original: Embedder, pruned: Embedder, dataset: str | None = None,
                 documents: str | None = None, splits: tuple[str, ...] = ("test",), batch_size: int = 32) -> dict:
    """The evaluator's comparison on `dataset`, the label-free one on `documents` (their held-out
    share, as the run's config sets it: documents it never trained on), and a measured speedup;
    kept in the run dir. `original` is the run's model as loaded from its source: its encodings are
    cached on disk, so evaluating a second run pruned from it on the same data encodes only the
    pruned model."""
    if not (dataset or documents):
        raise WorkbenchError("give task data, documents, or both to evaluate on")
    config = record.config()
    split = None
    if documents:  # read and split first: a bad file is reported before any encoding
        split = split_documents(load_documents(documents), config.documents_held_out if config else HELD_OUT_SHARE)
    texts = load_eval_data(dataset, splits[0]).distinct_texts() if dataset else split.held_out.texts()
    cache = EncodingCache(resolve_model_dir(config.model), original) if config is not None else None
    result = {"dataset": dataset, "documents_source": documents, "created": time.time()}
    if dataset:
        result["report"] = compare(original, pruned, dataset, splits, batch_size, original_cache=cache)
    if split is not None:
        result["documents"] = label_free_report(original, pruned, held_out_task(split, max_distractors=config.documents_distractors if config else MAX_DISTRACTORS), batch_size, original_cache=cache)
    result["speed"] = measure_speedup(original, pruned, texts[:SPEED_TEXTS], batch_size)
    write_json_atomic(record.path / EVALUATION_FILE, result)
    return result


def evaluation_rows(report: dict) -> list[dict]:
    """The evaluator's report as table rows: split, metric, original, pruned, retained."""
    return [
        {"split": split, "metric": name, "original": row.get("original"), "pruned": row["pruned"],
         "retained": row.get("retained")}
        for split, block in report["splits"].items()
        for name, row in block["metrics"].items()
    ]


def similarity_matrix(embedder: Embedder, texts: list[str]) -> np.ndarray:
    vectors = embedder.encode(texts)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors @ vectors.T


def rank_passages(embedder: Embedder, query: str, passages: list[str]) -> list[tuple[int, float]]:
    """(passage index, cosine) best first."""
    scores = similarity_matrix(embedder, [query, *passages])[0, 1:]
    return [(int(i), float(scores[i])) for i in np.argsort(-scores, kind="stable")]
