"""BGE-M3's user path through the CLI (`benchmarks/bge_m3_path.py`) on a reduced-depth stand-in of
BGE-M3's width and vocabulary (2 layers x 16 heads x 1024 hidden, 250,002 pieces), in a hub cache
laid out as a download: mask steps, final masks, fine-tuning steps, vocabulary trimming to five
languages, export, evaluation; then the export, loaded with stock libraries, must compute what the
masked model computes. The full-depth figures: `python benchmarks/bge_m3_path.py`.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.bge_m3_path import LANGUAGES, OVERRIDES, TOLERANCE, run_cli, run_figures, verify_export
from benchmarks.bge_m3_standin import Shape, write_standin
from prune_engine.export import ORIGINAL_IDS_FILE

REDUCED = Shape(layers=2, hidden=1024, heads=16, ffn=4096)
STAGES = {"load", "teacher", "steps", "slicing", "export", "evaluation"}


def use_hub_cache(monkeypatch, cache) -> None:
    """HF_HUB_CACHE=cache HF_HUB_OFFLINE=1 here (huggingface_hub read them at import) and for subprocesses."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.slow  # about a minute and a half on two CPU cores
def test_the_cli_path_at_bge_m3_width_exports_what_the_masked_model_computes(tmp_path, monkeypatch, shared_data_dir):
    write_standin(tmp_path / "hub", REDUCED, seed=0, tokenizer_dir=shared_data_dir / "xlmr-tokenizer")
    use_hub_cache(monkeypatch, tmp_path / "hub")
    env = {**os.environ, "PRUNE_ENGINE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = run_cli(tmp_path / "run", OVERRIDES, env=env)
    assert run["peak_rss_gb"] > 1.0  # the 1 GB of word embeddings was loaded, by the process measured

    figures = run_figures(tmp_path / "run")
    assert STAGES <= set(figures["timings_s"]) and all(v >= 0 for v in figures["timings_s"].values())
    assert figures["timings_s"]["teacher"] < figures["timings_s"]["steps"]
    assert [s["phase"] for s in figures["steps"]] == ["mask", "mask", "finetune", "finetune"]
    assert figures["parameters_after"]["encoder"] < 0.6 * figures["parameters_before"]["encoder"]
    vocabulary = figures["vocabulary"]
    assert vocabulary["vocab_size_before"] == 250002 and 10_000 < vocabulary["vocab_size_after"] < 100_000
    original_ids = json.loads((tmp_path / "run" / "export" / ORIGINAL_IDS_FILE).read_text())
    assert len(original_ids) == vocabulary["vocab_size_after"] and original_ids == sorted(set(original_ids))
    held_out = figures["documents"]["splits"]["held_out"]
    assert "20 pseudo-queries" in held_out["source"] and "100 of" in held_out["source"]

    checks = verify_export(tmp_path / "run", per_language=3)
    assert set(checks) == set(LANGUAGES)
    for language, check in checks.items():
        assert check["texts"] == 3 and check["tokens"] > 3 * 5, language
        assert max(check["max_abs_difference"].values()) <= TOLERANCE, (language, check)
