"""Train: start, stop and resume the run, and watch it live.

The run trains in the manager's background thread; this page only reads its directory, in a
fragment that reruns every REFRESH_S seconds while the run is active, so leaving the page or
reloading the browser changes nothing for the run.
"""

from __future__ import annotations

import streamlit as st

from workbench import models, runs, settings, ui

manager = ui.manager()
st.title("Train")

configured_here = ui.CONFIG_KEY in st.session_state
if configured_here:
    configured = st.session_state[ui.CONFIG_KEY]
else:  # this session has not opened Configure: its defaults
    configured = settings.default_config(models.default_model_source())
active = manager.active()

left, right = st.columns([3, 1], vertical_alignment="center")
if configured is None:
    left.warning("The Configure page reports a problem; fix it there to start a run.")
else:
    left.markdown(f"**Next run{'' if configured_here else ' (the defaults)'}:** `{configured.model}` on "
                  f"{settings.describe_data(configured)}, {ui.describe_target(configured)}, {settings.describe_duration(configured)}, "
                  f"batch {configured.batch_size}. Change it on the Configure page.")
if active is not None:
    left.info(f"One run at a time on this device ({runs.device_name()}): **{active.name}** is training. "
              "Stop it to start another.")
if right.button("Start", type="primary", disabled=configured is None or active is not None, key="train.start",
                icon=":material/play_arrow:"):
    with ui.guard("Start"):
        record = manager.start(configured, st.session_state.get(ui.NAME_KEY, ""))
        st.session_state[ui.RUN_KEY] = record.name
        st.rerun()

names = [r.name for r in manager.runs()]
shown = active.name if active is not None else st.session_state.get(ui.RUN_KEY)
if shown not in names:
    shown = names[0] if names else None
if shown is None:
    st.info("No run yet in this workspace: press Start.")
    st.stop()
record = active if active is not None else manager.record(shown)

st.divider()
live = active is not None and active == record
buttons = st.columns([1, 1, 4])
if buttons[0].button("Stop", disabled=not live or manager.stopping(), key="train.stop", icon=":material/stop:",
                     help="Stops at the next step and saves a checkpoint to resume from"):
    manager.stop()
    st.rerun()
if manager.stopping():
    buttons[2].caption("Stopping at the next step...")
if buttons[1].button("Resume", disabled=active is not None or not record.can_resume(), key="train.resume",
                     icon=":material/resume:"):
    with ui.guard("Resume"):
        manager.resume(record)
        st.rerun()


@st.fragment(run_every=ui.REFRESH_S if live else None)
def live_view() -> None:
    state = ui.run_status(record)
    if state == "done":
        ui.run_result(record)
        ui.show_run_report(record.report() or {}, "train")
    ui.run_charts(record)
    if live and manager.active() != record:
        st.rerun()  # the run ended: redraw the page (buttons) and stop polling


live_view()
