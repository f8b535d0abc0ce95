"""The user's documents: every format read the same way, a fixed held-out slice, a training length
chosen from their lengths, and bad files refused with the file named, before any model loads."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from conftest import require_data

from prune_engine.data import DataError
from prune_engine.documents import (
    choose_length,
    held_out_count,
    load_documents,
    split_documents,
)

ROWS = [{"title": f"Title {i}", "text": f"Body of document {i}, about topic {i % 4}."} for i in range(60)]


def planted(path, content: bytes):
    path.write_bytes(content)
    return path


def write(tmp_path, suffix: str, rows=ROWS):
    path = tmp_path / f"documents{suffix}"
    frame = pd.DataFrame(rows)
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text("".join(f"{row['title']} {row['text']}\n" for row in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet", ".txt"])
def test_every_format_gives_the_same_texts_titles_joined_as_beir_does(tmp_path, suffix):
    documents = load_documents(str(write(tmp_path, suffix)))
    assert documents.texts() == [f"Title {i} Body of document {i}, about topic {i % 4}." for i in range(60)]


def test_a_beir_folder_gives_its_corpus_and_duplicates_count_once(tmp_path):
    scifact = load_documents(str(require_data("scifact")))
    assert len(scifact) == 5183 and scifact.documents[0].title
    twice = load_documents([str(write(tmp_path, ".jsonl")), str(write(tmp_path, ".txt"))])
    assert len(twice) == 60


def test_the_held_out_slice_is_fixed_by_the_texts_not_their_order():
    scifact = load_documents(str(require_data("scifact/corpus.jsonl")))
    split = split_documents(scifact)
    assert len(split.held_out) == held_out_count(5183) == 259 and len(split.training) == 5183 - 259
    assert not set(split.held_out.texts()) & set(split.training.texts())
    reversed_order = type(scifact)(tuple(reversed(scifact.documents)), "reversed")
    assert set(split_documents(reversed_order).held_out.texts()) == set(split.held_out.texts())


def test_the_training_length_comes_from_the_documents_lengths(minilm, caplog):
    scifact = load_documents(str(require_data("scifact/corpus.jsonl"))).texts()
    minilm.tokenizer.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)
    transformers_log = logging.getLogger("transformers")  # does not propagate to the root logger
    transformers_log.addHandler(caplog.handler)
    try:
        choice = choose_length(minilm.tokenizer, scifact, minilm.max_length)
    finally:
        transformers_log.removeHandler(caplog.handler)
    # abstracts longer than the model's limit are measured whole on purpose: no "indexing errors" warning
    assert "longer than the specified maximum" not in caplog.text
    assert choice.length == 256 and choice.quantile > 256  # abstracts run long: the model's limit reads most
    assert "the model's limit" in choice.describe() and f"median {choice.median} tokens" in choice.describe()
    short = choose_length(minilm.tokenizer, ["a short passage of a few words"] * 40, 512)
    assert short.length == 32 and "95% of them whole" in short.describe()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.jsonl", r"documents file not found: .*missing\.jsonl"),
        (lambda p: write(p, ".txt", []), r"documents\.txt: no text lines"),
        (lambda p: planted(p / "notes.docx", b"x"), r"unknown documents format \.docx"),
        (lambda p: planted(p / "bad.txt", b"\xff\xfe\x00 broken"), r"bad\.txt: not valid UTF-8"),
        (lambda p: write(p, ".csv", [{"body": "x"}]), r"documents\.csv: no 'text' column \(found: body\)"),
        (lambda p: write(p, ".jsonl", ROWS[:30]), r"30 distinct documents is too few to hold out 20 .* give at least 40"),
        (lambda p: (p / "folder").mkdir() or p / "folder", r"folder is a folder without corpus\.jsonl"),
    ],
)
def test_bad_documents_are_refused_naming_the_file_and_what_to_do(tmp_path, make, message):
    with pytest.raises(DataError, match=message):  # DocumentsError, or the reader's own DataError
        split_documents(load_documents(str(make(tmp_path))))
