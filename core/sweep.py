"""How sure is the agreement figure: label agreement over many proxy-classifier seeds.

One random classifier is one draw. Sweeping N seeds gives a distribution of agreement, its mean
and a 95% interval (the 2.5th and 97.5th percentiles over seeds), and shows where flips come from:
a flip needs a sequence whose v1.0 logit margin is smaller than the v1/v2 embedding difference can
move it, i.e. a sequence near that classifier's decision boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.metrics import ProxyClassifier

DEFAULT_SEEDS = 100


@dataclass(frozen=True)
class SeedSweep:
    seeds: np.ndarray  # (N,)
    agreement: np.ndarray  # (N,) label agreement per seed
    flips: np.ndarray  # (N, n) bool
    margins_v1: np.ndarray  # (N, n) |logit_1 - logit_0| of v1.0

    def summary(self) -> dict[str, float | int]:
        return {
            "n": int(self.seeds.size),
            "first_seed": int(self.seeds[0]),
            "agreement_mean": float(self.agreement.mean()),
            "agreement_low": float(np.percentile(self.agreement, 2.5)),
            "agreement_high": float(np.percentile(self.agreement, 97.5)),
            "agreement_min": float(self.agreement.min()),
            "seeds_with_flips": int(self.flips.any(axis=1).sum()),
        }

    def margin_table(self, ids: list[str]) -> pd.DataFrame:
        """One row per (seed, sequence): v1.0 margin and whether the label flipped."""
        n_seeds, n = self.flips.shape
        return pd.DataFrame({
            "seed": np.repeat(self.seeds, n),
            "id": np.tile(np.asarray(ids, dtype=object), n_seeds),
            "margin_v1": self.margins_v1.ravel(),
            "flip": self.flips.ravel(),
        })


def seed_sweep(v1: np.ndarray, v2: np.ndarray, n_seeds: int = DEFAULT_SEEDS, first_seed: int = 0) -> SeedSweep:
    """Agreement of seeds first_seed … first_seed + n_seeds - 1 on pooled embeddings (n, embed_dim)."""
    if n_seeds < 1:
        raise ValueError("the seed sweep needs at least one seed")
    seeds = np.arange(first_seed, first_seed + n_seeds)
    weights = np.stack([ProxyClassifier.from_seed(v1.shape[1], int(seed)).weight for seed in seeds])  # (N, E, 2)
    directions = weights[:, :, 1] - weights[:, :, 0]  # (N, E): logit_1 - logit_0 (bias is zero)
    logit_gap_v1 = np.asarray(v1, np.float64) @ directions.T  # (n, N)
    logit_gap_v2 = np.asarray(v2, np.float64) @ directions.T
    flips = (logit_gap_v1 > 0) != (logit_gap_v2 > 0)
    return SeedSweep(
        seeds=seeds,
        agreement=1.0 - flips.mean(axis=0),
        flips=flips.T,
        margins_v1=np.abs(logit_gap_v1).T,
    )


def binomial_interval(agree: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval for one classifier's agreement over n sequences (sampling of sequences)."""
    if n == 0:
        return (math.nan, math.nan)
    p = agree / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
