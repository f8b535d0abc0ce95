"""Evaluate: the original model against the pruned one on the chosen data, and the measured speedup.

The scores come from the evaluator the CLI's `eval` command uses; the result is kept in the run
directory, so the Runs page shows it too.
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

columns = st.columns([2, 1, 1])
dataset = columns[0].text_input("Data", value=config.eval_dataset or config.dataset,
                                help="demo, sts, sts-<lang>, msmarco, mteb/<task>, a local file or BEIR folder")
splits = columns[1].multiselect("Splits", ["test", "dev"], default=["test"])
batch_size = columns[2].number_input("Batch size", 1, 1024, value=32)
st.caption(f"Original: `{config.model}`; pruned: `{record.export_dir}`.")

if st.button("Evaluate", type="primary", disabled=not splits or not dataset.strip(), key="evaluate.run"):
    with ui.guard("Evaluation"), st.spinner("Encoding the data with both models..."):
        original = ui.embedder(config.model, config.trust_remote_code)
        pruned = ui.embedder(str(record.export_dir), config.trust_remote_code)
        compare.evaluate_run(record, original, pruned, dataset.strip(), tuple(splits), int(batch_size))

result = record.evaluation()
if result is None:
    st.info("Not evaluated yet: press Evaluate.")
else:
    st.subheader(f"On {result['dataset']}")
    ui.show_evaluation(result)
