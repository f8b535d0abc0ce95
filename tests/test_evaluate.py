"""The evaluator and the `eval` command on small subsets of real data: the original against itself,
a pruned MiniLM, BGE-M3-style multi-output retrieval, exports and run directories."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import retrieval_subset

from benchmarks.baselines import layer_drop_masks
from prune_engine import cli
from prune_engine.data import (
    QueryPassagePairs,
    RetrievalTask,
    ScoredPairs,
    load_eval_data,
    retrieval_from_pairs,
)
from prune_engine.evaluate import (
    AGREEMENT,
    MIXED_PREFIX,
    compatibility_figures,
    encode_data,
    evaluate,
    figures,
    format_report,
)
from prune_engine.export import export_embedder, pruning_info
from prune_engine.prune import prune_embedder
from prune_engine.sources import load_embedder
from prune_engine.vocab import plan_vocabulary, trim_embedder

STS_PAIRS = 200
RETRIEVAL_LENGTH = 64  # SciFact abstracts cut short: the subset tests the plumbing, not the published figure


@pytest.fixture(scope="module")
def sts_subset(shared_data_dir) -> ScoredPairs:
    pairs = load_eval_data("sts", "test")
    return ScoredPairs(pairs.sentences1[:STS_PAIRS], pairs.sentences2[:STS_PAIRS], pairs.scores[:STS_PAIRS],
                       f"first {STS_PAIRS} STS-B test pairs")


@pytest.fixture(scope="module")
def sts_subset_file(sts_subset, tmp_path_factory):
    path = tmp_path_factory.mktemp("sts") / "pairs.tsv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["sentence1", "sentence2", "score"])
        writer.writerows(zip(sts_subset.sentences1, sts_subset.sentences2, [5 * s for s in sts_subset.scores], strict=True))
    return path


@pytest.fixture(scope="module")
def scifact_subset(shared_data_dir):
    return retrieval_subset(load_eval_data("mteb/scifact", "test"), n_queries=30, n_documents=200)


@pytest.fixture(scope="module")
def minilm_short():
    return load_embedder("minilm", max_length=RETRIEVAL_LENGTH).eval()


@pytest.fixture(scope="module")
def pruned_minilm(minilm):
    """MiniLM with layers 1, 3 and 5 removed (half its encoder)."""
    return prune_embedder(minilm, layer_drop_masks(minilm.config, [0, 2, 4])).eval()


@pytest.fixture(scope="module")
def sts_reference(minilm, pruned_minilm, sts_subset) -> dict[str, float]:
    """The in-memory models' Spearman on the subset, which the command must reproduce from disk."""
    return {"original": evaluate(minilm, sts_subset)["spearman"], "pruned": evaluate(pruned_minilm, sts_subset)["spearman"]}


@pytest.fixture(scope="module")
def scifact_encodings(scifact_subset, minilm_short):
    pruned = prune_embedder(minilm_short, layer_drop_masks(minilm_short.config, [0, 2, 4])).eval()
    return {
        "original": encode_data(minilm_short, scifact_subset),
        "pruned": encode_data(pruned, scifact_subset),
    }


def test_retrieval_subset_keeps_every_relevant_document(scifact_subset):
    assert len(scifact_subset.queries) == 30 and len(scifact_subset.corpus) == 200
    assert all(doc in scifact_subset.corpus for judged in scifact_subset.qrels.values() for doc in judged)


def test_original_against_itself_shares_its_index(scifact_subset, scifact_encodings):
    original = scifact_encodings["original"]
    own = figures(scifact_subset, original)
    compatibility = compatibility_figures(scifact_subset, original, original)
    assert compatibility[AGREEMENT] == pytest.approx(1.0, abs=1e-6)
    assert {key: compatibility[MIXED_PREFIX + key] for key in own} == own
    assert own["ndcg_at_10"] > 50  # real retrieval, not noise


def test_pruned_minilm_drifts_from_the_original_index(scifact_subset, scifact_encodings):
    original, pruned = scifact_encodings["original"], scifact_encodings["pruned"]
    compatibility = compatibility_figures(scifact_subset, original, pruned)
    assert 0.0 < compatibility[AGREEMENT] < 0.99  # three of six layers cut, not yet distilled
    own = figures(scifact_subset, pruned)
    assert compatibility[MIXED_PREFIX + "ndcg_at_10"] != own["ndcg_at_10"]


@pytest.fixture(scope="module")
def tiny_retrieval(shared_data_dir) -> RetrievalTask:
    """Twenty real STS-B sentence pairs as queries and their one relevant passage each."""
    pairs = load_eval_data("sts", "dev")
    return retrieval_from_pairs(QueryPassagePairs(pairs.sentences1[:20], pairs.sentences2[:20], None, "stsb dev pairs"))


def test_bge_m3_style_model_scores_every_output_and_their_combination(tiny_xlmr_embedder, tiny_retrieval):
    model = tiny_xlmr_embedder(seed=0)
    scores = evaluate(model, tiny_retrieval)
    modes = ("", "sparse/", "colbert/", "dense+sparse+colbert/")
    assert set(scores) == {mode + key for mode in modes for key in ("ndcg_at_10", "mrr_at_10", "recall_at_100")}
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    assert scores["sparse/ndcg_at_10"] > 20  # lexical overlap between paraphrases finds some of them


def test_bge_m3_style_index_compatibility_in_every_output(tiny_xlmr_embedder, tiny_retrieval):
    model = tiny_xlmr_embedder(seed=0)
    original = encode_data(model, tiny_retrieval)
    own = figures(tiny_retrieval, original)
    itself = compatibility_figures(tiny_retrieval, original, original)
    assert {key: itself[MIXED_PREFIX + key] for key in own} == own

    # A trimmed vocabulary renumbers tokens: sparse weights must still meet the original's by token.
    texts = list(tiny_retrieval.queries.values()) + list(tiny_retrieval.corpus.values())
    trimmed = trim_embedder(model, plan_vocabulary(model.tokenizer, texts))
    assert trimmed.config.vocab_size < model.config.vocab_size
    trimmed_compatibility = compatibility_figures(tiny_retrieval, original, encode_data(trimmed, tiny_retrieval))
    assert trimmed_compatibility[AGREEMENT] == pytest.approx(1.0, abs=1e-5)
    for key in own:
        assert trimmed_compatibility[MIXED_PREFIX + key] == pytest.approx(own[key], abs=1e-6)

    pruned = prune_embedder(model, layer_drop_masks(model.config, [0, 2]))
    pruned_compatibility = compatibility_figures(tiny_retrieval, original, encode_data(pruned, tiny_retrieval))
    assert pruned_compatibility[AGREEMENT] < 0.999
    assert {MIXED_PREFIX + key for key in own} <= set(pruned_compatibility)


@pytest.fixture(scope="module")
def run_dir(pruned_minilm, minilm, tmp_path_factory):
    """A run directory as the trainer leaves it, as far as `eval` reads it: export/ naming its source."""
    run = tmp_path_factory.mktemp("run")
    export_embedder(pruned_minilm, run / "export", pruning_info(pruned_minilm, "minilm", minilm.config))
    (run / "config.yaml").write_text("model: minilm\ndataset: sts\n")
    return run


def run_eval(*arguments, capsys) -> tuple[int, str]:
    code = cli.main(["eval", *map(str, arguments)])
    return code, capsys.readouterr().out


def test_eval_command_on_a_plain_model_prints_json(sts_reference, sts_subset_file, capsys):
    code, out = run_eval("minilm", "--dataset", sts_subset_file, "--json", capsys=capsys)
    assert code == 0
    report = json.loads(out)
    assert report["original"] is None and report["max_length"] == {"model": 256}
    assert report["splits"]["test"]["metrics"]["spearman"]["score"] == pytest.approx(sts_reference["original"], abs=1e-9)


def test_eval_command_compares_a_run_with_its_source(run_dir, sts_reference, sts_subset_file, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    code, out = run_eval(run_dir, "--dataset", sts_subset_file, "--json", report_file, capsys=capsys)
    assert code == 0
    report = json.loads(report_file.read_text())
    assert report["original"] == "minilm" and report["model"] == str(run_dir / "export")
    rows = report["splits"]["test"]["metrics"]
    spearman = rows["spearman"]
    assert spearman["original"] == pytest.approx(sts_reference["original"], abs=1e-9)
    # The export reloads to the very model that was pruned in memory.
    assert spearman["pruned"] == pytest.approx(sts_reference["pruned"], abs=1e-6)
    assert spearman["retained"] == pytest.approx(spearman["pruned"] / spearman["original"])
    assert set(rows[AGREEMENT]) == {"pruned"} and rows[AGREEMENT]["pruned"] < 1.0
    assert out == format_report(report) + "\n" and f"{spearman['retained']:.1%}" in out


def test_eval_command_on_an_export_with_a_max_length(run_dir, sts_subset_file, capsys):
    code, out = run_eval(run_dir / "export", "--dataset", sts_subset_file, "--max-length", 16, "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0 and report["original"] == "minilm"
    assert report["max_length"] == {"model": 16, "original": 16}


def test_eval_command_needs_data(capsys):
    assert cli.main(["eval", "minilm"]) == 2
    assert "--dataset" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "onnx"])
def test_a_negative_distractor_count_is_refused_before_anything_loads(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "minilm", "--documents", "corpus.txt", "--documents-distractors", "-1"])
    assert exit_.value.code == 2
    assert "--documents-distractors: expected a whole number, 0 or more, got '-1'" in capsys.readouterr().err


def test_eval_command_reads_the_originals_encodings_from_its_cache(run_dir, sts_subset_file, monkeypatch, tmp_path, capsys):
    import prune_engine.evaluate as evaluate_module
    from prune_engine.encoding_cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    encode_calls = []
    real_encode = evaluate_module.encode
    monkeypatch.setattr(evaluate_module, "encode", lambda model, texts, *rest: encode_calls.append(rest[2]) or real_encode(model, texts, *rest))

    def report(*options) -> dict:
        encode_calls.clear()
        code, out = run_eval(run_dir, "--dataset", sts_subset_file, "--json", *options, capsys=capsys)
        assert code == 0
        return json.loads(out)

    first = report()
    assert encode_calls == ["original: sentences 1", "original: sentences 2", "pruned: sentences 1", "pruned: sentences 2"]
    assert len(list((tmp_path / "cache" / "encodings").glob("*.npz"))) == 1
    second = report()
    assert encode_calls == ["pruned: sentences 1", "pruned: sentences 2"]
    assert second["splits"] == first["splits"]
    assert report("--no-cache")["splits"] == first["splits"] and len(encode_calls) == 4
    # Another length changes the vectors, so it is a miss (and a second entry), not a stale hit.
    report("--max-length", 16)
    assert len(encode_calls) == 4 and len(list((tmp_path / "cache" / "encodings").glob("*.npz"))) == 2
