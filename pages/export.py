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
if st.button("Export", type="primary", key="export.run", icon=":material/save:", disabled=destination is None):
    with ui.guard("Export"), st.spinner("Writing the model..."):
        pruned = ui.embedder(str(record.export_dir), bool(config and config.trust_remote_code))
        extra = {k: v for k, v in info.items() if k != "needs_trust_remote_code"}  # export_embedder sets it
        written = export_embedder(pruned, destination, extra, overwrite=overwrite)
        st.session_state[EXPORTED_KEY] = str(written)

written = Path(st.session_state.get(EXPORTED_KEY, ""))
if written.name and (written / "config.json").is_file():
    st.success(f"Written to `{written}`")
    listing = pd.DataFrame(exporting.directory_listing(written))
    listing["size"] = listing["bytes"].map(lambda n: f"{ui.human(n)}B")
    st.dataframe(listing, width="stretch", hide_index=True)
    remote_code = bool((read_json(written / "pruning_info.json") or {}).get("needs_trust_remote_code"))
    st.markdown("Load it with:")
    st.code(exporting.loading_snippet(written, remote_code), language="python")
    st.download_button("Download as zip", data=lambda: exporting.zip_directory(written), file_name=f"{written.name}.zip",
                       mime="application/zip", icon=":material/folder_zip:", on_click="ignore")
