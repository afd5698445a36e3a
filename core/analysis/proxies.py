"""Proxy heads that can flip, many of them, and which of their flips count.

One random linear head is one draw, and an uncentred one often puts every sequence in one class:
then agreement cannot fall, whatever v2.0 does. A ``HeadBank`` holds K heads (seeds 0 … K − 1) as
one matrix. 'balanced' heads (the default) have their boundary at the baseline's median, so half the
sequences lie on each side of every boundary; 'seed' heads are the seed's uncentred ones.

Balanced heads put some sequence near every boundary, so rounding alone flips one now and then. A
flip therefore counts only when the baseline's margin on that head exceeds the head's *rounding
floor*: (1 + k) times the largest logit shift that v1.0's own rounding produces on the numerics
sample (its distance from the wider reference, or from itself re-batched). A path that keeps the
FlashAttention rule (error at most k times v1.0's) moves a logit by at most about (1 + k) times that
shift, so it cannot produce a counted flip, on 18 sequences or 100,000; a bug that moves embeddings
further than rounding carries sequences across boundaries with room to spare, and those count.

All arithmetic is float64 numpy; embeddings are (n, embed_dim).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from core.analysis.metrics import ProxyClassifier

ProxyKind = Literal["balanced", "seed"]
PROXY_KINDS: tuple[ProxyKind, ...] = ("balanced", "seed")
DEFAULT_HEADS = 100
MAX_SEED = 2**32 - 1  # numpy seeds are 32-bit
UNINFORMATIVE_SHARE = 0.9  # a head with more than this share in one class cannot show disagreement
LOWER_QUANTILE = 0.025  # the prediction verdict is judged on this quantile of per-head agreement


@dataclass(frozen=True)
class HeadBank:
    """K proxy heads embed_dim → 2: head k's logit gap (class 1 − class 0) is x · directions[k] − offsets[k].

    seeds: (K,) int64; directions: (K, embed_dim) float64; offsets: (K,) float64 (zeros for 'seed'
    heads, the baseline's median gap for 'balanced' ones). Head k is ``ProxyClassifier.from_seed`` or
    ``ProxyClassifier.balanced`` of seeds[k], labelled alike (class 1 when the gap is > 0).
    """

    kind: ProxyKind
    seeds: np.ndarray
    directions: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, kind: ProxyKind, seeds: Sequence[int], baseline: np.ndarray) -> "HeadBank":
        return cls.fitted(kind, seeds, baseline)[0]

    @classmethod
    def fitted(cls, kind: ProxyKind, seeds: Sequence[int], baseline: np.ndarray) -> tuple["HeadBank", np.ndarray]:
        """The bank of ``kind`` for ``seeds`` fitted on ``baseline`` (n, embed_dim), and the baseline's (n, K)
        gaps under it (``bank.gaps(baseline)``, from the one product the fit needs)."""
        directions = head_directions(seeds, baseline.shape[1])
        return cls.fitted_to(kind, seeds, directions, np.asarray(baseline, np.float64) @ directions.T)

    @classmethod
    def fitted_to(cls, kind: ProxyKind, seeds: Sequence[int], directions: np.ndarray, products: np.ndarray,
                  ) -> tuple["HeadBank", np.ndarray]:
        """The bank fitted from the baseline's ``products`` (n, K) with ``directions`` (K, embed_dim) (from
        head_directions), and the baseline's (n, K) gaps under it."""
        if kind not in PROXY_KINDS:
            raise ValueError(f"unknown proxy kind {kind!r}; choose {' or '.join(PROXY_KINDS)}")
        # The median along contiguous rows: the same values as along axis 0, in less time on (100,000, K).
        offsets = np.median(np.ascontiguousarray(products.T), axis=1) if kind == "balanced" else np.zeros(len(seeds))
        return cls(kind, np.asarray(seeds, dtype=np.int64), directions, offsets), products - offsets

    @property
    def size(self) -> int:
        return int(self.seeds.size)

    def gaps(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, embed_dim) -> (n, K) logit gaps."""
        return np.asarray(embeddings, np.float64) @ self.directions.T - self.offsets

    def describe(self) -> str:
        noun = "balanced proxy head" if self.kind == "balanced" else "uncentred proxy head (seed rule)"
        return f"{self.size} {noun}{'s' * (self.size != 1)}"


def head_directions(seeds: Sequence[int], width: int) -> np.ndarray:
    """(K, width) float64: each seed's head's logit-gap direction (ProxyClassifier.from_seed)."""
    return np.stack([ProxyClassifier.from_seed(width, int(seed)).direction for seed in seeds])


def proxy_head(kind: ProxyKind, seed: int, baseline: np.ndarray) -> ProxyClassifier:
    """One head of ``kind`` for ``seed``, as a classifier (the chosen seed's view)."""
    if kind == "balanced":
        return ProxyClassifier.balanced(baseline, seed)
    return ProxyClassifier.from_seed(baseline.shape[1], seed)


def majority_share(gaps: np.ndarray) -> np.ndarray:
    """(n, K) gaps -> (K,) share of sequences in each head's larger class."""
    class_one = (gaps > 0).mean(axis=0)
    return np.maximum(class_one, 1.0 - class_one)


def rounding_floor(bank: HeadBank, baseline: np.ndarray, noise: np.ndarray | None, k: float) -> np.ndarray:
    """(K,) how far rounding alone may move each head's gap.

    noise: (m, embed_dim) v1.0's rounding displacement on the numerics sample (v1.0 minus the
    reference, or v1.0 re-batched minus v1.0); None when there is none. The floor is (1 + k) times the
    largest |noise · direction| over the sample, and never less than one rounding of the stored
    (float32 or float64) baseline.
    """
    baseline = np.asarray(baseline)
    eps = np.finfo(baseline.dtype if baseline.dtype.kind == "f" else np.float64).eps
    # (embed_dim,) largest |value| per column, exact in the stored dtype, without an |baseline| copy
    largest = np.maximum(baseline.max(axis=0), -baseline.min(axis=0)).astype(np.float64)
    least = eps * (np.abs(bank.directions) @ largest)
    if noise is None or noise.size == 0:
        return least
    shift = np.abs(np.asarray(noise, np.float64) @ bank.directions.T).max(axis=0)
    return np.maximum((1.0 + k) * shift, least)


@dataclass(frozen=True)
class HeadVotes:
    """How the K heads of ``bank`` label the baseline and the candidate, and which flips count.

    flips, margins: (K, n) — label changed; |baseline gap|. floor: (K,) rounding floor of each head.
    share: (K,) each head's majority-class share under the baseline.
    """

    bank: HeadBank
    flips: np.ndarray
    margins: np.ndarray
    floor: np.ndarray
    share: np.ndarray

    @property
    def n(self) -> int:
        return int(self.flips.shape[1])

    @cached_property
    def counted(self) -> np.ndarray:
        """(K, n) bool: flips whose baseline margin lies beyond the head's rounding floor (computed once: the
        page reads it for every figure of a redraw, and 100 heads × 100,000 sequences is 10M pairs)."""
        return self.flips & (self.margins > self.floor[:, None])

    @property
    def agreement(self) -> np.ndarray:
        """(K,) per head: share of sequences without a counted flip."""
        return 1.0 - self.counted.mean(axis=1)

    @property
    def raw_agreement(self) -> np.ndarray:
        """(K,) per head: share of sequences whose label did not change at all."""
        return 1.0 - self.flips.mean(axis=1)

    @property
    def lower_agreement(self) -> Fraction:
        """The LOWER_QUANTILE quantile of per-head agreement, exactly (one of the heads' own values)."""
        counted = np.sort(self.counted.sum(axis=1))[::-1]  # most counted flips first
        index = int(np.floor(LOWER_QUANTILE * (counted.size - 1)))
        return Fraction(self.n - int(counted[index]), self.n)

    @property
    def uninformative(self) -> np.ndarray:
        """(K,) bool: heads with more than UNINFORMATIVE_SHARE of the sequences in one class."""
        return self.share > UNINFORMATIVE_SHARE

    def margin_table(self, ids: Sequence[str], max_agreeing: int = 20_000) -> pd.DataFrame:
        """One row per (head, sequence) pair — every flip, and at most ``max_agreeing`` agreeing pairs drawn
        evenly — with v1.0's margin in rounding floors: columns seed, id, margin_over_floor, flip, counted."""
        flips = self.flips.ravel()
        agreeing = np.flatnonzero(~flips)
        keep = np.sort(np.concatenate([np.flatnonzero(flips),
                                       agreeing[np.linspace(0, agreeing.size - 1, min(agreeing.size, max_agreeing))
                                                .astype(np.int64)] if agreeing.size else agreeing]))
        head, sequence = np.divmod(keep, self.n)
        return pd.DataFrame({
            "seed": self.bank.seeds[head],
            "id": np.asarray(ids, dtype=object)[sequence],
            "margin_over_floor": self.margins[head, sequence] / np.maximum(self.floor, np.finfo(np.float64).tiny)[head],
            "flip": flips[keep],
            "counted": self.counted[head, sequence],
        })

    def to_json(self) -> dict:
        return {
            "kind": self.bank.kind,
            "n_heads": self.bank.size,
            "seeds": [int(self.bank.seeds[0]), int(self.bank.seeds[-1])],
            "agreement_lower": float(self.lower_agreement),
            "agreement_mean": float(self.agreement.mean()),
            "agreement_min": float(self.agreement.min()),
            "raw_agreement_mean": float(self.raw_agreement.mean()),
            "raw_agreement_min": float(self.raw_agreement.min()),
            "counted_flips": int(self.counted.sum()),
            "rounding_flips": int((self.flips & ~self.counted).sum()),
            "heads_with_counted_flips": int(self.counted.any(axis=1).sum()),
            "lower_quantile": LOWER_QUANTILE,
        }


def vote(bank: HeadBank, baseline: np.ndarray, candidate: np.ndarray, noise: np.ndarray | None, k: float,
         baseline_gaps: np.ndarray | None = None, candidate_gaps: np.ndarray | None = None) -> HeadVotes:
    """Label baseline and candidate (n, embed_dim) with every head of ``bank``; see HeadVotes.
    ``baseline_gaps``, ``candidate_gaps``: ``bank.gaps`` of each when already computed (HeadBank.fitted, or
    from a compact layer's stored form)."""
    baseline_gaps = bank.gaps(baseline) if baseline_gaps is None else baseline_gaps
    candidate_gaps = bank.gaps(candidate) if candidate_gaps is None else candidate_gaps
    return HeadVotes(
        bank=bank,
        flips=((baseline_gaps > 0) != (candidate_gaps > 0)).T,
        margins=np.abs(baseline_gaps).T,
        floor=rounding_floor(bank, baseline, noise, k),
        share=majority_share(baseline_gaps),
    )
