"""Load every kind of data the trainer and the evaluator use, from hub names or local files.

All sources end up in four small typed containers (scored sentence pairs, query–passage pairs, a
retrieval task, plain text), so the rest of the engine never looks at file formats. Local copies
under the shared data folder win over the Hugging Face hub, so tests and demos work offline; every
problem with the data is reported as a ``DataError`` that names the file, the row and the column.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo_data"
DEMO_PAIRS = DEMO_DATA_DIR / "pairs.tsv"
DEMO_SENTENCES = DEMO_DATA_DIR / "sentences.txt"

STS_LANGUAGES = ("de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
SPLITS = ("train", "dev", "test")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
TEXT_SUFFIX = ".txt"

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


class DataError(ValueError):
    """Bad or missing data; the message names the file, the row or column, and what was expected."""


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


@dataclass(frozen=True)
class RetrievalTask:
    """A BEIR/MTEB retrieval split: corpus text is ``(title + " " + text).strip()``."""

    kind: ClassVar[str] = "retrieval"
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str


@dataclass(frozen=True)
class TextCorpus:
    """Unlabelled text, good for distillation and vocabulary trimming only."""

    kind: ClassVar[str] = "text"
    texts: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


AnyData = ScoredPairs | QueryPassagePairs | RetrievalTask | TextCorpus


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


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Table:
    """Rows of one file or hub split, kept with their origin so every error can point at a row."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    line_numbers: list[int] | None = None  # file line of each row; None for hub data

    def where(self, index: int) -> str:
        line = f" (line {self.line_numbers[index]})" if self.line_numbers else ""
        return f"{self.source}, row {index + 1}{line}"


def _read_table(path: str | Path) -> _Table:
    """Read a .csv, .tsv (no quoting, as STS-B needs), .jsonl or .parquet file into rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(none)'}; expected one of {', '.join(TABLE_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        if suffix == ".parquet":
            return _read_parquet(path)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _read_jsonl(path, handle) if suffix == ".jsonl" else _read_delimited(path, handle, suffix)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_delimited(path: Path, handle: Iterable[str], suffix: str) -> _Table:
    tsv = suffix == ".tsv"
    reader = csv.reader(
        handle, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    )
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty file; expected a header line with column names")
    header = [name.strip() for name in header]
    rows, line_numbers = [], []
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            hint = " (a tab inside a text?)" if tsv else ""
            raise DataError(
                f"{path}, row {len(rows) + 1} (line {reader.line_num}): {len(fields)} fields, "
                f"but the header has {len(header)} ({', '.join(header)}){hint}"
            )
        rows.append(dict(zip(header, fields, strict=True)))
        line_numbers.append(reader.line_num)
    return _Table(str(path), header, rows, line_numbers)


def _read_jsonl(path: Path, handle: Iterable[str]) -> _Table:
    rows, line_numbers, columns = [], [], {}
    for line_number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {line_number}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {line_number}: expected a JSON object, found {type(row).__name__}")
        rows.append(row)
        line_numbers.append(line_number)
        columns.update(dict.fromkeys(row))
    return _Table(str(path), list(columns), rows, line_numbers)


def _read_parquet(path: Path) -> _Table:
    import pyarrow.parquet as pq  # installed with datasets; only parquet files need it

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"{path}: cannot read parquet file ({exc})") from exc
    return _Table(str(path), table.column_names, table.to_pylist())


def _hub_table(dataset: Any, source: str) -> _Table:
    return _Table(source, list(dataset.column_names), dataset.to_list())


def _load_hub(hub_id: str, config: str | None = None, split: str | None = None, *, local_hint: str) -> Any:
    """``datasets.load_dataset`` with any failure (offline, unknown name, missing split) as one DataError."""
    what = " ".join(
        part for part in (repr(hub_id), config and f"config {config!r}", split and f"split {split!r}") if part
    )
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"loading {what} needs the 'datasets' package.{local_hint}") from exc
    try:
        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, offline mode, missing repo/config/split all raise different types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"could not load {what} from the Hugging Face hub ({type(exc).__name__}: {reason}).{local_hint}"
        ) from exc


# --------------------------------------------------------------------------- rows -> data


def _text(table: _Table, index: int, row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if isinstance(value, str) and value.strip():
        return value
    problem = "is empty" if value is None or isinstance(value, str) else f"must be text, found {value!r}"
    raise DataError(f"{table.where(index)}: {column} {problem}")


def _identifier(table: _Table, index: int, row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise DataError(f"{table.where(index)}: column {column!r} must be an id, found {value!r}")
    return str(value).strip()


def _number(table: _Table, index: int, row: dict[str, Any], column: str) -> float:
    value = row.get(column)
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if number != number:  # NaN: missing, empty or not a number
        raise DataError(f"{table.where(index)}: column {column!r} must be a number, found {value!r}")
    return number


def _normalised_scores(table: _Table, raw: list[float]) -> list[float]:
    """Scores on a 0–1 scale stay; if any score is above 1 the whole set is read as the 0–5 STS scale."""
    for index, score in enumerate(raw):
        if not 0.0 <= score <= 5.0:
            raise DataError(
                f"{table.where(index)}: score {score:g} is outside [0, 5]; "
                "scores must be on a 0-1 scale or the 0-5 STS scale"
            )
    scale = 5.0 if raw and max(raw) > 1.0 else 1.0
    return [score / scale for score in raw]


def _negatives(table: _Table, index: int, row: dict[str, Any]) -> list[str]:
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


def _renamed_aliases(table: _Table) -> _Table:
    renames = {
        old: new for old, new in COLUMN_ALIASES.items() if old in table.columns and new not in table.columns
    }
    if not renames:
        return table
    rows = [{renames.get(key, key): value for key, value in row.items()} for row in table.rows]
    return _Table(table.source, [renames.get(c, c) for c in table.columns], rows, table.line_numbers)


def _require_columns(table: _Table, required: Iterable[str], expected: str | None = None) -> None:
    """Fail naming the file, the missing columns and the columns that are there."""
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise DataError(
            f"{table.source}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns) or 'none'}); "
            f"expected {expected or ', '.join(required)}"
        )


def _kind_of(table: _Table, expected_kind: str | None) -> str:
    """Decide the data kind from the columns, or report the columns of the closest kind as missing."""

    def present(kind: str) -> int:
        return sum(column in table.columns for column in KIND_COLUMNS[kind])

    # A complete match wins (first in KIND_COLUMNS order); otherwise the closest kind names what is missing.
    kind = expected_kind or max(KIND_COLUMNS, key=lambda k: (present(k) == len(KIND_COLUMNS[k]), present(k)))
    _require_columns(table, KIND_COLUMNS[kind], None if expected_kind else KIND_DESCRIPTIONS)
    return kind


def _data_from_table(
    table: _Table, expected_kind: str | None = None
) -> ScoredPairs | QueryPassagePairs | TextCorpus:
    """The single column -> kind dispatch used for files and hub splits alike."""
    table = _renamed_aliases(table)
    kind = _kind_of(table, expected_kind)
    if not table.rows:
        raise DataError(f"{table.source}: no data rows")
    rows = list(enumerate(table.rows))
    if kind == ScoredPairs.kind:
        return ScoredPairs(
            sentences1=[_text(table, i, row, "sentence1") for i, row in rows],
            sentences2=[_text(table, i, row, "sentence2") for i, row in rows],
            scores=_normalised_scores(table, [_number(table, i, row, "score") for i, row in rows]),
            source=table.source,
        )
    if kind == QueryPassagePairs.kind:
        has_negatives = "negatives" in table.columns or "negative" in table.columns
        return QueryPassagePairs(
            queries=[_text(table, i, row, "query") for i, row in rows],
            passages=[_text(table, i, row, "positive") for i, row in rows],
            negatives=[_negatives(table, i, row) for i, row in rows] if has_negatives else None,
            source=table.source,
        )
    return TextCorpus(texts=[_text(table, i, row, "text") for i, row in rows], source=table.source)


def _read_text_lines(path: Path) -> TextCorpus:
    """One text per line; blank lines are separators, not texts."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{path}: no text lines")
    return TextCorpus(texts, str(path))


def _read_file(path: Path, expected_kind: str | None = None) -> ScoredPairs | QueryPassagePairs | TextCorpus:
    if path.suffix.lower() == TEXT_SUFFIX:
        data = _read_text_lines(path)
        if expected_kind not in (None, TextCorpus.kind):
            raise DataError(
                f"{path}: a .txt file holds plain text only; expected {', '.join(KIND_COLUMNS[expected_kind])} columns"
            )
        return data
    return _data_from_table(_read_table(path), expected_kind)


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


def _resolve(dataset: str) -> tuple[str, str]:
    """Map a --dataset value to (source kind, argument), so training and evaluation agree on names."""
    name = DATASET_ALIASES.get(dataset.strip(), dataset.strip())
    if name in ("demo", "msmarco", "sts"):
        return name, ""
    if name.startswith("sts-"):
        language = name.removeprefix("sts-")
        if language not in STS_LANGUAGES:
            raise DataError(
                f"unknown STS language {language!r} in {dataset!r}; expected one of {', '.join(STS_LANGUAGES)}"
            )
        return "sts", language
    if name in CLUSTERING_HUB_IDS:
        return "clustering", CLUSTERING_HUB_IDS[name]
    if re.fullmatch(r"mteb/[\w.-]+", name):
        return "retrieval", name
    path = Path(name).expanduser()
    if path.is_dir():
        return "beir", str(path)
    if path.suffix.lower() in (*TABLE_SUFFIXES, TEXT_SUFFIX):
        return "file", str(path)
    raise DataError(
        f"unknown dataset {dataset!r} (and no such file or folder); expected one of {', '.join(KNOWN_DATASETS)}, "
        f"another mteb/<retrieval task>, a {'/'.join(s.lstrip('.') for s in (*TABLE_SUFFIXES, TEXT_SUFFIX))} file "
        "or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
    )


def _not_kind(dataset: str, wanted: str) -> DataError:
    return DataError(f"{dataset!r} does not provide {wanted}")


# --------------------------------------------------------------------------- demo, STS, MS MARCO


def _demo_pairs(split: str) -> ScoredPairs:
    """The bundled pairs, split 80/10/10 in file order so every run sees the same split."""
    split = _fixed_split(split, str(DEMO_PAIRS))
    pairs = _data_from_table(_read_table(DEMO_PAIRS), ScoredPairs.kind)
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
        return _data_from_table(_read_table(local), ScoredPairs.kind)
    if language == "en":
        hub_id, config, hub_split = STSB_EN_HUB, None, "validation" if split == "dev" else split
    elif language == "ja":
        raise DataError(
            f"sts-ja has no hub source; expected the local file {_shared_data_candidate() / relative}"
        )
    else:
        hub_id, config, hub_split = STSB_MULTILINGUAL_HUB, language, split
    dataset = _load_hub(hub_id, config, hub_split, local_hint=_offline_hint(relative))
    return _data_from_table(
        _hub_table(dataset, f"{hub_id} ({config or 'en'}, {hub_split})"), ScoredPairs.kind
    )


def _msmarco_pairs(split: str) -> QueryPassagePairs:
    """MS MARCO v1.1: each query with its first selected passage; the unselected ones are negatives."""
    split = _fixed_split(split, "msmarco")
    local = _shared_path(MSMARCO_LOCAL) if split == "train" else None
    if local:
        return _data_from_table(_read_table(local), QueryPassagePairs.kind)
    # MS MARCO's test labels are not public: its validation split is the usual held-out set.
    hub_split = "train" if split == "train" else "validation"
    hint = (
        _offline_hint(MSMARCO_LOCAL)
        if split == "train"
        else " The local MS MARCO sample covers the train split only."
    )
    dataset = _load_hub(MSMARCO_HUB, MSMARCO_CONFIG, hub_split, local_hint=hint)
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
    return _data_from_table(_Table(source, ["query", "positive", "negatives"], rows), QueryPassagePairs.kind)


def _clustering_texts(hub_id: str) -> TextCorpus:
    """MTEB clustering sets keep lists of texts per row in a single test split; flatten them."""
    dataset = _load_hub(hub_id, split="test", local_hint=_offline_hint())
    rows = [{"text": text} for texts in dataset["sentences"] for text in texts]
    return _data_from_table(_Table(f"{hub_id} (test)", ["text"], rows), TextCorpus.kind)


# --------------------------------------------------------------------------- BEIR retrieval


@dataclass(frozen=True)
class _BeirTables:
    """A BEIR data set before a split is chosen: training and evaluation pick different qrels."""

    source: str
    corpus: _Table
    queries: _Table
    qrels: dict[str, _Table]


def _local_beir(folder: Path) -> _BeirTables:
    qrels_dir = folder / "qrels"
    qrels_files = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if not qrels_files:
        raise DataError(
            f"{folder}: not a BEIR folder; expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
        )
    return _BeirTables(
        source=str(folder),
        corpus=_read_table(folder / "corpus.jsonl"),
        queries=_read_table(folder / "queries.jsonl"),
        qrels={_split_name(path.stem): _read_table(path) for path in qrels_files},
    )


def _hub_single_split(hub_id: str, config: str, local_hint: str) -> _Table:
    """MTEB stores corpus and queries as configs with one split whose name varies between data sets."""
    dataset_dict = _load_hub(hub_id, config, local_hint=local_hint)
    split = config if config in dataset_dict else next(iter(dataset_dict))
    return _hub_table(dataset_dict[split], f"{hub_id} ({config})")


def _beir_tables(name: str) -> _BeirTables:
    """An mteb/<name> retrieval set: the shared folder <name> when present, else the hub layout."""
    local_name = name.removeprefix("mteb/")
    local = _shared_path(local_name)
    if local and (local / "corpus.jsonl").is_file():
        return _local_beir(local)
    hint = _offline_hint(local_name, layout="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    qrels = _load_hub(name, "default", local_hint=hint)
    return _BeirTables(
        source=name,
        corpus=_hub_single_split(name, "corpus", hint),
        queries=_hub_single_split(name, "queries", hint),
        qrels={_split_name(split): _hub_table(qrels[split], f"{name} (qrels {split})") for split in qrels},
    )


def _texts_by_id(table: _Table, with_title: bool) -> dict[str, str]:
    _require_columns(table, ("_id", "text"))
    texts = {}
    for index, row in enumerate(table.rows):
        title = row.get("title") if with_title else None
        text = f"{title or ''} {row.get('text') or ''}".strip()
        if not text:
            raise DataError(f"{table.where(index)}: empty {'title and text' if with_title else 'text'}")
        texts[_identifier(table, index, row, "_id")] = text
    return texts


def _qrels_split(tables: _BeirTables, split: str) -> _Table:
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
        query_id = _identifier(qrels_table, index, row, "query-id")
        if query_id not in all_queries:
            raise DataError(
                f"{qrels_table.where(index)}: query-id {query_id!r} is not in {tables.queries.source}"
            )
        score = _number(qrels_table, index, row, "score")
        qrels.setdefault(query_id, {})[_identifier(qrels_table, index, row, "corpus-id")] = int(score)
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


def _beir_for(kind: str, argument: str) -> _BeirTables:
    return _local_beir(Path(argument)) if kind == "beir" else _beir_tables(argument)


# --------------------------------------------------------------------------- public loaders


def load_scored_pairs(path_or_name: str | Path, split: str = "train", language: str = "en") -> ScoredPairs:
    """STS-style pairs from ``demo``, ``sts`` / ``sts-<lang>`` (``language`` applies to plain ``sts``) or a file."""
    kind, argument = _resolve(str(path_or_name))
    if kind == "demo":
        return _demo_pairs(split)
    if kind == "sts":
        language = argument or language
        if language not in STS_LANGUAGES:
            raise DataError(f"unknown STS language {language!r}; expected one of {', '.join(STS_LANGUAGES)}")
        return _sts(language, split)
    if kind == "file":
        return _read_file(Path(argument), ScoredPairs.kind)
    raise _not_kind(str(path_or_name), "scored sentence pairs")


def load_query_passage_pairs(path_or_name: str | Path, split: str = "train") -> QueryPassagePairs:
    """Query–passage pairs from ``msmarco``, a retrieval set's qrels (score > 0) or a query/positive file."""
    kind, argument = _resolve(str(path_or_name))
    if kind == "msmarco":
        return _msmarco_pairs(split)
    if kind in ("retrieval", "beir"):
        return _pairs_from_qrels(_retrieval_task(_beir_for(kind, argument), split))
    if kind == "file":
        return _read_file(Path(argument), QueryPassagePairs.kind)
    raise _not_kind(str(path_or_name), "query-passage pairs")


def load_retrieval(path_or_name: str | Path, split: str = "test") -> RetrievalTask:
    """A retrieval task from an mteb/<name> set, a BEIR folder, or pooled from query–passage pairs."""
    kind, argument = _resolve(str(path_or_name))
    if kind in ("retrieval", "beir"):
        return _retrieval_task(_beir_for(kind, argument), split)
    if kind in ("msmarco", "file"):
        return retrieval_from_pairs(load_query_passage_pairs(path_or_name, split))
    raise _not_kind(str(path_or_name), "a retrieval task")


def load_texts(path_or_name: str | Path, split: str = "train") -> TextCorpus:
    """Plain text for distillation: ``demo`` gives the bundled sentences, anything else all its texts."""
    if _resolve(str(path_or_name))[0] == "demo":
        return _read_text_lines(DEMO_SENTENCES)
    data = load_training_data(str(path_or_name), split)
    return data if isinstance(data, TextCorpus) else TextCorpus(texts_of(data), data.source)


def load_training_data(dataset: str, split: str = "train") -> ScoredPairs | QueryPassagePairs | TextCorpus:
    """What the trainer gets for a --dataset value; retrieval sets without train qrels give text only."""
    kind, argument = _resolve(dataset)
    if kind in ("demo", "sts"):
        return load_scored_pairs(dataset, split)
    if kind == "msmarco":
        return _msmarco_pairs(split)
    if kind == "clustering":
        return _clustering_texts(argument)
    if kind in ("retrieval", "beir"):
        tables = _beir_for(kind, argument)
        if _split_name(split) in tables.qrels:
            return _pairs_from_qrels(_retrieval_task(tables, split))
        log.warning("%s has no %s qrels: training on its texts by distillation only", tables.source, split)
        texts = _texts_by_id(tables.queries, with_title=False) | _texts_by_id(tables.corpus, with_title=True)
        return TextCorpus(list(dict.fromkeys(texts.values())), f"{tables.source} (texts; no {split} qrels)")
    return _read_file(Path(argument))


def load_eval_data(dataset: str, split: str = "test") -> ScoredPairs | RetrievalTask:
    """What the evaluator scores for a --dataset value: STS correlation data or a retrieval task."""
    kind, argument = _resolve(dataset)
    if kind in ("demo", "sts"):
        return load_scored_pairs(dataset, split)
    if kind in ("msmarco", "retrieval", "beir"):
        return load_retrieval(dataset, split)
    if kind == "file":
        data = _read_file(Path(argument))
        if isinstance(data, ScoredPairs):
            return data
        if isinstance(data, QueryPassagePairs):
            return retrieval_from_pairs(data)
    raise DataError(
        f"{dataset!r} holds plain text only, which has no labels to evaluate against; "
        "evaluate on sts, sts-<lang>, demo, msmarco, an mteb/<retrieval task> or a scored-pair/query-passage file"
    )


def texts_of(data: AnyData) -> list[str]:
    """Every distinct text in a data set, in first-seen order (for distillation and vocabulary trimming)."""
    if isinstance(data, ScoredPairs):
        texts: Iterable[str] = [*data.sentences1, *data.sentences2]
    elif isinstance(data, QueryPassagePairs):
        texts = [*data.queries, *data.passages, *(text for row in data.negatives or [] for text in row)]
    elif isinstance(data, RetrievalTask):
        texts = [*data.queries.values(), *data.corpus.values()]
    elif isinstance(data, TextCorpus):
        texts = data.texts
    else:
        raise TypeError(f"texts_of expects one of the data containers, got {type(data).__name__}")
    return list(dict.fromkeys(texts))
