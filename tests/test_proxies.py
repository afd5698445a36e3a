"""Proxy heads that can flip: balanced heads, many of them, and the rounding floor that decides which flips count."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.analysis.metrics import ProxyClassifier, Thresholds
from core.analysis.proxies import HeadBank, LOWER_QUANTILE, proxy_head, rounding_floor, vote
from core.analysis.verdict import predictions_from_votes

K = 2.0


def embeddings(n: int, dim: int = 32, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    """(n, dim) float32 rows: a common vector of size ``offset`` plus per-sequence variation."""
    rng = np.random.default_rng(seed)
    common = offset * np.ones(dim)
    return (common + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("n", [18, 19, 300])
def test_balanced_heads_put_half_the_sequences_on_each_side(n):
    v1 = embeddings(n, offset=25.0)  # a large shared component, as pooled embeddings have
    bank = HeadBank.build("balanced", range(50), v1)
    class_one = (bank.gaps(v1) > 0).sum(axis=0)
    assert (class_one == n // 2).all()  # the median sequence (odd n) falls in class 0


def test_uncentred_heads_can_put_every_sequence_in_one_class():
    """The seed's head on embeddings far from the origin: one class holds everything, agreement cannot fall."""
    v1 = embeddings(40, offset=25.0)
    seed_bank = HeadBank.build("seed", range(50), v1)
    balanced = HeadBank.build("balanced", range(50), v1)
    moved = v1 + 0.5 * np.random.default_rng(1).standard_normal(v1.shape).astype(np.float32)
    seed_votes, balanced_votes = vote(seed_bank, v1, moved, None, K), vote(balanced, v1, moved, None, K)
    assert seed_votes.uninformative.mean() > 0.5
    assert (balanced_votes.share <= 0.5 + 1e-12).all() and not balanced_votes.uninformative.any()
    assert balanced_votes.counted.sum() > 5 * max(seed_votes.counted.sum(), 1)


def test_bank_heads_label_like_the_single_head_classifiers():
    v1 = embeddings(30)
    for kind in ("balanced", "seed"):
        bank = HeadBank.build(kind, [0, 7, 42], v1)
        for column, seed in enumerate(bank.seeds):
            labels = proxy_head(kind, int(seed), v1).probabilities(v1).argmax(axis=1)
            assert np.array_equal(labels, (bank.gaps(v1)[:, column] > 0).astype(int))


def test_balanced_head_is_the_seed_head_with_its_boundary_moved():
    v1 = embeddings(30)
    balanced, uncentred = ProxyClassifier.balanced(v1, 3), ProxyClassifier.from_seed(32, 3)
    assert np.array_equal(balanced.weight, uncentred.weight)
    gap = v1.astype(np.float64) @ uncentred.direction
    assert balanced.bias[1] - balanced.bias[0] == pytest.approx(-np.median(gap))


def test_flip_within_the_rounding_floor_does_not_count_and_beyond_it_does():
    v1 = embeddings(20).astype(np.float64)
    bank = HeadBank.build("balanced", [0], v1)
    unit = bank.directions[0] / np.dot(bank.directions[0], bank.directions[0])  # moves the gap by 1 per unit
    gap = bank.gaps(v1)[:, 0]
    nearest, farthest = int(np.argmin(np.abs(gap))), int(np.argmax(np.abs(gap)))
    noise = abs(gap[nearest]) * unit[None, :]  # v1.0's own rounding moves the gap as far as the nearest margin
    floor = rounding_floor(bank, v1, noise, K)[0]
    assert floor == pytest.approx((1 + K) * abs(gap[nearest]))
    assert abs(gap[farthest]) > floor
    candidate = v1.copy()
    candidate[nearest] -= 2 * gap[nearest] * unit  # crosses the boundary from inside the floor
    inside = vote(bank, v1, candidate, noise, K)
    assert inside.flips.sum() == 1 and inside.counted.sum() == 0
    candidate[farthest] -= 2 * gap[farthest] * unit  # crosses it from beyond the floor
    beyond = vote(bank, v1, candidate, noise, K)
    assert beyond.flips.sum() == 2 and beyond.counted.sum() == 1 and beyond.counted[0, farthest]


def test_lower_agreement_is_an_exact_quantile_of_the_heads():
    v1 = embeddings(100).astype(np.float64)
    bank = HeadBank.build("balanced", range(100), v1)
    candidate = v1 + 0.05 * np.random.default_rng(3).standard_normal(v1.shape)
    votes = vote(bank, v1, candidate, None, K)
    per_head = np.sort(votes.counted.sum(axis=1))[::-1]
    expected = Fraction(100 - int(per_head[int(np.floor(LOWER_QUANTILE * 99))]), 100)
    assert votes.lower_agreement == expected
    assert votes.lower_agreement <= Fraction(float(votes.agreement.mean())).limit_denominator(10**6)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 60), seed=st.integers(0, 10_000), scale=st.floats(0.0, 1.0))
def test_a_candidate_as_accurate_as_v1_never_produces_a_counted_flip(n, seed, scale):
    """The guarantee: if v2.0's logit error against the reference is at most k times the largest logit error
    of v1.0 on the sample, along every head, no flip can lie beyond the floor, on any set size (18 included)."""
    rng = np.random.default_rng(seed)
    reference = embeddings(n, seed=seed, offset=5.0).astype(np.float64)
    v1 = reference + 1e-3 * rng.standard_normal(reference.shape)
    bank = HeadBank.build("balanced", range(20), v1)
    v1_error = np.abs((reference - v1) @ bank.directions.T).max(axis=0)  # (K,) largest per head
    # The candidate errs towards every boundary at once, scaled to use up to k × v1.0's error on some head.
    error = -np.sign(bank.gaps(reference)) @ bank.directions + rng.standard_normal(reference.shape)
    worst = (np.abs(error @ bank.directions.T) / v1_error).max()
    candidate = reference + error * (scale * K / worst)
    assert (np.abs((candidate - reference) @ bank.directions.T).max(axis=0) <= K * v1_error * (1 + 1e-9)).all()
    votes = vote(bank, v1, candidate, reference - v1, K)
    assert votes.counted.sum() == 0
    assert predictions_from_votes(votes, Thresholds()).verdict == "ACCEPT"


def test_a_real_displacement_on_18_sequences_changes_the_prediction_verdict():
    rng = np.random.default_rng(5)
    reference = embeddings(18, seed=5, offset=5.0).astype(np.float64)
    v1 = reference + 1e-4 * rng.standard_normal(reference.shape)
    candidate = v1 + 0.3 * rng.standard_normal(v1.shape)  # far beyond rounding
    votes = vote(HeadBank.build("balanced", range(100), v1), v1, candidate, reference - v1, K)
    assert votes.counted.sum() > 0
    assert predictions_from_votes(votes, Thresholds()).verdict != "ACCEPT"


def test_floor_never_below_one_rounding_of_the_stored_embeddings():
    v1 = embeddings(10)
    bank = HeadBank.build("seed", [0, 1], v1)
    floor = rounding_floor(bank, v1, np.zeros_like(v1), K)
    expected = np.finfo(np.float32).eps * (np.abs(bank.directions) @ np.abs(v1.astype(np.float64)).max(axis=0))
    np.testing.assert_allclose(floor, expected)
    assert (floor > 0).all()


def test_margin_table_keeps_every_flip():
    v1 = embeddings(50).astype(np.float64)
    votes = vote(HeadBank.build("balanced", range(10), v1), v1, v1 + 0.2, None, K)
    table = votes.margin_table([f"s{i}" for i in range(50)], max_agreeing=7)
    assert int(table["flip"].sum()) == int(votes.flips.sum())
    assert int((~table["flip"]).sum()) == min(7, int((~votes.flips).sum()))
    assert set(table.columns) == {"seed", "id", "margin_over_floor", "flip", "counted"}
