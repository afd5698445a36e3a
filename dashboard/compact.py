"""How a page run keeps its pooled embeddings compact, on disk and in memory.

Precision kept, and why:

- The **analysed layer** (the one the run's verdict was drawn at) and the **numerics sample** (its own
  paths, and its rows of v1.0 and v2.0 at every layer) stay as computed (float32, or float64 for an fp64
  model), bit for bit: reopening the run at the layer it ran with reproduces the verdict, the
  per-sequence table and the numerics gate exactly, and every layer's errors against the reference.
- **Every other layer** keeps v1.0 in float16 and v2.0 as v1.0 plus the difference (v2.0 − v1.0), itself in
  float16 scaled per sequence by that sequence's largest |difference| (a float32). The difference is what
  every view measures; scaled, it keeps about three significant digits however small it is. Rounding each
  path to float16 on its own would bury a difference of 1e-7 under rounding of 1e-4.
  Half the bytes (4 per value pair instead of 8); the layer slider, seed and thresholds still redraw at
  these layers, to about 0.1% in the distances (labels near a head's boundary may move), and the
  bit-for-bit checks there run v2.0 afresh instead of comparing with these values.
- A layer with a value float16 cannot hold (|x| > 65504, or not finite) stays as computed.

Expanded to the run's dtype on access (v2.0 = v1.0 + the scaled difference), the same way every time:
the analysis when the run finishes and after it is reopened read the same numbers. Heads never need the
expansion: their labels at a half layer come from float32 products of the stored arrays
(``HalfLayer.products``, read through core.analysis.projection), several times cheaper on a large run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from core.embed.passes import PathEmbeddings
from core.embed.run import EmbeddingRun
from core.numerics.precision import torch_dtype

HALF_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class HalfLayer:
    """One layer of both paths, compacted. v1: (n, d) float16; delta: (n, d) float16 in [-1, 1], the
    difference v2 − v1 over ``scale``: (n,) float32, each sequence's largest |v2 − v1|; ``dtype``: the
    arrays' dtype as computed (float32 or float64); ``rows``: (m,) int64, the numerics sample's rows,
    kept exact in ``exact_v1`` and ``exact_v2``: (m, d) in ``dtype``."""

    v1: np.ndarray
    delta: np.ndarray
    scale: np.ndarray
    dtype: np.dtype
    rows: np.ndarray
    exact_v1: np.ndarray
    exact_v2: np.ndarray

    @classmethod
    def of(cls, v1: np.ndarray, v2: np.ndarray, rows: np.ndarray) -> "HalfLayer | None":
        """v1, v2 (n, d) compacted, ``rows`` kept exact; None when float16 cannot hold v1 (then the layer
        stays as computed)."""
        if not (np.isfinite(v1).all() and np.isfinite(v2).all()) or np.abs(v1).max(initial=0.0) > HALF_MAX:
            return None
        difference = np.asarray(v2, np.float64) - np.asarray(v1, np.float64)
        scale = np.abs(difference).max(axis=1, initial=0.0).astype(np.float32)
        divisor = np.where(scale > 0, scale, 1).astype(np.float64)[:, None]
        rows = np.asarray(rows, dtype=np.int64)
        return cls(v1.astype(np.float16), (difference / divisor).astype(np.float16), scale, v1.dtype, rows,
                   v1[rows], v2[rows])

    def baseline(self) -> np.ndarray:
        """v1.0, (n, d) in ``dtype``."""
        values = _widened(self.v1, self.dtype)
        values[self.rows] = self.exact_v1
        return values

    def candidate(self) -> np.ndarray:
        """v2.0, (n, d) in ``dtype``: v1.0 plus the scaled difference. (In ``dtype``: v1.0 from float16 is
        exact there, and the sum's rounding is the half unit in the last place v2.0 was rounded to anyway.)"""
        values = torch.from_numpy(_widened(self.v1, self.dtype))
        difference = torch.from_numpy(_widened(self.delta, self.dtype))
        difference *= torch.from_numpy(self.scale.astype(self.dtype))[:, None]  # a product, then a sum: never fused
        values += difference
        expanded = values.numpy()
        expanded[self.rows] = self.exact_v2
        return expanded

    def products(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(v1.0 @ ``matrix``, v2.0 @ ``matrix``): (n, K) float64 for ``matrix`` (d, K), from the compact form,
        in float32 products (the float16 values are exact there; a head's labels need no more): v1.0's, and
        v2.0's as v1.0's plus each sequence's scale times the difference's. The numerics sample's rows come
        from their exact values in float64."""
        matrix = np.asarray(matrix, np.float64)
        v1_products = _float32_products(self.v1, matrix)
        v2_products = v1_products + self.scale.astype(np.float64)[:, None] * _float32_products(self.delta, matrix)
        v1_products[self.rows] = np.asarray(self.exact_v1, np.float64) @ matrix
        v2_products[self.rows] = np.asarray(self.exact_v2, np.float64) @ matrix
        return v1_products, v2_products

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in (self.v1, self.delta, self.scale, self.rows, self.exact_v1, self.exact_v2))


class CompactLayers(Mapping[int, np.ndarray]):
    """layer -> (n, d) array of one path: full layers as stored, half layers expanded on access. The last
    expanded layer is kept (an analysis reads it several times); the others are not, to save memory."""

    def __init__(self, full: Mapping[int, np.ndarray], half: Mapping[int, HalfLayer], side: Literal["v1", "v2"]):
        self.full, self.half, self.side = dict(full), dict(half), side
        self._last: tuple[int, np.ndarray] | None = None

    def __getitem__(self, layer: int) -> np.ndarray:
        if layer in self.full:
            return self.full[layer]
        last = self._last
        if last is not None and last[0] == layer:
            return last[1]
        part = self.half[layer]
        values = part.baseline() if self.side == "v1" else part.candidate()
        self._last = (layer, values)
        return values

    def compact_products(self, layer: int, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(v1.0's ``layer`` @ ``matrix``, v2.0's), float64, from a half layer's stored form
        (core.analysis.projection); None for a layer kept as computed."""
        return self.half[layer].products(matrix) if layer in self.half else None

    def width(self, layer: int) -> int:
        return int((self.full[layer] if layer in self.full else self.half[layer].v1).shape[1])

    def __iter__(self) -> Iterator[int]:
        return iter(sorted({*self.full, *self.half}))

    def __len__(self) -> int:
        return len(self.full) + len(self.half)


def _widened(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(n, d) float16 ``values`` cast to ``dtype`` (exactly), by torch: its cast is vectorised and threaded,
    several times numpy's on a large layer."""
    return torch.from_numpy(values).to(torch_dtype(dtype)).numpy()


def _float32_products(values: np.ndarray, matrix: np.ndarray, rows: int = 16384) -> np.ndarray:
    """(n, d) float16 ``values`` @ (d, K) ``matrix`` in float32 (torch: its float16 cast is vectorised), as
    (n, K) float64, ``rows`` at a time so no float32 copy of the whole layer is made."""
    weights = torch.from_numpy(np.ascontiguousarray(matrix, np.float32))
    products = np.empty((values.shape[0], matrix.shape[1]), dtype=np.float64)
    source = torch.from_numpy(values)
    for start in range(0, values.shape[0], rows):
        products[start:start + rows] = (source[start:start + rows].float() @ weights).numpy()
    return products


def compact_run(run: EmbeddingRun, full_layers: Iterable[int]) -> EmbeddingRun:
    """``run`` with every layer but ``full_layers`` compacted (see the module's note); the numerics sample,
    ids, lengths and everything else unchanged. Already compact paths are compacted anew from their values."""
    keep = set(full_layers)
    rows = run.yardstick.indices if run.yardstick is not None else np.zeros(0, dtype=np.int64)
    full: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    half: dict[int, HalfLayer] = {}
    for layer in run.v1.layers:
        v1, v2 = run.v1.layers[layer], run.v2.layers[layer]
        part = None if layer in keep else HalfLayer.of(v1, v2, rows)
        if part is None:
            full[layer] = (v1, v2)
        else:
            half[layer] = part
    return replace(run, v1=_path(run.v1, full, half, "v1"), v2=_path(run.v2, full, half, "v2"))


def _path(embeddings: PathEmbeddings, full: dict[int, tuple[np.ndarray, np.ndarray]], half: dict[int, HalfLayer],
          side: Literal["v1", "v2"]) -> PathEmbeddings:
    index = 0 if side == "v1" else 1
    return replace(embeddings, layers=CompactLayers({layer: pair[index] for layer, pair in full.items()}, half, side))
