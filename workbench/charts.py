"""Plotly figures of a run, built from what the trainer writes (metrics.jsonl rows, a gate snapshot).

Plain functions of plain data, so the Train page (live) and the Runs page (any run on disk) draw
the same charts, and tests can check a figure's data without a browser.
"""

from __future__ import annotations

import plotly.graph_objects as go

from prune_engine.evaluate import MIXED_PREFIX

LOSS_NAMES = {
    "loss/total": "total",
    "loss/distill_cosine": "distillation (cosine)",
    "loss/distill_similarity": "distillation (similarity)",
    "loss/distill_tokens": "distillation (tokens)",
    "loss/distill_layers": "distillation (every layer)",
    "loss/distill_sparse": "distillation (sparse)",
    "loss/distill_colbert": "distillation (multi-vector)",
    "loss/task": "task",
    "loss/lagrangian": "Lagrangian",
}
# The label-free report's figures drawn as bars (original against pruned, x100); the mixed row's
# "original" is the original's own figure, its "pruned" the pruned model's queries on the original's index.
LABEL_FREE_BARS = {
    "ndcg_at_10": "nDCG@10",
    "recall_at_100": "Recall@100",
    "mrr_at_10": "MRR@10",
    MIXED_PREFIX + "ndcg_at_10": "nDCG@10, pruned queries<br>on the original's index",
}
HEIGHT = 340


def _layout(figure: go.Figure, title: str, x_title: str = "step", y_title: str = "",
            height: int = HEIGHT) -> go.Figure:
    figure.update_layout(
        title=title, height=height, margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x_title, yaxis_title=y_title,
        legend=dict(orientation="h", yanchor="top", y=-0.28, x=0),
    )
    return figure


def _series(metrics: list[dict], key: str) -> tuple[list, list]:
    rows = [row for row in metrics if key in row]
    return [row["step"] for row in rows], [row[key] for row in rows]


def _mark_finetune(figure: go.Figure, metrics: list[dict]) -> go.Figure:
    """A dashed line where the masks were fixed and fine-tuning began."""
    start = next((row["step"] for row in metrics if row.get("phase") == "finetune"), None)
    if start is not None:
        figure.add_vline(x=start, line_dash="dash", line_color="grey", annotation_text="masks fixed")
    return figure


def loss_figure(metrics: list[dict]) -> go.Figure:
    figure = go.Figure()
    for key, label in LOSS_NAMES.items():
        steps, values = _series(metrics, key)
        if steps:
            figure.add_trace(go.Scatter(x=steps, y=values, name=label, mode="lines",
                                        line=dict(width=3 if key == "loss/total" else 1.5)))
    return _mark_finetune(_layout(figure, "Losses"), metrics)


def size_figure(metrics: list[dict]) -> go.Figure:
    figure = go.Figure()
    for key, label, dash in (("expected_encoder_params", "expected encoder size", None),
                             ("target_params", "target (ramped)", "dot")):
        steps, values = _series(metrics, key)
        figure.add_trace(go.Scatter(x=steps, y=values, name=label, mode="lines", line=dict(dash=dash)))
    return _mark_finetune(_layout(figure, "Expected size against the target", y_title="encoder parameters"), metrics)


def multiplier_figure(metrics: list[dict]) -> go.Figure:
    figure = go.Figure()
    keys = sorted({key for row in metrics for key in row if key.startswith(("lambda_1/", "lambda_2/"))})
    for key in keys:
        steps, values = _series(metrics, key)
        figure.add_trace(go.Scatter(x=steps, y=values, name=key, mode="lines"))
    return _layout(figure, "Lagrange multipliers")


def decided_figure(metrics: list[dict]) -> go.Figure:
    steps, values = _series(metrics, "decided_fraction")
    figure = go.Figure(go.Scatter(x=steps, y=values, mode="lines", name="decided", fill="tozeroy"))
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _mark_finetune(_layout(figure, "Share of gates decided (near 0 or 1)"), metrics)


def head_gates_figure(gates: dict) -> go.Figure:
    """Layers x heads; layers with fewer heads (an already pruned model) are padded with blanks."""
    heads = gates["heads"]
    width = max((len(row) for row in heads), default=0)
    z = [list(row) + [None] * (width - len(row)) for row in heads]
    figure = go.Figure(go.Heatmap(
        z=z, x=list(range(width)), y=list(range(len(heads))), zmin=0, zmax=1, colorscale="Viridis",
        colorbar=dict(title="gate"), hovertemplate="layer %{y}, head %{x}: %{z:.2f}<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed", dtick=1)
    return _layout(figure, f"Head gates (step {gates.get('step', '?')})", x_title="head", y_title="layer")


def ffn_figure(gates: dict) -> go.Figure:
    layers = list(range(len(gates["ffn_kept"])))
    figure = go.Figure([
        go.Bar(x=layers, y=gates["ffn_size"], name="original", marker_color="lightgrey"),
        go.Bar(x=layers, y=gates["ffn_kept"], name="kept"),
    ])
    figure.update_layout(barmode="overlay")
    return _layout(figure, "FFN neurons kept per layer", x_title="layer", y_title="neurons")


def layer_gates_figure(gates: dict) -> go.Figure:
    layers = list(range(len(gates["layers"])))
    figure = go.Figure(go.Bar(x=layers, y=gates["layers"], name="layer gate"))
    figure.update_yaxes(range=[0, 1.05])
    return _layout(figure, "Layer gates", x_title="layer", y_title="gate")


def similarity_figure(matrix, labels: list[str], title: str) -> go.Figure:
    """Rows labelled with the texts, columns with their numbers (long labels would crowd both axes)."""
    numbers = [str(i + 1) for i in range(len(labels))]
    figure = go.Figure(go.Heatmap(
        z=matrix, x=numbers, y=labels, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
        text=[[f"{v:.2f}" for v in row] for row in matrix], texttemplate="%{text}",
        hovertemplate="%{y} / %{x}: %{z:.3f}<extra></extra>",
    ))
    figure.update_xaxes(type="category")
    figure.update_yaxes(autorange="reversed")
    return _layout(figure, title, x_title="", y_title="", height=max(HEIGHT, 60 + 45 * len(labels)))


def scores_figure(labels: list[str], scores: dict[str, list[float]]) -> go.Figure:
    """Each passage's cosine to the query, one bar per model."""
    figure = go.Figure([go.Bar(x=labels, y=values, name=name) for name, values in scores.items()])
    figure.update_layout(barmode="group")
    return _layout(figure, "Cosine to the query", x_title="", y_title="cosine")


def evaluation_figure(rows: list[dict]) -> go.Figure:
    """Original and pruned score per metric and split (rows with both)."""
    rows = [row for row in rows if row.get("original") is not None]
    names = [f"{row['metric']} ({row['split']})" for row in rows]
    figure = go.Figure([
        go.Bar(x=names, y=[row[name] for row in rows], name=name, texttemplate="%{y:.3f}", textposition="outside")
        for name in ("original", "pruned")
    ])
    figure.update_layout(barmode="group", bargap=0.4)
    return _layout(figure, "Original against pruned", x_title="", y_title="score")


def label_free_figure(metrics: dict[str, dict]) -> go.Figure:
    """The label-free report's retrieval figures on the user's held-out documents, both models."""
    shown = [name for name in LABEL_FREE_BARS if name in metrics]
    labels = [LABEL_FREE_BARS[name] for name in shown]
    figure = go.Figure([
        go.Bar(x=labels, y=[metrics[name][column] for name in shown], name=column, texttemplate="%{y:.1f}",
               textposition="outside", cliponaxis=False)
        for column in ("original", "pruned")
    ])
    figure.update_layout(barmode="group", bargap=0.35)
    figure.update_yaxes(range=[0, 112])  # room above 100 for the figures written over the bars
    return _layout(figure, "Retrieval on your held-out documents (label-free)", x_title="", y_title="score (x100)")
