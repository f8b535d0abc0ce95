"""Runs: every run in the workspace, read from disk (so they survive a restart); open one to see it."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from workbench import ui

st.title("Runs")
runs = ui.manager().runs()
if runs:
    table = pd.DataFrame([run.summary() for run in runs])
    st.dataframe(table, width="stretch", hide_index=True, column_config={
        "reduction": st.column_config.NumberColumn(format="percent"),
        "retained": st.column_config.NumberColumn(format="percent", help="of the original's score, on what "
                                                  "'retained on' names: your documents wherever they were measured"),
        "measured speedup": st.column_config.NumberColumn(format="%.2fx"),
        "parameters": st.column_config.NumberColumn(format="localized"),
    })
record = ui.pick_run("Open a run", finished_only=False)
ui.run_status(record)
ui.run_result(record)
with st.expander("Configuration"):
    st.code(record.config_text() or "(no config.yaml)", language="yaml")
report = record.report()
if report is not None:
    st.header("At the end of the run")
    ui.show_run_report(report, "final")
evaluation = record.evaluation()
if evaluation is not None:
    st.header("On the Evaluate page")
    ui.show_evaluation(evaluation)
ui.run_charts(record)
