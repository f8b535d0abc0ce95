"""`python -m prune_engine eval` on the real all-MiniLM-L6-v2 must give the figures MTEB publishes
for it: our loader, tokenisation, pooling, metrics and CLI together reproduce MTEB's numbers."""

import json

import pytest

from prune_engine import cli


def eval_report(tmp_path, *arguments: str) -> dict:
    """The JSON report of `eval minilm ...`, with the model's declared max length (256), as MTEB uses it."""
    report_file = tmp_path / "report.json"
    assert cli.main(["eval", "minilm", *arguments, "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["max_length"] == {"model": 256}
    return report["splits"]["test"]


def test_minilm_stsb_en_test_spearman(tmp_path, shared_data_dir):
    split = eval_report(tmp_path, "--dataset", "sts")
    assert split["source"] == str(shared_data_dir / "stsb" / "stsb-en-test.tsv")
    assert split["metrics"]["spearman"]["score"] == pytest.approx(82.03, abs=0.1)


@pytest.mark.slow  # 5183 abstracts: about five minutes on two CPU cores
def test_minilm_scifact_test_retrieval(tmp_path, shared_data_dir):
    split = eval_report(tmp_path, "--dataset", "mteb/scifact")
    assert split["source"] == f"{shared_data_dir / 'scifact'} (test)"
    metrics = {name: row["score"] for name, row in split["metrics"].items()}
    assert metrics["ndcg_at_10"] == pytest.approx(64.51, abs=0.3)
    assert metrics["recall_at_100"] == pytest.approx(92.50, abs=0.5)
