"""How far apart two sets of pooled embeddings are, and whether predictions change.

All functions take pooled embeddings as numpy arrays of shape (n_sequences, embed_dim)
(float32 or float64) and compute in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, Protocol

import numpy as np

Verdict = Literal["ACCEPT", "VALIDATE", "FALLBACK"]
VERDICT_ORDER: tuple[Verdict, ...] = ("ACCEPT", "VALIDATE", "FALLBACK")
MATCH_TOLERANCES: tuple[float, ...] = (1e-3, 1e-2)
ROWS_AT_ONCE = 4096  # rows of a layer measured at once: float64 working copies of a block, not of the layer


@dataclass(frozen=True)
class Thresholds:
    """The decision rule's numbers (the seed's values by default)."""

    min_cosine: float = 0.99  # every sequence's cosine must exceed this
    min_agreement: float = 0.95  # label agreement at or above this passes; below -> FALLBACK
    accept_agreement: float = 0.99  # label agreement strictly above this -> ACCEPT

    def __post_init__(self) -> None:
        for name in ("min_cosine", "min_agreement", "accept_agreement"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold {name}={value} must lie in [0, 1]")
        if self.min_agreement > self.accept_agreement:
            raise ValueError("min_agreement must not exceed accept_agreement")


def nan_as_inf(errors: np.ndarray | float) -> np.ndarray:
    """Errors with NaN (a path that returned NaN) as +inf, so comparisons rank it farthest, not nowhere."""
    errors = np.asarray(errors, np.float64)
    return np.where(np.isnan(errors), np.inf, errors)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, (n,) float64. A zero row against a zero row counts as 1."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dot = np.einsum("ij,ij->i", a, b)
    norm_a, norm_b = np.sqrt(np.einsum("ij,ij->i", a, a)), np.sqrt(np.einsum("ij,ij->i", b, b))
    norms = norm_a * norm_b
    both_zero = (norm_a == 0) & (norm_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, np.clip(cosine, -1.0, 1.0))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise mean absolute difference, (n,) float64."""
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean(axis=1)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise maximum absolute difference, (n,) float64."""
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(axis=1)


def match_fraction(a: np.ndarray, b: np.ndarray, atol: float) -> float:
    """Fraction of embedding values with |a - b| <= atol (the seed's 'embedding match')."""
    return float((np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) <= atol).mean())


@dataclass(frozen=True)
class ProxyClassifier:
    """A seeded random linear head embed_dim -> 2 with softmax, standing in for a real one.

    The weights come from numpy's PCG64 generator, so the same seed gives the same head on
    any machine. weight: (embed_dim, 2) float64, N(0, 1/embed_dim); bias: (2,) float64.
    ``from_seed`` is the seed's uncentred head (bias zero); ``balanced`` is the same head with its
    boundary moved to the middle of the baseline's sequences.
    """

    weight: np.ndarray
    bias: np.ndarray
    seed: int

    @classmethod
    def from_seed(cls, embed_dim: int, seed: int) -> "ProxyClassifier":
        rng = np.random.Generator(np.random.PCG64(seed))
        weight = rng.standard_normal((embed_dim, 2)) / math.sqrt(embed_dim)
        return cls(weight=weight, bias=np.zeros(2), seed=seed)

    @classmethod
    def balanced(cls, baseline: np.ndarray, seed: int) -> "ProxyClassifier":
        """The seed's head, centred on ``baseline`` (n, embed_dim) and thresholded at its median logit gap.

        Centring on the baseline's mean and thresholding at the median of the centred gaps is the same
        boundary as thresholding the raw gap (logit 1 − logit 0) at its median, which is what the bias
        does; half the baseline's sequences fall on each side (the median one in class 0).
        """
        head = cls.from_seed(baseline.shape[1], seed)
        return head.thresholded_at(float(np.median(np.asarray(baseline, np.float64) @ head.direction)))

    def thresholded_at(self, gap: float) -> "ProxyClassifier":
        """This head with its boundary where the logit gap (class 1 − class 0) equals ``gap``."""
        return ProxyClassifier(weight=self.weight, bias=np.array([0.0, -gap]), seed=self.seed)

    @property
    def direction(self) -> np.ndarray:
        """(embed_dim,): the logit gap (class 1 − class 0) per unit of embedding."""
        return self.weight[:, 1] - self.weight[:, 0]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax class probabilities, (n, 2) float64."""
        return self.probabilities_of(np.asarray(embeddings, np.float64) @ self.weight)

    def probabilities_of(self, products: np.ndarray) -> np.ndarray:
        """Softmax class probabilities, (n, 2) float64, from ``products``: the embeddings @ ``weight``."""
        return softmax(products + self.bias)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, n_classes) float64 logits, shifted by each row's maximum for stability."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation, or None where it is undefined (fewer than 2 values, or a constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def verdict_for(agreement: Fraction | float, thresholds: Thresholds = Thresholds()) -> Verdict:
    """The seed's decision tree on label agreement: > accept -> ACCEPT, >= min -> VALIDATE, else FALLBACK.

    Compared as exact fractions, so 99/100 agreement is VALIDATE and 95/100 is VALIDATE.
    """
    agreement = Fraction(agreement) if isinstance(agreement, Fraction) else Fraction(str(agreement))
    if agreement > Fraction(str(thresholds.accept_agreement)):
        return "ACCEPT"
    if agreement >= Fraction(str(thresholds.min_agreement)):
        return "VALIDATE"
    return "FALLBACK"


def format_percent(fraction: float, decimals: int = 1) -> str:
    """``fraction`` as a percentage with ``decimals`` places, or more where rounding would show
    0% or 100% for a value that is not exactly that (one flip in 10,000 is 99.99%, not 100.0%)."""
    for places in range(decimals, 9):
        text = f"{100 * fraction:.{places}f}"
        if fraction in (0.0, 1.0) or float(text) not in (0.0, 100.0):
            break
    return f"{text}%"


@dataclass
class Comparison:
    """Per-sequence and summary metrics between v1.0 and v2.0 pooled embeddings of one layer."""

    cosine: np.ndarray  # (n,)
    mean_abs_diff: np.ndarray  # (n,)
    max_abs_diff: np.ndarray  # (n,)
    labels_v1: np.ndarray  # (n,) int
    labels_v2: np.ndarray  # (n,) int
    confidence_v1: np.ndarray  # (n,) probability of the predicted label
    confidence_v2: np.ndarray  # (n,)
    match: dict[float, float]  # atol -> fraction of embedding values within it
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def n(self) -> int:
        return int(self.cosine.size)

    @property
    def n_agree(self) -> int:
        return int((self.labels_v1 == self.labels_v2).sum())

    @property
    def agreement(self) -> float:
        return self.n_agree / self.n

    @property
    def flips(self) -> np.ndarray:
        """(n,) bool: sequences whose proxy label differs between the paths."""
        return self.labels_v1 != self.labels_v2

    @property
    def pearson(self) -> float | None:
        return pearson(self.confidence_v1, self.confidence_v2)

    @property
    def max_confidence_diff(self) -> float:
        return float(np.abs(self.confidence_v1 - self.confidence_v2).max())

    @property
    def cosine_failures(self) -> np.ndarray:
        """(n,) bool: sequences at or below the cosine threshold."""
        return self.cosine <= self.thresholds.min_cosine

    @property
    def checks(self) -> dict[str, bool]:
        return {
            "cosine_all_above_threshold": bool(not self.cosine_failures.any()),
            "agreement_at_least_threshold": Fraction(self.n_agree, self.n) >= Fraction(str(self.thresholds.min_agreement)),
        }

    @property
    def verdict(self) -> Verdict:
        """The seed's decision tree on this head's agreement; a failed cosine check caps ACCEPT at VALIDATE.
        (The product's verdict is core.analysis.verdict.Headline's; this is its "seed rule" on the seed's head.)"""
        verdict = verdict_for(Fraction(self.n_agree, self.n), self.thresholds)
        if verdict == "ACCEPT" and not self.checks["cosine_all_above_threshold"]:
            return "VALIDATE"
        return verdict

    def distribution(self, values: np.ndarray) -> dict[str, float]:
        return {
            "min": float(values.min()),
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "max": float(values.max()),
        }


class Classifier(Protocol):
    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, embed_dim) pooled embeddings -> (n, n_classes) class probabilities."""


@dataclass(frozen=True)
class Distances:
    """How far v1.0 and v2.0 lie apart at one layer, whatever the head: per sequence (n,) float64 cosine,
    mean and max |v1 − v2|; ``match``: atol -> share of embedding values within it."""

    cosine: np.ndarray
    mean_abs_diff: np.ndarray
    max_abs_diff: np.ndarray
    match: dict[float, float]
    overall_mean_abs_diff: float  # over every embedding value of the layer


@dataclass(frozen=True)
class Labels:
    """One head's labels and confidences for both paths, each (n,)."""

    labels_v1: np.ndarray
    labels_v2: np.ndarray
    confidence_v1: np.ndarray
    confidence_v2: np.ndarray

    @classmethod
    def of(cls, probabilities_v1: np.ndarray, probabilities_v2: np.ndarray) -> "Labels":
        """From each path's (n, n_classes) class probabilities: the most probable class and its probability."""
        return cls(probabilities_v1.argmax(axis=1), probabilities_v2.argmax(axis=1), probabilities_v1.max(axis=1),
                   probabilities_v2.max(axis=1))


def check_pair(v1: np.ndarray, v2: np.ndarray) -> None:
    if v1.shape != v2.shape or v1.ndim != 2 or v1.shape[0] == 0:
        raise ValueError(f"need two (n >= 1, embed_dim) arrays of one shape, got {v1.shape} and {v2.shape}")


def distances(v1: np.ndarray, v2: np.ndarray) -> Distances:
    """cosine_similarity, mean_abs_diff, max_abs_diff and match_fraction of (n, embed_dim) v1, v2, in
    float64 blocks of ROWS_AT_ONCE rows: every row's numbers are those of one pass over whole float64
    copies, but a large run's layer (100,000 × 2,560) never has five of them in memory at once."""
    check_pair(v1, v2)
    blocks = [_block_distances(np.asarray(v1[start:start + ROWS_AT_ONCE], np.float64),
                               np.asarray(v2[start:start + ROWS_AT_ONCE], np.float64))
              for start in range(0, len(v1), ROWS_AT_ONCE)]
    values = v1.shape[0] * v1.shape[1]
    return Distances(np.concatenate([block.cosine for block in blocks]),
                     np.concatenate([block.mean_abs_diff for block in blocks]),
                     np.concatenate([block.max_abs_diff for block in blocks]),
                     {atol: sum(block.within[atol] for block in blocks) / values for atol in MATCH_TOLERANCES},
                     float(sum(block.abs_diff_sum for block in blocks) / values))


@dataclass(frozen=True)
class _BlockDistances:
    cosine: np.ndarray
    mean_abs_diff: np.ndarray
    max_abs_diff: np.ndarray
    within: dict[float, int]  # atol -> values within it
    abs_diff_sum: float


def _block_distances(v1: np.ndarray, v2: np.ndarray) -> _BlockDistances:
    difference = np.abs(v1 - v2)
    return _BlockDistances(cosine_similarity(v1, v2), difference.mean(axis=1), difference.max(axis=1),
                           {atol: int(np.count_nonzero(difference <= atol)) for atol in MATCH_TOLERANCES},
                           difference.sum())


def head_labels(v1: np.ndarray, v2: np.ndarray, classifier: Classifier) -> Labels:
    """``classifier``'s labels and confidences for (n, embed_dim) v1 and v2."""
    return Labels.of(classifier.probabilities(v1), classifier.probabilities(v2))


def comparison_of(measured: Distances, labels: Labels, thresholds: Thresholds = Thresholds()) -> Comparison:
    """The Comparison made of a layer's distances and one head's labels."""
    return Comparison(measured.cosine, measured.mean_abs_diff, measured.max_abs_diff, labels.labels_v1,
                      labels.labels_v2, labels.confidence_v1, labels.confidence_v2, measured.match, thresholds)


def compare_embeddings(
    v1: np.ndarray,
    v2: np.ndarray,
    seed: int = 0,
    thresholds: Thresholds = Thresholds(),
    classifier: Classifier | None = None,
) -> Comparison:
    """All metrics for v1.0 vs v2.0 pooled embeddings, each (n, embed_dim), n >= 1.

    Labels come from ``classifier`` (a user's own head) or, by default, the proxy of ``seed``.
    """
    check_pair(v1, v2)
    classifier = classifier or ProxyClassifier.from_seed(v1.shape[1], seed)
    return comparison_of(distances(v1, v2), head_labels(v1, v2, classifier), thresholds)


def binomial_interval(agree: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval for one classifier's agreement over n sequences (sampling of sequences)."""
    if n == 0:
        return (math.nan, math.nan)
    p = agree / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def verdict_at_or_below(verdict: Verdict, level: Verdict) -> bool:
    """For CI gating: True when ``verdict`` is ``level`` or worse (ACCEPT best, FALLBACK worst)."""
    return VERDICT_ORDER.index(verdict) >= VERDICT_ORDER.index(level)
