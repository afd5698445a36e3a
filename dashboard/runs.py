"""Every dashboard run on disk, one directory per run, named by an unguessable id.

``<root>/<run id>/`` holds

- ``input.fasta``: the records that were compared; ``input.json``: the same records with their
  warnings, and the refused records (so a reopened run reports the same input problems);
- ``settings.json``: what the page chose (a plain JSON object);
- ``status.json``: ``state`` (queued, running, done, failed, cancelled; interrupted: found queued or
  running when the server started; pruned: removed to stay within the quota, only this file is left),
  ``error``, timestamps, sequence count, ``pruned_runs`` (older runs removed to make room for this one);
- ``embeddings.npz`` + ``run.json``: the pooled embeddings of every layer for v1.0, v2.0 and the
  numerics sample (its v1.0, v2.0 and reference or floor, row indices and probes), and what produced
  them, enough to rebuild the EmbeddingRun (dashboard.run_arrays; the page keeps every layer but the
  analysed one compact, dashboard.compact); run.json's ``cache`` is the embedding cache's summary
  object (null when the cache was off);
- ``summary.json`` and ``sequences.csv`` once analysed (core.report.write_outputs).

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a reader never sees half a file. A failed write (a full disk above all) raises
RunStorageError with a message a user can act on. Every read is checked (dashboard.run_files): a
damaged file is a DamagedRun naming it, never a traceback. With a quota, saving a run's embeddings first removes the
oldest finished runs that keep it from fitting (dashboard.quota).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from core.embed.cache import CacheStats
from core.embed.run import EmbeddingRun
from core.report.summary import Summary
from core.report.tables import write_outputs
from core.input.records import format_fasta, ParsedInput
from dashboard import quota as quotas
from dashboard.run_arrays import array_names, embedding_arrays, rebuild_run
from dashboard.run_files import (FULL_CHECK_BYTES, DamagedRun, Status, check_settings, looks_whole, npz_problem,
                                 parse_input, parse_status, read_npz, read_object)

RUN_ID = re.compile(r"[A-Za-z0-9_-]{22,64}")
# interrupted: found queued or running when the server started; pruned: removed to stay within the quota
STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted", "pruned")
INTERRUPTED_MESSAGE = "The server stopped before this run finished; run it again."


class RunStorageError(RuntimeError):
    """A run could not be written; the message says why and what still holds."""


class UnknownRun(KeyError):
    """No run with that id in the store (or not a well-formed id)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def storage_message(run_id: str, root: Path, error: OSError) -> str:
    """A plain-language message for a failed write."""
    if error.errno == errno.ENOSPC:
        why = "the disk is full (no space left on device)"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the server may not write there (permission denied or read-only)"
    else:
        why = error.strerror or str(error)
    return (f"Could not save run {run_id} under {root}: {why}. The results shown on this page are kept in "
            "memory but will not survive a server restart; ask the server's administrator to free space.")


@dataclass(frozen=True)
class RunInfo:
    """One line of the run history; ``state`` is 'damaged' when a file of the run cannot be used."""

    id: str
    state: str
    created_at: str
    n_sequences: int
    model: str
    error: str | None = None  # the recorded error; for a damaged run, what is wrong ("damaged: …")


class RunStore:
    """Runs under ``root`` (created on first write); ``quota_bytes``: the most the folder may hold (None: no limit)."""

    def __init__(self, root: str | Path, quota_bytes: int | None = None):
        self.root = Path(root).expanduser()
        self.quota_bytes = quota_bytes
        self._problems: dict[str, tuple[Any, str | None]] = {}  # run id -> (its files' sizes and times, problem)

    # ------------------------------------------------------------ ids and paths

    @staticmethod
    def new_id() -> str:
        """A fresh unguessable id (128 random bits, URL-safe); knowing it is what grants access."""
        return secrets.token_urlsafe(16)

    @staticmethod
    def is_valid_id(run_id: str) -> bool:
        return bool(RUN_ID.fullmatch(run_id or ""))

    def run_dir(self, run_id: str) -> Path:
        """``root/run_id``; raises UnknownRun for anything that is not a well-formed id (no path tricks)."""
        if not self.is_valid_id(run_id):
            raise UnknownRun("not a valid run id")
        return self.root / run_id

    def exists(self, run_id: str) -> bool:
        return self.is_valid_id(run_id) and (self.root / run_id / "status.json").is_file()

    # ------------------------------------------------------------ writing

    @contextmanager
    def _writing(self, run_id: str) -> Iterator[Path]:
        """The run's directory, created; any OSError inside becomes a RunStorageError."""
        folder = self.run_dir(run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            yield folder
        except OSError as error:
            raise RunStorageError(storage_message(run_id, self.root, error)) from error

    @staticmethod
    def _atomic(path: Path, write: Callable[[Path], None]) -> None:
        """Call ``write(temporary path)`` in ``path``'s directory, then move it onto ``path``."""
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            write(Path(temporary))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _write_json(self, path: Path, document: Any) -> None:
        self._atomic(path, lambda tmp: tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n"))

    def create(self, run_id: str, parsed: ParsedInput, settings: dict[str, Any]) -> Path:
        """Mark a new run queued, then write its input and settings; returns its directory. (The status
        comes first so that no reader ever sees a run folder without one.)"""
        document = {
            "records": [{"id": r.id, "sequence": r.sequence, "warnings": list(r.warnings)} for r in parsed.records],
            "problems": [{"record_id": p.record_id, "message": p.message, "severity": p.severity} for p in parsed.problems],
        }
        self.set_status(run_id, "queued", created_at=now(), n_sequences=len(parsed.records),
                        model=str(settings.get("model", "")))
        with self._writing(run_id) as folder:
            self._atomic(folder / "input.fasta", lambda tmp: tmp.write_text(format_fasta(parsed.records)))
            self._write_json(folder / "input.json", document)
            self._write_json(folder / "settings.json", settings)
        return folder

    def set_status(self, run_id: str, state: str, error: str | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``state``, ``error`` and ``fields`` into status.json (a damaged one is replaced); returns
        the new document."""
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        try:
            previous = self.status(run_id) or {}
        except DamagedRun:
            previous = {}
        document = {**previous, **fields, "state": state, "error": error, "updated_at": now()}
        with self._writing(run_id) as folder:
            self._write_json(folder / "status.json", document)
        return document

    def save_embeddings(self, run_id: str, run: EmbeddingRun, cache: CacheStats | None = None) -> list[str]:
        """embeddings.npz and run.json holding ``run`` as it is held (dashboard.run_arrays; compact layers
        stay compact), with ``cache``, the embedding cache's summary (None: off). With a quota, the oldest
        finished runs are removed first as far as needed; returns their ids (RunStorageError when even
        that would not make room)."""
        arrays, meta = embedding_arrays(run, cache)
        needed = sum(array.nbytes for array in arrays.values()) + len(json.dumps(meta))
        try:
            pruned = quotas.make_room(self, run_id, needed) if self.quota_bytes is not None else []
        except quotas.QuotaExceeded as error:
            raise RunStorageError(f"Could not save run {run_id}: {error}. The results shown on this page are kept "
                                  "in memory but will not survive a server restart.") from error

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        with self._writing(run_id) as folder:
            self._atomic(folder / "embeddings.npz", write_npz)
            self._write_json(folder / "run.json", meta)
        return pruned

    def save_outputs(self, run_id: str, summary: Summary, table: pd.DataFrame) -> None:
        """summary.json and sequences.csv (core.report.tables.write_outputs writes the pair atomically)."""
        with self._writing(run_id) as folder:
            write_outputs(folder, summary, table)

    # ------------------------------------------------------------ reading (DamagedRun for a damaged file)

    def _read_object(self, run_id: str, name: str) -> dict[str, Any]:
        folder = self.run_dir(run_id)
        if not folder.is_dir():
            raise UnknownRun(f"no run {run_id}")
        return read_object(folder / name)

    def status(self, run_id: str) -> dict[str, Any] | None:
        """status.json (checked), or None when there is no such run."""
        if not self.is_valid_id(run_id) or not (self.root / run_id).is_dir():
            return None
        document = self._read_object(run_id, "status.json")
        parse_status(document, STATES)
        return document

    def read_status(self, run_id: str) -> Status | None:
        """status.json as a Status, or None when there is no such run."""
        document = self.status(run_id)
        return None if document is None else parse_status(document, STATES)

    def load_settings(self, run_id: str) -> dict[str, Any]:
        return check_settings(self._read_object(run_id, "settings.json"))

    def load_input(self, run_id: str) -> ParsedInput:
        """The compared records (with their warnings) and the refused ones, as parsed at submission."""
        return parse_input(self._read_object(run_id, "input.json"))

    def load_embeddings(self, run_id: str) -> EmbeddingRun:
        """The EmbeddingRun saved by save_embeddings, arrays bit for bit (compact layers compact)."""
        meta = self._read_object(run_id, "run.json")
        return rebuild_run(meta, read_npz(self.run_dir(run_id) / "embeddings.npz", array_names(meta)))

    def load_cache_stats(self, run_id: str) -> CacheStats | None:
        """What the embedding cache did for the run; None when it was off (or the run predates it)."""
        cache = self._read_object(run_id, "run.json").get("cache")
        try:
            return CacheStats(**cache) if isinstance(cache, dict) else None
        except TypeError:
            raise DamagedRun("run.json", "has a 'cache' of the wrong shape") from None

    def load_summary(self, run_id: str) -> dict[str, Any]:
        return self._read_object(run_id, "summary.json")

    def problem(self, run_id: str) -> str | None:
        """What is wrong with the run's files ('damaged: …'), or None. Cheap (no array is read) and
        remembered until a file of the run changes."""
        folder = self.run_dir(run_id)
        try:
            stamp = tuple(sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                                 for entry in os.scandir(folder) if not entry.name.startswith(".")))
        except OSError:
            stamp = None
        known = self._problems.get(run_id)
        if stamp is not None and known is not None and known[0] == stamp:
            return known[1]
        problem = self._check(run_id)
        self._problems[run_id] = (stamp, problem)
        return problem

    def _check(self, run_id: str) -> str | None:
        """status.json; settings.json and input.json where present (always for a finished run); for a
        finished run also run.json, summary.json and the directory of embeddings.npz."""
        try:
            status = self.read_status(run_id)
            if status is None or status.state == "pruned":
                return None
            folder, done = self.run_dir(run_id), status.state == "done"
            if done or (folder / "settings.json").exists():
                self.load_settings(run_id)
            records = folder / "input.json"
            if records.is_file() and records.stat().st_size > FULL_CHECK_BYTES:
                looks_whole(records)  # tens of MB for a large run: parsed when the run is opened
            elif done or records.exists():
                self.load_input(run_id)
            if done:
                self.load_summary(run_id)
                return npz_problem(folder / "embeddings.npz", array_names(self._read_object(run_id, "run.json")))
        except DamagedRun as damaged:
            return str(damaged)
        return None

    def list_runs(self, ids: Sequence[str] | None = None) -> list[RunInfo]:
        """Runs in the store, newest first: those in ``ids`` only, or every run when ``ids`` is None. A run
        with a damaged file is listed as 'damaged' with what is wrong as its error."""
        if ids is None:
            candidates = [p.name for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        else:
            candidates = list(dict.fromkeys(ids))
        infos = [info for run_id in candidates if self.is_valid_id(run_id)
                 for info in [self.run_info(run_id)] if info is not None]
        return sorted(infos, key=lambda info: info.created_at, reverse=True)

    def run_info(self, run_id: str) -> RunInfo | None:
        """The history line of one run (None when there is no such run)."""
        folder = self.run_dir(run_id)
        if not folder.is_dir():
            return None
        problem = self.problem(run_id)
        try:
            status = self.read_status(run_id)
        except DamagedRun:
            status = None
        if status is None:
            stamp = datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(timespec="milliseconds")
            return RunInfo(run_id, "damaged", stamp, 0, "", problem)
        if problem is not None:
            return RunInfo(run_id, "damaged", status.created_at, status.n_sequences, status.model, problem)
        return RunInfo(run_id, status.state, status.created_at, status.n_sequences, status.model, status.error)

    # ------------------------------------------------------------ restarts

    def mark_interrupted(self, owned: Callable[[str], bool]) -> list[str]:
        """Mark every run found queued or running whose job this process does not own (``owned(run_id)``
        False: the server stopped before it finished) as interrupted, with INTERRUPTED_MESSAGE; returns
        their ids."""
        marked = []
        for info in self.list_runs():
            if info.state in ("queued", "running") and not owned(info.id):
                try:
                    self.set_status(info.id, "interrupted", error=INTERRUPTED_MESSAGE)
                    marked.append(info.id)
                except RunStorageError:
                    continue  # a read-only folder: the page still reports the run as interrupted
        return marked
