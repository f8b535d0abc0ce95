"""The Streamlit workbench, driven page by page through Streamlit's AppTest (no browser).

Sizes shown on Configure are checked against `accounting`; a tiny demo run is started from the
Train page and followed to its end; its export is loaded back; bad input shows st.error and keeps
the other inputs. The run manager's own rules (paths, one run at a time, reading a run directory
that is being written) are tested directly.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from prune_engine.accounting import Structure, ffn_parameters_per_neuron, size_report
from prune_engine.config import load_config
from prune_engine.encoding_cache import CACHE_ENV
from prune_engine.presets import ORIGINAL_PRESETS, bge_m3_config
from workbench import exporting, models, runs, settings, ui

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TINY_RUN = {"cfg.steps": 6, "cfg.batch_size": 4, "cfg.max_length": 32, "cfg.log_every": 2, "cfg.checkpoint_every": 1000}


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv(runs.WORKSPACE_ENV, str(path))
    return path


def open_app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=180).run()


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def errors(at: AppTest) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def configure_tiny_run(at: AppTest) -> None:
    for key, value in TINY_RUN.items():
        at.number_input(key=key).set_value(value)
    at.run()
    assert errors(at) == [] and at.success, "the Configure page should be ready"


# --------------------------------------------------------------------------- Configure


def test_architecture_sliders_show_the_accounting_sizes(workspace):
    at = open_app()
    assert at.radio(key="cfg.model").value == "MiniLM demo (bundled)"  # no GPU here: the demo by default
    at.radio(key="cfg.target_kind").set_value("Architecture").run()
    config = models.model_shape("minilm").config
    for layers, heads, ffn, length in ((6, 12, 1536, 512), (4, 8, 768, 512), (2, 3, 96, 128)):
        at.slider(key="cfg.n_layers").set_value(layers)
        at.slider(key="cfg.n_heads").set_value(heads)
        at.slider(key="cfg.ffn").set_value(ffn)
        at.select_slider(key="cfg.flops_length").set_value(length).run()
        assert errors(at) == []
        report = size_report(config, Structure.uniform(layers, heads, ffn, config.vocab_size), length)
        assert metric(at, "Total parameters after") == f"{report.after.total:,}"
        assert metric(at, "Encoder parameters after") == f"{report.after.encoder:,}"
        assert metric(at, "Predicted speedup") == f"{report.predicted_speedup:.2f}x"
        table = at.dataframe[0].value
        for part in ("embeddings", "encoder", "total"):
            assert table.loc[part, "before"] == getattr(report.before, part)
            assert table.loc[part, "after"] == getattr(report.after, part)
        assert table.loc["FLOPs per token", "after"] == report.flops_after
    assert at.session_state[ui.CONFIG_KEY].target_model.n_layers == 2


def test_budget_slider_spends_the_budget(workspace):
    at = open_app()
    at.slider(key="cfg.budget_percent").set_value(30).run()
    config = models.model_shape("minilm").config
    full = size_report(config, Structure.of(config)).before.encoder
    shown = int(metric(at, "Encoder parameters after").replace(",", ""))
    budget = round(0.3 * full)
    assert 0 <= budget - shown < config.num_hidden_layers * ffn_parameters_per_neuron(config.hidden_size)
    assert at.session_state[ui.CONFIG_KEY].target_params.fraction == 0.3


def test_trimming_the_vocabulary_shrinks_the_embeddings_shown(workspace):
    at = open_app()
    at.radio(key="cfg.target_kind").set_value("Architecture").run()
    at.slider(key="cfg.n_layers").set_value(4)
    at.slider(key="cfg.n_heads").set_value(9)
    at.slider(key="cfg.ffn").set_value(1152)
    at.toggle(key="cfg.trim_vocabulary").set_value(True).run()
    assert errors(at) == []
    plan = settings.vocabulary_plan("minilm", "demo")
    assert any(f"keeps {plan.vocab_size:,} of 30,522 tokens" in c.value for c in at.caption)
    config = models.model_shape("minilm").config
    report = size_report(config, Structure.uniform(4, 9, 1152, plan.vocab_size))
    assert at.dataframe[0].value.loc["embeddings", "after"] == report.after.embeddings
    assert metric(at, "Total parameters after") == f"{report.after.total:,}"
    assert at.session_state[ui.CONFIG_KEY].vocab is not None


def test_presets_table_shows_their_true_sizes(workspace):
    at = open_app()
    presets = at.dataframe[1].value
    bge = bge_m3_config()
    for name, preset in ORIGINAL_PRESETS.items():
        structure = Structure.uniform(preset["n_layers"], preset["n_heads"], preset["intermediate_size"], bge.vocab_size)
        report = size_report(bge, structure, 512)
        assert presets.loc[name, "total parameters"] == report.after.total
        assert presets.loc[name, "true total cut"] == f"{report.total_reduction:.1%}"


def test_a_fixed_structure_from_the_settings_shows_its_sizes(workspace, tmp_path):
    import torch

    from prune_engine.l0 import StructureMasks

    config = models.model_shape("minilm").config
    masks = StructureMasks(layers=torch.tensor([True] * 5 + [False]), heads=[torch.arange(12) < 6 + i for i in range(6)],
                           ffn=[torch.arange(1536) < 100 * (i + 1) for i in range(6)])
    path = tmp_path / "final_masks.json"
    path.write_text(json.dumps(masks.as_dict()))
    at = open_app()
    at.text_area(key="cfg.overrides").set_value(f"fixed_masks={path}").run()
    report = size_report(config, masks.kept_structure(config.vocab_size))
    assert errors(at) == [] and metric(at, "Total parameters after") == f"{report.after.total:,}"
    assert at.session_state[ui.CONFIG_KEY].fixed_masks == str(path)
    path.write_text("{}")
    at.run()
    assert any("cannot read it as a final_masks.json" in e for e in errors(at))


def test_bad_input_shows_an_error_and_keeps_the_other_inputs(workspace, tmp_path):
    at = open_app()
    at.number_input(key="cfg.steps").set_value(7).run()

    at.radio(key="cfg.model").set_value("Another model (hub id or local path)").run()
    at.text_input(key="cfg.model_other").set_value("./no/such/model").run()
    assert any("is not a model directory" in e for e in errors(at))
    at.radio(key="cfg.model").set_value("MiniLM demo (bundled)").run()
    assert errors(at) == []

    bad_file = tmp_path / "pairs.csv"
    bad_file.write_text("left,right\na,b\nc,d\n")
    at.selectbox(key="cfg.data").set_value("Local file or BEIR folder").run()
    at.text_input(key="cfg.data_path").set_value(str(bad_file)).run()
    assert any("pairs.csv" in e and "column" in e for e in errors(at))
    assert at.warning and ui.CONFIG_KEY in at.session_state and at.session_state[ui.CONFIG_KEY] is None
    at.selectbox(key="cfg.data").set_value("Bundled demo pairs").run()

    at.text_area(key="cfg.overrides").set_value(
        "target_model={n_layers: 99, n_heads: 12, intermediate_size: 1536}").run()
    assert any("n_layers=99 but the model has 6" in e for e in errors(at))
    at.text_area(key="cfg.overrides").set_value("no_such_key=1").run()
    assert any("unknown key no_such_key" in e for e in errors(at))
    at.text_area(key="cfg.overrides").set_value("").run()

    assert errors(at) == [] and at.number_input(key="cfg.steps").value == 7


def test_settings_survive_a_page_switch(workspace):
    at = open_app()
    at.number_input(key="cfg.steps").set_value(9)
    at.radio(key="cfg.target_kind").set_value("Architecture").run()
    at.slider(key="cfg.n_layers").set_value(3).run()
    at.switch_page("pages/runs.py").run()
    assert errors(at) == []
    at.switch_page("app.py").run()
    assert at.number_input(key="cfg.steps").value == 9 and at.slider(key="cfg.n_layers").value == 3


def test_pages_without_runs_say_what_to_do(workspace):
    at = open_app()
    for page in ("pages/evaluate.py", "pages/export.py", "pages/similarity.py", "pages/runs.py"):
        at.switch_page(page).run()
        assert errors(at) == [] and any("No finished run yet" in i.value for i in at.info), page
    at.switch_page("pages/train.py").run()
    assert errors(at) == [] and any("press Start" in i.value for i in at.info)


# --------------------------------------------------------------------------- a run, end to end


def wait_until_finished(at: AppTest, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while runs.RunManager(runs.workspace_dir()).active() is not None:
        assert time.monotonic() < deadline, "the demo run did not finish in time"
        time.sleep(2)
        at.run()
        assert errors(at) == []
    at.run()


@pytest.mark.slow
def test_demo_run_from_the_train_page_to_export_evaluation_and_similarity(workspace, monkeypatch, tmp_path):
    at = open_app()
    configure_tiny_run(at)
    at.switch_page("pages/train.py").run()
    at.button(key="train.start").click().run()
    assert errors(at) == []
    assert at.button(key="train.start").disabled  # one run at a time
    assert any("One run at a time" in i.value for i in at.info)
    # Stopped while the model loads: it saves a checkpoint before its first step; resumed from there.
    at.button(key="train.stop").click().run()
    wait_until_finished(at)
    (record,) = runs.RunManager(workspace).runs()
    assert record.state() == "cancelled" and not at.button(key="train.resume").disabled
    at.button(key="train.resume").click().run()
    assert errors(at) == [] and at.button(key="train.resume").disabled
    wait_until_finished(at)

    assert record.state() == "done" and record.export_dir is not None
    heatmaps = [f for f in figures(at) if f["data"][0]["type"] == "heatmap"]
    assert heatmaps and heatmaps[0]["data"][0]["z"] == record.latest_gates()["heads"]
    assert any(str(record.export_dir) in s.value for s in at.success)

    # A new session (a reloaded browser) finds the run on disk.
    again = open_app()
    again.switch_page("pages/train.py").run()
    assert any(record.name in str(p.proto) for p in again.get("progress"))

    # Export: written, listed, loadable; never over an existing directory; relative paths stay inside.
    at.switch_page("pages/export.py").run()
    at.text_input[0].set_value("exports/demo")
    at.button(key="export.run").click().run()
    destination = workspace / "exports" / "demo"
    assert errors(at) == [] and (destination / "model.safetensors").is_file()
    assert "model.safetensors" in at.dataframe[0].value["file"].tolist()
    assert any(str(destination) in c.value for c in at.code)
    from sentence_transformers import SentenceTransformer

    remote = json.loads((destination / "pruning_info.json").read_text())["needs_trust_remote_code"]
    vectors = SentenceTransformer(str(destination), trust_remote_code=remote, device="cpu").encode(["a cat sits"])
    assert vectors.shape == (1, 384)
    at.button(key="export.run").click().run()
    assert any("already exists" in e for e in errors(at))
    at.text_input[0].set_value("../outside")
    at.button(key="export.run").click().run()
    assert any("outside the workspace" in e for e in errors(at))

    at.switch_page("pages/evaluate.py").run()
    at.text_input[0].set_value("no-such-data")
    at.button(key="evaluate.run").click().run()
    assert any("unknown dataset 'no-such-data'" in e for e in errors(at))
    at.text_input[0].set_value("demo")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # empty, whatever other tests cached
    at.button(key="evaluate.run").click().run()
    assert errors(at) == []
    assert metric(at, "Measured speedup").endswith("x")
    rows = at.dataframe[0].value
    assert "spearman" in rows["metric"].tolist()
    assert record.evaluation()["speed"]["texts"] > 0
    # The original's encodings of the demo data, for the next run evaluated on it.
    assert len(list((tmp_path / "cache" / "encodings").glob("*.npz"))) == 1

    at.switch_page("pages/similarity.py").run()
    assert errors(at) == []
    assert [f["data"][0]["type"] for f in figures(at)] == ["heatmap", "heatmap"]
    assert list(at.dataframe[0].value.columns) == ["Original", "Pruned"]
    at.radio[0].set_value("A query and passages").run()
    assert errors(at) == [] and metric(at, "Ranks on which the two models agree").endswith("of 4")
    (scores,) = figures(at)
    assert [trace["name"] for trace in scores["data"]] == ["Original", "Pruned"]

    at.switch_page("pages/runs.py").run()
    assert errors(at) == []
    table = at.dataframe[0].value
    assert table["run"].tolist() == [record.name] and table["state"].tolist() == ["done"]
    assert table["score retained"].notna().all()


# --------------------------------------------------------------------------- the run manager


def test_relative_destinations_stay_in_the_workspace(tmp_path):
    workspace = tmp_path / "ws"
    assert exporting.resolve_destination("exports/a", workspace) == workspace / "exports" / "a"
    assert exporting.resolve_destination(str(tmp_path / "elsewhere"), workspace) == tmp_path / "elsewhere"
    for bad in ("../a", "exports/../../a", "  "):
        with pytest.raises(runs.WorkbenchError):
            exporting.resolve_destination(bad, workspace)


def test_an_export_is_listed_zipped_and_loaded_as_shown(tmp_path):
    export = tmp_path / "model"
    (export / "1_Pooling").mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export / "1_Pooling" / "config.json").write_text('{"a": 1}')
    assert exporting.directory_listing(export) == [{"file": "1_Pooling/config.json", "bytes": 8},
                                            {"file": "config.json", "bytes": 2}]
    names = zipfile.ZipFile(io.BytesIO(exporting.zip_directory(export))).namelist()
    assert sorted(names) == ["model/1_Pooling/config.json", "model/config.json"]
    snippet = exporting.loading_snippet(export, remote_code=True)
    assert f"SentenceTransformer({str(export)!r}, trust_remote_code=True)" in snippet and len(snippet.splitlines()) == 3


def test_a_run_directory_is_read_while_it_is_written(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 2, "loss/total": 1.0}\n{"step": 4, "loss/to')
    (run / "status.json").write_text(json.dumps({"state": "running", "step": 0, "total_steps": 10, "pid": 0}))
    record = runs.RunRecord(run)
    assert [m["step"] for m in record.metrics()] == [2]
    assert record.progress() == (2, 10)
    assert record.state() == "interrupted"  # no process runs it any more
    assert not record.can_resume()  # and it left no checkpoint


def test_one_run_at_a_time(workspace, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(runs, "_train", lambda *args: release.wait(30))
    manager = runs.RunManager(workspace)
    config = load_config(settings.DEMO_CONFIG)
    try:
        first = manager.start(config, "first")
        assert manager.active() == first and first.state() == "starting"
        with pytest.raises(runs.WorkbenchError, match="one run at a time on this device.*'first' is training"):
            runs.RunManager(workspace.parent / "other").start(config, "second")
        with pytest.raises(runs.WorkbenchError, match="already exists"):
            manager.start(config, "first")
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while manager.active() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.active() is None


def test_a_failed_start_is_reported_in_the_run_directory(workspace):
    manager = runs.RunManager(workspace)
    record = manager.start(load_config(settings.DEMO_CONFIG, ["dataset=/no/such/file.tsv"]), "bad-data")
    deadline = time.monotonic() + 60
    while manager.active() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record.state() == "failed"
    assert "/no/such/file.tsv" in record.status()["message"]
    assert record.status()["pid"] == os.getpid()
    at = open_app()
    at.switch_page("pages/train.py").run()
    assert any(e.startswith("The run failed:") and "/no/such/file.tsv" in e for e in errors(at))
    assert at.button(key="train.resume").disabled  # it failed before its first checkpoint
