"""The user's documents: the text the pruned model will serve, no labels needed.

A deployment of an embedding model has its documents: they are in the index it already built.
Distilling on exactly that text keeps the pruned model's vectors where the original put them,
which is what retrieval against the old index needs (on SciFact, distilling on its abstracts kept
95% of nDCG@10 where MS MARCO passages kept 89%; benchmarks/RESULTS.md). A fixed slice is held out,
never trained on, to measure what was kept without labels (`label_free.py`), and the documents'
token lengths choose how long training reads them.

Formats: .jsonl (`text`, optional `title`: BEIR's corpus layout), .tsv / .csv / .parquet (a `text`
column, optional `title`), .txt (one document per line), a BEIR folder (its corpus.jsonl), or a
data set name (`mteb/scifact`: its corpus; any other: its texts).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from .data import corpus_table, load_texts, resolve_dataset
from .tables import TABLE_SUFFIXES, TEXT_SUFFIX, DataError, Table, read_table, read_text_lines, text_cell

# The held-out slice: this share of the documents, within these bounds; what remains trains.
HELD_OUT_SHARE = 0.05
MIN_HELD_OUT = 20
MAX_HELD_OUT = 1000
MIN_TRAINING = 20
# Training reads documents up to this share of them untruncated, rounded up to a multiple of
# LENGTH_STEP, at most the model's own limit and AUTO_LENGTH_CAP (cost grows with length).
LENGTH_QUANTILE = 0.95
LENGTH_STEP = 32
AUTO_LENGTH_CAP = 512
LENGTH_SAMPLE = 2000


NO_DOCUMENTS_WARNING = (
    "No documents were given, so retrieval on your own data is not protected and not measured: the model "
    "was distilled on its training data alone. Give the texts the model will serve (no labels needed) with "
    "--documents PATH, `documents:` in the config, or the workbench's 'Your documents' field."
)


class DocumentsError(DataError):
    """Documents that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class Document:
    title: str | None
    text: str

    @property
    def formatted(self) -> str:
        """As BEIR, MTEB and the evaluator encode a document: title, a space, the text."""
        return f"{self.title or ''} {self.text}".strip()


@dataclass(frozen=True)
class Documents:
    documents: tuple[Document, ...]
    source: str

    def __len__(self) -> int:
        return len(self.documents)

    def texts(self) -> list[str]:
        return [d.formatted for d in self.documents]


@dataclass(frozen=True)
class DocumentSplit:
    training: Documents
    held_out: Documents


def _from_table(table: Table) -> list[Document]:
    if "text" not in table.columns:
        raise DocumentsError(f"{table.source}: no 'text' column (found: {', '.join(table.columns) or 'none'}); "
                             "documents need a 'text' column and may have a 'title'")
    documents = []
    for index, row in enumerate(table.rows):
        title = row.get("title")
        title = (str(title).strip() or None) if title else None
        documents.append(Document(title, text_cell(table, index, row, "text")))
    return documents


def _read(path: Path) -> list[Document]:
    suffix = path.suffix.lower()
    if path.is_dir():
        corpus = path / "corpus.jsonl"
        if not corpus.is_file():
            raise DocumentsError(f"{path} is a folder without corpus.jsonl: give a documents file "
                                 f"({', '.join((*TABLE_SUFFIXES, TEXT_SUFFIX))}) or a BEIR folder")
        return _from_table(read_table(corpus))
    if suffix not in (*TABLE_SUFFIXES, TEXT_SUFFIX):
        raise DocumentsError(f"{path}: unknown documents format {suffix or '(no suffix)'}; use one of "
                             f"{', '.join((*TABLE_SUFFIXES, TEXT_SUFFIX))} or a BEIR folder")
    if suffix == TEXT_SUFFIX:
        return [Document(None, line) for line in read_text_lines(path)]
    return _from_table(read_table(path))


def _read_source(source: str) -> list[Document]:
    path = Path(source).expanduser()
    if path.exists() or path.suffix:
        if not path.exists():
            raise DocumentsError(f"documents file not found: {path}")
        documents = _read(path)
    else:
        ref = resolve_dataset(source)
        if ref.kind in ("retrieval", "beir"):
            documents = _from_table(corpus_table(ref))
        else:
            documents = [Document(None, text) for text in load_texts(ref)]
    if not documents:
        raise DocumentsError(f"{source}: no documents in it; give the texts your model will serve, one per "
                             "line (.txt) or row (.jsonl/.tsv/.csv/.parquet with a 'text' column)")
    return documents


def load_documents(sources: str | list[str]) -> Documents:
    """The documents of one or more files, folders or data sets, each distinct text once, in order."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    first_of_each: dict[str, Document] = {}
    for source in sources:
        for document in _read_source(source):
            first_of_each.setdefault(document.formatted, document)
    return Documents(tuple(first_of_each.values()), ", ".join(sources))


def held_out_count(total: int, share: float = HELD_OUT_SHARE) -> int:
    return min(MAX_HELD_OUT, max(MIN_HELD_OUT, round(total * share)))


def split_documents(documents: Documents, share: float = HELD_OUT_SHARE) -> DocumentSplit:
    """A fixed slice held out: the documents whose text hashes lowest. It depends on the texts
    alone, not on their order or the run's seed, so every run on the same documents holds out the
    same ones and their label-free figures compare."""
    count = held_out_count(len(documents), share)
    if len(documents) < count + MIN_TRAINING:
        raise DocumentsError(
            f"{documents.source}: {len(documents)} distinct documents is too few to hold out {count} for the "
            f"label-free evaluation and train on at least {MIN_TRAINING}; give at least "
            f"{count + MIN_TRAINING} documents"
        )
    digest = [hashlib.sha1(d.formatted.encode()).hexdigest() for d in documents.documents]
    held = set(sorted(range(len(documents)), key=digest.__getitem__)[:count])
    pick = lambda keep: tuple(d for i, d in enumerate(documents.documents) if (i in held) == keep)  # noqa: E731
    return DocumentSplit(Documents(pick(False), f"{documents.source} (training)"),
                         Documents(pick(True), f"{documents.source} (held out)"))


@dataclass(frozen=True)
class LengthChoice:
    length: int
    median: int
    quantile: int  # LENGTH_QUANTILE of the documents are at most this many tokens
    model_limit: int

    def describe(self) -> str:
        reason = ("the model's limit" if self.length == self.model_limit else
                  "the automatic cap" if self.length == AUTO_LENGTH_CAP else f"{LENGTH_QUANTILE:.0%} of them whole")
        return (f"documents: median {self.median} tokens, {LENGTH_QUANTILE:.0%} within {self.quantile}; "
                f"training reads them at {self.length} tokens ({reason})")


def choose_length(tokenizer, texts: list[str], model_limit: int) -> LengthChoice:
    """The training length for these documents, from a sample of their token lengths.

    The sample is tokenized whole on purpose, so the tokenizer's "longer than the model's maximum"
    warning is silenced: nothing this long ever reaches the model.
    """
    step = max(1, math.ceil(len(texts) / LENGTH_SAMPLE))
    lengths = sorted(len(ids) for ids in tokenizer(texts[::step], truncation=False, verbose=False)["input_ids"])
    quantile = lengths[min(len(lengths) - 1, math.ceil(LENGTH_QUANTILE * len(lengths)) - 1)]
    rounded = math.ceil(quantile / LENGTH_STEP) * LENGTH_STEP
    return LengthChoice(min(rounded, model_limit, AUTO_LENGTH_CAP), lengths[len(lengths) // 2], quantile, model_limit)
