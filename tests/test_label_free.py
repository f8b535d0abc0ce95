"""Label-free retention: pseudo-queries from real held-out documents (SciFact titles, TREC DL passages
for the inverse cloze rule, STS-B Chinese for unspaced scripts), and the report on the real MiniLM
against itself and against a copy with four of its six layers dropped."""

from __future__ import annotations

import csv
import json
import re

import pytest

from benchmarks.baselines import evenly_spaced, layer_drop_masks
from prune_engine.data import DataError
from prune_engine.documents import Document, Documents, split_documents
from prune_engine.embedder import Encoded
from prune_engine.encoding_cache import EncodingCache
from prune_engine.evaluate import AGREEMENT, MIXED_PREFIX, encode_data, format_report
from prune_engine.label_free import (
    AGREEMENT_AT_10,
    FALLBACK_QUERY_WORDS,
    MIN_SENTENCE_WORDS,
    SPLIT,
    label_free_report,
    label_free_rows,
    pseudo_query_task,
    top_k_agreement,
)
from prune_engine.prune import prune_embedder
from prune_engine.sources import resolve_model_dir
from tests.conftest import require_data
from workbench.compare import evaluation_rows
from workbench.runs import retention

N_PASSAGES = 200  # TREC DL passages for the model tests: 40 pseudo-queries among 200 passages


def read_corpus(relative: str) -> list[Document]:
    with require_data(relative).open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return [Document(row.get("title") or None, row["text"]) for row in rows]


@pytest.fixture(scope="module")
def scifact_documents() -> list[Document]:
    return read_corpus("scifact/corpus.jsonl")


@pytest.fixture(scope="module")
def trec_passages() -> list[Document]:
    return read_corpus("msmarco/trec-dl-2019-beir/corpus.jsonl")


def held_out_split(documents: list[Document], share: float) -> tuple[list[Document], list[str]]:
    """The product's held-out slice of these documents, and the others as distractors."""
    split = split_documents(Documents(tuple(documents), "test"), share)
    return list(split.held_out.documents), split.training.texts()


def words(text: str) -> list[str]:
    """Runs of letters and digits, as label_free counts words in space-separated scripts."""
    return re.findall(r"[^\W_]+", text)


# --------------------------------------------------------------------------- pseudo-queries


def test_the_same_seed_gives_the_same_task_and_another_seed_another(trec_passages):
    held_out, rest = held_out_split(trec_passages, 0.05)
    assert (held_out, rest) == held_out_split(trec_passages, 0.05)
    assert len(held_out) == 250 and len(rest) == 4750
    task = pseudo_query_task(held_out, rest, seed=3, max_distractors=1000)
    again = pseudo_query_task(held_out, rest, seed=3, max_distractors=1000)
    assert (task.queries, task.corpus, task.qrels) == (again.queries, again.corpus, again.qrels)
    other = pseudo_query_task(held_out, rest, seed=4, max_distractors=1000)
    changed = sum(task.queries[q] != other.queries.get(q) for q in task.queries)
    assert changed > 50, "another seed should draw other sentences for many documents"
    assert set(task.corpus) - {f"p{i}" for i in range(250)} != set(other.corpus) - {f"p{i}" for i in range(250)}


def test_a_document_keeps_its_pseudo_query_whichever_others_are_held_out_with_it(trec_passages):
    together = pseudo_query_task(trec_passages[:40], [], seed=0)
    alone = pseudo_query_task(trec_passages[20:21], [], seed=0)
    assert alone.queries["q0"] == together.queries["q20"]


def test_titled_documents_are_queried_by_their_title_and_judged_on_their_text(scifact_documents):
    held_out, rest = held_out_split(scifact_documents, 0.05)
    task = pseudo_query_task(held_out, rest, source="SciFact")
    assert len(task.queries) == len(held_out) == 259
    opening_with_title = 0
    for index, document in enumerate(held_out):
        title, text = document.title, document.text
        assert task.queries[f"q{index}"] == title.strip()
        opening_with_title += text.startswith(title)
        assert task.corpus[f"p{index}"] == text.removeprefix(title).strip()
        assert task.qrels[f"q{index}"] == {f"p{index}": 1}
    assert opening_with_title == 1, "one held-out abstract (of two in SciFact) opens with its title"
    assert not set(task.corpus.values()) & {doc.formatted for doc in held_out}, "no passage keeps its title"
    assert "259 titles, 0 inverse cloze" in task.source and task.source.startswith("SciFact: ")


def test_a_body_that_opens_with_its_title_loses_it_and_a_title_alone_is_split_by_inverse_cloze():
    task = pseudo_query_task([Document("Pruning", "Pruning\nremoves heads and neurons."),
                              Document("A title with no body at all", "  "), Document(" ", "Only a body, with no title at all here.")], [])
    assert (task.queries["q0"], task.corpus["p0"]) == ("Pruning", "removes heads and neurons.")
    assert (task.queries["q1"], task.corpus["p1"]) == ("A title with", "no body at all")
    assert (task.queries["q2"], task.corpus["p2"]) == ("Only a body, with", "no title at all here.")
    assert "1 titles, 2 inverse cloze" in task.source


def test_untitled_documents_give_an_inverse_cloze_sentence_not_left_in_the_passage(trec_passages):
    held_out, rest = held_out_split(trec_passages, 0.05)
    task = pseudo_query_task(held_out, rest)
    assert len(task.queries) == 250, "every held-out passage has a sentence that is not repeated"
    sentences = 0
    for query_id, query in task.queries.items():
        index = int(query_id[1:])
        document, passage = held_out[index].text, task.corpus[f"p{index}"]
        assert query in document and query not in passage
        start = document.index(query)
        assert passage.split() == (document[:start] + " " + document[start + len(query):]).split()
        if query in re.split(r"(?<=[.!?])\s+|\s*\n\s*", document) and len(words(query)) >= MIN_SENTENCE_WORDS:
            sentences += 1
        else:  # a document with fewer than two usable sentences starts with its query
            assert document.startswith(query) and len(words(query)) <= FALLBACK_QUERY_WORDS
    assert sentences > 200, "most MS MARCO passages have two or more sentences"


def test_short_documents_fall_back_to_their_first_words_and_unsplittable_ones_are_skipped():
    one_sentence = " ".join(f"w{i}" for i in range(40))
    task = pseudo_query_task([Document(None, one_sentence), Document(None, "Too short. Two."), Document(None, "word"), Document("", "x y")], [])
    assert task.queries["q0"] == " ".join(f"w{i}" for i in range(FALLBACK_QUERY_WORDS))
    assert task.corpus["p0"] == " ".join(f"w{i}" for i in range(FALLBACK_QUERY_WORDS, 40))
    assert (task.queries["q1"], task.corpus["p1"]) == ("Too", "short. Two."), "short sentences are not usable"
    assert "q2" not in task.queries and (task.queries["q3"], task.corpus["p3"]) == ("x", "y")
    assert "1 documents too short or repetitive to split" in task.source
    with pytest.raises(DataError, match="none of the 2 held-out documents"):
        pseudo_query_task([Document(None, "word"), Document(None, "A sentence. A sentence.")], ["other"])


def test_chinese_text_is_split_into_sentences_of_characters():
    with require_data("stsb/stsb-zh-dev.tsv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [row["sentence1"].rstrip("。") + "。" for row in rows[:6]]
    task = pseudo_query_task([Document(None, "".join(sentences))], [], seed=0)
    assert task.queries["q0"] in sentences
    assert task.corpus["p0"] == "".join(s for s in sentences if s != task.queries["q0"])


def test_distractors_are_a_seeded_sample_without_copies_of_the_held_out_text(scifact_documents):
    held_out, rest = held_out_split(scifact_documents[:500], 0.1)
    copy_of_held_out = held_out[0].formatted
    task = pseudo_query_task(held_out, [*rest, copy_of_held_out, held_out[1].text], max_distractors=100)
    distractors = {doc_id: text for doc_id, text in task.corpus.items() if doc_id.startswith("d")}
    assert len(distractors) == 100 and set(distractors.values()) <= set(rest)
    assert distractors == {k: v for k, v in pseudo_query_task(held_out, rest, max_distractors=100).corpus.items()
                           if k.startswith("d")}
    assert "2 distractors copying held-out text left out" in task.source
    only_held_out = pseudo_query_task(held_out, rest, max_distractors=0)
    assert set(only_held_out.corpus) == {f"p{i}" for i in range(50)}


def test_bad_input_is_refused_with_what_to_pass_instead():
    with pytest.raises(ValueError, match="max_distractors"):
        pseudo_query_task([Document(None, "a b c")], [], max_distractors=-1)


# --------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def trec_task(trec_passages):
    held_out, rest = held_out_split(trec_passages[:N_PASSAGES], 0.2)
    return pseudo_query_task(held_out, rest, source=f"TREC DL 2019, first {N_PASSAGES} passages")


@pytest.fixture(scope="module")
def original_cache(minilm, tmp_path_factory):
    return EncodingCache(resolve_model_dir("minilm"), minilm, root=tmp_path_factory.mktemp("label_free_cache"))


@pytest.fixture(scope="module")
def original_encoded(minilm, trec_task, original_cache):
    """The original's encodings, computed once and left in the cache the report reads them from."""
    return encode_data(minilm, trec_task, cache=original_cache)


def test_the_original_against_itself_retains_everything(trec_task, original_encoded):
    rows = label_free_rows(trec_task, original_encoded, original_encoded)
    assert 40 < rows["ndcg_at_10"]["original"] < 90, "real pseudo-queries: neither trivial nor hopeless"
    assert all(row["retained"] == 1.0 for row in rows.values() if "retained" in row)
    assert rows[AGREEMENT_AT_10]["pruned"] == 1.0
    assert rows[AGREEMENT]["pruned"] == pytest.approx(1.0, abs=1e-6)


def test_a_model_with_layers_dropped_retains_less(minilm, trec_task, original_encoded, original_cache):
    damaged = prune_embedder(minilm, layer_drop_masks(minilm.config, evenly_spaced(6, 2))).eval()
    report = label_free_report(minilm, damaged, trec_task, original_cache=original_cache)
    assert json.loads(json.dumps(report)) == report
    block = report["splits"][SPLIT]
    rows = block["metrics"]
    assert block["source"] == trec_task.source and list(rows)[0] == "ndcg_at_10"
    assert rows["ndcg_at_10"]["original"] == label_free_rows(trec_task, original_encoded, original_encoded)["ndcg_at_10"]["original"]
    assert rows["ndcg_at_10"]["retained"] < 0.85 and rows["ndcg_at_10"]["pruned"] > 30
    assert retention(report).share == rows["ndcg_at_10"]["retained"]
    assert 0.1 < rows[AGREEMENT_AT_10]["pruned"] < 0.8
    assert 0.1 < rows[AGREEMENT]["pruned"] < 0.8
    mixed = rows[MIXED_PREFIX + "ndcg_at_10"]
    assert mixed["original"] == rows["ndcg_at_10"]["original"] and mixed["retained"] < 0.9
    assert len(evaluation_rows(report)) == len(rows) and "top10_agreement" in format_report(report)


def test_top_k_agreement_counts_shared_documents_whatever_their_order(trec_task, original_encoded):
    vectors = original_encoded["documents"].dense
    moved = {"queries": original_encoded["queries"], "documents": Encoded(vectors[::-1].copy())}
    assert top_k_agreement(trec_task, original_encoded, moved) < 0.3, "each id now holds another passage's vector"
    assert top_k_agreement(trec_task, original_encoded, moved, k=1000) == 1.0, "k past the corpus: the same set"


def test_bge_m3_shaped_models_add_sparse_and_multi_vector_rows(tiny_xlmr_embedder, trec_passages):
    held_out, rest = held_out_split(trec_passages[:60], 0.2)
    task = pseudo_query_task(held_out, rest)
    report = label_free_report(tiny_xlmr_embedder(seed=0), tiny_xlmr_embedder(seed=1), task)
    rows = report["splits"][SPLIT]["metrics"]
    for mode in ("sparse", "colbert", "dense+sparse+colbert"):
        assert 0 < rows[f"{mode}/ndcg_at_10"]["original"] <= 100 and f"{MIXED_PREFIX}{mode}/ndcg_at_10" in rows
    assert json.loads(json.dumps(report)) == report


def test_models_of_different_widths_are_refused_before_encoding(minilm, tiny_xlmr_embedder, trec_task):
    with pytest.raises(ValueError, match="384 dimensions and the pruned model's 32"):
        label_free_report(minilm, tiny_xlmr_embedder(), trec_task)
