"""Does v2.0 (packed FlashAttention) change ESM-2 3B predictions? The seed's GPU test.

On the example set, both paths in FP16 are pooled at the last layer and compared: every
sequence's cosine must exceed 0.99 and proxy-label agreement must be at least 95%.
"""

from __future__ import annotations

import logging

import pytest
import torch

from core.compare import run_both_paths
from core.metrics import VERDICT_ORDER
from core.report import build_summary, compare_layer, format_summary
from core.sequences import example_sequences

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
    layer = model.num_layers
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], layers=[layer])
    comparison = compare_layer(run, layer, SEED)
    summary = build_summary(run, comparison, layer, SEED)
    log.warning("\n%s", format_summary(summary))
    for seq_id, length, cosine, flip in zip(run.ids, run.lengths, comparison.cosine, comparison.flips):
        log.warning("  %-12s len %4d  cosine %.8f%s", seq_id, length, cosine, "  LABEL FLIP" if flip else "")
    return summary, comparison


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
        assert summary["verdict"] in VERDICT_ORDER
        log.warning("RECOMMENDATION (%s weights): %s — %s", summary["weights"], summary["verdict"], summary["recommendation"])
