"""The FAESM adapter: FAESM's FAEsmModel over fair-esm's weights, compared with fair-esm on the CPU.

FAESM 0.1.1 needs transformers<5; where it does not import (CI pins transformers 5 for the HF
adapter) these tests skip with the reason, and the adapter's own refusal is tested instead.
"""

from __future__ import annotations

import pytest
import torch

from core.adapters.faesm import FAESMImplementation, faesm_available, faesm_module, make_flash, make_sdpa
from tests.test_hf_adapter import MASKED, SEQUENCES, errors

needs_faesm = pytest.mark.skipif(not faesm_available(), reason="FAESM does not import here (absent, or transformers>=5)")


def test_unavailable_faesm_is_refused_in_words(perturbed_fp32):
    """Absent or incompatible, the factory raises a ValueError naming FAESM, never an ImportError."""
    if faesm_available():
        pytest.skip("FAESM imports here; its refusal path is not reachable")
    with pytest.raises(ValueError, match="FAESM"):
        make_sdpa(perturbed_fp32[0])


@needs_faesm
def test_flash_path_is_refused_without_cuda(perturbed_fp32):
    """FAESM silently falls back to SDPA without flash-attn; the adapter must refuse instead."""
    with pytest.raises(ValueError, match="flash-attn path is not available"):
        make_flash(perturbed_fp32[0])


@needs_faesm
@pytest.mark.parametrize("sequences", [SEQUENCES, MASKED], ids=["plain", "masked"])
def test_sdpa_fp32_matches_fair_esm(perturbed_fp32, sequences):
    model, alphabet = perturbed_fp32
    for layer, (_, relative) in errors(model, alphabet, make_sdpa(model), sequences).items():
        assert relative < 1e-5, layer


@needs_faesm
def test_sdpa_fp64_matches_fair_esm(perturbed_fp64):
    """In float64 the only differences are summation order: agreement to ~1e-12."""
    model, alphabet = perturbed_fp64
    for layer, (_, relative) in errors(model, alphabet, make_sdpa(model), SEQUENCES).items():
        assert relative < 1e-12, layer


@needs_faesm
def test_shares_fair_esm_tensors(perturbed_fp32):
    model, _ = perturbed_fp32
    implementation = FAESMImplementation(model, "sdpa")
    query = implementation.faesm.encoder.layer[0].attention.self.query.weight
    assert query.data_ptr() == model.esm2.layers[0].self_attn.q_proj.weight.data_ptr()
    assert implementation.name == "FAESM FAEsmModel (sdpa)"
    assert faesm_module().__name__ == "faesm.esm"


@needs_faesm
def test_padded_scatter_puts_tokens_back_in_mask_order():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    packed = torch.arange(3 * 2, dtype=torch.float32).reshape(3, 2)
    padded = FAESMImplementation._padded(packed, mask)
    assert padded.shape == (2, 3, 2)
    assert torch.equal(padded[mask], packed) and torch.equal(padded[~mask], torch.zeros(3, 2))
