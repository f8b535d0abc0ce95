"""The prune_engine workbench: `streamlit run app.py`.

This file is the entry point (page set-up and navigation, run for every page) and the Configure
page. The other pages live in pages/; what they share is in workbench/, and everything that is
not UI in workbench/ (its engine side) and prune_engine/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from prune_engine.config import PRECISIONS, RunConfig
from prune_engine.data import STS_LANGUAGES
from prune_engine.presets import bge_m3_config
from prune_engine.sources import BGE_M3_HUB_ID, MINILM_ALIAS
from workbench import models, settings, ui

MODELS = {
    "BGE-M3 (hub or local cache)": BGE_M3_HUB_ID,
    "MiniLM demo (bundled)": MINILM_ALIAS,
    "Another model (hub id or local path)": "",
}
DATA = {
    "Bundled demo pairs": "demo",
    "STS benchmark": "sts",
    "MS MARCO": "msmarco",
    "MTEB retrieval task": "mteb",
    "Local file or BEIR folder": "path",
}
TARGETS = ("Architecture", "Parameter budget")
FLOP_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
K = ui.SETTINGS_PREFIX
CONFIG_KEY, NAME_KEY = ui.CONFIG_KEY, ui.NAME_KEY


@st.cache_resource(show_spinner=False)
def _default_model() -> str:
    return models.default_model_source()


@st.cache_data(show_spinner="Checking the data...", max_entries=32)
def _check_data(dataset: str, modified: float) -> str:
    return settings.check_dataset(dataset)


def _reset_for_model(source: str, shape: models.ModelShape) -> None:
    """A new model brings its own slider ranges and training defaults (set before the widgets exist)."""
    if st.session_state.get(K + "for_model") == source:
        return
    base = settings.default_config(source)
    model = shape.config
    target = base.target_params
    st.session_state.update({
        K + "target_kind": TARGETS[1] if target else TARGETS[0],
        K + "n_layers": max(1, model.num_hidden_layers * 3 // 4),
        K + "n_heads": max(1, max(model.heads_per_layer) * 3 // 4),
        K + "ffn": max(model.intermediate_sizes) * 3 // 4 // _ffn_step(shape) * _ffn_step(shape),
        K + "budget_percent": round(100 * (target.fraction if target and target.fraction else 0.5)),
        K + "budget_of": target.of if target else "encoder",
        K + "steps": base.duration()[0],
        K + "batch_size": base.batch_size,
        K + "max_length": base.max_length,
        K + "mask_fraction": base.mask_fraction,
        K + "lr": base.optimizer.lr,
        K + "gate_lr": base.optimizer.gate_lr,
        K + "lagrangian_lr": base.optimizer.lagrangian_lr,
        K + "precision": base.precision,
        K + "log_every": base.log_every,
        K + "checkpoint_every": base.checkpoint_every,
        K + "for_model": source,
    })
    data = next((label for label, name in DATA.items() if name == base.dataset), "Bundled demo pairs")
    st.session_state.setdefault(K + "data", data)


def _setting(name: str) -> dict:
    """A Configure widget's key, kept for the whole session (across page switches)."""
    return {"key": K + name, "persist_state": "session"}


def _ffn_step(shape: models.ModelShape) -> int:
    return max(1, max(shape.config.intermediate_sizes) // 32)


def _choose_model() -> tuple[str, bool]:
    st.session_state.setdefault(K + "model", next(k for k, v in MODELS.items() if v == _default_model()))
    choice = st.radio("Model", list(MODELS), **_setting("model"), horizontal=True,
                      label_visibility="collapsed")
    source = MODELS[choice] or st.text_input(
        "Hub id or local directory", **_setting("model_other"), placeholder="BAAI/bge-m3, or /path/to/a/model"
    ).strip()
    trust = st.checkbox("Trust remote code", **_setting("trust_remote_code"),
                        help="Runs the Python file the model's tokenizer_config.json names for its tokenizer "
                             "(auto_map.AutoTokenizer), and nothing else: the encoder is always this tool's own "
                             "code and the config's module is never imported. Tick it only for models whose "
                             "code you trust.")
    return source, trust


def _choose_data() -> str:
    kind = DATA[st.selectbox("Data", list(DATA), **_setting("data"), label_visibility="collapsed")]
    if kind == "sts":
        language = st.selectbox("Language", STS_LANGUAGES, index=STS_LANGUAGES.index("en"), **_setting("sts_language"))
        return "sts" if language == "en" else f"sts-{language}"
    if kind == "mteb":
        st.session_state.setdefault(K + "mteb_task", "mteb/scifact")
        return st.text_input("MTEB task", **_setting("mteb_task")).strip()
    if kind == "path":
        text = st.text_input("File (.csv/.tsv/.jsonl/.parquet/.txt) or BEIR folder", **_setting("data_path")).strip()
        return str(Path(text).expanduser().resolve()) if text else ""
    return kind


def _target_inputs(shape: models.ModelShape) -> dict:
    model = shape.config
    kind = st.radio("Target", TARGETS, **_setting("target_kind"), horizontal=True)
    if kind == TARGETS[0]:
        layers = st.slider("Layers", 1, model.num_hidden_layers, **_setting("n_layers"))
        heads = st.slider("Heads per layer", 1, max(model.heads_per_layer), **_setting("n_heads"))
        ffn = st.slider("FFN size", 0, max(model.intermediate_sizes), step=_ffn_step(shape), **_setting("ffn"))
        # A uniform architecture with fewer layers drops whole layers.
        return {"target_model": {"n_layers": layers, "n_heads": heads, "intermediate_size": ffn},
                "structures": ["layers", "heads", "ffn"]}
    percent = st.slider("Keep this share of the parameters (%)", 5, 100, **_setting("budget_percent"))
    scope = st.radio("of the", ("encoder", "total"), **_setting("budget_of"), horizontal=True,
                     help="encoder: the transformer layers only; total: with the embeddings and output heads")
    return {"target_params": {"fraction": percent / 100, "of": scope}}


def _training_inputs() -> dict:
    columns = st.columns(4)
    steps = columns[0].number_input("Training steps", 1, 1_000_000, **_setting("steps"))
    batch_size = columns[1].number_input("Batch size", 2, 4096, **_setting("batch_size"))
    max_length = columns[2].number_input("Max tokens per text", 8, 8192, **_setting("max_length"))
    precision = columns[3].selectbox("Precision", PRECISIONS, **_setting("precision"))
    mask_fraction = columns[0].slider("Share of steps learning masks", 0.1, 1.0, step=0.05, **_setting("mask_fraction"))
    lr = columns[1].number_input("Weights learning rate", 0.0, 1.0, format="%.1e", step=1e-6, **_setting("lr"))
    gate_lr = columns[2].number_input("Gates learning rate", 0.0, 10.0, format="%.2f", step=0.01, **_setting("gate_lr"))
    lagrangian_lr = columns[3].number_input("Multipliers learning rate", 0.0, 10.0, format="%.3f", step=0.005,
                                            **_setting("lagrangian_lr"))
    log_every = columns[0].number_input("Log every (steps)", 1, 10_000, **_setting("log_every"))
    checkpoint_every = columns[1].number_input("Checkpoint every (steps)", 1, 1_000_000, **_setting("checkpoint_every"))
    return {
        "batch_size": batch_size, "max_length": max_length, "max_duration": f"{steps}ba", "precision": precision,
        "mask_fraction": mask_fraction, "log_every": log_every, "checkpoint_every": checkpoint_every,
        "optimizer": {"lr": lr, "gate_lr": gate_lr, "lagrangian_lr": lagrangian_lr},
    }


def _apply_preset(preset: dict) -> None:
    st.session_state.update({K + "target_kind": TARGETS[0], K + "n_layers": preset["n_layers"],
                             K + "n_heads": preset["n_heads"], K + "ffn": preset["intermediate_size"]})


@st.cache_resource(show_spinner="Counting the tokens the data uses...", max_entries=8, ttl=300)
def _vocabulary_plan(model: str, dataset: str, trust_remote_code: bool):
    return settings.vocabulary_plan(model, dataset, trust_remote_code)


def _size_inputs() -> tuple[int, bool]:
    length = st.select_slider("Sequence length for FLOPs", FLOP_LENGTHS, **_setting("flops_length"))
    trim = st.toggle("Trim the vocabulary to the tokens the training data uses", **_setting("trim_vocabulary"),
                     help="Keeps only the embedding rows of tokens that occur in the training data "
                     "(prune_engine.vocab); texts it covers embed exactly as before.")
    return length, trim


def _size_panel(config: RunConfig, shape: models.ModelShape, length: int) -> None:
    """Parameters and FLOPs before and after, computed by the accounting for the chosen target."""
    vocab_size = None
    if config.vocab is not None:
        plan = _vocabulary_plan(config.model, config.dataset, config.trust_remote_code)
        vocab_size = plan.vocab_size
        st.caption(f"The vocabulary keeps {plan.vocab_size:,} of {plan.original_vocab_size:,} tokens, "
                   f"covering {plan.coverage:.1%} of the training data's tokens.")
    report, exact = settings.planned_size(config, shape, length, vocab_size)
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
    if not exact:
        st.caption(f"A budget lets the run decide where to cut; FLOPs and speedup are for the budget spread evenly "
                   f"({report.structure.describe()}).")


def _validated_config(values: dict, overrides: str, shape: models.ModelShape) -> RunConfig:
    config = settings.build_run_config(values, overrides)
    settings.size_target(config, shape)
    return config


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


def configure() -> None:
    st.title("Configure a pruning run")
    st.caption("Choose a model, the data to distil on and a target size; the Train page runs it.")
    st.session_state[CONFIG_KEY] = None  # set below only when everything is valid

    st.subheader("Model")
    source, trust = _choose_model()
    if not source:
        st.info("Type a hub id (such as BAAI/bge-m3) or the path of a local model directory.")
        return
    shape, problem = ui.shape(source)
    if shape is None:
        st.error(f"Model: {problem}")
        return
    st.caption(shape.describe())
    if shape.note:
        st.info(shape.note)
    _reset_for_model(source, shape)

    st.subheader("Data")
    dataset = _choose_data()
    data_ok = False
    if dataset:
        with ui.guard("Data"):
            path = Path(dataset)
            st.caption(_check_data(dataset, path.stat().st_mtime if path.exists() else 0.0))
            data_ok = True
    else:
        st.info("Name the data to train on.")

    st.subheader("Target size")
    inputs, panel = st.columns([2, 3], gap="large")
    with inputs:
        target = _target_inputs(shape)
    with panel:
        length, trim = _size_inputs()
    with st.expander("The original design's presets for BGE-M3, with their true sizes"):
        _presets(shape, length)
    st.subheader("Training")
    training = _training_inputs()
    name = st.text_input("Run name (optional)", **_setting("run_name"),
                         placeholder="a name from the date, model and data")
    overrides = st.text_area("More settings, one key=value a line", **_setting("overrides"),
                             placeholder="for example:\nloss.task=0.5\nstructures=[heads, ffn]\ndistill_dataset=passages.jsonl")

    values = {"model": source, "dataset": dataset, "trust_remote_code": trust, **target, **training}
    if trim:
        values["vocab"] = {}
    config = None
    with panel, ui.guard("Settings"):
        config = _validated_config(values, overrides, shape)
    if config is not None:
        with panel, ui.guard("Size"):
            _size_panel(config, shape, length)

    st.divider()
    if config is not None and data_ok:
        st.session_state[CONFIG_KEY] = config
        st.session_state[NAME_KEY] = name
        st.success(f"Ready: {config.model} on {config.dataset}, {settings.describe_duration(config)}.")
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
