"""The Streamlit workbench, driven page by page through Streamlit's AppTest (no browser).

The Configure page edits one RunConfig: a widget's change lands in the config.yaml it shows and in
the started run's; sizes shown are checked against `accounting`; the documents field shows the
engine's counts, training length and errors. Tiny runs (a random BERT on 60 documents) show their
label-free figures on the Train, Runs and Evaluate pages; the Export page shows where it writes and
why it refuses. A demo run is started from the Train page, stopped, resumed and followed to its
end. The run manager's own rules (paths, one run at a time, reading a run directory that is being
written) are tested directly.
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
import yaml
from streamlit.testing.v1 import AppTest

from prune_engine.accounting import Structure, ffn_parameters_per_neuron, size_report
from prune_engine.config import load_config
from prune_engine.data import DataError
from prune_engine.documents import NO_DOCUMENTS_WARNING, choose_length, load_documents, split_documents
from prune_engine.encoding_cache import CACHE_ENV
from prune_engine.presets import ORIGINAL_PRESETS, bge_m3_config
from prune_engine.sources import bundled_minilm_dir, load_embedder
from prune_engine.trainer import PruningRun
from workbench import charts, exporting, models, runs, settings, ui

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TINY_RUN = {"cfg.batch_size": 4, "cfg.max_length": 32, "cfg.log_every": 2, "cfg.checkpoint_every": 1000}
LABEL_FREE_TITLE = "Retrieval on your held-out documents (label-free)"


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv(runs.WORKSPACE_ENV, str(path))
    return path


@pytest.fixture(scope="module")
def documents_file(shared_data_dir, tmp_path_factory) -> Path:
    """The first 60 SciFact abstracts (title and text), as a user's documents: 20 held out, 40 to train on."""
    with (shared_data_dir / "scifact" / "corpus.jsonl").open(encoding="utf-8") as corpus:
        lines = [next(corpus) for _ in range(60)]
    path = tmp_path_factory.mktemp("documents") / "docs.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
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


def figure_titled(at: AppTest, title: str) -> dict:
    (figure,) = [f for f in figures(at) if f["layout"].get("title", {}).get("text") == title]
    return figure


def text_input(at: AppTest, label: str):
    return next(t for t in at.text_input if t.label == label)


def configure_tiny_run(at: AppTest, steps: int = 6) -> None:
    for key, value in TINY_RUN.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="cfg.max_duration").set_value(f"{steps}ba")
    at.run()
    assert errors(at) == [] and at.success, "the Configure page should be ready"


def wait_until_finished(at: AppTest, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while runs.RunManager(runs.workspace_dir()).active() is not None:
        assert time.monotonic() < deadline, "the run did not finish in time"
        time.sleep(2)
        at.run()
        assert errors(at) == []
    at.run()


def assert_label_free_figures_shown(at: AppTest, report: dict) -> None:
    """The label-free report drawn: retention, agreement and cosine as metrics, the bars as reported."""
    rows = report["splits"]["held_out"]["metrics"]
    assert metric(at, "nDCG@10 retained") == f"{rows['ndcg_at_10']['retained']:.1%}"
    assert metric(at, "Top-10 agreement") == f"{rows['top10_agreement']['pruned']:.1%}"
    assert metric(at, "Mean cosine to the original") == f"{rows['mean_cosine_to_original']['pruned']:.3f}"
    original, pruned = figure_titled(at, LABEL_FREE_TITLE)["data"]
    names = [name for name in charts.LABEL_FREE_BARS if name in rows]
    assert names[0] == "ndcg_at_10" and names[-1] == "pruned_queries_original_index/ndcg_at_10"
    assert original["y"] == pytest.approx([rows[name]["original"] for name in names])
    assert pruned["y"] == pytest.approx([rows[name]["pruned"] for name in names])


# --------------------------------------------------------------------------- Configure


def test_architecture_sliders_show_the_accounting_sizes(workspace):
    at = open_app()
    assert at.radio(key="cfg.model").value == "MiniLM demo (bundled)"  # no GPU here: the demo by default
    at.radio(key="cfg.target_kind").set_value("Architecture").run()
    config = models.model_shape("minilm").config
    for layers, heads, ffn, length in ((6, 12, 1536, 512), (4, 8, 768, 512), (2, 3, 96, 128)):
        at.slider(key="cfg.target_model.n_layers").set_value(layers)
        at.slider(key="cfg.target_model.n_heads").set_value(heads)
        at.slider(key="cfg.target_model.intermediate_size").set_value(ffn)
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
    configured = at.session_state[ui.CONFIG_KEY]
    assert configured.target_model.n_layers == 2 and configured.target_params is None
    # Fewer layers than the model has: layers join the pruned structures, and the widget shows it.
    assert "layers" in configured.structures and "layers" in at.multiselect(key="cfg.structures").value


def test_budget_slider_spends_the_budget(workspace):
    at = open_app()
    at.slider(key="cfg.target_params.fraction").set_value(0.3).run()
    config = models.model_shape("minilm").config
    full = size_report(config, Structure.of(config)).before.encoder
    shown = int(metric(at, "Encoder parameters after").replace(",", ""))
    budget = round(0.3 * full)
    assert 0 <= budget - shown < config.num_hidden_layers * ffn_parameters_per_neuron(config.hidden_size)
    assert at.session_state[ui.CONFIG_KEY].target_params.fraction == 0.3


def shown_config_file(at: AppTest) -> str:
    (block,) = [c.value for c in at.code if c.language == "yaml"]
    return block


def test_the_page_edits_one_config_and_shows_its_config_file(workspace):
    at = open_app()
    assert at.session_state[ui.DRAFT_KEY] == settings.default_config("minilm")
    at.number_input(key="cfg.batch_size").set_value(6)
    at.number_input(key="cfg.optimizer.lr").set_value(3e-4)
    at.text_input(key="cfg.max_duration").set_value("2ep")
    at.text_input(key="cfg.run_name").set_value("named").run()
    shown = yaml.safe_load(shown_config_file(at))
    assert shown["batch_size"] == 6 and shown["optimizer"]["lr"] == 3e-4 and shown["max_duration"] == "2ep"
    assert shown["output_dir"] == str(workspace / "named")
    assert shown == {**at.session_state[ui.CONFIG_KEY].to_dict(), "output_dir": str(workspace / "named")}
    assert any("2 epochs" in s.value for s in at.success)

    # key=value lines apply on top of the widgets' config, and say which keys they set.
    at.text_area(key="cfg.overrides").set_value("loss.task=0.5\nbatch_size=8").run()
    shown = yaml.safe_load(shown_config_file(at))
    assert shown["loss"]["task"] == 0.5 and shown["batch_size"] == 8
    assert at.session_state[ui.DRAFT_KEY].batch_size == 6 and at.number_input(key="cfg.batch_size").value == 6
    assert any("The key=value lines set loss.task, batch_size" in c.value for c in at.caption)
    at.text_area(key="cfg.overrides").set_value("loss.no_such_weight=1").run()
    assert any("unknown key loss.no_such_weight" in e for e in errors(at))
    at.text_area(key="cfg.overrides").set_value("").run()

    # A value the config refuses is explained under its widget, which shows the config's value again.
    at.text_input(key="cfg.max_duration").set_value("12").run()
    assert any(e.startswith("Training length: max_duration must look like") for e in errors(at))
    assert at.text_input(key="cfg.max_duration").value == "2ep"
    at.run()
    assert errors(at) == []

    # A new model starts from its own defaults.
    at.radio(key="cfg.model").set_value("Another model (hub id or local path)").run()
    at.text_input(key="cfg.model_other").set_value(str(bundled_minilm_dir())).run()
    assert at.session_state[ui.DRAFT_KEY] == settings.default_config(str(bundled_minilm_dir()))
    assert at.number_input(key="cfg.batch_size").value == at.session_state[ui.DRAFT_KEY].batch_size == 16


def test_documents_are_counted_split_and_measured_on_the_page(workspace, documents_file):
    at = open_app()
    assert [i.value for i in at.info].count(settings.NO_DOCUMENTS) == 1
    at.text_input(key="cfg.documents").set_value(str(documents_file)).run()
    assert errors(at) == [] and settings.NO_DOCUMENTS not in [i.value for i in at.info]
    split = split_documents(load_documents(str(documents_file)))
    assert (metric(at, "Documents"), metric(at, "Trained on"), metric(at, "Held out")) == ("60", "40", "20")
    assert len(split.held_out) == 20
    # The demo config fixes 64 tokens; emptied, the length is chosen from the documents as a run chooses it.
    assert any(c.value == "Training reads them at 64 tokens (Max tokens per text, below)." for c in at.caption)
    at.number_input(key="cfg.max_length").set_value(None).run()
    tokenizer = settings.load_tokenizer("minilm")
    choice = choose_length(tokenizer, split.training.texts(), load_embedder("minilm").max_length)
    assert any(c.value == f"Length: {choice.describe()}." for c in at.caption)
    assert at.session_state[ui.CONFIG_KEY].max_length is None

    # Documents only: the task data is optional once documents are given.
    at.selectbox(key="cfg.data").set_value("None: documents only").run()
    configured = at.session_state[ui.CONFIG_KEY]
    assert configured.dataset is None and configured.documents == str(documents_file)
    assert any("on documents docs.jsonl," in s.value for s in at.success)
    at.text_input(key="cfg.documents").set_value("").run()  # neither documents nor task data: refused
    assert any("give documents (the texts the model will serve: recommended) or a dataset" in e for e in errors(at))
    assert at.text_input(key="cfg.documents").value == str(documents_file)


@pytest.mark.parametrize("content", ["empty", "unknown format", "too few"])
def test_unusable_documents_show_the_engines_message(workspace, tmp_path, content):
    lines = [f"passage number {i} about zebrafish topic {i % 5}" for i in range(30)]
    path = {"empty": tmp_path / "empty.txt", "unknown format": tmp_path / "docs.xml",
            "too few": tmp_path / "few.txt"}[content]
    path.write_text("" if content == "empty" else "\n".join(lines) + "\n")
    with pytest.raises(DataError) as refused:
        split_documents(load_documents(str(path)))
    at = open_app()
    at.text_input(key="cfg.documents").set_value(str(path)).run()
    assert errors(at) == [f"Documents: {refused.value}"]
    assert at.session_state[ui.CONFIG_KEY] is None and not at.success


def test_trimming_the_vocabulary_shrinks_the_embeddings_shown(workspace):
    at = open_app()
    at.radio(key="cfg.target_kind").set_value("Architecture").run()
    at.slider(key="cfg.target_model.n_layers").set_value(4)
    at.slider(key="cfg.target_model.n_heads").set_value(9)
    at.slider(key="cfg.target_model.intermediate_size").set_value(1152)
    at.toggle(key="cfg.vocab").set_value(True).run()
    assert errors(at) == []
    plan = settings.vocabulary_plan(settings.load_tokenizer("minilm"), settings.vocabulary_texts("demo", None))
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


def test_a_latency_target_from_the_settings_replaces_the_pages_and_is_sized_by_the_run(workspace):
    at = open_app()
    at.text_area(key="cfg.overrides").set_value("target_speedup=1.5").run()
    assert errors(at) == []
    configured = at.session_state[ui.CONFIG_KEY]
    assert configured.target_speedup == 1.5 and configured.target_params is None
    assert any(i.value.startswith("A latency target: the run measures this machine") for i in at.info)
    at.switch_page("pages/train.py").run()
    assert any("1.5x faster" in m.value for m in at.markdown)


def number(text: str) -> float:
    """A metric's number: '2.03x' -> 2.03, '266.4 ms' -> 266.4."""
    return float(text.removesuffix("x").removesuffix(" ms").replace(",", ""))


def test_a_speedup_target_is_timed_on_this_machine_and_predicts_its_latency(workspace):
    at = open_app()
    at.radio(key="cfg.target_kind").set_value("Speedup on this machine").run()
    shown = yaml.safe_load(shown_config_file(at))
    assert shown["target_speedup"] == settings.DEFAULT_TARGET_SPEEDUP == 2.0 and shown["target_params"] is None
    assert errors(at) == [] and at.session_state[ui.CONFIG_KEY].target_speedup == 2.0
    # Until the model is timed here, the panel says the run will; a small batch keeps the timing short.
    assert not [m for m in at.metric if m.label == "Predicted latency"]
    at.number_input(key="cfg.latency_batch_size").set_value(4)
    at.number_input(key="cfg.latency_length").set_value(32).run()
    at.button(key="cfg.calibrate").click().run()
    assert errors(at) == []
    speedup, latency = number(metric(at, "Predicted latency speedup")), number(metric(at, "Predicted latency"))
    unpruned = number(metric(at, "Unpruned latency"))
    assert 1.995 <= speedup <= 2.5 and latency * speedup == pytest.approx(unpruned, rel=0.02)
    assert number(metric(at, "Predicted speedup")) > 1.0  # the FLOP prediction, beside it
    at.number_input(key="cfg.target_speedup").set_value(3.0).run()
    assert at.session_state[ui.CONFIG_KEY].target_speedup == 3.0 and number(metric(at, "Predicted latency speedup")) >= 2.995
    shown = yaml.safe_load(shown_config_file(at))
    assert (shown["latency_batch_size"], shown["latency_length"]) == (4, 32)

    # Seconds per batch: half the unpruned model's time once this machine is timed; met by the plan.
    at.radio(key="cfg.target_kind").set_value("Latency").run()
    configured = at.session_state[ui.CONFIG_KEY]
    assert configured.target_speedup is None and configured.target_latency == pytest.approx(unpruned / 2000, rel=0.01)
    assert errors(at) == [] and number(metric(at, "Predicted latency")) <= configured.target_latency * 1000 + 0.05
    at.number_input(key="cfg.target_latency").set_value(unpruned / 1000 * 2).run()  # slower than the original
    assert any("outside what pruning heads, ffn reaches" in e for e in errors(at))
    at.radio(key="cfg.target_kind").set_value("Parameter budget").run()
    configured = at.session_state[ui.CONFIG_KEY]
    assert configured.target_params.fraction == 0.5 and configured.target_latency is None and errors(at) == []


def test_alignment_and_serving_options_are_written_into_the_config(workspace):
    at = open_app()
    assert at.number_input(key="cfg.align_ffn").value is None and not at.toggle(key="cfg.serving.onnx").value
    at.toggle(key="cfg.serving.onnx").set_value(True)
    at.number_input(key="cfg.serving.int8_threshold").set_value(0.95)
    at.number_input(key="cfg.align_ffn").set_value(64).run()
    assert errors(at) == []
    shown = yaml.safe_load(shown_config_file(at))
    assert shown["serving"] == {"onnx": True, "int8_threshold": 0.95} and shown["align_ffn"] == 64
    configured = at.session_state[ui.CONFIG_KEY]
    assert configured.serving.onnx and configured.alignment(on_gpu=False).ffn == 64
    at.number_input(key="cfg.align_ffn").set_value(None).run()
    assert at.session_state[ui.CONFIG_KEY].align_ffn is None  # the engine's default again


def test_bad_input_shows_an_error_and_keeps_the_other_inputs(workspace, tmp_path):
    at = open_app()
    at.text_input(key="cfg.max_duration").set_value("7ba").run()

    at.radio(key="cfg.model").set_value("Another model (hub id or local path)").run()
    at.text_input(key="cfg.model_other").set_value("./no/such/model").run()
    assert any("is not a model directory" in e for e in errors(at))
    at.radio(key="cfg.model").set_value("MiniLM demo (bundled)").run()
    assert errors(at) == []

    bad_file = tmp_path / "pairs.csv"
    bad_file.write_text("left,right\na,b\nc,d\n")
    at.selectbox(key="cfg.data").set_value("Local file or BEIR folder").run()
    assert any("Name the task data's file" in i.value for i in at.info) and not at.success
    at.text_input(key="cfg.data_path").set_value(str(bad_file)).run()
    assert any("pairs.csv" in e and "column" in e for e in errors(at))
    assert at.warning and ui.CONFIG_KEY in at.session_state and at.session_state[ui.CONFIG_KEY] is None
    at.selectbox(key="cfg.data").set_value("None: documents only").run()  # no documents either: refused
    assert any(e.startswith("Task data: give documents") for e in errors(at))
    at.selectbox(key="cfg.data").set_value("Bundled demo pairs").run()

    at.text_area(key="cfg.overrides").set_value(
        "target_model={n_layers: 99, n_heads: 12, intermediate_size: 1536}").run()
    assert any("n_layers=99 but the model has 6" in e for e in errors(at))
    at.text_area(key="cfg.overrides").set_value("no_such_key=1").run()
    assert any("unknown key no_such_key" in e for e in errors(at))
    at.text_area(key="cfg.overrides").set_value("").run()

    assert errors(at) == [] and at.text_input(key="cfg.max_duration").value == "7ba"


def test_settings_survive_a_page_switch(workspace, documents_file):
    at = open_app()
    at.text_input(key="cfg.max_duration").set_value("9ba")
    at.text_input(key="cfg.documents").set_value(str(documents_file))
    at.radio(key="cfg.target_kind").set_value("Architecture").run()
    at.slider(key="cfg.target_model.n_layers").set_value(3).run()
    at.switch_page("pages/runs.py").run()
    assert errors(at) == []
    at.switch_page("app.py").run()
    assert at.text_input(key="cfg.max_duration").value == "9ba" and at.slider(key="cfg.target_model.n_layers").value == 3
    assert at.text_input(key="cfg.documents").value == str(documents_file)


def test_pages_without_runs_say_what_to_do(workspace):
    at = open_app()
    for page in ("pages/evaluate.py", "pages/export.py", "pages/similarity.py", "pages/runs.py"):
        at.switch_page(page).run()
        assert errors(at) == [] and any("No finished run yet" in i.value for i in at.info), page
    at.switch_page("pages/train.py").run()
    assert errors(at) == [] and any("press Start" in i.value for i in at.info)


# --------------------------------------------------------------------------- finished runs


@pytest.fixture(scope="module")
def finished_runs(tiny_model_dir, documents_file, tmp_path_factory) -> Path:
    """A workspace with two finished tiny runs on the demo pairs: one also distilled on the documents."""
    workspace = tmp_path_factory.mktemp("finished") / "runs"
    common = [f"model={tiny_model_dir}", "dataset=demo", "eval_splits=[test]", "target_params.fraction=0.5",
              "batch_size=8", "max_length=32", "max_duration=4ba", "log_every=1", "checkpoint_every=100"]
    for name, extra in (("without-documents", []), ("with-documents", [f"documents={documents_file}"])):
        PruningRun(load_config(None, [*common, *extra, f"output_dir={workspace / name}"])).run()
    return workspace


@pytest.fixture
def finished(finished_runs, monkeypatch) -> Path:
    monkeypatch.setenv(runs.WORKSPACE_ENV, str(finished_runs))
    return finished_runs


def open_run(page: str, name: str) -> AppTest:
    at = open_app()
    at.session_state[ui.RUN_KEY] = name
    at.switch_page(page).run()
    assert errors(at) == []
    return at


def test_a_run_with_documents_shows_its_label_free_figures_and_quotes_them(finished):
    record = runs.RunRecord(finished / "with-documents")
    report = record.report()
    at = open_run("pages/runs.py", record.name)
    assert_label_free_figures_shown(at, report["documents"])
    retained = report["documents"]["splits"]["held_out"]["metrics"]["ndcg_at_10"]["retained"]
    (success,) = [s.value for s in at.success]
    assert f"It keeps {retained:.1%} of the original's nDCG@10 on your documents (label-free" in success
    assert not at.warning  # documents were given: nothing to warn about
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[record.name, "retained"] == pytest.approx(retained)
    assert table.loc[record.name, "retained on"] == "your documents (label-free): nDCG@10"


def test_a_run_without_documents_says_once_what_its_figures_cover(finished):
    record = runs.RunRecord(finished / "without-documents")
    at = open_run("pages/runs.py", record.name)
    assert [w.value for w in at.warning] == [NO_DOCUMENTS_WARNING]
    assert LABEL_FREE_TITLE not in json.dumps(figures(at))
    spearman = record.report()["splits"]["test"]["metrics"]["spearman"]["retained"]
    (success,) = [s.value for s in at.success]
    assert (f"It keeps {spearman:.1%} of the original's Spearman on demo, test split; this covers that data only, "
            "not retrieval on your own documents") in success


def test_the_evaluate_page_measures_documents_as_the_run_did(finished, documents_file):
    record = runs.RunRecord(finished / "with-documents")
    at = open_run("pages/evaluate.py", record.name)
    assert text_input(at, "Your documents (label-free)").value == str(documents_file)
    text_input(at, "Task data (optional)").set_value("").run()
    at.button(key="evaluate.run").click().run()
    assert errors(at) == []
    evaluation = record.evaluation()
    assert "report" not in evaluation and evaluation["speed"]["texts"] == 20  # the held-out documents
    # The same held-out documents, the same two models: the run's own label-free figures.
    expected = record.report()["documents"]["splits"]["held_out"]["metrics"]
    measured = evaluation["documents"]["splits"]["held_out"]["metrics"]
    assert measured.keys() == expected.keys()
    for name, row in expected.items():
        assert measured[name] == pytest.approx(row, abs=1e-6), name
    assert_label_free_figures_shown(at, evaluation["documents"])
    text_input(at, "Your documents (label-free)").set_value("").run()
    assert at.button(key="evaluate.run").disabled  # nothing to evaluate on


def test_the_export_page_shows_where_it_writes_and_why_it_refuses(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    foreign = finished / "exports" / "foreign"
    foreign.mkdir(parents=True, exist_ok=True)
    (foreign / "notes.txt").write_text("not an export")
    at = open_run("pages/export.py", "with-documents")
    assert any(c.value == f"Writes to `{finished / 'exports' / 'with-documents'}`." for c in at.caption)
    at.text_input[0].set_value("~/models/tiny").run()
    assert errors(at) == [] and not at.button(key="export.run").disabled
    assert any(c.value == f"Writes to `{tmp_path / 'home' / 'models' / 'tiny'}`." for c in at.caption)
    refusals = {
        ".": "is the workspace or a folder holding it",
        str(finished.parent): "is the workspace or a folder holding it",
        "../elsewhere": "points outside the workspace",
        "with-documents": "is a run directory",
        "exports/foreign": "already exists: choose another directory or allow replacing it",
    }
    for destination, refusal in refusals.items():
        at.text_input[0].set_value(destination).run()
        assert any(e.startswith("Destination: ") and refusal in e for e in errors(at)), destination
        assert at.button(key="export.run").disabled, destination
    at.checkbox[0].check().run()  # replacing is allowed, but never a folder this tool did not write
    assert any("it has no pruning_info.json" in e for e in errors(at)) and at.button(key="export.run").disabled
    assert (foreign / "notes.txt").read_text() == "not an export"


@pytest.fixture(scope="module")
def onnx_runs(tiny_model_dir, documents_file, tmp_path_factory) -> Path:
    """A workspace with a finished tiny run that also wrote ONNX fp32 + int8 and gated them."""
    workspace = tmp_path_factory.mktemp("onnx") / "runs"
    PruningRun(load_config(None, [
        f"model={tiny_model_dir}", "dataset=demo", "eval_splits=[test]", "target_params.fraction=0.5", "batch_size=8",
        "max_length=32", "max_duration=4ba", "log_every=1", "checkpoint_every=100", f"documents={documents_file}",
        "serving.onnx=true", f"output_dir={workspace / 'with-onnx'}",
    ])).run()
    return workspace


def shown_gate(at: AppTest, gate: dict, index: int = 0) -> None:
    """The decision said once, the figures as the gate measured them."""
    said = [m.value for m in [*at.success, *at.warning] if m.value.startswith("ONNX serving")]
    assert said.count(f"ONNX serving, {gate['decision']}.") == 1, said
    table = next(d.value for d in at.dataframe if "int8 keeps" in d.value.columns).set_index("figure")
    assert sorted(table.index) == sorted(gate["figures"]) and gate["figures"]
    for name, row in gate["figures"].items():
        assert table.loc[name, "int8 keeps"] == pytest.approx(row["kept"])
        assert table.loc[name, "below the threshold"] == (name in gate["fallen"])


def test_a_run_that_wrote_onnx_shows_its_quality_gate(onnx_runs, monkeypatch):
    monkeypatch.setenv(runs.WORKSPACE_ENV, str(onnx_runs))
    record = runs.RunRecord(onnx_runs / "with-onnx")
    gate = record.report()["serving"]["quality_gate"]
    assert gate == exporting.quality_gate(record.pruning_info())  # the same decision in pruning_info.json
    shown_gate(open_run("pages/train.py", record.name), gate)
    shown_gate(open_run("pages/export.py", record.name), gate)


def test_the_export_page_writes_onnx_and_shows_the_new_exports_gate(onnx_runs, monkeypatch):
    monkeypatch.setenv(runs.WORKSPACE_ENV, str(onnx_runs))
    at = open_run("pages/export.py", "with-onnx")
    assert at.toggle(key="export.onnx").value  # the run wrote ONNX: so does its export, unless switched off
    at.toggle(key="export.onnx").set_value(False)
    at.text_input[0].set_value("exports/plain")
    at.button(key="export.run").click().run()
    assert errors(at) == []
    plain = onnx_runs / "exports" / "plain"
    assert "serving" not in json.loads((plain / "pruning_info.json").read_text()) and not (plain / "onnx").exists()

    at.toggle(key="export.onnx").set_value(True).run()
    at.number_input(key="export.int8_threshold").set_value(0.5)
    at.text_input[0].set_value("exports/served")
    at.button(key="export.run").click().run()
    assert errors(at) == []
    served = onnx_runs / "exports" / "served"
    assert (served / "onnx" / "model.onnx").is_file() and (served / "onnx" / "model_qint8.onnx").is_file()
    gate = exporting.quality_gate(json.loads((served / "pruning_info.json").read_text()))
    run_gate = runs.RunRecord(onnx_runs / "with-onnx").report()["serving"]["quality_gate"]
    assert gate["threshold"] == 0.5 and set(gate["figures"]) == set(run_gate["figures"])  # scored as the run was
    said = [m.value for m in [*at.success, *at.warning] if m.value.startswith("ONNX serving")]
    assert f"ONNX serving, {gate['decision']}." in said
    assert "onnx/model_qint8.onnx" in next(d.value for d in at.dataframe if "file" in d.value.columns)["file"].tolist()


def test_the_edited_config_is_the_runs_config_and_its_end_shows_the_documents(workspace, tiny_model_dir,
                                                                                documents_file):
    at = open_app()
    at.radio(key="cfg.model").set_value("Another model (hub id or local path)").run()
    at.text_input(key="cfg.model_other").set_value(str(tiny_model_dir)).run()
    at.text_input(key="cfg.documents").set_value(str(documents_file)).run()
    at.selectbox(key="cfg.data").set_value("None: documents only").run()
    for key, value in {"cfg.batch_size": 4, "cfg.log_every": 1, "cfg.optimizer.lr": 1e-3}.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="cfg.max_duration").set_value("6ba")
    at.text_input(key="cfg.run_name").set_value("tiny").run()
    assert errors(at) == [] and at.success
    shown = shown_config_file(at)
    assert yaml.safe_load(shown)["batch_size"] == 4 and yaml.safe_load(shown)["documents"] == str(documents_file)

    at.switch_page("pages/train.py").run()
    at.button(key="train.start").click().run()
    wait_until_finished(at)
    record = runs.RunRecord(workspace / "tiny")
    assert record.state() == "done", record.status()
    assert (record.path / "config.yaml").read_text().rstrip("\n") == shown.rstrip("\n")  # st.code drops the last newline
    assert_label_free_figures_shown(at, record.report()["documents"])
    assert any("on your documents (label-free" in s.value for s in at.success) and not at.warning


# --------------------------------------------------------------------------- a run, end to end


def check_export(at: AppTest, workspace: Path) -> None:
    """Written, listed, loadable; never over an existing directory."""
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


def check_evaluation(at: AppTest, record: runs.RunRecord, cache: Path) -> None:
    """Scored on the demo data with the measured speedup; the original's encodings kept for the next run."""
    at.switch_page("pages/evaluate.py").run()
    text_input(at, "Task data (optional)").set_value("no-such-data")
    at.button(key="evaluate.run").click().run()
    assert any("unknown dataset 'no-such-data'" in e for e in errors(at))
    text_input(at, "Task data (optional)").set_value("demo")
    at.button(key="evaluate.run").click().run()
    assert errors(at) == []
    assert metric(at, "Measured speedup").endswith("x")
    rows = at.dataframe[0].value
    assert "spearman" in rows["metric"].tolist()
    assert record.evaluation()["speed"]["texts"] > 0
    assert len(list((cache / "encodings").glob("*.npz"))) == 1


def check_similarity(at: AppTest) -> None:
    at.switch_page("pages/similarity.py").run()
    assert errors(at) == []
    assert [f["data"][0]["type"] for f in figures(at)] == ["heatmap", "heatmap"]
    assert list(at.dataframe[0].value.columns) == ["Original", "Pruned"]
    at.radio[0].set_value("A query and passages").run()
    assert errors(at) == [] and metric(at, "Ranks on which the two models agree").endswith("of 4")
    (scores,) = figures(at)
    assert [trace["name"] for trace in scores["data"]] == ["Original", "Pruned"]


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
    assert [w.value for w in at.warning] == [NO_DOCUMENTS_WARNING]  # the demo has no documents: said once

    # A new session (a reloaded browser) finds the run on disk.
    again = open_app()
    again.switch_page("pages/train.py").run()
    assert any(record.name in str(p.proto) for p in again.get("progress"))

    check_export(at, workspace)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # empty, whatever other tests cached
    check_evaluation(at, record, tmp_path / "cache")
    check_similarity(at)
    at.switch_page("pages/runs.py").run()
    assert errors(at) == []
    table = at.dataframe[0].value
    assert table["run"].tolist() == [record.name] and table["state"].tolist() == ["done"]
    assert table["retained"].notna().all() and table["retained on"].tolist() == ["demo, test split: Spearman"]


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
