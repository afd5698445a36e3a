"""The runs folder's storage quota: how big it is, and which finished runs make room, oldest first.

A run that is queued or running is never removed, nor the run being saved; a run whose status cannot
be read counts as finished once its folder is older than STARTING_GRACE_SECONDS (a run being created
writes its status first, within milliseconds).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dashboard.runs import RunStore

REMOVABLE = ("done", "failed", "cancelled", "interrupted")
STARTING_GRACE_SECONDS = 60.0
PRUNED_MESSAGE = "This run was removed to stay within the storage quota of the server's runs folder; run it again."


@dataclass(frozen=True)
class StoredRun:
    """One run folder as the quota sees it: its id, state ('damaged' when unreadable), creation time
    (ISO text; the folder's modification time for a damaged one) and bytes on disk."""

    id: str
    state: str
    created_at: str
    bytes: int


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 when it is gone)."""
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(directory) / name).stat().st_size
            except OSError:
                continue  # removed meanwhile
    return total


def removable(run: StoredRun, folder_age_seconds: float) -> bool:
    """Whether pruning may take ``run``: finished, or damaged and not just being created."""
    return run.state in REMOVABLE or (run.state == "damaged" and folder_age_seconds > STARTING_GRACE_SECONDS)


def to_prune(runs: list[StoredRun], ages: dict[str, float], needed: int, quota: int, keep: str) -> list[StoredRun]:
    """The oldest removable runs (never ``keep``) whose removal brings the folder's total plus ``needed``
    bytes within ``quota``; raises QuotaExceeded when removing every removable run would not."""
    total = sum(run.bytes for run in runs)
    chosen: list[StoredRun] = []
    candidates = sorted((run for run in runs if run.id != keep and removable(run, ages.get(run.id, 0.0))),
                        key=lambda run: run.created_at)
    for run in candidates:
        if total + needed <= quota:
            break
        chosen.append(run)
        total -= run.bytes
    if total + needed > quota:
        raise QuotaExceeded(needed, quota, total)
    return chosen


class QuotaExceeded(RuntimeError):
    """Even with every finished run removed, a new run's files would not fit the quota."""

    def __init__(self, needed: int, quota: int, remaining: int):
        super().__init__(
            f"this run's embeddings need {gigabytes(needed)}, and the runs folder's quota of {gigabytes(quota)} "
            f"leaves too little room even after removing every finished run ({gigabytes(remaining)} are taken by "
            "queued or running runs); raise [runs] quota_gb in dashboard/config.toml or run fewer sequences")


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e7 else f"{size / 1e6:.2f} MB"


def folder_age(folder: Path) -> float:
    """Seconds since ``folder`` was last modified (0 when it is gone)."""
    try:
        return max(time.time() - folder.stat().st_mtime, 0.0)
    except OSError:
        return 0.0


def make_room(store: "RunStore", run_id: str, needed: int) -> list[str]:
    """Remove the oldest finished runs of ``store`` (never ``run_id``, never a queued or running one) until
    the folder plus ``needed`` bytes fits its quota; returns their ids. QuotaExceeded when it cannot."""
    stored, ages = [], {}
    for info in store.list_runs():
        folder = store.run_dir(info.id)
        stored.append(StoredRun(info.id, info.state, info.created_at, folder_bytes(folder)))
        ages[info.id] = folder_age(folder)
    chosen = to_prune(stored, ages, needed, store.quota_bytes, keep=run_id)
    for victim in chosen:
        prune(store, victim.id)
    return [victim.id for victim in chosen]


def prune(store: "RunStore", run_id: str) -> None:
    """Remove a run's files, leaving a status.json that says it was pruned (so its link says so)."""
    folder = store.run_dir(run_id)
    store.set_status(run_id, "pruned", error=PRUNED_MESSAGE, pruned_at=datetime.now(timezone.utc).isoformat())
    for path in folder.iterdir():
        if path.name == "status.json":
            continue
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError:
            continue  # removed meanwhile: the status already says pruned
