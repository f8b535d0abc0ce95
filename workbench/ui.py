"""Streamlit pieces the workbench pages share: the process-wide run manager, cached models, errors
shown in the page, the run picker and the run's charts. Everything here runs in the page's own
script thread; the training thread never touches Streamlit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import streamlit as st

from prune_engine.cli import ENGINE_ERRORS as CLI_ERRORS
from prune_engine.config import RunConfig
from prune_engine.embedder import Embedder
from prune_engine.evaluate import AGREEMENT
from prune_engine.label_free import AGREEMENT_AT_10
from prune_engine.sources import load_embedder
from workbench import charts, compare, models, runs, settings

log = logging.getLogger(__name__)

ENGINE_ERRORS = (*CLI_ERRORS, runs.WorkbenchError)
SETTINGS_PREFIX = "cfg."  # the Configure page's widgets (persist_state="session": kept across pages)
RUN_KEY = "workbench.run"  # the run the user last picked, shared by the pages
DRAFT_KEY = "workbench.draft"  # the RunConfig the Configure page's widgets edit
CONFIG_KEY = "workbench.config"  # what the Train page starts: the draft and its key=value lines; None while invalid
NAME_KEY = "workbench.run_name"
REFRESH_S = 1.5  # live view period while a run trains


@st.cache_resource(show_spinner=False)
def _manager(workspace: str) -> runs.RunManager:
    return runs.RunManager(Path(workspace))


def manager() -> runs.RunManager:
    """One manager per workspace for the whole server: runs outlive sessions and page reloads."""
    return _manager(str(runs.workspace_dir()))


@st.cache_resource(show_spinner="Reading the model's configuration...", ttl=300)
def shape(source: str) -> tuple[models.ModelShape | None, str]:
    """(shape, error): a failure is cached too, so an unreachable hub is not retried on every rerun."""
    try:
        return models.model_shape(source), ""
    except ENGINE_ERRORS as error:
        return None, str(error)


def describe_target(config: RunConfig) -> str:
    """The run's target in words, for this model (a parameter budget with its count)."""
    if config.latency_target:  # sized by the run, once it has measured this machine
        return (f"{config.target_speedup}x faster" if config.target_speedup else
                f"{config.target_latency} s per batch of {config.latency_batch_size} x {config.latency_length} tokens")
    model, problem = shape(config.model)
    if model is None:
        return problem
    try:
        return settings.size_target(config, model).describe()
    except ENGINE_ERRORS as error:
        return str(error)


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def embedder(source: str, trust_remote_code: bool) -> Embedder:
    return load_embedder(source, trust_remote_code=trust_remote_code).eval()


@contextmanager
def guard(action: str = "") -> Iterator[None]:
    """Shows what went wrong in the page instead of a traceback; the page and its inputs stay as they were."""
    prefix = f"{action}: " if action else ""
    try:
        yield
    except ENGINE_ERRORS as error:
        st.error(f"{prefix}{error}")
    except Exception as error:
        log.exception("workbench: %s failed", action or "an action")
        st.error(f"{prefix}unexpected {type(error).__name__}: {error}")


def sidebar() -> None:
    """On every page: where runs are kept and what is training."""
    active = manager().active()
    if active is not None:
        st.sidebar.info(f"Training **{active.name}**; the Train page follows it.")
    st.sidebar.caption(f"Workspace: `{manager().workspace}`")


def human(n: float) -> str:
    """12,345,678 -> '12.3M': for short labels; tables show exact counts."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def pick_run(label: str, finished_only: bool) -> runs.RunRecord:
    """A select box of the workspace's runs (finished ones: those with an export); stops the page
    with a hint when there is none."""
    runs = [r for r in manager().runs() if r.export_dir or not finished_only]
    if not runs:
        st.info("No finished run yet. Configure one, then start it on the Train page.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        st.stop()
    names = [r.name for r in runs]
    current = st.session_state.get(RUN_KEY)
    name = st.selectbox(label, names, index=names.index(current) if current in names else 0)
    st.session_state[RUN_KEY] = name
    return manager().record(name)


def run_status(record: runs.RunRecord) -> str:
    """Progress, phase and the run's last message; returns the run's state."""
    state = record.state()
    status = record.status()
    step, total = record.progress()
    metrics = record.metrics()
    last = metrics[-1] if metrics else {}
    st.progress(step / total if total else 0.0, text=f"**{record.name}**: {state}, step {step} of {total or '?'}"
                + (f", phase {status.get('phase')}" if status.get("phase") else ""))
    message = status.get("message", "")
    if state == "failed":
        st.error(f"The run failed: {message}")
    elif state == "interrupted":
        st.warning("The process that ran this stopped without finishing it (the app was restarted?). "
                   + ("Resume it from its last checkpoint." if record.has_checkpoint() else "It left no checkpoint."))
    elif message:
        st.caption(message)
    if last:
        columns = st.columns(4)
        columns[0].metric("Total loss", f"{last.get('loss/total', float('nan')):.4f}")
        columns[1].metric("Expected encoder size", human(last.get("expected_encoder_params", 0)),
                          help=f"{last.get('expected_encoder_params', 0):,.0f} parameters")
        columns[2].metric("Target", human(last.get("target_params", 0)))
        columns[3].metric("Examples / s", f"{last.get('examples_per_s', 0):.1f}")
    return state


def run_charts(record: runs.RunRecord) -> None:
    """The run's curves and its latest gates, two charts a row."""
    metrics = record.metrics()
    gates = record.latest_gates()
    if not metrics and not gates:
        st.info("Waiting for the first logged step...")
        return
    figures = [charts.loss_figure(metrics), charts.size_figure(metrics),
               charts.multiplier_figure(metrics), charts.decided_figure(metrics)]
    if gates:
        figures += [charts.head_gates_figure(gates), charts.ffn_figure(gates), charts.layer_gates_figure(gates)]
    for start in range(0, len(figures), 2):
        for column, figure in zip(st.columns(2), figures[start : start + 2], strict=False):
            column.plotly_chart(figure, width="stretch")


def run_result(record: runs.RunRecord) -> None:
    """What a finished run produced: the structure and the sizes, from its export's pruning_info.json,
    and what it kept (on the user's documents where it was measured there)."""
    info = record.pruning_info()
    if not info:
        return
    before, after = info["parameters_before"], info["parameters_after"]
    kept = record.retention()
    kept_text = f" It keeps {kept.describe()}." if kept else ""
    st.success(f"Exported to `{record.export_dir}`: {info['structure_description']}.{kept_text}")
    columns = st.columns(3)
    for column, part in zip(columns, ("total", "encoder", "embeddings"), strict=True):
        change = after[part] / before[part] - 1 if before[part] else 0.0
        column.metric(f"{part.capitalize()} parameters", f"{after[part]:,}", f"{change:+.1%}" if change else None,
                      delta_color="inverse")


def _report_table(report: dict) -> list[dict]:
    rows = compare.evaluation_rows(report)
    st.dataframe(pd.DataFrame(rows), width="stretch", hide_index=True,
                 column_config={"retained": st.column_config.NumberColumn(format="percent")})
    return rows


def show_report(report: dict, key: str) -> None:
    """A comparison report (the evaluator's): the figures as a table and the shared ones as a chart."""
    rows = _report_table(report)
    for split, reason in report.get("unavailable", {}).items():
        st.caption(f"No {split} split: {reason}")
    st.plotly_chart(charts.evaluation_figure(rows), width="stretch", key=f"report.{key}")


def show_label_free(report: dict, key: str) -> None:
    """A label-free report on the user's held-out documents: the shares that matter for serving as
    metrics, the retrieval figures as a chart, every figure in a table."""
    (block,) = report["splits"].values()
    metrics = block["metrics"]
    ndcg = metrics.get(runs.LABEL_FREE_METRIC, {}).get("retained")
    columns = st.columns(3)
    columns[0].metric("nDCG@10 retained", f"{ndcg:.1%}" if ndcg is not None else "n/a",
                      help="the pruned model's nDCG@10 over the original's, on pseudo-queries made from held-out "
                      "documents (titles, or a sentence cut out of the text): no labels needed")
    columns[1].metric("Top-10 agreement", f"{metrics[AGREEMENT_AT_10]['pruned']:.1%}",
                      help="share of the original's 10 nearest documents the pruned model also returns, per query")
    columns[2].metric("Mean cosine to the original", f"{metrics[AGREEMENT]['pruned']:.3f}",
                      help="between both models' vectors of the same held-out documents: 1.0 means the pruned "
                      "model's vectors can be searched against the original's index as they are")
    st.plotly_chart(charts.label_free_figure(metrics), width="stretch", key=f"label_free.{key}")
    st.caption(block["source"])
    with st.expander("Every label-free figure"):
        _report_table(report)


def show_warnings(report: dict) -> None:
    for warning in report.get("warnings", []):
        st.warning(warning, icon=":material/warning:")


def show_quality_gate(gate: dict, key: str) -> None:
    """The ONNX serving quality gate: whether int8 may replace fp32, and each figure's kept share."""
    say = st.success if gate["int8_recommended"] else st.warning
    say(f"ONNX serving, {gate['decision']}.", icon=":material/speed:")
    if gate["figures"]:
        st.dataframe(pd.DataFrame([
            {"figure": name, "fp32": row["fp32"], "int8": row["int8"], "int8 keeps": row["kept"],
             "below the threshold": name in gate["fallen"]} for name, row in gate["figures"].items()
        ]), width="stretch", hide_index=True, key=f"gate.{key}",
            column_config={"int8 keeps": st.column_config.NumberColumn(format="percent")})


def show_latency(latency: dict) -> None:
    """A latency target's result: the export timed beside the original against the cost model."""
    c = latency["conditions"]
    columns = st.columns(3)
    columns[0].metric("Measured latency speedup", f"{latency['measured_speedup']:.2f}x",
                      help=f"per batch of {c['batch_size']} x {c['sequence_length']} tokens on this {c['device']}")
    columns[1].metric("Predicted latency speedup", f"{latency['predicted_speedup']:.2f}x",
                      help="the cost model the run calibrated as it started")
    columns[2].metric("Measured latency", f"{latency['measured_s'] * 1000:.1f} ms",
                      f"{latency['measured_s'] / latency['original_measured_s'] - 1:+.1%}", delta_color="inverse")


def show_run_report(report: dict, key: str) -> None:
    """report.json: its warnings once, the documents' label-free figures, then the task data's, then
    a latency target's timing and the ONNX variants' quality gate where the run has them."""
    show_warnings(report)
    if report.get("documents"):
        st.subheader("On your documents (label-free)")
        show_label_free(report["documents"], key)
    if report.get("splits") or report.get("unavailable"):
        st.subheader(f"On the task data, {report['dataset']}")
        show_report(report, key)
    if report.get("latency"):
        st.subheader("Latency on this machine")
        show_latency(report["latency"])
    if report.get("serving"):
        st.subheader("Serving (ONNX)")
        show_quality_gate(report["serving"]["quality_gate"], key)


def show_evaluation(result: dict) -> None:
    """The Evaluate page's stored result: the measured speedup, then each report."""
    speed = result["speed"]
    columns = st.columns(3)
    columns[0].metric("Measured speedup", f"{speed['speedup']:.2f}x",
                      help=f"best of {speed['repeats']} encodings of the same {speed['texts']} texts, batch "
                      f"{speed['batch_size']}, the two models timed in turns")
    columns[1].metric("Original", f"{speed['original_s']:.2f} s")
    columns[2].metric("Pruned", f"{speed['pruned_s']:.2f} s")
    if result.get("documents"):
        st.subheader("On your documents (label-free)")
        show_label_free(result["documents"], "evaluation")
    if result.get("report"):
        st.subheader(f"On {result['report']['dataset']}")
        show_report(result["report"], "evaluation")
