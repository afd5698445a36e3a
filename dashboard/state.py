"""The page's caches, settings and runs: Streamlit glue around ``core``, nothing computed here.

- ``get_model``: one loaded model per (model, dtype, device), shared by every session.
- ``job_queue``: the process-wide FIFO queue whose one worker thread does all GPU work.
- ``submit_run`` / ``run_status`` / ``load_run``: a run is computed by a queued job, saved under the
  runs directory as it completes (core.runs.RunStore), and read back with ``st.cache_data`` keyed
  by run id, so changing layer, seed or thresholds afterwards redraws without touching the model.
- ``Settings``: what the sidebar chooses, read from and written to the URL query string.
- Server settings from dashboard/config.toml: v2.0 plug-ins, the runs directory and history
  sharing, the directories a typed checkpoint path may point into, the embedding cache directory.
"""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


import streamlit as st
import torch

from core import checks, compare
from core.attention import BackendUnavailable
from core.cache import CACHE_ENV, cache_summary, open_cache, run_both_paths_cached
from core.checks import CheckResult
from core.compare import DEFAULT_REFERENCE_SAMPLE, EmbeddingRun, Progress, plan_yardstick
from core.jobs import Estimate, JobQueue
from core.layers import residue_divergence
from core.plugins import PluginError, make_plugin_path
from core.metrics import Thresholds
from core.model import (
    PRETRAINED, WeightsUnavailable, default_device, default_dtype, default_model_spec, load_esm2_model, versions,
)
from core.paths import allowed_path, default_checkpoint_dirs, resolve_dirs
from core.report import analyse
from core.runs import RunInfo, RunStorageError, RunStore
from core.sequences import ParsedInput

STAGES = ("v1.0", "v2.0", "reference")


@st.cache_resource(max_entries=1, show_spinner=False)
def get_model(spec: str, dtype: str, device: str, weights_token: str = ""):
    """(model, alphabet), loaded once per (spec, dtype, device) and shared by all sessions.

    ``weights_token`` changes when a checkpoint file changes on disk. One entry: loading another
    model releases the previous one's GPU memory.
    """
    return load_esm2_model(spec, dtype=dtype, device=device)


def weights_token(spec: str) -> str:
    """Size and mtime of a checkpoint file, so an overwritten file is reloaded."""
    path = Path(spec).expanduser()
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return ""


BUILTIN_V2 = {"packed": "This project's packed path (v2.0)", "fallback": "v1-compatible fallback"}
CONFIG_FILE = Path(__file__).with_name("config.toml")


RUNS_DIR_ENV = "ESM2_RUNS_DIR"  # overrides [runs] dir (tests point it at a temporary directory)
DEFAULT_RUNS_DIR = "runs"


def server_config() -> dict[str, Any]:
    """dashboard/config.toml as a dict (empty when the file is absent)."""
    return tomllib.loads(CONFIG_FILE.read_text()) if CONFIG_FILE.is_file() else {}


def v2_plugins() -> dict[str, str]:
    """Plug-ins the server offers: label -> module:factory, from dashboard/config.toml."""
    return dict(server_config().get("v2_plugins", {}))


def runs_dir() -> Path:
    """Where runs are saved: $ESM2_RUNS_DIR, else [runs] dir (relative to the repository), else ./runs."""
    configured = os.environ.get(RUNS_DIR_ENV) or server_config().get("runs", {}).get("dir", DEFAULT_RUNS_DIR)
    return resolve_dirs([configured])[0]


def shared_history() -> bool:
    """[runs] shared_history: list every run in the directory, not only this session's."""
    return bool(server_config().get("runs", {}).get("shared_history", False))


def cache_dir() -> Path | None:
    """The embedding cache directory: $ESM2_DIVERGENCE_CACHE, else [cache] dir (relative to the
    repository); None (the cache is off) when both are empty."""
    configured = os.environ.get(CACHE_ENV) or server_config().get("cache", {}).get("dir", "")
    return resolve_dirs([configured])[0] if configured else None


def checkpoint_dirs() -> list[Path]:
    """[paths] checkpoint_dirs (relative ones from the repository root), else the torch hub
    checkpoint cache and ./checkpoints."""
    configured = server_config().get("paths", {}).get("checkpoint_dirs")
    return resolve_dirs(configured) if configured is not None else default_checkpoint_dirs()


def checked_model_spec(spec: str) -> str:
    """A model name unchanged, or a typed checkpoint path as its real path if it lies under an allowed
    directory; raises core.paths.PathNotAllowed (a ValueError) otherwise, without touching the file."""
    if spec in PRETRAINED or spec.lower().startswith("demo-"):
        return spec
    return str(allowed_path(spec, checkpoint_dirs()))


def v2_path_for(choice: str, model, backend: str):
    """The v2.0 ForwardPath for a sidebar choice: 'packed', 'fallback', or a plug-in label."""
    if choice == "fallback":
        return compare.fallback_path(model)
    if choice == "packed":
        return compare.packed_path(model, backend)
    plugins = v2_plugins()
    if choice not in plugins:
        raise PluginError(f"no v2.0 plug-in called {choice!r} in {CONFIG_FILE.name}")
    return make_plugin_path(plugins[choice], model)


def compute_embeddings(settings: "Settings", records: tuple[tuple[str, str], ...],
                       progress: Progress) -> tuple[EmbeddingRun, dict[str, Any] | None]:
    """Both paths' pooled embeddings at every layer for ``records`` ((id, sequence) pairs), plus the
    numerics sample that ``settings.reference`` and ``settings.reference_sample`` ask for; ``settings.v2``
    picks the v2.0 side.

    Goes through the embedding cache (:func:`cache_dir`) when it is on, and returns with the run
    summary.json's ``"cache"`` object (``{"dir", "hits", "computed"[, "warning"]}``), None when the
    cache is off. GPU work: call it only from the job queue's worker."""
    model, alphabet = get_model(settings.model, settings.dtype, settings.device, weights_token(settings.model))
    ids, sequences = zip(*records)
    directory = cache_dir()
    yardstick = plan_yardstick(settings.reference, parse_sample(settings.reference_sample), model.dtype, model.device)
    cache, open_warning = open_cache(directory)
    try:
        run, stats = run_both_paths_cached(
            cache, model, alphabet, ids, sequences, layers=None, backend=settings.backend, progress=progress,
            yardstick=yardstick, v2_path=v2_path_for(settings.v2, model, settings.backend),
        )
    finally:
        if cache is not None:
            cache.close()
    return run, cache_summary(directory, stats, open_warning)


@st.cache_data(max_entries=64, show_spinner="Waiting for the GPU, then running both paths on this sequence alone…")
def residue_view(spec: str, dtype: str, device: str, backend: str, sequence: str, layer: int):
    """Per-residue divergence of one sequence (core.layers.residue_divergence), cached; runs in the GPU queue."""
    def work(progress: Progress):
        model, alphabet = get_model(spec, dtype, device, weights_token(spec))
        return residue_divergence(model, alphabet, sequence, layer, backend)

    return job_queue().call(f"residues-{RunStore.new_id()}", 1, work)


@st.cache_data(max_entries=16, show_spinner="Waiting for the GPU, then running v2.0 again: each sequence alone, then the whole set…")
def v2_checks(spec: str, dtype: str, device: str, backend: str, records: tuple[tuple[str, str], ...],
              layer: int, _packed: Any, v2: str = "packed") -> list[CheckResult]:
    """Packing invariance and determinism of v2.0 at ``layer`` against the stored packed embeddings
    ((n_sequences, embed_dim)), or against a fresh v2.0 run over exactly these sequences when
    ``_packed`` is None (some came from the embedding cache, packed with other batch-mates); runs in
    the GPU queue."""
    def work(progress: Progress) -> list[CheckResult]:
        model, alphabet = get_model(spec, dtype, device, weights_token(spec))
        sequences = [sequence for _, sequence in records]
        path = v2_path_for(v2, model, backend)  # re-run the v2.0 that was compared
        return checks.v2_checks(model, alphabet, sequences, layer, _packed, backend, path=path)

    return job_queue().call(f"checks-{RunStore.new_id()}", 2 * len(records), work)


PATH_LABELS = {"v1.0": "v1.0 standard path", "v2.0": "v2.0 packed path",
               "reference": "numerics sample (reference or rounding floor)"}


def progress_fraction(stage: str, done: int, total: int, stages: tuple[str, ...]) -> float:
    """Share of the whole job done when ``stage`` has done ``done`` of ``total`` sequences."""
    return min((stages.index(stage) * total + done) / (len(stages) * total), 1.0)


def progress_text(stage: str, done: int, total: int) -> str:
    return f"{PATH_LABELS[stage]}: {done}/{total} sequences"


def live_throughput(stage: str, done: int, total: int, stages: tuple[str, ...], elapsed: float) -> str:
    """' · 52 sequences/s · about 40 s left', measured on the running job itself; '' before any progress."""
    fraction = progress_fraction(stage, done, total, stages)
    if fraction <= 0 or elapsed <= 0:
        return ""
    rate = fraction * len(stages) * total / elapsed  # sequences through one path per second
    left = elapsed * (1 - fraction) / fraction
    return f" · {rate:,.0f} sequences/s per path · about {left:.0f} s left"


@dataclass
class Settings:
    """The sidebar's choices. Every field round-trips through the URL query string."""

    model: str = ""
    dtype: str = ""
    device: str = ""
    backend: str = "auto"
    v2: str = "packed"  # 'packed', 'fallback', or a plug-in label from dashboard/config.toml
    reference: str = "auto"  # the numerics gate's yardstick: 'auto', 'fp32', 'fp64' or 'none' (rounding floor)
    reference_sample: str = str(DEFAULT_REFERENCE_SAMPLE)  # sequences in the numerics sample: a count, or 'all'
    layer: int = -1  # -1: the last layer
    seed: int = 0
    proxy: str = "balanced"  # or 'seed': the seed's uncentred heads
    seeds: int = 100  # proxy heads that decide the prediction verdict (0: the chosen seed's head alone)
    min_cosine: float = Thresholds.min_cosine
    min_agreement: float = Thresholds.min_agreement
    accept_agreement: float = Thresholds.accept_agreement
    present: bool = False

    @classmethod
    def defaults(cls) -> "Settings":
        device = default_device()
        return cls(model=default_model_spec(device), dtype=default_dtype(device), device=device.type)

    @classmethod
    def from_query(cls, query: dict[str, str]) -> "Settings":
        """Defaults overridden by whatever the query string holds and parses."""
        settings = cls.defaults()
        for field in fields(cls):
            if field.name not in query:
                continue
            raw = query[field.name]
            try:
                value = raw in ("1", "true", "True") if field.type == "bool" else _parse(field.type, raw)
            except ValueError:
                continue  # a hand-edited URL with a bad value keeps the default
            setattr(settings, field.name, value)
        if settings.device == "cuda" and not torch.cuda.is_available():
            settings.device = "cpu"
        return settings

    def to_query(self) -> dict[str, str]:
        defaults = asdict(Settings.defaults())
        return {
            name: ("1" if value is True else str(value))
            for name, value in asdict(self).items()
            if value != defaults[name] and value is not False
        }

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_cosine, self.min_agreement, self.accept_agreement)


def parse_sample(text: str) -> int | None:
    """The numerics sample size from its text: a count >= 0, or None for 'all'; ValueError otherwise."""
    if text.strip().lower() == "all":
        return None
    value = int(text)
    if value < 0:
        raise ValueError(f"the numerics sample must be a count >= 0 or 'all', got {value}")
    return value


def _parse(type_name: str, raw: str) -> Any:
    return {"int": int, "float": float}.get(type_name, str)(raw)


def settings_from_dict(document: dict[str, Any]) -> Settings:
    """Settings saved with a run (unknown keys ignored, missing ones default)."""
    names = {field.name for field in fields(Settings)}
    return Settings(**{name: value for name, value in document.items() if name in names})


# ---------------------------------------------------------------- runs and the GPU queue


@st.cache_resource(show_spinner=False)
def job_queue() -> JobQueue:
    """The one queue of this server process: every session's GPU work goes through it, in order."""
    return JobQueue()


def run_store() -> RunStore:
    return RunStore(runs_dir())


EXPECTED_ERRORS = (ValueError, WeightsUnavailable, BackendUnavailable)  # PluginError is a ValueError


def failure_message(error: BaseException) -> str:
    """What the page shows for a failed job: user errors as they are, anything else with its type."""
    if isinstance(error, EXPECTED_ERRORS):
        return f"Cannot run: {error}"
    return f"Run failed: {type(error).__name__}: {error}"


@dataclass
class Outcome:
    """What a finished run job leaves in memory: its input and settings, the embedding cache's
    summary (None when off), and the embeddings only when they could not be saved (``save_error``
    says why); otherwise the store holds them."""

    parsed: ParsedInput
    settings: Settings
    run: EmbeddingRun | None = None
    save_error: str | None = None
    cache: dict[str, Any] | None = None


def analyse_as_submitted(run: EmbeddingRun, settings: Settings, parsed: ParsedInput,
                         cache: dict[str, Any] | None = None):
    """core.report.analyse at the submitted layer (last if out of range), seed, thresholds and sweep;
    ``cache``: the embedding cache's summary object (None when off)."""
    layer = settings.layer if settings.layer in run.layers else max(run.layers)
    return analyse(run, layer, settings.seed, settings.thresholds, parsed, versions(), proxy=settings.proxy,
                   n_heads=settings.seeds, cache=cache)


def execute_run(store: RunStore, run_id: str, settings: Settings, parsed: ParsedInput, progress: Progress,
                save_error: str | None = None) -> Outcome:
    """The job: embed, save the embeddings, analyse, save summary.json and sequences.csv, mark done.

    A failure to compute marks the run failed (its message in status.json) and re-raises. A failure
    to save keeps the embeddings in the returned Outcome so the page can still show them.
    """
    def saving(action, *args, **kwargs) -> None:
        nonlocal save_error
        try:
            action(*args, **kwargs)
        except RunStorageError as error:
            save_error = save_error or str(error)

    saving(store.set_status, run_id, "running")
    records = tuple((r.id, r.sequence) for r in parsed.records)
    try:
        run, cache = compute_embeddings(settings, records, progress)
    except BaseException as error:
        saving(store.set_status, run_id, "failed", error=failure_message(error))
        raise
    saving(store.save_embeddings, run_id, run, cache=cache)
    analysis = analyse_as_submitted(run, settings, parsed, cache)
    saving(store.save_outputs, run_id, analysis.summary, analysis.table)
    saving(store.set_status, run_id, "done", seconds=run.v1.seconds + run.v2.seconds)
    return Outcome(parsed, settings, run if save_error else None, save_error, cache)


def submit_run(settings: Settings, parsed: ParsedInput) -> str:
    """Save the run's input and settings, queue its job, and return its new id (at once)."""
    store, run_id = run_store(), RunStore.new_id()
    try:
        store.create(run_id, parsed, asdict(settings))
        save_error = None
    except RunStorageError as error:
        save_error = str(error)  # the job still runs; its result stays in memory
    job_queue().submit(run_id, len(parsed.records),
                       lambda progress: execute_run(store, run_id, settings, parsed, progress, save_error))
    return run_id


@dataclass
class RunStatus:
    """Where a run stands, for the page.

    state: queued, running, done, failed, interrupted (on disk as queued/running, but no job in this
    server process: it restarted), or missing (no such run)."""

    state: str
    error: str | None = None
    estimate: Estimate | None = None
    progress: tuple[str, int, int] | None = None
    elapsed: float | None = None  # seconds since the running job started
    stages: tuple[str, ...] = STAGES  # the stages a running job goes through (every run measures a numerics sample)
    outcome: Outcome | None = None  # the job's, while this process remembers it


def run_status(run_id: str) -> RunStatus:
    """The job's live state when this process has it, else the run's status.json."""
    job = job_queue().get(run_id)
    if job is not None and job.state in ("queued", "running"):
        elapsed = time.monotonic() - job.started_at if job.started_at is not None else None
        return RunStatus(job.state, estimate=job_queue().estimate(run_id), progress=job.progress, elapsed=elapsed,
                         stages=STAGES)
    if job is not None:
        outcome = job.result if job.state == "done" else None
        return RunStatus(job.state, error=job.message and failure_message(job.error), outcome=outcome)
    status = run_store().status(run_id)
    if status is None:
        return RunStatus("missing")
    state = status.get("state")
    return RunStatus("interrupted" if state in ("queued", "running") else state, error=status.get("error"))


@st.cache_data(max_entries=16, show_spinner="Reading the saved run…")
def load_run(root: str, run_id: str) -> tuple[EmbeddingRun, ParsedInput, Settings, dict[str, Any] | None]:
    """A finished run's embeddings, input, settings and embedding cache summary (None: cache off) from
    disk; cached per run id (no model involved)."""
    store = RunStore(root)
    return (store.load_embeddings(run_id), store.load_input(run_id), settings_from_dict(store.load_settings(run_id)),
            store.load_cache_summary(run_id))


def run_contents(run_id: str, status: RunStatus) -> tuple[EmbeddingRun, ParsedInput, Settings, dict[str, Any] | None]:
    """A done run's embeddings, input, settings and cache summary: from memory if it could not be
    saved, else from disk."""
    outcome = status.outcome
    if outcome is not None and outcome.run is not None:
        return outcome.run, outcome.parsed, outcome.settings, outcome.cache
    return load_run(str(runs_dir()), run_id)


def stored_input(run_id: str) -> ParsedInput | None:
    """The input saved with a run (None if unreadable), to refill the text area when a run is reopened."""
    try:
        return run_store().load_input(run_id)
    except (KeyError, OSError, ValueError):
        return None


def history(session_runs: list[str]) -> list[RunInfo]:
    """Runs for the history list: this session's (ids are capabilities), or all with shared_history."""
    return run_store().list_runs(None if shared_history() else session_runs)
