"""Who is right: both paths measured against a higher-precision reference on the same weights.

Divergence between two FP16 paths says nothing about which one is wrong. The reference is the
standard path run in float32 or float64 on the low-precision model's own weights
(``core.numerics.loading.reference_copy``), so each path's error is arithmetic error alone.

The second verdict line is FlashAttention's own acceptance rule: the fast kernel passes when its
error against the reference is at most k times (default 2) the error of the standard
implementation in the same precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.analysis.metrics import Classifier, cosine_similarity, max_abs_diff, mean_abs_diff, nan_as_inf, ProxyClassifier

Closer = Literal["v1", "v2", "tie"]
DEFAULT_K = 2.0


@dataclass(frozen=True)
class PathError:
    """One path's pooled embeddings against the reference's, per sequence (n,)."""

    cosine: np.ndarray
    mean_abs: np.ndarray
    max_abs: np.ndarray
    labels_agree: np.ndarray  # bool: the proxy label equals the reference's

    @classmethod
    def measure(cls, embeddings: np.ndarray, reference: np.ndarray, classifier: Classifier) -> "PathError":
        labels = classifier.probabilities(embeddings).argmax(axis=1)
        reference_labels = classifier.probabilities(reference).argmax(axis=1)
        return cls(
            cosine=cosine_similarity(embeddings, reference),
            mean_abs=mean_abs_diff(embeddings, reference),
            max_abs=max_abs_diff(embeddings, reference),
            labels_agree=labels == reference_labels,
        )

    def summary(self) -> dict[str, float]:
        return {
            "cosine_min": float(self.cosine.min()),
            "cosine_mean": float(self.cosine.mean()),
            "mean_abs_diff": float(self.mean_abs.mean()),
            "max_abs_diff": float(self.max_abs.max()),
            "label_agreement": float(self.labels_agree.mean()),
        }


def _closer(v1_error: np.ndarray | float, v2_error: np.ndarray | float) -> np.ndarray:
    v1_error, v2_error = nan_as_inf(v1_error), nan_as_inf(v2_error)  # a NaN result is the farther one
    return np.where(v1_error < v2_error, "v1", np.where(v2_error < v1_error, "v2", "tie"))


@dataclass(frozen=True)
class Attribution:
    """v1.0 and v2.0 errors against the reference, and which path is closer."""

    reference_dtype: str
    v1: PathError
    v2: PathError
    k: float = DEFAULT_K

    @property
    def closer(self) -> np.ndarray:
        """(n,) 'v1' / 'v2' / 'tie': the path with the smaller mean absolute error, per sequence."""
        return _closer(self.v1.mean_abs, self.v2.mean_abs)

    @property
    def overall_closer(self) -> Closer:
        return str(_closer(self.v1.mean_abs.mean(), self.v2.mean_abs.mean()))

    @property
    def rule_passed(self) -> bool:
        """FlashAttention's rule: v2.0's max error is at most k times v1.0's."""
        return bool(self.v2.max_abs.max() <= self.k * self.v1.max_abs.max())

    @property
    def error_ratio(self) -> float | None:
        """v2.0's max error over v1.0's (None when v1.0 is exact)."""
        v1_max = float(self.v1.max_abs.max())
        return float(self.v2.max_abs.max()) / v1_max if v1_max > 0 else None

    def verdict_line(self) -> str:
        ratio = self.error_ratio
        ratio_text = "v1.0 is exact" if ratio is None else f"{ratio:.2f}× v1.0's"
        outcome = "passes" if self.rule_passed else "fails"
        return (
            f"Against a {self.reference_dtype} reference, v2.0 {outcome} FlashAttention's rule "
            f"(error ≤ {self.k:g}× the standard path's): its max error is {ratio_text}; "
            f"closer overall: {self.overall_closer}."
        )

    def to_json(self) -> dict:
        counts = {name: int((self.closer == name).sum()) for name in ("v1", "v2", "tie")}
        return {
            "dtype": self.reference_dtype,
            "k": self.k,
            "v1_error": self.v1.summary(),
            "v2_error": self.v2.summary(),
            "closer": self.overall_closer,
            "closer_counts": counts,
            "error_ratio": self.error_ratio,
            "rule_passed": self.rule_passed,
            "verdict_line": self.verdict_line(),
        }


def attribute(
    v1: np.ndarray, v2: np.ndarray, reference: np.ndarray, classifier: Classifier | None = None, k: float = DEFAULT_K,
    reference_dtype: str = "fp64",
) -> Attribution:
    """Errors of v1.0 and v2.0 pooled embeddings (m, embed_dim) against the reference's, labels by
    ``classifier`` (default: the uncentred proxy head of seed 0)."""
    classifier = classifier or ProxyClassifier.from_seed(reference.shape[1], 0)
    return Attribution(
        reference_dtype=reference_dtype,
        v1=PathError.measure(v1, reference, classifier),
        v2=PathError.measure(v2, reference, classifier),
        k=k,
    )
