"""The browser session's state: the settings and input a link carries (checked by dashboard.query), this
session's runs, and who it is (the owner token that lets it cancel its own runs)."""

from __future__ import annotations

import secrets

import streamlit as st
import torch

from core.input.examples import example_sequences
from core.input.records import format_fasta
from core.numerics.specs import ModelSpec
from dashboard import views
from dashboard.markup import plain
from dashboard.query import LinkPolicy, LinkQuery, check_query
from dashboard.runs import RunStore
from dashboard.server import BUILTIN_V2, allowed_models, checkpoint_dirs, links_autorun, v2_plugins
from dashboard.settings import Settings
from dashboard.state import stored_input
from dashboard.views import CHECKPOINT

SETTING_WIDGETS = ("dtype", "device", "backend", "v2", "reference", "reference_sample", "seed", "proxy", "seeds",
                   "min_cosine", "min_agreement", "accept_agreement", "present")

LINK_FILLED_INPUT = "This link filled the input; press Run comparison to run it."


def link_policy() -> LinkPolicy:
    """What this server lets a link choose (dashboard/config.toml)."""
    return LinkPolicy(tuple(allowed_models()), tuple(checkpoint_dirs()), (*BUILTIN_V2, *v2_plugins()))


def init_session() -> None:
    """First visit: settings and input from the URL query string, every value checked; a link's example set
    fills the input and waits for Run unless the server lets links run ([links] autorun)."""
    if "settings" in st.session_state:
        return
    link = check_query(st.query_params.to_dict(), link_policy(), Settings.defaults())
    settings = link.settings
    st.session_state.device_notice = None
    if settings.device == "cuda" and not torch.cuda.is_available():
        st.session_state.device_notice = views.device_notice("cuda")
        settings.device = "cpu"
    apply_settings(settings)
    st.session_state.owner = secrets.token_urlsafe(16)
    st.session_state.my_runs = []
    st.session_state.link_notes = link_notes(link, links_autorun())
    if link.run:
        open_run(link.run)
    elif link.example:
        load_example(link.example)
        st.session_state.autorun = links_autorun()


def apply_settings(settings: Settings) -> None:
    """Put ``settings`` into the session and its sidebar widgets."""
    st.session_state.settings = settings
    is_named = ModelSpec.is_named(settings.model)
    st.session_state.model_choice = settings.model if is_named else CHECKPOINT
    st.session_state.checkpoint_path = "" if is_named else settings.model
    for name in SETTING_WIDGETS:
        st.session_state[name] = getattr(settings, name)


def link_notes(link: LinkQuery, autorun: bool) -> list[str]:
    """What the page says about the link (plain text): each ignored value, and that an example set filled
    the input and waits for Run."""
    notes = [problem.message() for problem in link.problems]
    if link.example and not link.run and not autorun:
        notes.append(LINK_FILLED_INPUT)
    return notes


def show_link_notes() -> None:
    """The link's notes, until this session presses Run; user text in them is shown literally."""
    for note in st.session_state.get("link_notes", []):
        if note == LINK_FILLED_INPUT:
            st.info(note, icon="🔗")
        else:
            st.warning(plain(note), icon="🔗")


def forget_link_notes() -> None:
    st.session_state.link_notes = []


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
    st.session_state.sequences_text = format_fasta(parsed.records) if views.refills_text(parsed) else ""
    st.session_state.example = None


def load_example(name: str) -> None:
    st.session_state.sequences_text = format_fasta(example_sequences(name))
    st.session_state.example = name
