"""Does v2.0 (packed FlashAttention) change ESM-2 3B predictions? The seed's GPU test.

On the example set, both paths in FP16 are pooled at every layer and compared with the tool's
defaults (100 balanced proxy heads, the numerics gate with an fp32 reference): every sequence's
cosine must exceed 0.99, label agreement must be at least 95%, and the built-in path — faithful —
must be ACCEPTed with its numerics equivalent to rounding.
"""

from __future__ import annotations

import logging

import pytest
import torch

from core.embed.run import run_both_paths
from core.embed.yardstick import plan_yardstick, YardstickPlan
from core.analysis.analyse import AnalysisOptions, analyse
from core.report.terminal import format_summary
from core.input.examples import example_sequences

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
log = logging.getLogger("divergence")
SEED = 42


@pytest.fixture(scope="module")
def model_and_alphabet(esm2_3b_fp16):
    return esm2_3b_fp16


@pytest.fixture(scope="module")
def divergence(model_and_alphabet):
    model, alphabet = model_and_alphabet
    records = example_sequences("all")
    plan = plan_yardstick("auto", 64, model.dtype, model.device)
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], yardstick=plan)
    analysis = analyse(run, model.num_layers, AnalysisOptions(seed=SEED))
    summary, comparison = analysis.summary.to_json(), analysis.comparison
    log.warning("\n%s", format_summary(analysis.summary))
    for seq_id, length, cosine, flip in zip(run.ids, run.lengths, comparison.cosine, comparison.flips):
        log.warning("  %-12s len %4d  cosine %.8f%s", seq_id, length, cosine, "  LABEL FLIP" if flip else "")
    return summary, comparison


def test_prediction_level_divergence(divergence):
    """The seed's test: the full table logged, both thresholds asserted, and the product's verdict."""
    summary, comparison = divergence
    assert comparison.cosine.min() > 0.99, f"sequences at or below 0.99: {summary['cosine_failures']}"
    assert summary["predictions"]["agreement"] >= 0.95 and comparison.agreement >= 0.95
    assert summary["numerics"]["kind"] == "reference" and summary["numerics"]["dtype"] == "fp32"
    assert summary["numerics"]["passed"], summary["headline"]["numerics"]
    assert summary["verdict"] == "ACCEPT", summary["headline"]


class TestPredictionDivergence:
    def test_packed_path_used_a_flash_kernel(self, divergence):
        summary, _ = divergence
        assert summary["backend_v2"] in ("flash-attn", "torch-flash")
        assert summary["dtype"] == "fp16"

    def test_cosine_above_threshold_for_every_sequence(self, divergence):
        summary, comparison = divergence
        assert comparison.cosine.min() > 0.99, f"sequences at or below 0.99: {summary['cosine_failures']}"

    def test_label_agreement_at_least_95_percent(self, divergence):
        _, comparison = divergence
        assert comparison.agreement >= 0.95

    def test_recommendation_logged(self, divergence):
        summary, _ = divergence
        assert summary["recommendation"].startswith("Adopt v2.0")
        log.warning("RECOMMENDATION (%s weights): %s — %s", summary["weights"], summary["verdict"], summary["recommendation"])


@pytest.fixture(scope="module")
def attribution_summary(model_and_alphabet):
    model, alphabet = model_and_alphabet
    records = example_sequences("all")
    layer = model.num_layers
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records],
                         layers=None, yardstick=YardstickPlan("reference", "fp64", None))
    analysis = analyse(run, layer, AnalysisOptions(seed=SEED))
    log.warning("\n%s", format_summary(analysis.summary))
    for entry in analysis.summary.profile:
        log.warning("  layer %2d  cosine min %.8f  mean |v1-v2| %.3e  |v1-ref| %.3e  |v2-ref| %.3e",
                    entry.layer, entry.cosine_min, entry.mean_abs_diff, entry.v1_mean_abs_error, entry.v2_mean_abs_error)
    return analysis.summary.to_json()


class TestReferenceAttribution:
    def test_flash_path_passes_flashattention_rule_against_float64(self, attribution_summary):
        reference = attribution_summary["reference"]
        assert reference["dtype"] == "fp64"
        assert reference["rule_passed"], reference["verdict_line"]

    def test_both_paths_keep_reference_labels(self, attribution_summary):
        reference = attribution_summary["reference"]
        assert reference["v1_error"]["label_agreement"] >= 0.95
        assert reference["v2_error"]["label_agreement"] >= 0.95

    def test_balanced_heads_logged(self, attribution_summary):
        heads = attribution_summary["predictions"]["heads"]
        assert heads["n_heads"] == 100 and heads["kind"] == "balanced"
        assert heads["counted_flips"] == 0 and heads["agreement_lower"] == 1.0
        log.warning("balanced heads: %s", heads)

    def test_numerics_equivalent_against_float64(self, attribution_summary):
        numerics = attribution_summary["numerics"]
        assert numerics["dtype"] == "fp64" and numerics["passed"], numerics["line"]
        assert len(numerics["layers"]) == 37 and numerics["deep_pack"] is not None


@pytest.fixture(scope="module")
def fallback_summaries(model_and_alphabet):
    from core.embed.paths import fallback_path, ForwardPath

    model, alphabet = model_and_alphabet
    records = example_sequences("all")
    ids, sequences = [r.id for r in records], [r.sequence for r in records]
    layer = model.num_layers
    summaries = {}
    same_batches = fallback_path(model)
    own_packing = ForwardPath(**{**same_batches.__dict__, "padded_batches": False})
    for name, path in (("v1 batches", same_batches), ("packed batches", own_packing)):
        run = run_both_paths(model, alphabet, ids, sequences, v2_path=path,
                             yardstick=plan_yardstick("auto", 64, model.dtype, model.device))
        summaries[name] = analyse(run, layer, AnalysisOptions(seed=SEED)).summary.to_json()
        summary = summaries[name]
        log.warning("fallback fed %s: cosine min %.10f  max |v1 - v2| %.3e  agreement %.2f%%", name,
                    summary["cosine"]["min"], summary["max_abs_diff"], 100 * summary["label_agreement"])
    return summaries


class TestFallbackOnDevice:
    """The v1-compatible fallback against v1.0 in FP16 on the GPU: cosine > 0.999999, max abs diff < 1e-3."""

    def test_fallback_on_v1_batches_is_bit_identical_and_accepted(self, fallback_summaries):
        summary = fallback_summaries["v1 batches"]
        assert summary["max_abs_diff"] == 0.0 and summary["verdict"] == "ACCEPT"

    def test_fallback_on_its_own_packing_within_fp16_rounding(self, fallback_summaries):
        summary = fallback_summaries["packed batches"]
        assert summary["cosine"]["min"] > 0.999999
        assert summary["max_abs_diff"] < 1e-3
        assert summary["verdict"] == "ACCEPT", summary["headline"]
