"""Pass/fail checks on v2.0 itself: packing invariance and run-to-run determinism.

- Packing invariance: a sequence's pooled embedding must not depend on what it is packed with.
  Each sequence (up to ``limit``) is run alone and compared with the same sequence in the packed run.
- Determinism: the same packed run twice must give bit-identical embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import esm
import numpy as np

from core.embed.passes import embed_v2
from core.embed.paths import ForwardPath
from core.analysis.metrics import cosine_similarity
from core.numerics.esm2_packed import ESM2WithFlashAttention

# A packed sequence may differ from itself alone only by GEMM rounding (different row counts can
# pick different kernels); 1 - cosine above this means sequences leak into each other.
PACKING_MAX_DISTANCE = 1e-6


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    max_abs_diff: float
    min_cosine: float
    n_sequences: int
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


def repeat_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| elementwise in float64, where a NaN or infinity met by the same value counts as equal (the
    same result twice) and one met by anything else as an infinite difference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))


def _spread_indices(n: int, limit: int) -> np.ndarray:
    """Up to ``limit`` indices spread evenly over 0 … n - 1 (all of them when n <= limit)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, limit)).round().astype(int))


def packing_invariance(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    packed: np.ndarray,
    layer: int,
    backend: str | None = None,
    limit: int = 32,
    path: ForwardPath | None = None,
) -> CheckResult:
    """Compare ``packed`` (n, embed_dim), pooled from the packed run, with each sequence run alone.

    ``path`` is the v2.0 that produced ``packed`` (None: the built-in packed path with ``backend``).
    """
    chosen = _spread_indices(len(sequences), limit)
    alone = np.stack([
        embed_v2(model, alphabet, [sequences[i]], [layer], backend, path=path).layers[layer][0] for i in chosen
    ])
    difference = repeat_difference(alone, packed[chosen])
    diff = float(difference.max())
    # A row that is NaN both alone and packed is the same result both ways: it counts as cosine 1.
    cosine = float(np.where((difference == 0).all(axis=1), 1.0, cosine_similarity(alone, packed[chosen])).min())
    return CheckResult(
        name="packing invariance",
        passed=1.0 - cosine <= PACKING_MAX_DISTANCE,
        max_abs_diff=diff,
        min_cosine=cosine,
        n_sequences=int(chosen.size),
        detail=f"{chosen.size} sequences run alone vs packed; pass when 1 − cosine ≤ {PACKING_MAX_DISTANCE:g}",
    )


def determinism(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    packed: np.ndarray,
    layer: int,
    backend: str | None = None,
    max_tokens: int | None = None,
    path: ForwardPath | None = None,
) -> CheckResult:
    """Run v2.0 (``path``, or the built-in packed path with ``backend``) again on the same batches
    (same ``max_tokens``) and compare with ``packed`` bit for bit."""
    again = embed_v2(model, alphabet, sequences, [layer], backend, max_tokens, path=path).layers[layer]
    diff = float(repeat_difference(again, packed).max())
    return CheckResult(
        name="determinism",
        passed=diff == 0.0,
        max_abs_diff=diff,
        min_cosine=float(cosine_similarity(again, packed).min()),
        n_sequences=len(sequences),
        detail="v2.0 run twice on the same batches; pass when bit-identical",
    )


def v2_checks(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layer: int,
    baseline: np.ndarray | None = None,
    backend: str | None = None,
    max_tokens: int | None = None,
    path: ForwardPath | None = None,
    limit: int = 32,
) -> list[CheckResult]:
    """Packing invariance and determinism of the v2.0 ``path`` (None: the built-in packed path with ``backend``).

    ``baseline``: v2.0's pooled (n, embed_dim) at ``layer`` from one run over exactly ``sequences``;
    None (some came from the embedding cache, or from other shards) runs v2.0 over them afresh first,
    so the determinism check compares like batches with like.
    """
    if baseline is None:
        baseline = embed_v2(model, alphabet, sequences, [layer], backend, max_tokens, path=path).layers[layer]
    return [
        packing_invariance(model, alphabet, sequences, baseline, layer, backend, limit, path),
        determinism(model, alphabet, sequences, baseline, layer, backend, max_tokens, path),
    ]
