"""The parts of a run's analysis the page has computed (core.analysis.memo), remembered per run in memory,
so that a widget change recomputes only what it moves: a threshold nothing heavy, the seed the heads it
draws, the layer that layer. Forgotten with the run (when the cache of loaded runs lets it go)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")

# The heads' votes hold (heads, sequences) arrays: 100 heads × 100,000 sequences is ~90 MB each.
LIMITS = {"votes": 3}
DEFAULT_LIMIT = 48  # per kind of part: per-layer distances, labels, heads, profile entries


class RunMemo:
    """Parts of one run's analysis by key (the key's first item names the kind), least recently used
    dropped beyond LIMITS per kind; safe to share between sessions' threads."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, OrderedDict[tuple[Hashable, ...], object]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: tuple[Hashable, ...], compute: Callable[[], T]) -> T:
        kind = key[0]
        with self._lock:
            parts = self._parts.setdefault(kind, OrderedDict())
            if key in parts:
                parts.move_to_end(key)
                return parts[key]  # type: ignore[return-value]
        value = compute()  # outside the lock: another session's part need not wait for this one
        with self._lock:
            parts[key] = value
            while len(parts) > LIMITS.get(kind, DEFAULT_LIMIT):
                parts.popitem(last=False)
        return value

    def __len__(self) -> int:
        return sum(len(parts) for parts in self._parts.values())


_MEMOS: dict[int, tuple[weakref.ref, RunMemo]] = {}
_MEMOS_LOCK = threading.Lock()


def memo_for(run: object) -> RunMemo:
    """The memo of ``run`` (an EmbeddingRun held by the page: loaded and cached, or kept in memory);
    it lives as long as the run object does."""
    key = id(run)
    with _MEMOS_LOCK:
        known = _MEMOS.get(key)
        if known is not None and known[0]() is run:
            return known[1]
        memo = RunMemo()
        _MEMOS[key] = (weakref.ref(run, lambda _, key=key: _forget(key)), memo)
        return memo


def _forget(key: int) -> None:
    with _MEMOS_LOCK:
        entry = _MEMOS.get(key)
        if entry is not None and entry[0]() is None:
            del _MEMOS[key]
