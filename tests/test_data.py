"""Data loading: real shared data sets load with their published sizes, bad files fail with precise errors."""

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from prune_engine import data
from prune_engine.data import (
    DataError,
    QueryPassagePairs,
    RetrievalTask,
    ScoredPairs,
    TextCorpus,
    load_eval_data,
    load_texts,
    load_training_data,
    shared_data_dir,
)


@pytest.fixture(scope="module")
def shared() -> Path:
    """The real shared data; its absence is a failure that says where it was expected, never a skip."""
    return shared_data_dir()


@pytest.fixture
def no_shared_data(monkeypatch, tmp_path) -> Path:
    missing = tmp_path / "no-shared-data"
    monkeypatch.setenv("PRUNE_ENGINE_DATA", str(missing))
    return missing


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    lines = ["\t".join(header), *("\t".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- real shared data


@pytest.mark.parametrize(("split", "size"), [("train", 5749), ("dev", 1500), ("test", 1379)])
def test_sts_english_splits_have_published_sizes_and_unit_scores(shared, split, size):
    pairs = load_training_data("sts", split)
    assert isinstance(pairs, ScoredPairs)
    assert len(pairs) == len(pairs.sentences1) == len(pairs.sentences2) == size
    assert min(pairs.scores) == 0.0 and max(pairs.scores) == 1.0
    assert pairs.source.endswith(f"stsb-en-{split}.tsv")
    # First training row of STS-B: "A plane is taking off." / "An air plane is taking off." / 5.0
    if split == "train":
        assert (pairs.sentences1[0], pairs.sentences2[0], pairs.scores[0]) == (
            "A plane is taking off.",
            "An air plane is taking off.",
            1.0,
        )


def test_sts_other_language_and_language_argument_agree(shared):
    german = load_eval_data("sts-de", "test")
    assert isinstance(german, ScoredPairs) and len(german) == 1379
    assert german.source.endswith("stsb-de-test.tsv")
    assert load_training_data("sts-de", "test").sentences1 == german.sentences1
    assert load_eval_data("sts-de", "validation").source.endswith("stsb-de-dev.tsv")
    # Translations keep the English scores.
    assert german.scores == load_eval_data("sts", "test").scores


def test_msmarco_sample_has_189_pairs_with_negatives(shared):
    pairs = load_training_data("msmarco")
    assert isinstance(pairs, QueryPassagePairs)
    assert len(pairs) == 189
    assert all(q.strip() for q in pairs.queries) and all(p.strip() for p in pairs.passages)
    assert pairs.negatives is not None and len(pairs.negatives) == 189
    assert pairs.queries[0] == "what is cost of sales"
    assert all(pairs.passages[i] not in pairs.negatives[i] for i in range(len(pairs)))


def test_msmarco_evaluation_pools_all_passages(shared):
    pairs = load_training_data("msmarco")
    task = load_eval_data("msmarco", "train")
    assert isinstance(task, RetrievalTask)
    assert len(task.queries) == len(set(pairs.queries))
    assert set(task.corpus.values()) == set(pairs.distinct_texts()) - set(pairs.queries)
    for query_id, judged in task.qrels.items():
        assert judged and all(doc_id in task.corpus for doc_id in judged)
        assert query_id in task.queries


def test_scifact_test_task_has_300_judged_queries_over_5183_documents(shared):
    task = load_eval_data("mteb/scifact", "test")
    assert isinstance(task, RetrievalTask)
    assert len(task.queries) == 300 and set(task.queries) == set(task.qrels)
    assert len(task.corpus) == 5183
    assert sum(len(judged) for judged in task.qrels.values()) == 339
    first_doc = json.loads((shared / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert task.corpus[first_doc["_id"]] == f"{first_doc['title']} {first_doc['text']}".strip()


def test_scifact_training_pairs_are_the_positive_train_qrels(shared):
    with (shared / "scifact" / "qrels" / "train.tsv").open(encoding="utf-8") as handle:
        positive = [row for row in csv.DictReader(handle, delimiter="\t") if float(row["score"]) > 0]
    pairs = load_training_data("mteb/scifact")
    assert isinstance(pairs, QueryPassagePairs)
    assert len(pairs) == len(positive) == 919
    assert pairs.negatives is None
    assert pairs.source.endswith("qrels with score > 0")


def test_beir_folder_without_train_qrels_trains_on_its_texts(shared):
    folder = shared / "msmarco" / "trec-dl-2019-beir"
    task = load_eval_data(str(folder), "test")
    assert (len(task.queries), len(task.corpus)) == (43, 5000)
    assert {score for judged in task.qrels.values() for score in judged.values()} == {1, 2, 3}
    texts = load_training_data(str(folder))
    assert isinstance(texts, TextCorpus)
    assert set(texts.texts) >= set(task.corpus.values())


def test_unknown_retrieval_split_lists_available_ones(shared):
    with pytest.raises(DataError, match=r"no qrels for split 'dev'.*available: test, train"):
        load_eval_data("mteb/scifact", "dev")


# --------------------------------------------------------------------------- demo data


def test_demo_loads_without_shared_data(no_shared_data):
    train, dev, test = (load_training_data("demo", split) for split in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (240, 30, 30)
    everything = load_training_data(str(data.DEMO_PAIRS))
    assert train.sentences1 + dev.sentences1 + test.sentences1 == everything.sentences1
    assert all(0.0 <= score <= 1.0 for score in everything.scores)
    # Paraphrases, related and unrelated pairs are all present.
    assert min(everything.scores) == 0.0 and max(everything.scores) == 1.0
    assert sum(score >= 0.8 for score in everything.scores) >= 60
    assert sum(score <= 0.2 for score in everything.scores) >= 40
    assert load_eval_data("demo", "test").sentences1 == test.sentences1
    sentences = load_texts("demo")
    assert len(sentences) >= 250 and len(set(sentences)) == len(sentences)


def test_shared_data_dir_names_where_it_was_expected(no_shared_data):
    with pytest.raises(DataError, match="shared data folder not found.*no-shared-data"):
        shared_data_dir()


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_table_format_gives_the_same_data(tmp_path, suffix):
    frame = pd.DataFrame(
        {
            "sentence1": ["A cat sleeps.", "Rain falls."],
            "sentence2": ["A cat naps.", "It is sunny."],
            "score": [5, 0.5],
        }
    )
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    pairs = load_training_data(str(path))
    assert isinstance(pairs, ScoredPairs)
    assert pairs.sentences2 == ["A cat naps.", "It is sunny."]
    assert pairs.scores == pytest.approx([1.0, 0.1])


def test_scores_already_in_unit_range_are_kept(tmp_path):
    path = write_tsv(
        tmp_path / "unit.tsv", ["sentence1", "sentence2", "score"], [["a", "b", "0.25"], ["c", "d", "1"]]
    )
    assert load_training_data(str(path)).scores == [0.25, 1.0]


def test_columns_decide_the_kind(tmp_path):
    triples = tmp_path / "triples.jsonl"
    triples.write_text(
        json.dumps({"query": "what is tea", "positive": "Tea is a drink.", "negative": "Coffee beans."})
        + "\n"
    )
    pairs = load_training_data(str(triples))
    assert isinstance(pairs, QueryPassagePairs) and pairs.negatives == [["Coffee beans."]]

    no_negatives = write_tsv(tmp_path / "qp.tsv", ["query", "positive"], [["q", "p"]])
    assert load_training_data(str(no_negatives)).negatives is None

    texts = write_tsv(tmp_path / "texts.tsv", ["text", "label"], [["first", "x"], ["second", "y"]])
    assert load_training_data(str(texts)) == TextCorpus(["first", "second"], str(texts))

    # Column names other tools use (sentence-transformers' anchor, stsb_multi_mt's similarity_score) are accepted.
    anchors = write_tsv(tmp_path / "anchors.tsv", ["anchor", "positive"], [["q", "p"]])
    assert load_training_data(str(anchors)).queries == ["q"]
    renamed = write_tsv(
        tmp_path / "renamed.tsv", ["sentence1", "sentence2", "similarity_score"], [["a", "b", "2.5"]]
    )
    assert load_training_data(str(renamed)).scores == [0.5]

    lines = tmp_path / "lines.txt"
    lines.write_text("one sentence\n\nanother sentence\n", encoding="utf-8")
    assert load_texts(str(lines)) == ["one sentence", "another sentence"]


def test_query_passage_file_evaluates_as_retrieval(tmp_path):
    path = write_tsv(tmp_path / "qp.tsv", ["query", "positive"], [["q1", "p1"], ["q2", "p2"], ["q1", "p3"]])
    task = load_eval_data(str(path), "test")
    assert isinstance(task, RetrievalTask)
    assert task.queries == {"q0": "q1", "q1": "q2"}
    assert task.qrels == {"q0": {"d0": 1, "d2": 1}, "q1": {"d1": 1}}


def test_distinct_texts_lists_each_text_once():
    pairs = ScoredPairs(["a", "b"], ["b", "c"], [0.1, 0.2], "test")
    assert pairs.distinct_texts() == ["a", "b", "c"]
    qp = QueryPassagePairs(["q"], ["p"], [["n", "p"]], "test")
    assert qp.distinct_texts() == ["q", "p", "n"]
    task = RetrievalTask({"1": "q"}, {"d": "doc", "e": "q"}, {"1": {"d": 1}}, "test")
    assert task.distinct_texts() == ["q", "doc"]


# --------------------------------------------------------------------------- errors


def test_missing_column_names_file_column_and_found_columns(tmp_path):
    path = write_tsv(tmp_path / "nolabel.tsv", ["sentence1", "sentence2"], [["a", "b"]])
    with pytest.raises(DataError) as error:
        load_training_data(str(path))
    message = str(error.value)
    assert "nolabel.tsv" in message and "missing column(s) score" in message
    assert "found: sentence1, sentence2" in message


def test_a_partial_kind_names_its_missing_columns(tmp_path):
    path = write_tsv(tmp_path / "half.tsv", ["sentence1", "score"], [["a", "1"]])
    with pytest.raises(DataError, match=r"half\.tsv: missing column\(s\) sentence2 \(found: sentence1, score\)"):
        load_training_data(str(path))


def test_empty_text_names_file_row_and_column(tmp_path):
    path = write_tsv(
        tmp_path / "holes.tsv",
        ["sentence1", "sentence2", "score"],
        [["a", "b", "1"], ["c", "", "2"], ["e", "f", "3"]],
    )
    with pytest.raises(DataError, match=r"holes\.tsv, row 2 \(line 3\): sentence2 is empty"):
        load_training_data(str(path))


def test_empty_text_in_jsonl_counts_rows_like_a_person(tmp_path):
    path = tmp_path / "qp.jsonl"
    path.write_text(
        json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": " ", "positive": "p"})
    )
    with pytest.raises(DataError, match=r"qp\.jsonl, row 2 \(line 2\): query is empty"):
        load_training_data(str(path))


def test_score_out_of_range_names_file_row_value_and_range(tmp_path):
    path = write_tsv(
        tmp_path / "scores.tsv", ["sentence1", "sentence2", "score"], [["a", "b", "4"], ["c", "d", "7.5"]]
    )
    with pytest.raises(DataError) as error:
        load_training_data(str(path))
    message = str(error.value)
    assert "scores.tsv, row 2" in message and "7.5" in message and "[0, 5]" in message


def test_non_numeric_score_is_reported(tmp_path):
    path = write_tsv(tmp_path / "words.tsv", ["sentence1", "sentence2", "score"], [["a", "b", "high"]])
    with pytest.raises(
        DataError, match=r"words\.tsv, row 1 \(line 2\): column 'score' must be a number, found 'high'"
    ):
        load_training_data(str(path))


def test_stray_tab_is_reported_with_its_line(tmp_path):
    path = tmp_path / "tabs.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\textra\t2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"tabs\.tsv, row 2 \(line 3\): 4 fields, but the header has 3"):
        load_training_data(str(path))


def test_invalid_json_line_is_reported(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl, line 2: invalid JSON"):
        load_texts(str(path))


def test_unknown_name_lists_valid_choices():
    with pytest.raises(DataError) as error:
        load_training_data("imagenet")
    message = str(error.value)
    assert "unknown dataset 'imagenet'" in message
    for choice in ("demo", "sts", "sts-de", "msmarco", "mteb/scifact", "mteb/twentynewsgroups"):
        assert choice in message
    with pytest.raises(DataError, match="unknown STS language 'xx'"):
        load_eval_data("sts-xx", "test")
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        load_training_data("demo", "holdout")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "absent.csv"
    with pytest.raises(DataError, match=f"file not found: {missing}"):
        load_training_data(str(missing))


def test_text_only_data_cannot_be_evaluated(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("just text\n", encoding="utf-8")
    with pytest.raises(DataError, match="plain text only"):
        load_eval_data(str(lines), "test")


@pytest.fixture
def offline_hub(monkeypatch):
    """Offline mode read at call time: the hub libraries cache the environment when first imported."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize(
    ("dataset", "split", "hub_id"),
    [
        ("mteb/nfcorpus", "test", "mteb/nfcorpus"),
        ("mteb/arguana", "test", "mteb/arguana"),
        ("mteb/twentynewsgroups", "train", "mteb/twentynewsgroups-clustering"),
        ("msmarco", "test", "microsoft/ms_marco"),
    ],
)
def test_hub_only_data_fails_offline_with_a_clear_error(offline_hub, dataset, split, hub_id):
    loader = load_training_data if dataset == "mteb/twentynewsgroups" else load_eval_data
    with pytest.raises(DataError) as error:
        loader(dataset, split)
    message = str(error.value)
    assert f"could not load '{hub_id}'" in message and "Hugging Face hub" in message
    assert "Traceback" not in message
    assert "demo" in message or "train split only" in message


def test_shared_names_fall_back_to_the_hub_and_name_the_local_path(offline_hub, no_shared_data):
    with pytest.raises(DataError) as error:
        load_training_data("sts-de")
    message = str(error.value)
    assert "mteb/stsb_multi_mt" in message
    assert str(no_shared_data / "stsb" / "stsb-de-train.tsv") in message
    with pytest.raises(DataError, match="sts-ja has no hub source"):
        load_training_data("sts-ja")
