"""Model-independent scoring of sentence embeddings: STS, retrieval, BGE-M3 hybrid scores.

Everything here works on numpy arrays (or BGE-M3's sparse/multi-vector outputs), so the
evaluator can score a teacher, a pruned student or any other encoder the same way, and the
figures line up with what MTEB publishes (STS ``cosine_spearman``, retrieval via pytrec_eval).
Scores are reported x100, as on the MTEB leaderboard.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import numpy as np
import scipy.sparse
from scipy.stats import spearmanr

Ranking = dict[str, list[tuple[str, float]]]
Qrels = Mapping[str, Mapping[str, int]]


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Float32 rows of unit length, so a dot product is a cosine whatever the encoder returned."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def sts_spearman(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> float:
    """Spearman x100 between the cosine of each row pair and the gold scores (MTEB's ``cosine_spearman``)."""
    cosines = np.sum(_unit_rows(emb1) * _unit_rows(emb2), axis=1)
    return float(spearmanr(np.asarray(gold, dtype=np.float64), cosines).statistic) * 100


def embedding_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between row i of ``a`` and row i of ``b``.

    Tells whether a student can share the teacher's index: 1.0 means its embeddings of the
    same texts point the same way, so documents embedded by one can be searched with the other.
    """
    return float(np.mean(np.sum(_unit_rows(a) * _unit_rows(b), axis=1)))


def _similarity_inputs(
    query_emb: np.ndarray, doc_emb: np.ndarray, similarity: Literal["cosine", "dot"]
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 copies ready for a dot product; unit rows for cosine."""
    if similarity == "cosine":
        return _unit_rows(query_emb), _unit_rows(doc_emb)
    if similarity == "dot":
        return np.asarray(query_emb, dtype=np.float32), np.asarray(doc_emb, dtype=np.float32)
    raise ValueError(f"similarity must be 'cosine' or 'dot', not {similarity!r}")


def retrieval_scores(
    query_emb: np.ndarray, doc_emb: np.ndarray, similarity: Literal["cosine", "dot"] = "cosine"
) -> np.ndarray:
    """(n_queries, n_docs) float32 score matrix.

    The matrix is the only large allocation (1000 x 100k = 400 MB); ``rank_corpus`` calls this
    on query chunks so a big corpus never needs the whole matrix.
    """
    query_emb, doc_emb = _similarity_inputs(query_emb, doc_emb, similarity)
    return query_emb @ doc_emb.T


def top_k(scores: np.ndarray, k: int, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's ``k`` best scores, best first.

    Ties among the kept scores come lowest column first. Works on row chunks because
    argpartition makes an int64 copy of its input (8 bytes per score).
    """
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    indices = np.empty((scores.shape[0], k), dtype=np.int64)
    for start in range(0, scores.shape[0], chunk_size):
        chunk = scores[start : start + chunk_size]
        candidates = np.sort(np.argpartition(-chunk, k - 1, axis=1)[:, :k], axis=1)
        order = np.argsort(-np.take_along_axis(chunk, candidates, axis=1), axis=1, kind="stable")
        indices[start : start + chunk_size] = np.take_along_axis(candidates, order, axis=1)
    return indices, np.take_along_axis(scores, indices, axis=1)


def rank_from_scores(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, k: int = 100
) -> Ranking:
    """Top-``k`` (doc id, score) list per query from a score matrix (dense, sparse, ColBERT or combined)."""
    indices, values = top_k(scores, k)
    return {
        query_id: [(doc_ids[i], float(v)) for i, v in zip(row_indices, row_values, strict=True)]
        for query_id, row_indices, row_values in zip(query_ids, indices, values, strict=True)
    }


def rank_corpus(
    query_ids: Sequence[str],
    query_emb: np.ndarray,
    doc_ids: Sequence[str],
    doc_emb: np.ndarray,
    k: int = 100,
    similarity: Literal["cosine", "dot"] = "cosine",
    query_chunk_size: int = 256,
) -> Ranking:
    """Dense retrieval of the top ``k`` documents per query, scoring ``query_chunk_size`` queries at a time."""
    query_emb, doc_emb = _similarity_inputs(query_emb, doc_emb, similarity)
    ranked: Ranking = {}
    for start in range(0, len(query_ids), query_chunk_size):
        stop = start + query_chunk_size
        scores = retrieval_scores(query_emb[start:stop], doc_emb, similarity="dot")
        ranked.update(rank_from_scores(query_ids[start:stop], doc_ids, scores, k))
    return ranked


def _query_metrics(ranked_docs: list[str], judgements: Mapping[str, int], k: int) -> dict[str, float]:
    """nDCG, AP, reciprocal rank and recall at ``k`` for one query, as trec_eval defines them."""
    relevant = {doc_id for doc_id, rel in judgements.items() if rel > 0}
    cut = ranked_docs[:k]
    dcg = sum(max(judgements.get(doc_id, 0), 0) / math.log2(rank + 1) for rank, doc_id in enumerate(cut, 1))
    ideal_gains = sorted((rel for rel in judgements.values() if rel > 0), reverse=True)[:k]
    ideal_dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal_gains, 1))
    hit_ranks = [rank for rank, doc_id in enumerate(cut, 1) if doc_id in relevant]
    return {
        "ndcg": dcg / ideal_dcg,
        "map": sum(hits / rank for hits, rank in enumerate(hit_ranks, 1)) / len(relevant),
        "mrr": 1 / hit_ranks[0] if hit_ranks else 0.0,
        "recall": len(hit_ranks) / len(relevant),
    }


def retrieval_metrics(
    ranked: Mapping[str, Sequence[tuple[str, float]]],
    qrels: Qrels,
    ks: Sequence[int] = (10, 100),
    ignore_identical_ids: bool = False,
) -> dict[str, float]:
    """nDCG, MAP, MRR and recall at each k, x100, keyed like MTEB's results (``ndcg_at_10``).

    Matches pytrec_eval / MTEB: documents are re-sorted by score, ties broken by doc id
    descending (trec_eval's order); nDCG uses the relevance grade as gain and log2(rank + 1) as
    discount, against the ideal ranking of all judged relevant documents; retrieved documents
    missing from the qrels count as irrelevant; MAP and recall divide by all relevant documents.
    The average runs over the queries with at least one relevant (grade > 0) judgement, a query
    missing from ``ranked`` counting 0. ``ignore_identical_ids`` drops a document whose id equals
    the query's, as MTEB does for tasks whose queries are also in the corpus (ArguAna, Quora).
    """
    judged_queries = [qid for qid, judgements in qrels.items() if any(rel > 0 for rel in judgements.values())]
    if not judged_queries:
        raise ValueError("no query in qrels has a relevant document")
    totals = {f"{name}_at_{k}": 0.0 for k in ks for name in ("ndcg", "map", "mrr", "recall")}
    for query_id in judged_queries:
        scored_docs = dict(ranked.get(query_id, ()))
        if ignore_identical_ids:
            scored_docs.pop(query_id, None)
        ranked_docs = sorted(scored_docs, key=lambda doc_id: (scored_docs[doc_id], doc_id), reverse=True)
        for k in ks:
            for name, value in _query_metrics(ranked_docs, qrels[query_id], k).items():
                totals[f"{name}_at_{k}"] += value
    return {key: 100 * total / len(judged_queries) for key, total in totals.items()}


def _lexical_matrix(weights: Sequence[Mapping[Hashable, float]], vocabulary: dict[Hashable, int]) -> tuple:
    """CSR parts of one row per text, growing ``vocabulary`` (token -> column) as new tokens appear."""
    columns, values, row_starts = [], [], [0]
    for token_weights in weights:
        for token, weight in token_weights.items():
            columns.append(vocabulary.setdefault(token, len(vocabulary)))
            values.append(weight)
        row_starts.append(len(columns))
    return np.asarray(values, dtype=np.float32), np.asarray(columns, dtype=np.int64), row_starts


def sparse_lexical_scores(
    q_weights: Sequence[Mapping[Hashable, float]], d_weights: Sequence[Mapping[Hashable, float]]
) -> np.ndarray:
    """BGE-M3 lexical matching: sum over shared tokens of query weight x document weight.

    Token keys may be ints or FlagEmbedding's string ids, as long as both sides use the same.
    """
    vocabulary: dict[Hashable, int] = {}
    query_parts = _lexical_matrix(q_weights, vocabulary)
    doc_parts = _lexical_matrix(d_weights, vocabulary)
    shape = len(vocabulary)
    queries = scipy.sparse.csr_matrix(query_parts, shape=(len(q_weights), shape))
    docs = scipy.sparse.csr_matrix(doc_parts, shape=(len(d_weights), shape))
    return (queries @ docs.T).toarray().astype(np.float32)


def colbert_scores(
    q_vecs: Sequence[np.ndarray], d_vecs: Sequence[np.ndarray], doc_chunk_size: int = 1024
) -> np.ndarray:
    """BGE-M3 multi-vector score: mean over query tokens of the best dot product with a document token.

    Documents are taken ``doc_chunk_size`` at a time so their token vectors are never all
    copied into one array.
    """
    if any(len(doc) == 0 for doc in d_vecs):
        raise ValueError("every document needs at least one token vector")
    scores = np.empty((len(q_vecs), len(d_vecs)), dtype=np.float32)
    for start in range(0, len(d_vecs), doc_chunk_size):
        chunk = d_vecs[start : start + doc_chunk_size]
        doc_tokens = np.concatenate(chunk).astype(np.float32)
        doc_starts = np.cumsum([0] + [len(doc) for doc in chunk[:-1]])
        for query_index, query_tokens in enumerate(q_vecs):
            token_sims = np.asarray(query_tokens, dtype=np.float32) @ doc_tokens.T
            best_per_doc = np.maximum.reduceat(token_sims, doc_starts, axis=1)
            scores[query_index, start : start + len(chunk)] = best_per_doc.mean(axis=0)
    return scores


def combine_scores(
    dense: np.ndarray,
    sparse: np.ndarray | None = None,
    colbert: np.ndarray | None = None,
    weights: tuple[float, float, float] = (0.4, 0.2, 0.4),
) -> np.ndarray:
    """BGE-M3 hybrid score: weighted mean of the dense, sparse and ColBERT scores given.

    Same as FlagEmbedding's ``compute_score``: the weights (dense, sparse, colbert) are those of
    the BGE-M3 model card's "colbert+sparse+dense" example, and the sum is divided by the weights
    of the modes present, so dense+sparse alone gives its "sparse+dense" score.
    """
    modes = [(w, s) for w, s in zip(weights, (dense, sparse, colbert), strict=True) if s is not None]
    return sum(w * np.asarray(s, dtype=np.float32) for w, s in modes) / sum(w for w, _ in modes)
