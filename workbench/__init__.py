"""The Streamlit workbench's shared pieces: UI helpers (ui) and Plotly figures (charts).

The engine side, with no Streamlit in it, is prune_engine.run_manager.
"""
