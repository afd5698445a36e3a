"""The browser session's state: the settings and input a link carries, this session's runs."""

from __future__ import annotations

import streamlit as st

from core.input.examples import example_sequences
from core.input.records import format_fasta
from core.numerics.specs import ModelSpec
from dashboard import views
from dashboard.runs import RunStore
from dashboard.settings import Settings
from dashboard.state import stored_input
from dashboard.views import CHECKPOINT, EXAMPLES

SETTING_WIDGETS = ("dtype", "device", "backend", "v2", "reference", "reference_sample", "seed", "proxy", "seeds",
                   "min_cosine", "min_agreement", "accept_agreement", "present")


def init_session() -> None:
    """First visit: settings and input from the URL query string."""
    if "settings" in st.session_state:
        return
    settings = Settings.from_query(st.query_params.to_dict())
    st.session_state.settings = settings
    is_named = ModelSpec.is_named(settings.model)
    st.session_state.model_choice = settings.model if is_named else CHECKPOINT
    st.session_state.checkpoint_path = "" if is_named else settings.model
    for name in SETTING_WIDGETS:
        st.session_state[name] = getattr(settings, name)
    st.session_state.my_runs = []
    st.session_state.device_notice = views.device_notice(st.query_params.get("device", ""))
    run_id = st.query_params.get("run")
    example = st.query_params.get("example")
    if run_id:
        open_run(run_id)
    elif example in EXAMPLES:
        load_example(example)
        st.session_state.autorun = True


def remember_run(run_id: str) -> None:
    """Make ``run_id`` this session's current run and list it in its history."""
    st.session_state.current_run = run_id
    for view_state in ("residue_shown", "checks_layer"):  # extra GPU views belong to the previous run
        st.session_state.pop(view_state, None)
    if run_id not in st.session_state.my_runs:
        st.session_state.my_runs.append(run_id)


def open_run(run_id: str) -> None:
    """Reopen a saved run (from ``?run=`` or the history): it becomes current, its input refills the text area."""
    st.session_state.current_run = run_id
    if not RunStore.is_valid_id(run_id):
        return
    parsed = stored_input(run_id)
    if parsed is None:
        return
    remember_run(run_id)
    st.session_state.sequences_text = format_fasta(parsed.records)
    st.session_state.example = None


def load_example(name: str) -> None:
    st.session_state.sequences_text = format_fasta(example_sequences(name))
    st.session_state.example = name
