"""The runs folder as this server process opens it: once per process, runs a stopped server left queued
or running are marked interrupted; a run's state on disk is read without ever raising."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from dashboard.run_files import DamagedRun
from dashboard.runs import RunStore


@st.cache_resource(show_spinner=False)
def opened_store(root: str, quota_bytes: int | None, _owned: Callable[[str], bool]) -> RunStore:
    """The store of ``root``, made once per (folder, quota) in this process. Its first use marks every run
    found queued or running that no job of this process owns (``_owned(run_id)`` False) as interrupted:
    only a server that stopped leaves one so."""
    store = RunStore(root, quota_bytes)
    store.mark_interrupted(_owned)
    return store


@dataclass(frozen=True)
class DiskStatus:
    """A run's state from its files: queued or running (still on disk so: interrupted), done, failed,
    cancelled, interrupted, pruned, damaged (``error`` says what is wrong) or missing; ``pruned``: how many
    older runs were removed to make room for it."""

    state: str
    error: str | None = None
    pruned: int = 0


def disk_status(store: RunStore, run_id: str) -> DiskStatus:
    """The run's DiskStatus; a finished run with any damaged file is 'damaged'. Never raises."""
    try:
        status = store.read_status(run_id)
        problem = store.problem(run_id) if status is not None else None
    except DamagedRun as damaged:
        return DiskStatus("damaged", str(damaged))
    except OSError as error:
        return DiskStatus("damaged", f"damaged: the run's folder cannot be read ({error.strerror or error})")
    if status is None:
        return DiskStatus("missing")
    if problem is not None:
        return DiskStatus("damaged", problem)
    state = "interrupted" if status.state in ("queued", "running") else status.state
    return DiskStatus(state, status.error, status.pruned)
