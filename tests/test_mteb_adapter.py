"""The MTEB wrapper, offline: MTEB's own STS and retrieval evaluators on local data must give our
evaluator's figures for the same model and the same data."""

from __future__ import annotations

import json

import pytest
from conftest import retrieval_subset
from mteb.models.models_protocols import EncoderProtocol

from prune_engine import cli, mteb_adapter
from prune_engine.data import ScoredPairs, load_eval_data
from prune_engine.evaluate import evaluate
from prune_engine.sources import load_embedder

PAIRS = 100


@pytest.fixture(scope="module")
def sts_pairs(shared_data_dir) -> ScoredPairs:
    pairs = load_eval_data("sts", "test")
    return ScoredPairs(pairs.sentences1[-PAIRS:], pairs.sentences2[-PAIRS:], pairs.scores[-PAIRS:], "last STS-B test pairs")


@pytest.fixture(scope="module")
def our_spearman(minilm, sts_pairs) -> float:
    return evaluate(minilm, sts_pairs)["spearman"]


def test_wrapper_is_an_mteb_encoder(minilm):
    encoder = mteb_adapter.MtebEncoder(minilm)
    assert isinstance(encoder, EncoderProtocol)
    meta = encoder.mteb_model_meta
    assert meta.name == "sentence-transformers/all-MiniLM-L6-v2" and meta.embed_dim == 384 and meta.max_tokens == 256


def test_mteb_sts_task_on_local_data_matches_our_spearman(minilm, sts_pairs, our_spearman):
    task = mteb_adapter.use_local_data(mteb_adapter.get_task("STSBenchmark"), {"test": sts_pairs})
    scores = mteb_adapter.task_scores(minilm, task)["test"]
    assert scores["cosine_spearman"] == pytest.approx(our_spearman, abs=1e-6)


def test_mteb_retrieval_task_on_local_data_matches_our_figures(shared_data_dir):
    model = load_embedder("minilm", max_length=64)  # short: the comparison, not the published figure
    subset = retrieval_subset(load_eval_data("mteb/scifact", "test"), n_queries=30, n_documents=150)
    task = mteb_adapter.use_local_data(mteb_adapter.get_task("SciFact"), {"test": subset})
    scores = mteb_adapter.task_scores(model, task)["test"]
    ours = evaluate(model, subset)
    assert set(ours) <= set(scores)
    for name, value in ours.items():  # MTEB rounds retrieval figures to 5 decimals of a fraction
        assert scores[name] == pytest.approx(value, abs=1e-3), name


def test_local_data_only_stands_in_for_sts_or_retrieval(sts_pairs):
    with pytest.raises(ValueError, match="Classification task"):
        mteb_adapter.use_local_data(mteb_adapter.get_task("Banking77Classification"), {"test": sts_pairs})


def test_eval_command_runs_an_mteb_task_on_both_models(sts_pairs, our_spearman, tmp_path, capsys):
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(
        json.dumps({"sentence1": a, "sentence2": b, "score": score}) + "\n"
        for a, b, score in zip(sts_pairs.sentences1, sts_pairs.sentences2, sts_pairs.scores, strict=True)
    ))
    code = cli.main(["eval", "minilm", "--against", "minilm", "--mteb", "STSBenchmark", "--dataset", str(pairs_file), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "mteb:STSBenchmark"
    row = report["splits"]["test"]["metrics"]["cosine_spearman"]
    assert row["original"] == pytest.approx(our_spearman, abs=1e-6)
    assert row["pruned"] == pytest.approx(row["original"], abs=1e-9) and row["retained"] == pytest.approx(1.0)
