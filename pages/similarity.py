"""Similarity: the original's and the pruned model's similarities of your own texts, side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from workbench import charts, compare, ui

SENTENCES = (
    "A man is playing a guitar.\nSomeone plays an instrument on stage.\nA woman is slicing an onion.\n"
    "The chef chops vegetables in the kitchen.\nThe stock market fell sharply today."
)
QUERY = "how do plants make food"
PASSAGES = (
    "Photosynthesis lets plants turn light, water and carbon dioxide into sugar.\n"
    "The roots of a plant take up water and minerals from the soil.\n"
    "Volcanoes form where magma rises through the crust.\n"
    "Chlorophyll in the leaves absorbs sunlight."
)

st.title("Similarity")
record = ui.pick_run("Run", finished_only=True)
config = record.config()
mode = st.radio("Compare", ("Sentences", "A query and passages"), horizontal=True)
if mode == "Sentences":
    query = None
    texts = [t.strip() for t in st.text_area("Sentences, one a line", SENTENCES, height=150).splitlines() if t.strip()]
else:
    query = st.text_input("Query", QUERY).strip()
    texts = [t.strip() for t in st.text_area("Passages, one a line", PASSAGES, height=150).splitlines() if t.strip()]
if len(texts) < 2 or query == "":
    st.warning("Give at least two texts (and a query).")
    st.stop()

models = {}
with ui.guard("Loading the models"):
    trust = bool(config and config.trust_remote_code)
    models = {"Original": ui.embedder(config.model, trust), "Pruned": ui.embedder(str(record.export_dir), trust)}
if not models:
    st.stop()

labels = [f"{i + 1}. {text if len(text) <= 28 else text[:27] + '…'}" for i, text in enumerate(texts)]
if query is None:
    matrices = {name: compare.similarity_matrix(model, texts) for name, model in models.items()}
    for column, (name, matrix) in zip(st.columns(2), matrices.items(), strict=True):
        column.plotly_chart(charts.similarity_figure(matrix, labels, f"{name} ({len(texts)} sentences)"), width="stretch")
    difference = abs(matrices["Original"] - matrices["Pruned"]).max()
    st.metric("Largest difference between the two matrices", f"{difference:.3f}")
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    ranking = {name: sorted(((f"{labels[i]} / {labels[j]}", float(m[i, j])) for i, j in pairs), key=lambda r: -r[1])
               for name, m in matrices.items()}
else:
    ranking = {name: [(labels[i], score) for i, score in compare.rank_passages(model, query, texts)]
               for name, model in models.items()}
    agree = sum(a[0] == b[0] for a, b in zip(*ranking.values(), strict=True))
    st.metric("Ranks on which the two models agree", f"{agree} of {len(texts)}")
    scores = {name: dict(rows) for name, rows in ranking.items()}
    st.plotly_chart(charts.scores_figure(labels, {name: [s[label] for label in labels] for name, s in scores.items()}),
                    width="stretch")
st.markdown("**Rankings, most similar first**")
rows = {name: [f"{label}: {score:.3f}" for label, score in ranked] for name, ranked in ranking.items()}
st.dataframe(pd.DataFrame(rows, index=range(1, len(rows["Original"]) + 1)), width="stretch")
