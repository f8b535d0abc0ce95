"""Scoring functions against values worked out by hand (and pytrec_eval, which MTEB uses)."""

import math

import numpy as np
import pytest

from prune_engine.metrics import (
    colbert_scores,
    combine_scores,
    embedding_agreement,
    rank_corpus,
    rank_from_scores,
    retrieval_metrics,
    retrieval_scores,
    sparse_lexical_scores,
    sts_spearman,
    top_k,
)


def ranking(*doc_ids):
    """A ranked list with strictly decreasing scores, first doc best."""
    return [(doc_id, 1.0 - rank / 100) for rank, doc_id in enumerate(doc_ids)]


def test_binary_relevance_at_ranks_1_and_3():
    ranked = {"q": ranking("r1", "x", "r2", "y")}
    metrics = retrieval_metrics(ranked, {"q": {"r1": 1, "r2": 1}})
    assert metrics["ndcg_at_10"] == pytest.approx(100 * (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert metrics["map_at_10"] == pytest.approx(100 * (1 / 1 + 2 / 3) / 2)
    assert metrics["mrr_at_10"] == pytest.approx(100.0)
    assert metrics["recall_at_100"] == pytest.approx(100.0)


def test_graded_relevance_uses_grade_as_gain_and_all_judged_docs_as_ideal():
    # "e" is relevant but never retrieved; "unjudged" is not in the qrels and counts as 0.
    ranked = {"q": ranking("unjudged", "a", "b")}
    metrics = retrieval_metrics(ranked, {"q": {"a": 1, "b": 3, "e": 2, "z": 0}})
    dcg = 0 + 1 / math.log2(3) + 3 / math.log2(4)
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert metrics["ndcg_at_10"] == pytest.approx(100 * dcg / ideal)
    assert metrics["mrr_at_10"] == pytest.approx(100 / 2)
    assert metrics["recall_at_10"] == pytest.approx(100 * 2 / 3)
    assert metrics["map_at_10"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 3)


def test_cutoff_excludes_later_hits():
    ranked = {"q": ranking(*[f"n{i}" for i in range(10)], "rel")}
    metrics = retrieval_metrics(ranked, {"q": {"rel": 1}}, ks=(10, 100))
    assert metrics["ndcg_at_10"] == metrics["mrr_at_10"] == metrics["recall_at_10"] == 0.0
    assert metrics["mrr_at_100"] == pytest.approx(100 / 11)
    assert metrics["ndcg_at_100"] == pytest.approx(100 / math.log2(12))
    assert metrics["recall_at_100"] == pytest.approx(100.0)


def test_average_skips_queries_without_relevant_docs_and_zeroes_unranked_ones():
    ranked = {"found": ranking("a"), "nothing_relevant": ranking("a"), "not_judged": ranking("a")}
    qrels = {"found": {"a": 1}, "nothing_relevant": {"a": 0}, "unranked": {"a": 1}}
    metrics = retrieval_metrics(ranked, qrels)
    assert metrics["ndcg_at_10"] == pytest.approx(50.0)
    assert metrics["recall_at_100"] == pytest.approx(50.0)


def test_ties_are_broken_by_doc_id_descending_whatever_the_input_order():
    qrels = {"q": {"a": 1}}
    for ranked in ({"q": [("a", 0.5), ("b", 0.5)]}, {"q": [("b", 0.5), ("a", 0.5)]}):
        assert retrieval_metrics(ranked, qrels)["mrr_at_10"] == pytest.approx(50.0)


def test_ignore_identical_ids_drops_the_query_itself():
    ranked = {"q": ranking("q", "rel")}
    qrels = {"q": {"rel": 1}}
    assert retrieval_metrics(ranked, qrels)["mrr_at_10"] == pytest.approx(50.0)
    assert retrieval_metrics(ranked, qrels, ignore_identical_ids=True)["mrr_at_10"] == pytest.approx(100.0)


def test_matches_pytrec_eval_on_random_graded_runs_with_ties():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    doc_ids = [f"d{i}" for i in range(40)]
    qrels, ranked = {}, {}
    for q in range(25):
        judged = rng.choice(doc_ids, size=8, replace=False)
        qrels[f"q{q}"] = {d: int(g) for d, g in zip(judged, rng.integers(0, 4, size=8), strict=True)}
        qrels[f"q{q}"][str(judged[0])] = 2
        retrieved = rng.choice(doc_ids, size=30, replace=False)
        ranked[f"q{q}"] = [
            (str(d), float(s)) for d, s in zip(retrieved, rng.integers(0, 6, size=30), strict=True)
        ]
    reference = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.5,10", "map_cut.5,10", "recall.5,10", "recip_rank"}
    )
    per_query = reference.evaluate({q: dict(docs) for q, docs in ranked.items()})
    ours = retrieval_metrics(ranked, qrels, ks=(5, 10, 100))
    for ours_key, trec_key in [
        ("ndcg_at_5", "ndcg_cut_5"),
        ("ndcg_at_10", "ndcg_cut_10"),
        ("map_at_10", "map_cut_10"),
        ("recall_at_5", "recall_5"),
        ("recall_at_10", "recall_10"),
        ("mrr_at_100", "recip_rank"),
    ]:
        expected = 100 * np.mean([scores[trec_key] for scores in per_query.values()])
        assert ours[ours_key] == pytest.approx(expected), ours_key


def unit_vectors_at(angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_sts_spearman_on_known_rankings():
    angles = np.array([0.1, 0.4, 0.7, 1.0])  # cosine falls as the angle grows
    reference = unit_vectors_at(np.zeros(4))
    assert sts_spearman(reference, unit_vectors_at(angles), [5, 4, 3, 2]) == pytest.approx(100.0)
    assert sts_spearman(reference, unit_vectors_at(angles), [2, 3, 4, 5]) == pytest.approx(-100.0)
    # One swapped adjacent pair: rho = 1 - 6 * (1 + 1) / (4 * (16 - 1)) = 0.8.
    assert sts_spearman(reference, unit_vectors_at(angles), [5, 4, 2, 3]) == pytest.approx(80.0)
    # Scaling the embeddings does not change a cosine.
    assert sts_spearman(3 * reference, unit_vectors_at(angles), [5, 4, 2, 3]) == pytest.approx(80.0)


def test_embedding_agreement_is_mean_row_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[5.0, 0.0], [3.0, 0.0]])  # same direction, then orthogonal
    assert embedding_agreement(a, b) == pytest.approx(0.5)
    assert embedding_agreement(a, -a) == pytest.approx(-1.0)


def test_retrieval_scores_cosine_and_dot():
    queries = np.array([[2.0, 0.0]])
    docs = np.array([[3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(retrieval_scores(queries, docs), [[0.6, 0.0]], atol=1e-6)
    np.testing.assert_allclose(retrieval_scores(queries, docs, similarity="dot"), [[6.0, 0.0]])
    with pytest.raises(ValueError, match="similarity"):
        retrieval_scores(queries, docs, similarity="euclidean")


def test_chunked_top_k_equals_full_argsort():
    scores = np.random.default_rng(1).standard_normal((50, 200)).astype(np.float32)
    indices, values = top_k(scores, k=13, chunk_size=7)
    expected = np.argsort(-scores, axis=1)[:, :13]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(values, np.take_along_axis(scores, expected, axis=1))
    assert top_k(scores, k=500)[0].shape == (50, 200)


def test_rank_corpus_in_chunks_equals_ranking_the_full_matrix():
    rng = np.random.default_rng(2)
    queries, docs = rng.standard_normal((9, 16)), rng.standard_normal((30, 16))
    query_ids, doc_ids = [f"q{i}" for i in range(9)], [f"d{i}" for i in range(30)]
    chunked = rank_corpus(query_ids, queries, doc_ids, docs, k=5, query_chunk_size=2)
    whole = rank_from_scores(query_ids, doc_ids, retrieval_scores(queries, docs), k=5)
    assert chunked.keys() == whole.keys()
    for query_id, ranked in chunked.items():  # BLAS may round a 1-row product differently
        assert [doc for doc, _ in ranked] == [doc for doc, _ in whole[query_id]]
        np.testing.assert_allclose([s for _, s in ranked], [s for _, s in whole[query_id]], rtol=1e-5)
    best = int(np.argmax(retrieval_scores(queries[:1], docs)))
    assert chunked["q0"][0][0] == f"d{best}"


def test_sparse_lexical_scores_sum_shared_token_products():
    queries = [{1: 0.5, 2: 0.3}, {7: 1.0}]
    docs = [{2: 0.4, 3: 1.0}, {1: 0.2, 2: 0.5}]
    np.testing.assert_allclose(
        sparse_lexical_scores(queries, docs), [[0.3 * 0.4, 0.5 * 0.2 + 0.3 * 0.5], [0.0, 0.0]], atol=1e-6
    )
    as_strings = [{str(token): w for token, w in weights.items()} for weights in queries]
    doc_strings = [{str(token): w for token, w in weights.items()} for weights in docs]
    np.testing.assert_allclose(
        sparse_lexical_scores(as_strings, doc_strings), sparse_lexical_scores(queries, docs)
    )


def test_colbert_scores_mean_of_max_similarity():
    query = np.array([[1.0, 0.0], [0.0, 1.0]])
    short_doc = np.array([[0.6, 0.8]])
    long_doc = np.array([[1.0, 0.0], [0.0, 0.5], [-1.0, 0.0]])
    expected = [[(0.6 + 0.8) / 2, (1.0 + 0.5) / 2]]
    np.testing.assert_allclose(colbert_scores([query], [short_doc, long_doc]), expected, atol=1e-6)
    np.testing.assert_allclose(
        colbert_scores([query], [short_doc, long_doc], doc_chunk_size=1), expected, atol=1e-6
    )


def test_combine_scores_is_flagembedding_weighted_mean():
    dense, sparse, colbert = np.array([[0.5]]), np.array([[0.1]]), np.array([[0.7]])
    np.testing.assert_allclose(combine_scores(dense, sparse, colbert), [[0.4 * 0.5 + 0.2 * 0.1 + 0.4 * 0.7]])
    np.testing.assert_allclose(combine_scores(dense, sparse), [[(0.4 * 0.5 + 0.2 * 0.1) / 0.6]])
