"""What a chart of a large run draws: at most MAX_POINTS points per scatter (the most divergent sequences
always among them), and histograms binned here rather than shipping every value to the browser."""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_POINTS = 5_000  # points one per-sequence scatter draws
WORST_KEPT = 1_000  # of them, the label flips and the lowest-cosine sequences, always drawn


def plotted_rows(table: pd.DataFrame, cap: int = MAX_POINTS) -> pd.DataFrame:
    """The rows of a per-sequence table (columns cosine, label_flip) a scatter draws, in input order: all
    when there are at most ``cap``; else the label flips and the lowest cosines (WORST_KEPT together, flips
    first), topped up to ``cap`` with rows drawn evenly from the rest."""
    if len(table) <= cap:
        return table
    order = np.lexsort((table["cosine"].to_numpy(), ~table["label_flip"].to_numpy(dtype=bool)))
    worst = order[: min(WORST_KEPT, cap)]
    rest = np.setdiff1d(np.arange(len(table)), worst, assume_unique=True)
    even = rest[np.unique(np.linspace(0, rest.size - 1, cap - worst.size).round().astype(np.int64))]
    return table.iloc[np.sort(np.concatenate([worst, even]))]


def ecdf_ranks(n: int, cap: int = MAX_POINTS) -> np.ndarray:
    """(k,) int64 ranks (0-based, closest first) an ECDF of ``n`` values draws: all when n <= cap; else
    ranks spread evenly and the WORST_KEPT farthest, so the tail where sequences fail stays exact."""
    if n <= cap:
        return np.arange(n)
    tail = np.arange(max(n - min(WORST_KEPT, cap), 0), n)
    spread = np.linspace(0, tail[0] if tail.size else n - 1, cap - tail.size).round().astype(np.int64)
    return np.unique(np.concatenate([spread, tail]))


def binned(values: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, counts) of the finite ``values`` in bins of ``width`` aligned on multiples of it."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    low, high = np.floor(finite.min() / width) * width, np.ceil(finite.max() / width) * width
    edges = np.arange(low, max(high, low + width) + width / 2, width)
    counts, edges = np.histogram(finite, bins=edges)
    keep = counts > 0
    return ((edges[:-1] + edges[1:]) / 2)[keep], counts[keep]


def sampling_caption(n_rows: int, cap: int = MAX_POINTS) -> str | None:
    """What the per-sequence scatters leave out, or None when they draw every sequence."""
    if n_rows <= cap:
        return None
    return (f"Scatter charts show {cap:,} of {n_rows:,} sequences: every label flip and the lowest cosines "
            f"({min(WORST_KEPT, cap):,} together), the rest drawn evenly. The histograms and the ECDF's tail count "
            "every sequence.")
