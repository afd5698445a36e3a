"""Where an analysis may reuse what it computed before for the same run.

An analysis is made of parts that each depend on only some of its options (the distances between the
paths on the layer alone, the heads' votes on the layer and the heads, the layer profile's agreement on
the seed). A ``Memo`` is asked for each part by a key naming what it depends on; the page passes one
that remembers parts per run, so changing a threshold recomputes nothing heavy and changing the seed
only what the seed moves. Without one (``compute_now``) every part is computed, as before.
"""

from __future__ import annotations

from typing import Callable, Hashable, Protocol, TypeVar

T = TypeVar("T")


class Memo(Protocol):
    def __call__(self, key: tuple[Hashable, ...], compute: Callable[[], T]) -> T:
        """The part named ``key`` (of one run): remembered, or ``compute()``."""


def compute_now(key: tuple[Hashable, ...], compute: Callable[[], T]) -> T:
    """No memory: compute every part."""
    return compute()


def remembers(memo: Memo) -> bool:
    """Whether ``memo`` keeps what it computes (so offering it a part made on the way is worth the work)."""
    return memo is not compute_now


def remembering() -> Memo:
    """A memo that keeps every part it computes, for one run (the CLI's: the parts prewarmed while the
    numerics sample is measured are not computed again)."""
    parts: dict[tuple[Hashable, ...], object] = {}

    def memo(key: tuple[Hashable, ...], compute: Callable[[], T]) -> T:
        if key not in parts:
            parts[key] = compute()
        return parts[key]  # type: ignore[return-value]

    return memo
