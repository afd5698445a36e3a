"""The headline: predictions and numerics together, the verdict they give, the seed rule beside them."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from core.analysis.metrics import compare_embeddings, ProxyClassifier, Thresholds
from core.analysis.numerics_gate import LayerNumerics, NumericsGate
from core.analysis.verdict import Headline, NonFinite, Predictions, SeedRule


def layer(number: int, baseline: float = 1e-3, candidate: float = 1e-3, closer: tuple[int, int] = (16, 16),
          p: float = 0.9, min_cosine: float = 0.9999999) -> LayerNumerics:
    return LayerNumerics(number, baseline, candidate, 2.0, closer[0], closer[1], 0, p, 1e-3 / 4, min_cosine)


def gate(*layers: LayerNumerics) -> NumericsGate:
    return NumericsGate("reference", "fp32", 32, 0, 1e-3, tuple(layers))


PASSING = gate(layer(0), layer(1), layer(2), layer(3))


def seed_rule(share: float = 0.6) -> SeedRule:
    v1 = np.random.default_rng(0).standard_normal((20, 8))
    return SeedRule(compare_embeddings(v1, v1.copy(), 0, classifier=ProxyClassifier.from_seed(8, 0)), 0, share)


def headline(verdict: str = "ACCEPT", agreement: Fraction = Fraction(1), numerics: NumericsGate | None = PASSING,
             failing: tuple[str, ...] = (), share: float = 0.6, non_finite: NonFinite = NonFinite(),
             failed_checks: tuple[str, ...] = (), longest: int | None = None) -> Headline:
    predictions = Predictions(verdict, agreement, "100 balanced proxy heads", 0)
    return Headline(predictions, numerics, failing, Thresholds(), seed_rule(share), non_finite, failed_checks, longest)


def test_accept_needs_predictions_numerics_and_cosine():
    assert headline().verdict == "ACCEPT"
    assert "cosmetic" in headline().recommendation()
    assert headline(numerics=gate(layer(0), layer(1, closer=(32, 0), p=4e-10))).verdict == "VALIDATE"
    assert headline(numerics=None).verdict == "VALIDATE"
    assert headline(failing=("seq5",)).verdict == "VALIDATE"


def test_an_accept_says_the_longest_length_it_covers_when_esm2_takes_longer():
    """A path can be wrong only past some length; an ACCEPT holds for the lengths compared, and says so unless
    they reach ESM-2's 1,022 residues. Other verdicts already say not to adopt, without a scope."""
    scoped = headline(longest=238).recommendation()
    assert scoped.startswith("Adopt v2.0 for sequences of up to 238 residues (the longest here;") and "cosmetic" in scoped
    assert headline(longest=1_021).recommendation().startswith("Adopt v2.0 for sequences of up to 1,021 residues")
    for whole in (1_022, None):
        assert headline(longest=whole).recommendation().startswith("Adopt v2.0: predictions agree")
    assert "longest" not in headline("VALIDATE", Fraction(97, 100), longest=238).recommendation()
    assert "longest" not in headline("FALLBACK", Fraction(90, 100), longest=238).recommendation()


def test_a_failed_check_of_v2_withholds_accept_and_says_which():
    """Packing invariance or determinism failing (--checks) caps the verdict at VALIDATE, named in the
    recommendation; it never lifts a worse verdict."""
    failed = ("packing invariance: max |diff| 0.276 over 18 sequences",)
    assert headline(failed_checks=failed).verdict == "VALIDATE"
    assert "v2.0 failed its own checks (packing invariance: max |diff| 0.276" in headline(failed_checks=failed).recommendation()
    assert headline("FALLBACK", Fraction(90, 100), failed_checks=failed).verdict == "FALLBACK"
    assert "failed its own checks" in headline("FALLBACK", Fraction(90, 100), failed_checks=failed).recommendation()
    assert headline(failed_checks=()).verdict == "ACCEPT"


def test_a_non_finite_embedding_decides_on_its_own():
    """NaN or infinity from v2.0 alone is FALLBACK whatever the statistics say; from v1.0 it caps at VALIDATE
    (those sequences cannot be compared), and each case names its sequences."""
    broken_v2 = headline(non_finite=NonFinite(v2=("s2",)))
    assert broken_v2.verdict == "FALLBACK"
    assert broken_v2.recommendation().startswith(
        "Fall back to a v1.0-compatible path: v2.0 returned NaN or infinity for 1 sequence(s) where v1.0 did not (s2).")
    assert headline("FALLBACK", Fraction(80, 100), non_finite=NonFinite(v2=("s2",))).recommendation().startswith(
        "Fall back to a v1.0-compatible path: v2.0 returned NaN")
    broken_v1 = headline(non_finite=NonFinite(v1=("s1",)))
    assert broken_v1.verdict == "VALIDATE"
    assert "v1.0 returned NaN or infinity for 1 sequence(s) where v2.0 did not (s1)" in broken_v1.recommendation()
    both = headline(non_finite=NonFinite(v1=("s1", "s3"), v2=("s3",)))
    assert both.verdict == "VALIDATE"
    assert "both paths returned NaN or infinity for 1 sequence(s) (s3)" in both.recommendation()
    assert "(s1)" in both.recommendation()
    assert headline(non_finite=NonFinite()).verdict == "ACCEPT"


def test_numerics_never_lift_a_worse_prediction_verdict():
    assert headline("VALIDATE", Fraction(98, 100)).verdict == "VALIDATE"
    assert headline("FALLBACK", Fraction(90, 100)).verdict == "FALLBACK"
    departing = gate(layer(0), layer(1, candidate=1.0))
    fallback = headline("FALLBACK", Fraction(90, 100), numerics=departing)
    assert fallback.verdict == "FALLBACK"
    assert "Fall back" in fallback.recommendation() and "layer 1" in fallback.recommendation()


def test_recommendation_names_the_reasons():
    validate = headline("VALIDATE", Fraction(98, 100)).recommendation()
    assert "98.0%" in validate and "between 95% and 99%" in validate
    cosine = headline(failing=("seq5",)).recommendation()
    assert "seq5" in cosine and "cosine 0.99" in cosine and "between" not in cosine
    numerics = headline(numerics=gate(layer(0), layer(1), layer(2, closer=(30, 2), p=1e-7))).recommendation()
    assert "layer 2" in numerics and "Validate" in numerics
    assert "not measured" in headline(numerics=None).recommendation().replace("were not measured", "not measured")


def test_one_flip_in_ten_thousand_does_not_say_100_percent():
    sentence = headline(agreement=Fraction(9999, 10000)).recommendation()
    assert "99.99% of labels" in sentence


@pytest.mark.parametrize("layers, cause", [
    ((layer(0, candidate=0.5, min_cosine=1.0 - 1e-9),), "uniform scale from layer 0"),
    ((layer(0, candidate=0.5, min_cosine=0.999),), "which positions are pooled"),
    ((layer(0), layer(1, candidate=0.5, min_cosine=0.9)), "first attention: attention masking or packing"),
    ((layer(0), layer(1, candidate=0.5, min_cosine=0.9)), "the attention scale"),
    ((layer(0), layer(1), layer(2, candidate=0.5, min_cosine=0.9), layer(3)), "large from layer 2, after the layers"),
    ((layer(0), layer(1), layer(2), layer(3, candidate=0.5, min_cosine=0.9)), "the final layer norm"),
    ((layer(3, candidate=0.5, min_cosine=0.9),), "layer 3, the first attention layer measured: attention masking"),
    ((layer(0), layer(1, closer=(30, 2), p=1e-7, min_cosine=0.9999999)), "GELU form, rotary tables"),
    ((layer(0), layer(1), layer(2, closer=(30, 2), p=1e-7, min_cosine=0.9999999)), "final layer norm's eps or precision"),
    ((layer(0), layer(1, closer=(30, 2), p=1e-7, min_cosine=0.9999999), layer(2)), "small but systematic from layer 1"),
])
def test_likely_cause_follows_the_first_departure(layers, cause):
    numerics = gate(*layers)
    assert not numerics.passed
    assert cause in numerics.likely_cause()
    assert f"departs from layer {numerics.first_departure.layer}" in numerics.line()


def test_the_first_departure_is_the_lowest_departing_layer_the_deep_pack_included():
    """The deep pack measures the first attention layer again: when only it departs there, that is the first
    departure, even if a later layer departs in the run's own batches too; at a tie the run's batches win."""
    later = (layer(0), layer(1), layer(2), layer(3, closer=(30, 2), p=1e-7))
    deep = layer(1, candidate=0.5, min_cosine=0.9)
    numerics = NumericsGate("reference", "fp32", 32, 0, 1e-3, later, deep_pack=deep)
    assert numerics.first_departure is deep and numerics.departs_only_deep
    assert numerics.likely_cause().startswith("at layer 1 only deep in a pack")
    assert "departs from layer 1 in a deep pack" in numerics.line()
    assert numerics.to_json()["first_departing_layer"] == 1
    both = NumericsGate("reference", "fp32", 32, 0, 1e-3, (layer(0), layer(1, candidate=0.5, min_cosine=0.9)),
                        deep_pack=deep)
    assert both.first_departure is both.layers[1] and not both.departs_only_deep
    alone = NumericsGate("reference", "fp32", 32, 0, 1e-3, (layer(0), layer(1)), deep_pack=deep)
    assert alone.first_departure is deep


def test_lines_and_seed_rule():
    predictions_line, numerics_line, seed_line = headline(share=1.0).lines()
    assert predictions_line.startswith("Predictions: agree")
    assert numerics_line.startswith("Numerics: equivalent to rounding")
    assert seed_line.startswith("Seed rule (one uncentred head, seed 0): ACCEPT") and "uninformative" in seed_line
    assert "uninformative" not in headline(share=0.6).lines()[2]
    change = headline("FALLBACK", Fraction(80, 100)).lines()[0]
    assert change.startswith("Predictions: change (FALLBACK)")
