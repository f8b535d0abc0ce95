"""Evaluate: the original model against the pruned one on your documents (label-free) and on task
data, and the measured speedup.

The scores come from the evaluators the CLI's `eval` command uses (`--documents`, `--dataset`); the
result is kept in the run directory, so the Runs page shows it too.
"""

from __future__ import annotations

import streamlit as st

from workbench import compare, ui

st.title("Evaluate")
record = ui.pick_run("Run", finished_only=True)
config = record.config()
if config is None:
    st.error(f"{record.name} has no readable config.yaml: its original model is unknown.")
    st.stop()

documents = st.text_input(
    "Your documents (label-free)", value=config.documents if isinstance(config.documents, str) else "",
    help=f"A file or BEIR folder of the texts the model serves. Its held-out {config.documents_held_out:.0%} (the "
    "run's share: with the run's own documents, exactly those it never trained on) become pseudo-queries; no labels "
    "needed.",
)
columns = st.columns([2, 1, 1])
dataset = columns[0].text_input("Task data (optional)", value=config.eval_dataset or config.dataset or "",
                                help="demo, sts, sts-<lang>, msmarco, mteb/<task>, a local file or BEIR folder")
splits = columns[1].multiselect("Splits", ["test", "dev"], default=["test"])
batch_size = columns[2].number_input("Batch size", 1, 1024, value=32)
st.caption(f"Original: `{config.model}`; pruned: `{record.export_dir}`.")

dataset, documents = dataset.strip(), documents.strip()
ready = bool(documents or dataset) and bool(splits or not dataset)
if st.button("Evaluate", type="primary", disabled=not ready, key="evaluate.run"):
    with ui.guard("Evaluation"), st.spinner("Encoding the texts with both models..."):
        original = ui.embedder(config.model, config.trust_remote_code)
        pruned = ui.embedder(str(record.export_dir), config.trust_remote_code)
        compare.evaluate_run(record, original, pruned, dataset or None, documents or None, tuple(splits),
                             int(batch_size))

result = record.evaluation()
if result is None:
    st.info("Not evaluated yet: press Evaluate.")
else:
    ui.show_evaluation(result)
