"""Metrics and the verdict against hand-computed values and the exact boundaries."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import core.analysis.metrics as metrics
from core.analysis.metrics import (
    compare_embeddings, distances, cosine_similarity, format_percent, match_fraction, max_abs_diff, mean_abs_diff, pearson, ProxyClassifier, Thresholds, verdict_at_or_below, verdict_for,
)


def test_cosine_similarity_hand_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [-3.0, -4.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, 1.0, -1.0, 1.0, 0.0])
    np.testing.assert_allclose(cosine_similarity([[1.0, 2.0]], [[2.0, 1.0]]), [0.8])


def test_distances_in_blocks_are_the_numbers_of_one_whole_pass(monkeypatch):
    """A layer measured ROWS_AT_ONCE rows at a time: every row, the match shares and the maximum exactly as
    one float64 pass over the whole arrays gives them; the overall mean to the last bits of its sum."""
    rng = np.random.default_rng(3)
    v1 = rng.standard_normal((61, 24)).astype(np.float32)
    v2 = v1 + (rng.standard_normal((61, 24)) * np.logspace(-5, -1, 61)[:, None]).astype(np.float32)
    whole = distances(v1, v2)
    monkeypatch.setattr(metrics, "ROWS_AT_ONCE", 8)  # 7 full blocks and a last one of 5 rows
    blocked = distances(v1, v2)
    wide_v1, wide_v2 = v1.astype(np.float64), v2.astype(np.float64)
    for measured in (whole, blocked):
        np.testing.assert_array_equal(measured.cosine, cosine_similarity(wide_v1, wide_v2))
        np.testing.assert_array_equal(measured.mean_abs_diff, mean_abs_diff(wide_v1, wide_v2))
        np.testing.assert_array_equal(measured.max_abs_diff, max_abs_diff(wide_v1, wide_v2))
        assert measured.match == {atol: match_fraction(v1, v2, atol) for atol in metrics.MATCH_TOLERANCES}
        assert 0 < measured.match[1e-3] < measured.match[1e-2] < 1
    assert whole.overall_mean_abs_diff == np.abs(wide_v1 - wide_v2).mean()
    assert blocked.overall_mean_abs_diff == pytest.approx(whole.overall_mean_abs_diff, rel=1e-14, abs=0)


def test_absolute_differences_and_match_fraction():
    a = np.array([[0.0, 0.0, 0.0, 0.0]])
    b = np.array([[0.0005, -0.002, 0.02, 0.0]])
    assert mean_abs_diff(a, b)[0] == pytest.approx(0.0225 / 4)
    assert max_abs_diff(a, b)[0] == pytest.approx(0.02)
    assert match_fraction(a, b, 1e-3) == 0.5  # 0.0005 and 0.0
    assert match_fraction(a, b, 1e-2) == 0.75


def test_proxy_classifier_is_the_same_on_any_machine():
    # PCG64 + standard_normal are stable across numpy versions and platforms: pinned values.
    weight = ProxyClassifier.from_seed(4, 0).weight
    np.testing.assert_allclose(
        weight,
        [[0.06286511054669665, -0.06605243164565094], [0.32021132522164103, 0.05245005857651985],
         [-0.2678346865805555, 0.18079752745474237], [0.6520000225650686, 0.4735404815646211]],
        rtol=1e-15,
    )
    np.testing.assert_allclose(ProxyClassifier.from_seed(2560, 42).weight[0], [0.0060225000873699, -0.02055449066309061], rtol=1e-15)
    assert not np.array_equal(ProxyClassifier.from_seed(4, 1).weight, weight)


def test_proxy_probabilities_are_a_softmax():
    classifier = ProxyClassifier(weight=np.array([[1.0, -1.0]]), bias=np.zeros(2), seed=0)
    probs = classifier.probabilities(np.array([[0.0], [1.0], [1000.0]]))
    np.testing.assert_allclose(probs[0], [0.5, 0.5])
    np.testing.assert_allclose(probs[1], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    np.testing.assert_allclose(probs[2], [1.0, 0.0])  # no overflow


def test_pearson_and_its_undefined_cases():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([0.7], [0.7]) is None
    assert pearson([0.5, 0.5], [0.2, 0.9]) is None


@pytest.mark.parametrize(
    "agree, total, expected",
    [
        (100, 100, "ACCEPT"),
        (991, 1000, "ACCEPT"),
        (99, 100, "VALIDATE"),  # exactly 99% is not > 99%
        (96, 100, "VALIDATE"),
        (95, 100, "VALIDATE"),  # exactly 95% passes
        (949, 1000, "FALLBACK"),
        (94, 100, "FALLBACK"),
        (0, 10, "FALLBACK"),
    ],
)
def test_verdict_boundaries(agree, total, expected):
    assert verdict_for(Fraction(agree, total)) == expected


def test_verdict_accepts_floats_at_the_boundary_exactly():
    assert verdict_for(0.99) == "VALIDATE"
    assert verdict_for(0.95) == "VALIDATE"
    assert verdict_for(0.9499999) == "FALLBACK"


def test_thresholds_are_configurable_and_validated():
    strict = Thresholds(min_cosine=0.999, min_agreement=0.99, accept_agreement=0.999)
    assert verdict_for(Fraction(99, 100), strict) == "VALIDATE"
    assert verdict_for(Fraction(98, 100), strict) == "FALLBACK"
    with pytest.raises(ValueError):
        Thresholds(min_agreement=1.5)
    with pytest.raises(ValueError):
        Thresholds(min_agreement=0.99, accept_agreement=0.95)


def embeddings(n: int, dim: int = 16, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim))


def test_identical_embeddings_accept():
    v1 = embeddings(20)
    result = compare_embeddings(v1, v1.copy(), seed=3)
    assert result.agreement == 1.0 and result.verdict == "ACCEPT"
    assert result.cosine.min() == pytest.approx(1.0, rel=0, abs=1e-12)
    assert result.pearson == pytest.approx(1.0, rel=0, abs=1e-12)
    assert result.max_confidence_diff == 0.0
    assert result.match == {1e-3: 1.0, 1e-2: 1.0}
    assert result.checks == {"cosine_all_above_threshold": True, "agreement_at_least_threshold": True}


def test_negated_embeddings_flip_every_label_and_fall_back():
    v1 = embeddings(20)
    result = compare_embeddings(v1, -v1, seed=3)
    assert result.agreement == 0.0
    assert result.flips.all()
    assert result.verdict == "FALLBACK"
    assert not any(result.checks.values())


def test_one_flip_in_fifty_validates():
    v1 = embeddings(50)
    classifier = ProxyClassifier.from_seed(16, 3)
    v2 = v1.copy()
    labels = classifier.probabilities(v1).argmax(1)
    # Move one sequence across the decision boundary along the weight difference.
    direction = classifier.weight[:, 1] - classifier.weight[:, 0]
    margin = v1[0] @ direction
    v2[0] = v1[0] - 2 * margin * direction / (direction @ direction)
    result = compare_embeddings(v1, v2, seed=3)
    assert result.n_agree == 49 and labels[0] != result.labels_v2[0]
    assert result.agreement == pytest.approx(0.98)
    assert result.verdict == "VALIDATE"


def test_low_cosine_caps_accept_at_validate():
    v1 = np.abs(embeddings(10)) + 1.0
    v2 = v1.copy()
    v2[4] = v1[4] * np.linspace(0.2, 2.0, v1.shape[1])  # all-positive: labels stay, cosine drops
    result = compare_embeddings(v1, v2, seed=0, thresholds=Thresholds(min_cosine=0.999))
    assert result.agreement == 1.0
    assert result.cosine[4] < 0.999
    assert result.cosine_failures.tolist() == [i == 4 for i in range(10)]
    assert result.checks["cosine_all_above_threshold"] is False
    assert result.verdict == "VALIDATE"


def test_compare_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        compare_embeddings(embeddings(3), embeddings(4))
    with pytest.raises(ValueError):
        compare_embeddings(np.zeros((0, 4)), np.zeros((0, 4)))


def test_gating_order():
    assert verdict_at_or_below("FALLBACK", "VALIDATE")
    assert verdict_at_or_below("VALIDATE", "VALIDATE")
    assert not verdict_at_or_below("ACCEPT", "VALIDATE")
    assert not verdict_at_or_below("VALIDATE", "FALLBACK")


@pytest.mark.parametrize("fraction, expected", [
    (1.0, "100.0%"), (0.0, "0.0%"), (0.9999, "99.99%"), (0.999999, "99.9999%"), (0.95, "95.0%"), (0.0001, "0.01%"),
    (0.98765, "98.8%"),
])
def test_percent_never_rounds_to_all_or_nothing(fraction, expected):
    assert format_percent(fraction) == expected


def test_balanced_head_is_balanced_where_the_seed_head_is_not():
    v1 = embeddings(41) + 30.0  # far from the origin, as pooled embeddings are
    seed_labels = ProxyClassifier.from_seed(16, 0).probabilities(v1).argmax(1)
    balanced_labels = ProxyClassifier.balanced(v1, 0).probabilities(v1).argmax(1)
    assert seed_labels.min() == seed_labels.max()  # one class holds every sequence
    assert balanced_labels.sum() == 20  # 20 of 41 in class 1, the median one in class 0
