"""Every dashboard run on disk, one directory per run, named by an unguessable id.

``<root>/<run id>/`` holds

- ``input.fasta``: the records that were compared; ``input.json``: the same records with their
  warnings, and the refused records (so a reopened run reports the same input problems);
- ``settings.json``: what the page chose (a plain JSON object);
- ``status.json``: ``state`` (queued, running, done, failed), ``error``, timestamps, sequence count;
- ``embeddings.npz`` + ``run.json``: the pooled embeddings of every layer for v1.0, v2.0 and the
  numerics sample (its v1.0, v2.0 and reference or floor, row indices and probes), and what produced
  them, enough to rebuild the EmbeddingRun;
  run.json's ``cache`` is the embedding cache's summary object (null when the cache was off);
- ``summary.json`` and ``sequences.csv`` once analysed (core.report.write_outputs).

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a reader never sees half a file. A failed write (a full disk above all) raises
RunStorageError with a message a user can act on.
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
from core.embed.passes import PathEmbeddings
from core.embed.run import EmbeddingRun
from core.embed.yardstick import Yardstick
from core.report.summary import Summary
from core.report.tables import write_outputs
from core.input.records import format_fasta, InputProblem, ParsedInput, ProteinRecord

RUN_ID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
STATES = ("queued", "running", "done", "failed")


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
    """One line of the run history."""

    id: str
    state: str
    created_at: str
    n_sequences: int
    model: str
    error: str | None = None


class RunStore:
    """Runs under ``root`` (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    # ------------------------------------------------------------ ids and paths

    @staticmethod
    def new_id() -> str:
        """A fresh unguessable id (128 random bits, URL-safe); knowing it is what grants access."""
        return secrets.token_urlsafe(16)

    @staticmethod
    def is_valid_id(run_id: str) -> bool:
        return bool(RUN_ID.match(run_id or ""))

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
        """Write the input and settings of a new run and mark it queued; returns its directory."""
        document = {
            "records": [{"id": r.id, "sequence": r.sequence, "warnings": list(r.warnings)} for r in parsed.records],
            "problems": [{"record_id": p.record_id, "message": p.message, "severity": p.severity} for p in parsed.problems],
        }
        with self._writing(run_id) as folder:
            self._atomic(folder / "input.fasta", lambda tmp: tmp.write_text(format_fasta(parsed.records)))
            self._write_json(folder / "input.json", document)
            self._write_json(folder / "settings.json", settings)
        self.set_status(run_id, "queued", created_at=now(), n_sequences=len(parsed.records),
                        model=str(settings.get("model", "")))
        return folder

    def set_status(self, run_id: str, state: str, error: str | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``state``, ``error`` and ``fields`` into status.json; returns the new document."""
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        document = {**(self.status(run_id) or {}), **fields, "state": state, "error": error, "updated_at": now()}
        with self._writing(run_id) as folder:
            self._write_json(folder / "status.json", document)
        return document

    def save_embeddings(self, run_id: str, run: EmbeddingRun, cache: CacheStats | None = None) -> None:
        """embeddings.npz (``<path>_layer<L>``: (n_sequences, embed_dim) float32/float64, and
        ``lengths``: (n_sequences,) int64) plus run.json with everything else in the EmbeddingRun and
        ``cache``, the embedding cache's ``{"dir", "hits", "computed"[, "warning"]}`` (None: off)."""
        arrays = {"lengths": np.asarray(run.lengths, dtype=np.int64)}
        yardstick = run.yardstick
        named = {"v1": run.v1, "v2": run.v2} | ({
            "sample_v1": yardstick.baseline, "sample_v2": yardstick.candidate, "sample_reference": yardstick.reference,
            "sample_v2_deep": yardstick.deep,
        } if yardstick is not None else {})
        paths = {}
        for name, embeddings in named.items():
            if embeddings is None:
                continue
            paths[name] = {"backend": embeddings.backend, "seconds": embeddings.seconds,
                           "implementation": embeddings.implementation, "layers": sorted(embeddings.layers),
                           "oom_splits": embeddings.oom_splits, "host_wait_seconds": embeddings.host_wait_seconds}
            arrays |= {f"{name}_layer{layer}": values for layer, values in embeddings.layers.items()}
        if yardstick is not None:
            arrays["yardstick_indices"] = np.asarray(yardstick.indices, dtype=np.int64)
        meta = {"ids": list(run.ids), "model": run.model, "weights": run.weights, "dtype": run.dtype,
                "device": run.device, "layers": list(run.layers), "paths": paths,
                "cache": cache.to_json() if cache is not None else None,
                "yardstick": None if yardstick is None else {"kind": yardstick.kind, "dtype": yardstick.dtype,
                                                             "probes": list(yardstick.probes)}}

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        with self._writing(run_id) as folder:
            self._atomic(folder / "embeddings.npz", write_npz)
            self._write_json(folder / "run.json", meta)

    def save_outputs(self, run_id: str, summary: Summary, table: pd.DataFrame) -> None:
        """summary.json and sequences.csv (core.report.tables.write_outputs writes the pair atomically)."""
        with self._writing(run_id) as folder:
            write_outputs(folder, summary, table)

    # ------------------------------------------------------------ reading

    def _read_json(self, run_id: str, name: str) -> Any:
        path = self.run_dir(run_id) / name
        if not path.is_file():
            raise UnknownRun(f"run {run_id} has no {name}")
        return json.loads(path.read_text())

    def status(self, run_id: str) -> dict[str, Any] | None:
        """status.json, or None when there is no such run."""
        try:
            return self._read_json(run_id, "status.json")
        except UnknownRun:
            return None

    def load_settings(self, run_id: str) -> dict[str, Any]:
        return self._read_json(run_id, "settings.json")

    def load_input(self, run_id: str) -> ParsedInput:
        """The compared records (with their warnings) and the refused ones, as parsed at submission."""
        document = self._read_json(run_id, "input.json")
        return ParsedInput(
            records=[ProteinRecord(r["id"], r["sequence"], tuple(r["warnings"])) for r in document["records"]],
            problems=[InputProblem(p["record_id"], p["message"], p["severity"]) for p in document["problems"]],
        )

    def load_embeddings(self, run_id: str) -> EmbeddingRun:
        """The EmbeddingRun saved by save_embeddings, arrays bit for bit."""
        meta = self._read_json(run_id, "run.json")
        with np.load(self.run_dir(run_id) / "embeddings.npz") as arrays:
            paths = {
                name: PathEmbeddings(
                    layers={layer: arrays[f"{name}_layer{layer}"] for layer in info["layers"]},
                    backend=info["backend"], seconds=info["seconds"], implementation=info["implementation"],
                    oom_splits=info.get("oom_splits", 0), host_wait_seconds=info.get("host_wait_seconds", 0.0),
                )
                for name, info in meta["paths"].items()
            }
            lengths = arrays["lengths"]
            described = meta.get("yardstick")
            yardstick = None
            if described is not None:
                yardstick = Yardstick(described["kind"], described["dtype"], arrays["yardstick_indices"],
                                      tuple(described["probes"]), paths["sample_v1"], paths["sample_v2"],
                                      paths["sample_reference"], paths.get("sample_v2_deep"))
        return EmbeddingRun(
            ids=meta["ids"], lengths=lengths, v1=paths["v1"], v2=paths["v2"], model=meta["model"],
            weights=meta["weights"], dtype=meta["dtype"], device=meta["device"], layers=meta["layers"],
            yardstick=yardstick,
        )

    def load_cache_stats(self, run_id: str) -> CacheStats | None:
        """What the embedding cache did for the run; None when it was off (or the run predates it)."""
        cache = self._read_json(run_id, "run.json").get("cache")
        return CacheStats(**cache) if isinstance(cache, dict) else None

    def load_summary(self, run_id: str) -> dict[str, Any]:
        return self._read_json(run_id, "summary.json")

    def list_runs(self, ids: Sequence[str] | None = None) -> list[RunInfo]:
        """Runs in the store, newest first: those in ``ids`` only, or every run when ``ids`` is None."""
        if ids is None:
            candidates = [p.name for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        else:
            candidates = list(dict.fromkeys(ids))
        infos = []
        for run_id in candidates:
            status = self.status(run_id) if self.is_valid_id(run_id) else None
            if status is not None:
                infos.append(RunInfo(run_id, status.get("state", "?"), status.get("created_at", ""),
                                     int(status.get("n_sequences", 0)), status.get("model", ""), status.get("error")))
        return sorted(infos, key=lambda info: info.created_at, reverse=True)
