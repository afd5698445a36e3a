"""The page's caches and runs: Streamlit glue around ``core``, nothing computed here.

- ``get_model``: one loaded model per (model, dtype, device), shared by every session.
- ``job_queue``: the process-wide FIFO queue whose one worker thread does all GPU work.
- ``submit_run`` / ``run_status`` / ``load_run``: a run is computed by a queued job — the same
  pipeline as the CLI's (core.pipeline.run_comparison) —, saved compact under the runs directory as it
  completes (dashboard.runs.RunStore, dashboard.compact), and read back once per server with
  ``st.cache_resource`` keyed by run id, so changing layer, seed or thresholds afterwards redraws
  without touching the model.
- ``run_store``: the runs folder; its first use in a process marks runs a stopped server left queued
  or running as interrupted (dashboard.stored).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import streamlit as st

from core.analysis.analyse import Analysis, analyse
from core.analysis.checks import CheckResult
from core.analysis.profile import residue_divergence
from core.embed.cache import CacheStats
from core.embed.passes import Progress
from core.embed.run import EmbeddingRun
from core.input.records import ParsedInput
from core.numerics.environment import versions
from core.numerics.loading import load_esm2_model
from core.pipeline import SETUP_ERRORS, LoadedModel, SetupFailed, candidate_path, run_comparison
from dashboard.jobs import Cancelled, CancelOutcome, Estimate, JobQueue
from dashboard.compact import compact_run
from dashboard.runs import RunInfo, RunStorageError, RunStore
from dashboard.server import (NOT_ALLOWED, cache_dir, candidate_for, checked_model_spec, runs_dir, runs_quota_bytes,
                              shared_history, weights_token)
from dashboard.stored import disk_status, opened_store
from dashboard.settings import Settings, options_for, request_for, settings_from_dict, shown_layer

STAGES = ("v1.0", "v2.0", "reference")


@st.cache_resource(max_entries=1, show_spinner=False)
def get_model(spec: str, dtype: str, device: str, weights_token: str = "") -> LoadedModel:
    """The model, loaded once per (spec, dtype, device) and shared by all sessions.

    ``weights_token`` changes when a checkpoint file changes on disk. One entry: loading another
    model releases the previous one's GPU memory.
    """
    return LoadedModel.of(*load_esm2_model(spec, dtype=dtype, device=device))


def loaded_for(settings: Settings) -> LoadedModel:
    """The model of ``settings``, loaded once per process — only if the server still offers it (a reopened
    run's model may have left [models] allowed; dashboard.server.NOT_ALLOWED is raised then). Loaded again
    when something changed it since (a v2.0 plug-in that did is refused, but the change stays in memory)."""
    checked_model_spec(settings.model)
    key = (settings.model, settings.dtype, settings.device, weights_token(settings.model))
    loaded = get_model(*key)
    if loaded.changed():
        get_model.clear()
        loaded = get_model(*key)
    return loaded


def model_refusal(settings: Settings) -> str | None:
    """Why the page may not load the model of ``settings`` now, or None when it may."""
    try:
        checked_model_spec(settings.model)
    except NOT_ALLOWED as refusal:
        return str(refusal)
    return None


@st.cache_data(max_entries=64, show_spinner="Waiting for the GPU, then running both paths on this sequence alone…")
def residue_view(settings: Settings, sequence: str, layer: int):
    """Per-residue divergence of one sequence (core.analysis.profile.residue_divergence), cached; runs in the GPU queue."""
    def work(progress: Progress):
        loaded = loaded_for(settings)
        return residue_divergence(loaded.model, loaded.alphabet, sequence, layer, settings.backend)

    return job_queue().call(f"residues-{RunStore.new_id()}", 1, work)


@st.cache_data(max_entries=16, show_spinner="Waiting for the GPU, then running v2.0 again: each sequence alone, then the whole set…")
def v2_checks(settings: Settings, records: tuple[tuple[str, str], ...], layer: int, _packed: Any) -> list[CheckResult]:
    """Packing invariance and determinism of the compared v2.0 at ``layer`` against the stored packed
    embeddings ((n_sequences, embed_dim)), or against a fresh v2.0 run over exactly these sequences when
    ``_packed`` is None (some came from the embedding cache, packed with other batch-mates); runs in the
    GPU queue."""
    from core.analysis.checks import v2_checks as run_checks

    def work(progress: Progress) -> list[CheckResult]:
        loaded = loaded_for(settings)
        request = request_for(settings, candidate_for(settings.v2), None)
        path = candidate_path(request, loaded.model)  # re-run the v2.0 that was compared
        sequences = [sequence for _, sequence in records]
        return run_checks(loaded.model, loaded.alphabet, sequences, layer, _packed, settings.backend, path=path)

    return job_queue().call(f"checks-{RunStore.new_id()}", 2 * len(records), work)


# ---------------------------------------------------------------- runs and the GPU queue


@st.cache_resource(show_spinner=False)
def job_queue() -> JobQueue:
    """The one queue of this server process: every session's GPU work goes through it, in order."""
    return JobQueue()


def run_store() -> RunStore:
    """The runs folder's store (with its quota); its first use in this process marks the runs a stopped
    server left queued or running as interrupted (dashboard.stored.opened_store)."""
    return opened_store(str(runs_dir()), runs_quota_bytes(), owned_by_queue)


def owned_by_queue(run_id: str) -> bool:
    """Whether a job of this process is queued or running for ``run_id``."""
    job = job_queue().get(run_id)
    return job is not None and job.state in ("queued", "running")


def failure_message(error: BaseException) -> str:
    """What the page shows for a failed job: user errors as they are, anything else with its type."""
    if isinstance(error, (SetupFailed, *SETUP_ERRORS)):
        return f"Cannot run: {error}"
    return f"Run failed: {type(error).__name__}: {error}"


@dataclass
class Outcome:
    """What a finished run job leaves in memory: its input and settings, what the embedding cache did
    (None when off), and the embeddings only when they could not be saved (``save_error`` says why);
    otherwise the store holds them."""

    parsed: ParsedInput
    settings: Settings
    run: EmbeddingRun | None = None
    save_error: str | None = None
    cache: CacheStats | None = None
    pruned_runs: tuple[str, ...] = ()  # older runs removed to make room for this one (the quota)


def analyse_as_submitted(run: EmbeddingRun, settings: Settings, parsed: ParsedInput,
                         cache: CacheStats | None = None) -> Analysis:
    """core.analysis.analyse at the submitted layer (the last if absent or out of range), seed, heads and
    thresholds."""
    return analyse(run, shown_layer(settings, run.layers), options_for(settings), parsed, versions(), cache=cache)


def execute_run(store: RunStore, run_id: str, settings: Settings, parsed: ParsedInput, progress: Progress,
                save_error: str | None = None) -> Outcome:
    """The job: the comparison, then save the embeddings, analyse, save summary.json and sequences.csv,
    mark done.

    A failure to compute marks the run failed (its message in status.json) and re-raises. A failure
    to save keeps the embeddings in the returned Outcome so the page can still show them.
    """
    def saving(action, *args, **kwargs) -> Any:
        nonlocal save_error
        try:
            return action(*args, **kwargs)
        except RunStorageError as error:
            save_error = save_error or str(error)

    saving(store.set_status, run_id, "running")
    ids, sequences = [r.id for r in parsed.records], [r.sequence for r in parsed.records]
    try:
        directory = cache_dir()
        request = request_for(settings, candidate_for(settings.v2), str(directory) if directory else None)
        loaded = loaded_for(settings)
        progress(STAGES[0], 0, len(sequences))  # a cancel during the model load lands here
        result = run_comparison(request, ids, sequences, progress, loaded=loaded)
        run = compact_run(result.run, [shown_layer(settings, result.run.layers)])  # what reopening reads
        pruned = saving(store.save_embeddings, run_id, run, cache=result.cache) or []
        analysis = analyse_as_submitted(run, settings, parsed, result.cache)
    except Cancelled as error:
        saving(store.set_status, run_id, "cancelled", error=f"Cancelled by the session that started it: {error}.")
        raise
    except BaseException as error:
        saving(store.set_status, run_id, "failed", error=failure_message(error))
        raise
    saving(store.save_outputs, run_id, analysis.summary, analysis.table)
    saving(store.set_status, run_id, "done", seconds=run.v1.seconds + run.v2.seconds, pruned_runs=pruned)
    return Outcome(parsed, settings, run if save_error else None, save_error, result.cache, tuple(pruned))


_SUBMITTING = threading.Lock()  # one submission at a time, so two identical ones cannot both be queued


@dataclass(frozen=True)
class Submission:
    """A Run press: the run to show, and whether it is an identical run already queued or running."""

    run_id: str
    attached: bool


def run_key(settings: Settings, parsed: ParsedInput) -> str:
    """Identical settings and records, identical key (presentation mode aside: it changes only the view)."""
    document = {"settings": asdict(settings) | {"present": False},
                "records": [[record.id, record.sequence] for record in parsed.records]}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def submit_run(settings: Settings, parsed: ParsedInput, owner: str | None = None) -> Submission:
    """Save the run's input and settings and queue its job (``owner`` may cancel it), returning its new id at
    once; or, when an identical run is queued or running, that run's id and nothing new."""
    key, queue = run_key(settings, parsed), job_queue()
    with _SUBMITTING:
        existing = queue.active_with(key)
        if existing is not None:
            return Submission(existing.id, attached=True)
        store, run_id = run_store(), RunStore.new_id()
        try:
            store.create(run_id, parsed, asdict(settings))
            save_error = None
        except RunStorageError as error:
            save_error = str(error)  # the job still runs; its result stays in memory
        queue.submit(run_id, len(parsed.records),
                     lambda progress: execute_run(store, run_id, settings, parsed, progress, save_error),
                     key=key, owner=owner)
    return Submission(run_id, attached=False)


def cancel_run(run_id: str, owner: str) -> CancelOutcome:
    """Cancel a queued or running run for the session that submitted it; a queued one is marked cancelled on
    disk at once, a running one when it stops (execute_run)."""
    outcome = job_queue().cancel(run_id, owner)
    if outcome is CancelOutcome.REMOVED:
        try:
            run_store().set_status(run_id, "cancelled", error="Cancelled before it started.")
        except RunStorageError:
            pass  # the queue forgot it already; a restart shows the run as interrupted
    return outcome


@dataclass
class RunStatus:
    """Where a run stands, for the page.

    state: queued, running, done, failed, cancelled, interrupted (on disk as queued/running, but no job in
    this server process: it restarted), pruned (removed to stay within the quota), damaged (``error``
    says which file and what is wrong), or missing (no such run)."""

    state: str
    error: str | None = None
    owner: str | None = None  # the session that may cancel it, while it is queued or running
    cancelling: bool = False  # cancel asked for; it stops at its next progress report
    estimate: Estimate | None = None
    progress: tuple[str, int, int] | None = None
    elapsed: float | None = None  # seconds since the running job started
    stages: tuple[str, ...] = STAGES  # the stages a running job goes through
    outcome: Outcome | None = None  # the job's, while this process remembers it
    pruned: int = 0  # older runs removed to make room for this one (the runs folder's quota)


def run_status(run_id: str) -> RunStatus:
    """The job's live state when this process has it, else the run's status.json."""
    job = job_queue().get(run_id)
    if job is not None and job.state in ("queued", "running"):
        elapsed = time.monotonic() - job.started_at if job.started_at is not None else None
        return RunStatus(job.state, owner=job.owner, cancelling=job.cancel_requested, estimate=job_queue().estimate(run_id),
                         progress=job.progress, elapsed=elapsed, stages=STAGES)
    if job is not None:
        outcome = job.result if job.state == "done" else None
        error = job.message if job.state == "cancelled" else job.message and failure_message(job.error)
        return RunStatus(job.state, error=error, outcome=outcome, pruned=len(outcome.pruned_runs) if outcome else 0)
    disk = disk_status(run_store(), run_id)
    return RunStatus(disk.state, error=disk.error, pruned=disk.pruned)


def wait_for_run(run_id: str, seconds: float) -> None:
    """Block for at most ``seconds``, returning as soon as this process's job ``run_id`` finishes (a run
    another process owns is waited on for the whole time)."""
    try:
        job_queue().wait(run_id, seconds)
    except KeyError:  # not in this process's queue
        time.sleep(seconds)


# One loaded run is shared by every session that shows it, not copied per rerun (a 100,000-sequence run
# holds ~1 GB); the page never changes it.
@st.cache_resource(max_entries=4, ttl=1800, show_spinner="Reading the saved run…")
def load_run(root: str, run_id: str) -> tuple[EmbeddingRun, ParsedInput, Settings, CacheStats | None]:
    """A finished run's embeddings, input, settings and embedding cache summary (None: cache off) from
    disk; cached per run id (no model involved). DamagedRun (a ValueError) names a damaged file."""
    store = RunStore(root)
    return (store.load_embeddings(run_id), store.load_input(run_id), settings_from_dict(store.load_settings(run_id)),
            store.load_cache_stats(run_id))


def run_contents(run_id: str, status: RunStatus) -> tuple[EmbeddingRun, ParsedInput, Settings, CacheStats | None]:
    """A done run's embeddings, input, settings and cache summary: from memory if it could not be
    saved, else from disk."""
    outcome = status.outcome
    if outcome is not None and outcome.run is not None:
        return outcome.run, outcome.parsed, outcome.settings, outcome.cache
    return load_run(str(runs_dir()), run_id)


def stored_input(run_id: str) -> ParsedInput | None:
    """The input saved with a run (None if unreadable), to refill the text area when a run is reopened; a
    finished run's comes with the rest of it (load_run: read once, and the page needs the rest next)."""
    try:
        status = run_store().read_status(run_id)
        if status is not None and status.state == "done":
            return load_run(str(runs_dir()), run_id)[1]
    except (KeyError, OSError, ValueError):
        pass  # a damaged file besides input.json: its input may still be read
    try:
        return run_store().load_input(run_id)
    except (KeyError, OSError, ValueError):
        return None


def history(session_runs: list[str]) -> list[RunInfo]:
    """Runs for the history list: this session's (ids are capabilities), or all with shared_history."""
    return run_store().list_runs(None if shared_history() else session_runs)
