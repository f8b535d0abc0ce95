"""Load every kind of data the trainer and the evaluator use, from hub names or local files.

All sources end up in four small typed containers (scored sentence pairs, query–passage pairs, a
retrieval task, plain text), so the rest of the engine never looks at file formats. Local copies
under the shared data folder win over the Hugging Face hub, so tests and demos work offline; every
problem with the data is reported as a ``DataError`` that names the file, the row and the column.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .tables import (
    TABLE_SUFFIXES,
    TEXT_SUFFIX,
    DataError,
    Table,
    hub_table,
    identifier_cell,
    load_hub,
    number_cell,
    read_table,
    read_text_lines,
    text_cell,
)

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo_data"
DEMO_PAIRS = DEMO_DATA_DIR / "pairs.tsv"
DEMO_SENTENCES = DEMO_DATA_DIR / "sentences.txt"

STS_LANGUAGES = ("de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
SPLITS = ("train", "dev", "test")

# STS-B English is its own MTEB data set; the translations (no Japanese) live in stsb_multi_mt.
STSB_EN_HUB = "mteb/stsbenchmark-sts"
STSB_MULTILINGUAL_HUB = "mteb/stsb_multi_mt"
MSMARCO_HUB = "microsoft/ms_marco"
MSMARCO_CONFIG = "v1.1"
MSMARCO_LOCAL = "msmarco/msmarco_v1.1_train_sample200.jsonl"
CLUSTERING_HUB_IDS = {
    "mteb/twentynewsgroups": "mteb/twentynewsgroups-clustering",
    "mteb/twentynewsgroups-clustering": "mteb/twentynewsgroups-clustering",
}
KNOWN_DATASETS = (
    "demo",
    "sts",
    *(f"sts-{lang}" for lang in STS_LANGUAGES),
    "msmarco",
    "mteb/scifact",
    "mteb/nfcorpus",
    "mteb/arguana",
    "mteb/twentynewsgroups",
)
# Other hub names that people type for the same data sets.
DATASET_ALIASES = {STSB_EN_HUB: "sts", "ms_marco": "msmarco", MSMARCO_HUB: "msmarco"}
# Column names used by other tools for the columns this module expects.
COLUMN_ALIASES = {"similarity_score": "score", "anchor": "query"}

BEIR_QRELS_COLUMNS = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class ScoredPairs:
    """Sentence pairs with a similarity score in [0, 1] (STS style)."""

    kind: ClassVar[str] = "scored_pairs"
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    source: str

    def __post_init__(self) -> None:
        _check_same_length(
            self.source, sentences1=self.sentences1, sentences2=self.sentences2, scores=self.scores
        )

    def __len__(self) -> int:
        return len(self.scores)

    def batch(self, indices: Sequence[int]) -> tuple[list[str], list[float] | None]:
        """The texts a training step encodes (first sentences, then their partners) and the scores."""
        texts = [self.sentences1[i] for i in indices] + [self.sentences2[i] for i in indices]
        return texts, [self.scores[i] for i in indices]

    def distinct_texts(self) -> list[str]:
        return list(dict.fromkeys([*self.sentences1, *self.sentences2]))

    def parts(self) -> dict[str, list[str]]:
        """What an evaluation encodes."""
        return {"sentences 1": self.sentences1, "sentences 2": self.sentences2}


@dataclass(frozen=True)
class QueryPassagePairs:
    """Queries with one relevant passage each, and optionally passages known not to be relevant."""

    kind: ClassVar[str] = "query_passage"
    queries: list[str]
    passages: list[str]
    negatives: list[list[str]] | None
    source: str

    def __post_init__(self) -> None:
        lists = {"queries": self.queries, "passages": self.passages}
        if self.negatives is not None:
            lists["negatives"] = self.negatives
        _check_same_length(self.source, **lists)

    def __len__(self) -> int:
        return len(self.queries)

    def batch(self, indices: Sequence[int]) -> tuple[list[str], list[float] | None]:
        """Queries, their passages, then the first hard negative of each row that has one."""
        texts = [self.queries[i] for i in indices] + [self.passages[i] for i in indices]
        if self.negatives:
            texts += [self.negatives[i][0] for i in indices if self.negatives[i]]
        return texts, None

    def distinct_texts(self) -> list[str]:
        negatives = (text for row in self.negatives or [] for text in row)
        return list(dict.fromkeys([*self.queries, *self.passages, *negatives]))


@dataclass(frozen=True)
class RetrievalTask:
    """A BEIR/MTEB retrieval split: corpus text is ``(title + " " + text).strip()``."""

    kind: ClassVar[str] = "retrieval"
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str

    def distinct_texts(self) -> list[str]:
        return list(dict.fromkeys([*self.queries.values(), *self.corpus.values()]))

    def parts(self) -> dict[str, list[str]]:
        """What an evaluation encodes."""
        return {"queries": list(self.queries.values()), "documents": list(self.corpus.values())}


@dataclass(frozen=True)
class TextCorpus:
    """Unlabelled text, good for distillation and vocabulary trimming only."""

    kind: ClassVar[str] = "text"
    texts: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, indices: Sequence[int]) -> tuple[list[str], list[float] | None]:
        return [self.texts[i] for i in indices], None

    def distinct_texts(self) -> list[str]:
        return list(dict.fromkeys(self.texts))


TrainingData = ScoredPairs | QueryPassagePairs | TextCorpus
EvalData = ScoredPairs | RetrievalTask


def _check_same_length(source: str, **lists: list) -> None:
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{source}: columns have different lengths {lengths}")


# --------------------------------------------------------------------------- locations


def _shared_data_candidate() -> Path:
    configured = os.environ.get("PRUNE_ENGINE_DATA")
    return Path(configured).expanduser() if configured else PROJECT_ROOT.parent / "shared" / "data"


def shared_data_dir() -> Path:
    """The read-only shared data folder (``$PRUNE_ENGINE_DATA``, else ``../shared/data`` beside the project)."""
    path = _shared_data_candidate()
    if not path.is_dir():
        raise DataError(
            f"shared data folder not found: expected it at {path} (set PRUNE_ENGINE_DATA to move it)"
        )
    return path


def _shared_path(relative: str) -> Path | None:
    """A path inside the shared data folder if it exists there, so callers can fall back to the hub."""
    path = _shared_data_candidate() / relative
    return path if path.exists() else None


def _offline_hint(expected_local: str | None = None, layout: str = "copy") -> str:
    """Name what works without the hub, so an offline failure tells people what to use instead."""
    shared = _shared_data_candidate()
    hint = f" A local {layout} would be read from {shared / expected_local}." if expected_local else ""
    local_names = ["demo", "a .csv/.tsv/.jsonl/.parquet/.txt file", "a BEIR folder"]
    if shared.is_dir():
        local_names[1:1] = ["sts", "sts-<lang>", "msmarco", "mteb/scifact"]
        return f"{hint} Available offline: {', '.join(local_names)} (shared data at {shared})."
    return f"{hint} Available offline: {', '.join(local_names)}; shared data not found at {shared}."


# --------------------------------------------------------------------------- rows -> data


def _normalised_scores(table: Table, raw: list[float]) -> list[float]:
    """Scores on a 0–1 scale stay; if any score is above 1 the whole set is read as the 0–5 STS scale."""
    for index, score in enumerate(raw):
        if not 0.0 <= score <= 5.0:
            raise DataError(
                f"{table.where(index)}: score {score:g} is outside [0, 5]; "
                "scores must be on a 0-1 scale or the 0-5 STS scale"
            )
    scale = 5.0 if raw and max(raw) > 1.0 else 1.0
    return [score / scale for score in raw]


def _negatives(table: Table, index: int, row: dict[str, Any]) -> list[str]:
    """A row's non-relevant passages: a ``negatives`` list (or one text) and/or a single ``negative``.

    Copies of the row's own positive are dropped: MS MARCO lists some passages twice, once selected
    and once not, and training against a copy of the positive would teach the opposite of the truth.
    """
    found: list[str] = []
    for column in ("negatives", "negative"):
        value = row.get(column)
        if value is None or value == "":
            continue
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not item.strip():
                raise DataError(
                    f"{table.where(index)}: column {column!r} holds an empty or non-text negative {item!r}"
                )
            if item != row.get("positive"):
                found.append(item)
    return found


KIND_COLUMNS = {
    ScoredPairs.kind: ("sentence1", "sentence2", "score"),
    QueryPassagePairs.kind: ("query", "positive"),
    TextCorpus.kind: ("text",),
}
KIND_DESCRIPTIONS = (
    "sentence1/sentence2/score for scored pairs, query/positive[/negatives] for query-passage pairs, "
    "or text for plain text"
)


def _renamed_aliases(table: Table) -> Table:
    renames = {
        old: new for old, new in COLUMN_ALIASES.items() if old in table.columns and new not in table.columns
    }
    if not renames:
        return table
    rows = [{renames.get(key, key): value for key, value in row.items()} for row in table.rows]
    return Table(table.source, [renames.get(c, c) for c in table.columns], rows, table.line_numbers)


def _require_columns(table: Table, required: Iterable[str], expected: str | None = None) -> None:
    """Fail naming the file, the missing columns and the columns that are there."""
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise DataError(
            f"{table.source}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns) or 'none'}); "
            f"expected {expected or ', '.join(required)}"
        )


def _kind_of(table: Table, expected_kind: str | None) -> str:
    """Decide the data kind from the columns, or report the columns of the closest kind as missing."""

    def present(kind: str) -> int:
        return sum(column in table.columns for column in KIND_COLUMNS[kind])

    # A complete match wins (first in KIND_COLUMNS order); otherwise the closest kind names what is missing.
    kind = expected_kind or max(KIND_COLUMNS, key=lambda k: (present(k) == len(KIND_COLUMNS[k]), present(k)))
    _require_columns(table, KIND_COLUMNS[kind], None if expected_kind else KIND_DESCRIPTIONS)
    return kind


def _data_from_table(
    table: Table, expected_kind: str | None = None
) -> ScoredPairs | QueryPassagePairs | TextCorpus:
    """The single column -> kind dispatch used for files and hub splits alike."""
    table = _renamed_aliases(table)
    kind = _kind_of(table, expected_kind)
    if not table.rows:
        raise DataError(f"{table.source}: no data rows")
    rows = list(enumerate(table.rows))
    if kind == ScoredPairs.kind:
        return ScoredPairs(
            sentences1=[text_cell(table, i, row, "sentence1") for i, row in rows],
            sentences2=[text_cell(table, i, row, "sentence2") for i, row in rows],
            scores=_normalised_scores(table, [number_cell(table, i, row, "score") for i, row in rows]),
            source=table.source,
        )
    if kind == QueryPassagePairs.kind:
        has_negatives = "negatives" in table.columns or "negative" in table.columns
        return QueryPassagePairs(
            queries=[text_cell(table, i, row, "query") for i, row in rows],
            passages=[text_cell(table, i, row, "positive") for i, row in rows],
            negatives=[_negatives(table, i, row) for i, row in rows] if has_negatives else None,
            source=table.source,
        )
    return TextCorpus(texts=[text_cell(table, i, row, "text") for i, row in rows], source=table.source)


def _read_file(path: Path) -> TrainingData:
    if path.suffix.lower() == TEXT_SUFFIX:
        return TextCorpus(read_text_lines(path), str(path))
    return _data_from_table(read_table(path))


# --------------------------------------------------------------------------- names


def _split_name(split: str) -> str:
    """Accept the hub's "validation" for "dev" so one name works everywhere."""
    split = split.strip().lower()
    return "dev" if split == "validation" else split


def _fixed_split(split: str, source: str) -> str:
    split = _split_name(split)
    if split not in SPLITS:
        raise DataError(f"{source}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


@dataclass(frozen=True)
class DatasetRef:
    """A dataset name resolved once: which source reads it (`kind`) and with what (`argument`:
    an STS language, a hub id, a folder or a file)."""

    name: str
    kind: str  # demo | sts | msmarco | clustering | retrieval | beir | file
    argument: str = ""


def resolve_dataset(dataset: str | DatasetRef) -> DatasetRef:
    """A --dataset value -> its source, so training and evaluation agree on names."""
    if isinstance(dataset, DatasetRef):
        return dataset
    dataset = str(dataset)
    name = DATASET_ALIASES.get(dataset.strip(), dataset.strip())
    if name in ("demo", "msmarco"):
        return DatasetRef(dataset, name)
    if name == "sts" or name.startswith("sts-"):
        language = name.removeprefix("sts-") if name != "sts" else "en"
        if language not in STS_LANGUAGES:
            raise DataError(
                f"unknown STS language {language!r} in {dataset!r}; expected one of {', '.join(STS_LANGUAGES)}"
            )
        return DatasetRef(dataset, "sts", language)
    if name in CLUSTERING_HUB_IDS:
        return DatasetRef(dataset, "clustering", CLUSTERING_HUB_IDS[name])
    if re.fullmatch(r"mteb/[\w.-]+", name):
        return DatasetRef(dataset, "retrieval", name)
    path = Path(name).expanduser()
    if path.is_dir():
        return DatasetRef(dataset, "beir", str(path))
    if path.suffix.lower() in (*TABLE_SUFFIXES, TEXT_SUFFIX):
        return DatasetRef(dataset, "file", str(path))
    raise DataError(
        f"unknown dataset {dataset!r} (and no such file or folder); expected one of {', '.join(KNOWN_DATASETS)}, "
        f"another mteb/<retrieval task>, a {'/'.join(s.lstrip('.') for s in (*TABLE_SUFFIXES, TEXT_SUFFIX))} file "
        "or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
    )


# --------------------------------------------------------------------------- demo, STS, MS MARCO


def _demo_pairs(split: str) -> ScoredPairs:
    """The bundled pairs, split 80/10/10 in file order so every run sees the same split."""
    split = _fixed_split(split, str(DEMO_PAIRS))
    pairs = _data_from_table(read_table(DEMO_PAIRS), ScoredPairs.kind)
    n_train, n_dev = int(len(pairs) * 0.8), int(len(pairs) * 0.1)
    start, stop = {
        "train": (0, n_train),
        "dev": (n_train, n_train + n_dev),
        "test": (n_train + n_dev, len(pairs)),
    }[split]
    return ScoredPairs(
        pairs.sentences1[start:stop],
        pairs.sentences2[start:stop],
        pairs.scores[start:stop],
        f"demo ({split})",
    )


def _sts(language: str, split: str) -> ScoredPairs:
    split = _fixed_split(split, f"sts-{language}")
    relative = f"stsb/stsb-{language}-{split}.tsv"
    local = _shared_path(relative)
    if local:
        return _data_from_table(read_table(local), ScoredPairs.kind)
    if language == "en":
        hub_id, config, hub_split = STSB_EN_HUB, None, "validation" if split == "dev" else split
    elif language == "ja":
        raise DataError(
            f"sts-ja has no hub source; expected the local file {_shared_data_candidate() / relative}"
        )
    else:
        hub_id, config, hub_split = STSB_MULTILINGUAL_HUB, language, split
    dataset = load_hub(hub_id, config, hub_split, local_hint=_offline_hint(relative))
    return _data_from_table(
        hub_table(dataset, f"{hub_id} ({config or 'en'}, {hub_split})"), ScoredPairs.kind
    )


def _msmarco_pairs(split: str) -> QueryPassagePairs:
    """MS MARCO v1.1: each query with its first selected passage; the unselected ones are negatives."""
    split = _fixed_split(split, "msmarco")
    local = _shared_path(MSMARCO_LOCAL) if split == "train" else None
    if local:
        return _data_from_table(read_table(local), QueryPassagePairs.kind)
    # MS MARCO's test labels are not public: its validation split is the usual held-out set.
    hub_split = "train" if split == "train" else "validation"
    hint = (
        _offline_hint(MSMARCO_LOCAL)
        if split == "train"
        else " The local MS MARCO sample covers the train split only."
    )
    dataset = load_hub(MSMARCO_HUB, MSMARCO_CONFIG, hub_split, local_hint=hint)
    rows = []
    for record in dataset:
        labelled = list(
            zip(record["passages"]["passage_text"], record["passages"]["is_selected"], strict=True)
        )
        selected = [text for text, flag in labelled if flag]
        unselected = [text for text, flag in labelled if not flag]
        if selected:
            rows.append({"query": record["query"], "positive": selected[0], "negatives": unselected})
    source = f"{MSMARCO_HUB} ({MSMARCO_CONFIG}, {hub_split}, rows with a selected passage)"
    return _data_from_table(Table(source, ["query", "positive", "negatives"], rows), QueryPassagePairs.kind)


def _clustering_texts(hub_id: str) -> TextCorpus:
    """MTEB clustering sets keep lists of texts per row in a single test split; flatten them."""
    dataset = load_hub(hub_id, split="test", local_hint=_offline_hint())
    rows = [{"text": text} for texts in dataset["sentences"] for text in texts]
    return _data_from_table(Table(f"{hub_id} (test)", ["text"], rows), TextCorpus.kind)


# --------------------------------------------------------------------------- BEIR retrieval


@dataclass(frozen=True)
class _BeirTables:
    """A BEIR data set before a split is chosen: training and evaluation pick different qrels."""

    source: str
    corpus: Table
    queries: Table
    qrels: dict[str, Table]


def _local_beir(folder: Path) -> _BeirTables:
    qrels_dir = folder / "qrels"
    qrels_files = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if not qrels_files:
        raise DataError(
            f"{folder}: not a BEIR folder; expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
        )
    return _BeirTables(
        source=str(folder),
        corpus=read_table(folder / "corpus.jsonl"),
        queries=read_table(folder / "queries.jsonl"),
        qrels={_split_name(path.stem): read_table(path) for path in qrels_files},
    )


def _hub_single_split(hub_id: str, config: str, local_hint: str) -> Table:
    """MTEB stores corpus and queries as configs with one split whose name varies between data sets."""
    dataset_dict = load_hub(hub_id, config, local_hint=local_hint)
    split = config if config in dataset_dict else next(iter(dataset_dict))
    return hub_table(dataset_dict[split], f"{hub_id} ({config})")


def _beir_tables(name: str) -> _BeirTables:
    """An mteb/<name> retrieval set: the shared folder <name> when present, else the hub layout."""
    local_name = name.removeprefix("mteb/")
    local = _shared_path(local_name)
    if local and (local / "corpus.jsonl").is_file():
        return _local_beir(local)
    hint = _offline_hint(local_name, layout="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    qrels = load_hub(name, "default", local_hint=hint)
    return _BeirTables(
        source=name,
        corpus=_hub_single_split(name, "corpus", hint),
        queries=_hub_single_split(name, "queries", hint),
        qrels={_split_name(split): hub_table(qrels[split], f"{name} (qrels {split})") for split in qrels},
    )


def _texts_by_id(table: Table, with_title: bool) -> dict[str, str]:
    _require_columns(table, ("_id", "text"))
    texts = {}
    for index, row in enumerate(table.rows):
        title = row.get("title") if with_title else None
        text = f"{title or ''} {row.get('text') or ''}".strip()
        if not text:
            raise DataError(f"{table.where(index)}: empty {'title and text' if with_title else 'text'}")
        texts[identifier_cell(table, index, row, "_id")] = text
    return texts


def _qrels_split(tables: _BeirTables, split: str) -> Table:
    split = _split_name(split)
    if split not in tables.qrels:
        raise DataError(
            f"{tables.source}: no qrels for split {split!r}; available: {', '.join(tables.qrels)}"
        )
    return tables.qrels[split]


def _retrieval_task(tables: _BeirTables, split: str) -> RetrievalTask:
    """Keep only the queries judged in this split, as BEIR and MTEB evaluate them."""
    qrels_table = _qrels_split(tables, split)
    _require_columns(qrels_table, BEIR_QRELS_COLUMNS)
    all_queries = _texts_by_id(tables.queries, with_title=False)
    qrels: dict[str, dict[str, int]] = {}
    for index, row in enumerate(qrels_table.rows):
        query_id = identifier_cell(qrels_table, index, row, "query-id")
        if query_id not in all_queries:
            raise DataError(
                f"{qrels_table.where(index)}: query-id {query_id!r} is not in {tables.queries.source}"
            )
        score = number_cell(qrels_table, index, row, "score")
        qrels.setdefault(query_id, {})[identifier_cell(qrels_table, index, row, "corpus-id")] = int(score)
    return RetrievalTask(
        queries={query_id: all_queries[query_id] for query_id in qrels},
        corpus=_texts_by_id(tables.corpus, with_title=True),
        qrels=qrels,
        source=f"{tables.source} ({_split_name(split)})",
    )


def _pairs_from_qrels(task: RetrievalTask) -> QueryPassagePairs:
    """Every judgement with score > 0 becomes one (query, relevant passage) training pair."""
    queries, passages = [], []
    for query_id, judged in task.qrels.items():
        for doc_id, score in judged.items():
            if score <= 0:
                continue
            if doc_id not in task.corpus:
                raise DataError(f"{task.source}: qrels name corpus-id {doc_id!r}, which is not in the corpus")
            queries.append(task.queries[query_id])
            passages.append(task.corpus[doc_id])
    if not queries:
        raise DataError(f"{task.source}: no qrels with score > 0 to train on")
    return QueryPassagePairs(queries, passages, None, f"{task.source}, qrels with score > 0")


def retrieval_from_pairs(pairs: QueryPassagePairs) -> RetrievalTask:
    """Rank each query's passage among all passages of the set: a small real retrieval task from pair data."""
    doc_ids: dict[str, str] = {}
    for passage in [*pairs.passages, *(text for row in pairs.negatives or [] for text in row)]:
        doc_ids.setdefault(passage, f"d{len(doc_ids)}")
    query_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for query, passage in zip(pairs.queries, pairs.passages, strict=True):
        query_id = query_ids.setdefault(query, f"q{len(query_ids)}")
        qrels.setdefault(query_id, {})[doc_ids[passage]] = 1
    return RetrievalTask(
        queries={query_id: query for query, query_id in query_ids.items()},
        corpus={doc_id: passage for passage, doc_id in doc_ids.items()},
        qrels=qrels,
        source=f"{pairs.source}, pooled passages",
    )


def _beir_for(ref: DatasetRef) -> _BeirTables:
    return _local_beir(Path(ref.argument)) if ref.kind == "beir" else _beir_tables(ref.argument)


def corpus_table(dataset: str | DatasetRef) -> Table:
    """The corpus rows (`_id`, `title`, `text`) of a retrieval set or BEIR folder."""
    ref = resolve_dataset(dataset)
    if ref.kind not in ("retrieval", "beir"):
        raise DataError(f"{ref.name!r} is not a retrieval set: it has no corpus")
    return _beir_for(ref).corpus


# --------------------------------------------------------------------------- public loaders


def load_training_data(dataset: str | DatasetRef, split: str = "train") -> TrainingData:
    """What the trainer gets for a --dataset value; retrieval sets without qrels for the split give text only."""
    ref = resolve_dataset(dataset)
    if ref.kind == "demo":
        return _demo_pairs(split)
    if ref.kind == "sts":
        return _sts(ref.argument, split)
    if ref.kind == "msmarco":
        return _msmarco_pairs(split)
    if ref.kind == "clustering":
        return _clustering_texts(ref.argument)
    if ref.kind in ("retrieval", "beir"):
        tables = _beir_for(ref)
        if _split_name(split) in tables.qrels:
            return _pairs_from_qrels(_retrieval_task(tables, split))
        log.warning("%s has no %s qrels: training on its texts by distillation only", tables.source, split)
        texts = _texts_by_id(tables.queries, with_title=False) | _texts_by_id(tables.corpus, with_title=True)
        return TextCorpus(list(dict.fromkeys(texts.values())), f"{tables.source} (texts; no {split} qrels)")
    return _read_file(Path(ref.argument))


def load_eval_data(dataset: str | DatasetRef, split: str = "test") -> EvalData:
    """What the evaluator scores for a --dataset value: STS correlation data or a retrieval task
    (query-passage pairs are scored by ranking each query's passage among all their passages)."""
    ref = resolve_dataset(dataset)
    if ref.kind in ("retrieval", "beir"):
        return _retrieval_task(_beir_for(ref), split)
    if ref.kind == "clustering":
        data = None
    else:
        data = load_training_data(ref, split)
    if isinstance(data, ScoredPairs):
        return data
    if isinstance(data, QueryPassagePairs):
        return retrieval_from_pairs(data)
    raise DataError(
        f"{dataset!r} holds plain text only, which has no labels to evaluate against; "
        "evaluate on sts, sts-<lang>, demo, msmarco, an mteb/<retrieval task> or a scored-pair/query-passage file"
    )


def load_texts(dataset: str | DatasetRef, split: str = "train") -> list[str]:
    """Every distinct text of a data set (for vocabulary trimming); `demo` gives the bundled sentences."""
    ref = resolve_dataset(dataset)
    if ref.kind == "demo":
        return read_text_lines(DEMO_SENTENCES)
    return load_training_data(ref, split).distinct_texts()
