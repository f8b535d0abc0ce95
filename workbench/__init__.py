"""The Streamlit workbench's side that is not the pages: runs in a background thread (runs), model
shapes without weights (models), the Configure page's settings and sizes (settings), the Export
page's paths (exporting), evaluation and similarity (compare), shared UI pieces (ui) and Plotly
figures (charts). Only ui and charts import Streamlit or Plotly.
"""
