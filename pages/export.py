"""Export: write the pruned model as a Hugging Face / sentence-transformers directory.

The same `export_embedder` the trainer uses writes it (atomically, never over an existing
directory unless asked, and never over one it did not write); relative destinations stay inside
the workspace. The resolved destination, or why it is refused, shows before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from prune_engine.atomic import read_json
from prune_engine.export import check_destination, export_embedder
from workbench import exporting, ui

EXPORTED_KEY = "export.written"

st.title("Export")
record = ui.pick_run("Run", finished_only=True)
config = record.config()
info = record.pruning_info()
st.caption(f"{info['structure_description']}; {info['parameters_after']['total']:,} parameters "
           f"(from {info['parameters_before']['total']:,}).")

workspace = ui.manager().workspace
destination_text = st.text_input(
    "Destination directory", value=f"exports/{record.name}",
    help=f"A relative path is inside the workspace ({workspace}); anywhere else needs an absolute path.",
)
overwrite = st.checkbox("Replace the directory if it already exists (only an export this tool wrote)", value=False)
run_gate = exporting.quality_gate(info)
if run_gate:
    st.caption("The run wrote ONNX variants beside its export and scored them:")
    ui.show_quality_gate(run_gate, "run")
onnx_column, threshold_column = st.columns([2, 1])
with_onnx = onnx_column.toggle(
    "Also write ONNX fp32 + int8", value=bool(config and config.serving.onnx), key="export.onnx", disabled=config is None,
    help="onnx/model.onnx and onnx/model_qint8.onnx beside the export, both scored on the run's evaluation data and "
    "held-out documents; a quality gate says whether int8 may serve" + ("" if config else " (needs the run's config.yaml)"))
threshold = threshold_column.number_input(
    "int8 must keep this share of every fp32 figure", min_value=0.01, max_value=1.0, step=0.005, format="%.3f",
    value=config.serving.int8_threshold if config else 0.99, key="export.int8_threshold", disabled=not with_onnx)
written = Path(st.session_state.get(EXPORTED_KEY, ""))
destination = None
with ui.guard("Destination"):  # the refusals, shown before anything is written
    planned = exporting.resolve_destination(destination_text, workspace)
    if planned == written and not overwrite:
        note = ", which holds the export just written: tick Replace to write it again."
    else:
        check_destination(planned, overwrite)
        note = " (replacing the export there)." if planned.exists() else "."
    destination = planned
    st.caption(f"Writes to `{destination}`{note}")
exported = None
if st.button("Export", type="primary", key="export.run", icon=":material/save:", disabled=destination is None):
    with ui.guard("Export"), st.spinner("Writing the model..."):
        pruned = ui.embedder(str(record.export_dir), bool(config and config.trust_remote_code))
        exported = export_embedder(pruned, destination, exporting.copied_info(info), overwrite=overwrite)
        st.session_state[EXPORTED_KEY] = str(exported)
    if with_onnx and exported is not None:
        with ui.guard("ONNX"), st.spinner("Writing the ONNX variants and scoring them..."):
            exporting.write_serving(exported, config, ui.embedder(config.model, config.trust_remote_code), threshold)

written = Path(st.session_state.get(EXPORTED_KEY, ""))
if written.name and (written / "config.json").is_file():
    st.success(f"Written to `{written}`")
    listing = pd.DataFrame(exporting.directory_listing(written))
    listing["size"] = listing["bytes"].map(lambda n: f"{ui.human(n)}B")
    st.dataframe(listing, width="stretch", hide_index=True)
    written_info = read_json(written / "pruning_info.json") or {}
    gate = exporting.quality_gate(written_info)
    if gate:
        ui.show_quality_gate(gate, "export")
    remote_code = bool(written_info.get("needs_trust_remote_code"))
    st.markdown("Load it with:")
    st.code(exporting.loading_snippet(written, remote_code), language="python")
    st.download_button("Download as zip", data=lambda: exporting.zip_directory(written), file_name=f"{written.name}.zip",
                       mime="application/zip", icon=":material/folder_zip:", on_click="ignore")
