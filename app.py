"""The prune_engine workbench: `streamlit run app.py`.

This file is the entry point (page set-up and navigation, run for every page) and the Configure
page. The Configure page edits one `RunConfig` kept in the session (`ui.DRAFT_KEY`): every widget
shows a field of it and writes a change back with `dataclasses.replace`, so each change is
validated as the config validates a YAML file, and the page shows the config.yaml the run will get.
The other pages live in pages/; what they share is in workbench/, and everything that is not UI in
workbench/ (its engine side) and prune_engine/.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from prune_engine.config import PRECISIONS, RunConfig, TargetModel, VocabConfig, config_yaml
from prune_engine.data import STS_LANGUAGES
from prune_engine.documents import load_documents, split_documents
from prune_engine.l0 import STRUCTURES
from prune_engine.presets import bge_m3_config
from prune_engine.sources import BGE_M3_HUB_ID, MINILM_ALIAS, ModelSourceError
from workbench import models, runs, settings, ui

MODELS = {
    "BGE-M3 (hub or local cache)": BGE_M3_HUB_ID,
    "MiniLM demo (bundled)": MINILM_ALIAS,
    "Another model (hub id or local path)": "",
}
DATA = {  # label -> settings.DATA_KINDS
    "None: documents only": "none",
    "Bundled demo pairs": "demo",
    "STS benchmark": "sts",
    "MS MARCO": "msmarco",
    "MTEB retrieval task": "mteb",
    "Local file or BEIR folder": "path",
}
TARGETS = {"Architecture": "architecture", "Parameter budget": "budget", "Speedup on this machine": "speedup",
           "Latency": "latency"}  # label -> settings.TARGET_KINDS
FLOP_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
# (label, config field, widget, options): the training settings, four a row.
TRAINING_FIELDS = (
    ("Training length", "max_duration", "text_input",
     {"help": "1000ba: 1,000 steps (batches); 2ep: two passes over the data"}),
    ("Batch size", "batch_size", "number_input", {"min_value": 2, "max_value": 4096}),
    ("Documents per batch", "documents_per_batch", "number_input",
     {"min_value": 1, "max_value": 4096, "help": "documents added to every batch for distillation"}),
    ("Max tokens per text", "max_length", "number_input",
     {"min_value": 2, "max_value": 8192, "value": None, "placeholder": "from the documents",
      "help": "empty: chosen from the documents' token lengths (512 at most; without documents 512)"}),
    ("Precision", "precision", "selectbox", {"options": PRECISIONS}),
    ("Share of steps learning masks", "mask_fraction", "slider", {"min_value": 0.05, "max_value": 1.0, "step": 0.05}),
    ("Task loss weight", "loss.task", "number_input", {"min_value": 0.0, "max_value": 100.0, "step": 0.01,
                                                        "format": "%.3f", "help": "the task data's own loss"}),
    ("Weights learning rate", "optimizer.lr", "number_input",
     {"min_value": 0.0, "max_value": 1.0, "format": "%.1e", "step": 1e-6}),
    ("Gates learning rate", "optimizer.gate_lr", "number_input",
     {"min_value": 0.0, "max_value": 10.0, "format": "%.2f", "step": 0.01}),
    ("Multipliers learning rate", "optimizer.lagrangian_lr", "number_input",
     {"min_value": 0.0, "max_value": 10.0, "format": "%.3f", "step": 0.005}),
    ("Log every (steps)", "log_every", "number_input", {"min_value": 1, "max_value": 10_000}),
    ("Checkpoint every (steps)", "checkpoint_every", "number_input", {"min_value": 1, "max_value": 1_000_000}),
)
# A latency target's measuring conditions, and how kept heads and FFN neurons are rounded.
LATENCY_FIELDS = (
    ("Batch size it is timed at", "latency_batch_size", "number_input", {"min_value": 1, "max_value": 4096}),
    ("Tokens per text it is timed at", "latency_length", "number_input", {"min_value": 1, "max_value": 8192}),
)
ALIGNMENT_FIELDS = (
    ("Align heads per layer to a multiple of", "align_heads", "number_input", {"min_value": 1, "max_value": 64}),
    ("Align FFN widths to a multiple of", "align_ffn", "number_input",
     {"min_value": 1, "max_value": 4096, "value": None, "placeholder": "default",
      "help": "kept FFN neurons per layer rounded to this multiple (matrix sizes GPUs run fastest); empty: the "
      "engine's default, 64 on a GPU and 1 on a CPU"}),
)
SERVING_FIELDS = (
    ("Also write ONNX fp32 + int8", "serving.onnx", "toggle",
     {"help": "onnx/model.onnx and onnx/model_qint8.onnx beside the export, both scored like the pruned model; "
      "a quality gate says whether int8 may serve"}),
    ("int8 must keep this share of every fp32 figure", "serving.int8_threshold", "number_input",
     {"min_value": 0.01, "max_value": 1.0, "step": 0.005, "format": "%.3f"}),
)
K = ui.SETTINGS_PREFIX
PROBLEM_PREFIX = K + "problem."
CALIBRATED_KEY = "workbench.calibrated"  # the (model, batch size, length) the user asked to time here


# --------------------------------------------------------------------------- cached engine calls


@st.cache_resource(show_spinner=False)
def _default_model() -> str:
    return models.default_model_source()


@st.cache_data(show_spinner="Checking the data...", max_entries=32)
def _check_data(dataset: str, modified: float) -> str:
    return settings.check_dataset(dataset)


@st.cache_resource(show_spinner="Reading the documents...", max_entries=4)
def _documents(sources: tuple[str, ...], modified: tuple[float, ...], share: float):
    return split_documents(load_documents(list(sources)), share)


@st.cache_resource(show_spinner="Loading the tokenizer...", max_entries=4)
def _tokenizer(model: str, trust_remote_code: bool):
    return settings.load_tokenizer(model, trust_remote_code)


@st.cache_resource(show_spinner="Measuring the documents' token lengths...", max_entries=8)
def _documents_length(model: str, trust_remote_code: bool, sources: tuple[str, ...], modified: tuple[float, ...],
                      share: float):
    shape, problem = ui.shape(model)
    if shape is None:
        raise ModelSourceError(problem)
    return settings.documents_length(_tokenizer(model, trust_remote_code), shape, _documents(sources, modified, share))


@st.cache_resource(show_spinner="Counting the tokens the data uses...", max_entries=8, ttl=300)
def _vocabulary_plan(model: str, trust_remote_code: bool, dataset: str | None, sources: tuple[str, ...],
                     modified: tuple[float, ...], share: float):
    split = _documents(sources, modified, share) if sources else None
    return settings.vocabulary_plan(_tokenizer(model, trust_remote_code), settings.vocabulary_texts(dataset, split))


@st.cache_resource(show_spinner="Timing the model on this machine...", max_entries=8)
def _latency_model(model: str, batch_size: int, length: int):
    shape, problem = ui.shape(model)
    if shape is None:
        raise ModelSourceError(problem)
    return settings.calibrate_latency(shape, batch_size, length)


def _latency_key(config: RunConfig) -> tuple[str, int, int]:
    return config.model, config.latency_batch_size, config.latency_length


def _calibrated(config: RunConfig):
    """This machine's latency model at the config's conditions, once the user asked to time it."""
    key = _latency_key(config)
    return _latency_model(*key) if key in st.session_state.get(CALIBRATED_KEY, set()) else None


def _ask_calibration(key: tuple[str, int, int]) -> None:
    st.session_state[CALIBRATED_KEY] = st.session_state.get(CALIBRATED_KEY, set()) | {key}


def _document_key(config: RunConfig) -> tuple[tuple[str, ...], tuple[float, ...], float]:
    """The documents' cache key: their sources, when they last changed, the held-out share."""
    sources = settings.document_sources(config.documents) if config.documents else ()
    return sources, settings.modified_times(sources), config.documents_held_out


# --------------------------------------------------------------------------- the edited config


def _draft() -> RunConfig:
    return st.session_state[ui.DRAFT_KEY]


def _write(name: str, label: str, write: Callable) -> None:
    """A widget's change, written into the config; a value the config refuses is explained under the
    widget, which shows the config's value again."""
    try:
        st.session_state[ui.DRAFT_KEY] = write(_draft(), st.session_state[K + name])
    except ui.ENGINE_ERRORS as error:
        st.session_state[PROBLEM_PREFIX + name] = f"{label}: {error}"


def _edit(widget: Callable, label: str, name: str, read: Callable, write: Callable, **options):
    """A widget showing `read(config)`; a change goes into the config through `write(config, value)`.
    The widget's state is set only when the config holds another value (a new model, a preset, a
    refused change): setting it resends it to the browser, over whatever is being typed there."""
    key = K + name
    value = read(_draft())
    if key not in st.session_state or st.session_state[key] != value:
        st.session_state[key] = value
    shown = widget(label, key=key, on_change=_write, args=(name, label, write), **options)
    problem = st.session_state.pop(PROBLEM_PREFIX + name, None)
    if problem:
        st.error(problem)
    return shown


def _field(path: str) -> tuple[Callable, Callable]:
    """Read and write the config field at a dotted path (`optimizer.lr`)."""
    return (lambda config: settings.read_field(config, path)), (lambda config, value: settings.replaced(config, path, value))


def _start_config(source: str) -> None:
    """A new model brings its own defaults; the documents given stay."""
    draft = st.session_state.get(ui.DRAFT_KEY)
    if draft is None or draft.model != source:
        config = settings.default_config(source)
        st.session_state[ui.DRAFT_KEY] = dataclasses.replace(config, documents=draft.documents) if draft else config


# --------------------------------------------------------------------------- sections of the page


def _documents_section(shape: models.ModelShape | None) -> bool:
    """'Your documents', first on the page; False while the documents given cannot be used."""
    st.subheader("Your documents")
    st.caption(f"The texts your model will serve: the documents in your index, no labels needed. The run distils "
               f"the original into the pruned model on them, and holds {_draft().documents_held_out:.0%} of them out "
               "(never trained on) to measure at the end how much of the original's retrieval on them was kept.")
    _edit(st.text_input, "Documents file or BEIR folder", "documents", lambda config: str(config.documents or ""),
          settings.with_documents, placeholder="/path/to/corpus.jsonl",
          help=".jsonl or .tsv / .csv / .parquet with a 'text' column (and optionally 'title'), .txt with one document a "
          "line, or a BEIR folder (its corpus.jsonl)")
    config = _draft()
    if config.documents is None:
        st.info(settings.NO_DOCUMENTS, icon=":material/info:")
        return True
    with ui.guard("Documents"):
        split = _documents(*_document_key(config))
        columns = st.columns(3)
        columns[0].metric("Documents", f"{len(split.training) + len(split.held_out):,}")
        columns[1].metric("Trained on", f"{len(split.training):,}")
        columns[2].metric("Held out", f"{len(split.held_out):,}", help="never trained on: pseudo-queries made from "
                          "them measure, without labels, what the pruned model kept")
        st.caption(_length_text(config, shape))
        return True
    return False


def _length_text(config: RunConfig, shape: models.ModelShape | None) -> str:
    if config.max_length is not None:
        return f"Training reads them at {config.max_length} tokens (Max tokens per text, below)."
    try:
        if shape is None:
            raise ModelSourceError("no usable model chosen")
        choice = _documents_length(config.model, config.trust_remote_code, *_document_key(config))
    except ModelSourceError as error:
        return f"The training length is chosen from them when the run starts ({error})."
    return f"Length: {choice.describe()}."


def _choose_model() -> str:
    st.session_state.setdefault(K + "model", next(k for k, v in MODELS.items() if v == _default_model()))
    choice = st.radio("Model", list(MODELS), key=K + "model", persist_state="session", horizontal=True,
                      label_visibility="collapsed")
    return MODELS[choice] or st.text_input("Hub id or local directory", key=K + "model_other", persist_state="session",
                                           placeholder="BAAI/bge-m3, or /path/to/a/model").strip()


def _task_data_section() -> bool:
    """The optional task data; False while the data chosen cannot be used."""
    st.subheader("Task data (optional)")
    st.caption("Labelled pairs (scored sentence pairs, or queries with their passages) add a task loss and their dev "
               "and test figures to the report; plain text is distilled on. Not needed when you give documents.")
    label_of = {kind: label for label, kind in DATA.items()}
    _edit(st.selectbox, "Task data", "data", lambda config: label_of[settings.data_kind(config.dataset)],
          lambda config, label: dataclasses.replace(config, dataset=settings.DATA_KINDS[DATA[label]]),
          options=list(DATA), label_visibility="collapsed")
    dataset = _draft().dataset
    kind = settings.data_kind(dataset)
    if kind == "sts":
        _edit(st.selectbox, "Language", "sts_language", lambda config: config.dataset.removeprefix("sts").lstrip("-") or "en",
              lambda config, language: dataclasses.replace(config, dataset="sts" if language == "en" else f"sts-{language}"),
              options=STS_LANGUAGES)
    elif kind == "mteb":
        _edit(st.selectbox, "MTEB task", "mteb_task", *_field("dataset"), accept_new_options=True,
              options=list(dict.fromkeys([*settings.MTEB_TASKS, dataset])))
    elif kind == "path":
        _edit(st.text_input, "File (.csv/.tsv/.jsonl/.parquet/.txt) or BEIR folder", "data_path", *_field("dataset"))
    return _check_task_data(_draft().dataset)


def _check_task_data(dataset: str | None) -> bool:
    if dataset is None:
        return True
    if not dataset:
        st.info("Name the task data's file or folder, or choose None.")
        return False
    with ui.guard("Task data"):
        path = Path(dataset)
        st.caption(_check_data(dataset, path.stat().st_mtime if path.exists() else 0.0))
        return True
    return False


def _target_inputs(shape: models.ModelShape) -> None:
    model = shape.config
    kinds = {kind: label for label, kind in TARGETS.items()}
    _edit(st.radio, "Target", "target_kind", lambda config: kinds[settings.target_kind(config)],
          lambda config, label: settings.with_target_kind(config, TARGETS[label], shape, _calibrated(config)),
          options=list(TARGETS), horizontal=True)
    if _draft().latency_target:
        _latency_inputs()
    elif _draft().target_model is not None:
        for name, label, low, high, step in (
            ("n_layers", "Layers", 1, model.num_hidden_layers, 1),
            ("n_heads", "Heads per layer", 1, max(model.heads_per_layer), 1),
            ("intermediate_size", "FFN size", 0, max(model.intermediate_sizes), settings.ffn_step(shape)),
        ):
            _edit(st.slider, label, f"target_model.{name}", _field(f"target_model.{name}")[0],
                  lambda config, value, name=name: settings.with_architecture(config, name, value, shape),
                  min_value=low, max_value=high, step=step)
    elif _draft().target_params is not None:
        _edit(st.slider, "Keep this share of the parameters", "target_params.fraction",
              *_field("target_params.fraction"), min_value=0.05, max_value=1.0, step=0.01, format="percent")
        _edit(st.radio, "of the", "target_params.of", *_field("target_params.of"), options=("encoder", "total"),
              horizontal=True, help="encoder: the transformer layers only; total: with the embeddings and output heads")
    _edit(st.multiselect, "Structures to prune", "structures", *_field("structures"), options=list(STRUCTURES),
          help="layers: whole layers; heads: attention heads; ffn: feed-forward neurons")
    _grid(ALIGNMENT_FIELDS, 2)


def _latency_inputs() -> None:
    """A speedup or seconds per batch, and the batch it is timed at, on this machine."""
    if _draft().target_speedup is not None:
        _edit(st.number_input, "Times faster than the original", "target_speedup", *_field("target_speedup"),
              min_value=1.01, max_value=1000.0, step=0.1, format="%.2f")
    else:
        _edit(st.number_input, "Seconds per batch", "target_latency", *_field("target_latency"),
              min_value=1e-5, max_value=1000.0, step=0.001, format="%.4f")
    _grid(LATENCY_FIELDS, 2)
    st.caption("Timed on this machine's " + ("GPU" if runs.device_name() != "CPU" else "CPU") + ": the run calibrates "
               "a cost per layer, head and FFN neuron as it starts and prunes to the time predicted from it.")


def _size_inputs() -> int:
    length = st.select_slider("Sequence length for FLOPs", FLOP_LENGTHS, key=K + "flops_length", persist_state="session")
    _edit(st.toggle, "Trim the vocabulary to the tokens the training texts use", "vocab",
          lambda config: config.vocab is not None,
          lambda config, trim: dataclasses.replace(config, vocab=VocabConfig() if trim else None),
          help="Keeps only the embedding rows of tokens that occur in the task data and the training documents "
          "(prune_engine.vocab); texts it covers embed exactly as before.")
    return length


def _latency_prediction_model(config: RunConfig):
    """This machine's latency model for a latency target's prediction; until the user asks to time
    the model here (seconds for MiniLM, minutes for BGE-M3 on a CPU), what the run will do instead."""
    latency_model = _calibrated(config)
    if latency_model is None:
        st.info("A latency target: the run measures this machine's cost per layer, head and neuron as it starts "
                "and chooses the structure from that; its size shows on the Train page. Time the model here to "
                "see the predicted structure, latency and speedup now.")
        st.button("Time the model on this machine", key=K + "calibrate", on_click=_ask_calibration,
                  args=(_latency_key(config),), icon=":material/timer:")
    return latency_model


def _latency_metrics(latency_model, structure) -> None:
    c = latency_model.conditions
    predicted, full = latency_model.predict(structure), latency_model.full_latency
    columns = st.columns(3)
    columns[0].metric("Predicted latency", f"{predicted * 1000:.1f} ms", f"{predicted / full - 1:+.1%}",
                      delta_color="inverse", help=f"encoder forward per batch of {c.batch_size} x {c.sequence_length} "
                      f"tokens on this {c.device} ({c.clock} clock)")
    columns[1].metric("Predicted latency speedup", f"{full / predicted:.2f}x",
                      help=f"the unpruned model's {full * 1000:.1f} ms over the prediction")
    columns[2].metric("Unpruned latency", f"{full * 1000:.1f} ms")
    if latency_model.fit is not None:
        st.caption(f"A quick calibration here ({latency_model.fit.rounds} rounds, {latency_model.fit.wall_seconds:.0f} s; "
                   f"{latency_model.fit.mean_relative_error:.0%} mean error on held-out structures). The run "
                   "calibrates again, longer, as it starts.")


def _size_panel(config: RunConfig, shape: models.ModelShape, length: int) -> None:
    """Parameters and FLOPs before and after, computed by the accounting for the chosen target; for
    a latency target, also the latency this machine's cost model predicts."""
    latency_model = _latency_prediction_model(config) if config.latency_target else None
    if config.latency_target and latency_model is None:
        return
    vocab_size = None
    if config.vocab is not None:
        plan = _vocabulary_plan(config.model, config.trust_remote_code, config.dataset, *_document_key(config))
        vocab_size = plan.vocab_size
        st.caption(f"The vocabulary keeps {plan.vocab_size:,} of {plan.original_vocab_size:,} tokens, "
                   f"covering {plan.coverage:.1%} of the training texts' tokens.")
    report, exact = settings.planned_size(config, shape, length, vocab_size, latency_model)
    before, after = report.before, report.after
    columns = st.columns(3)
    columns[0].metric("Total parameters after", f"{after.total:,}", f"{-report.total_reduction:+.1%}",
                      delta_color="inverse")
    columns[1].metric("Encoder parameters after", f"{after.encoder:,}", f"{-report.encoder_reduction:+.1%}",
                      delta_color="inverse")
    columns[2].metric("Predicted speedup", f"{report.predicted_speedup:.2f}x",
                      help=f"FLOPs per token at {length} tokens, before / after")
    st.dataframe(pd.DataFrame(
        [(part, getattr(before, part), getattr(after, part)) for part in ("embeddings", "encoder", "output_heads", "total")]
        + [("FLOPs per token", report.flops_before, report.flops_after)],
        columns=["", "before", "after"],
    ).set_index(""), width="stretch", column_config={
        name: st.column_config.NumberColumn(format="localized") for name in ("before", "after")})
    if latency_model is not None:
        _latency_metrics(latency_model, report.structure)
    if not exact:
        st.caption(f"A budget lets the run decide where to cut; FLOPs and speedup are for the budget spread evenly "
                   f"({report.structure.describe()}).")


def _apply_preset(preset: dict) -> None:
    st.session_state[ui.DRAFT_KEY] = dataclasses.replace(
        _draft(), target_params=None, structures=list(STRUCTURES),
        target_model=TargetModel(preset["n_layers"], preset["n_heads"], preset["intermediate_size"]))


def _dimensions(config) -> tuple[int, int, int]:
    return config.num_hidden_layers, max(config.heads_per_layer), max(config.intermediate_sizes)


def _presets(shape: models.ModelShape, length: int) -> None:
    applicable = _dimensions(shape.config) == _dimensions(bge_m3_config())  # then the presets can be applied
    reports = settings.preset_reports(length)
    rows = []
    for name, preset, report in reports:
        rows.append({
            "preset": name,
            "layers / heads / FFN": f"{preset['n_layers']} / {preset['n_heads']} / {preset['intermediate_size']}",
            "claimed cut": f"{preset['claimed_reduction']:.0%}", "true total cut": f"{report.total_reduction:.1%}",
            "true encoder cut": f"{report.encoder_reduction:.1%}", "total parameters": report.after.total,
            "speedup (FLOPs)": f"{report.predicted_speedup:.2f}x",
        })
    st.dataframe(pd.DataFrame(rows).set_index("preset"), width="stretch")
    if applicable:
        columns = st.columns(len(rows))
        for column, (name, preset, _) in zip(columns, reports, strict=True):
            column.button(f"Use {name}", on_click=_apply_preset, args=(preset,), key=f"preset.{name}")


def _grid(fields: tuple, width: int) -> None:
    """Config fields as widgets, `width` a row."""
    columns = st.columns(width)
    for index, (label, path, widget, options) in enumerate(fields):
        _edit(getattr(columns[index % width], widget), label, path, *_field(path), **options)


def _run_config(shape: models.ModelShape, overrides: str) -> RunConfig | None:
    """The edited config with the key=value lines on top, checked against the model and its documents."""
    with ui.guard("Settings"):
        config = settings.run_config(_draft(), overrides)
        latency_model = _calibrated(config) if config.latency_target else None
        if latency_model is not None or not config.latency_target:  # else sized when the run has timed this machine
            settings.size_target(config, shape, latency_model)
        if config.documents and _document_key(config) != _document_key(_draft()):  # the lines changed them
            _documents(*_document_key(config))
        return config
    return None


def _show_config_file(config: RunConfig, name: str) -> None:
    """What the run's config.yaml will hold (its output_dir: the run's folder in the workspace)."""
    manager = ui.manager()
    run_dir = manager.workspace / (name.strip() or manager.new_run_name(config))
    changed = settings.changed_keys(_draft().to_dict(), config.to_dict())
    if changed:
        st.caption(f"The key=value lines set {', '.join(changed)} (the widgets above show the values without them).")
    with st.expander("The run's configuration (config.yaml)"):
        st.code(config_yaml(dataclasses.replace(config, output_dir=str(run_dir))), language="yaml")
        if not name.strip():
            st.caption("Without a run name, the folder is named from the date, the model and the data when it starts.")


def configure() -> None:
    st.title("Configure a pruning run")
    st.caption("Give the documents your model will serve, choose the model and a target size; the Train page runs it.")
    st.session_state[ui.CONFIG_KEY] = None  # set below only when everything is valid
    st.session_state.setdefault(ui.DRAFT_KEY, settings.default_config(_default_model()))
    documents_area = st.container()  # first on the page, filled once the model (its tokenizer) is known

    st.subheader("Model")
    source = _choose_model()
    shape, problem = ui.shape(source) if source else (None, "")
    if shape is not None:
        _start_config(source)
    with documents_area:
        documents_ok = _documents_section(shape)
    if shape is None:
        if problem:
            st.error(f"Model: {problem}")
        else:
            st.info("Type a hub id (such as BAAI/bge-m3) or the path of a local model directory.")
        return
    _edit(st.checkbox, "Trust remote code", "trust_remote_code", *_field("trust_remote_code"),
          help="Runs the Python file the model's tokenizer_config.json names for its tokenizer "
               "(auto_map.AutoTokenizer), and nothing else: the encoder is always this tool's own "
               "code and the config's module is never imported. Tick it only for models whose "
               "code you trust.")
    st.caption(shape.describe())
    if shape.note:
        st.info(shape.note)
    data_ok = _task_data_section()
    _target_and_training(shape, documents_ok and data_ok)


def _target_and_training(shape: models.ModelShape, inputs_ok: bool) -> None:
    st.subheader("Target size")
    inputs, panel = st.columns([2, 3], gap="large")
    with inputs:
        _target_inputs(shape)
    with panel:
        length = _size_inputs()
    with st.expander("The original design's presets for BGE-M3, with their true sizes"):
        _presets(shape, length)
    st.subheader("Training")
    _grid(TRAINING_FIELDS, 4)
    st.subheader("Serving")
    _grid(SERVING_FIELDS, 4)
    name = st.text_input("Run name (optional)", key=K + "run_name", persist_state="session",
                         placeholder="a name from the date, model and data")
    overrides = st.text_area("More settings, one key=value a line", key=K + "overrides", persist_state="session",
                             placeholder="for example:\nloss.task=0.5\nstructures=[heads, ffn]\ndocuments_held_out=0.1")
    with panel:
        config = _run_config(shape, overrides)
        if config is not None:
            with ui.guard("Size"):
                _size_panel(config, shape, length)
    if config is not None:
        _show_config_file(config, name)
    st.divider()
    if config is not None and inputs_ok:
        st.session_state[ui.CONFIG_KEY] = config
        st.session_state[ui.NAME_KEY] = name
        st.success(f"Ready: {config.model} on {settings.describe_data(config)}, {settings.describe_duration(config)}.")
        st.page_link("pages/train.py", label="Train this configuration", icon=":material/play_arrow:")
    else:
        st.warning("Fix the problems above to train this configuration.")


st.set_page_config(page_title="Prune engine workbench", page_icon=":material/content_cut:", layout="wide")
st.session_state.setdefault(K + "flops_length", 512)
navigation = st.navigation([
    st.Page(configure, title="Configure", icon=":material/tune:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
    st.Page("pages/similarity.py", title="Similarity", icon=":material/compare_arrows:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
])
ui.sidebar()
navigation.run()
