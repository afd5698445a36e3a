"""Each packed GPU attention backend against a float64 reference on the same weights.

FlashAttention's own acceptance rule allows the kernel's error against a high-precision reference to be
2x the error of the standard implementation in the same low precision; measured here (H100, demo-3B
FP16, example set) the ratio is 0.95–1.01 on the max and 1.00–1.01 on the mean, so the test holds the
backends to 1.25x (max) and 1.1x (mean).
Here the reference is the standard path run in float64 on the FP16 model's weights.
"""

from __future__ import annotations


import logging

import numpy as np
import pytest
import torch

from core.numerics.attention import available_backends
from core.embed.passes import embed_v1, embed_v2
from core.numerics.loading import reference_copy
from core.input.examples import example_sequences

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
log = logging.getLogger("divergence")
MAX_MULTIPLE = 1.25  # measured floor 1.01, with a stated margin
MEAN_MULTIPLE = 1.1


@pytest.fixture(scope="module")
def reference_setup(esm2_3b_fp16):
    model, alphabet = esm2_3b_fp16
    sequences = [r.sequence for r in example_sequences("all")]
    layers = [model.num_layers // 2, model.num_layers]
    reference_model = reference_copy(model, torch.float64)  # the FP16 weights, exactly, in float64
    reference = embed_v1(reference_model, alphabet, sequences, layers)
    del reference_model
    torch.cuda.empty_cache()
    v1 = embed_v1(model, alphabet, sequences, layers)
    return model, alphabet, sequences, layers, reference, v1


def errors(embeddings: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    diff = np.abs(embeddings.astype(np.float64) - reference)
    return float(diff.max()), float(diff.mean())


@pytest.mark.parametrize("backend", ["torch-flash", "flash-attn", "reference"])
def test_backend_error_within_measured_floor_of_standard_fp16_error(reference_setup, backend):
    model, alphabet, sequences, layers, reference, v1 = reference_setup
    if backend not in available_backends(model.device, model.dtype):
        pytest.skip(f"{backend} is not available on this host")
    v2 = embed_v2(model, alphabet, sequences, layers, backend=backend)
    assert v2.backend == backend
    for layer in layers:
        v1_max, v1_mean = errors(v1.layers[layer], reference.layers[layer])
        v2_max, v2_mean = errors(v2.layers[layer], reference.layers[layer])
        log.warning(
            "layer %d  %-11s  max err v1 %.3e  v2 %.3e (x%.2f)  mean err v1 %.3e  v2 %.3e (x%.2f)",
            layer, backend, v1_max, v2_max, v2_max / v1_max, v1_mean, v2_mean, v2_mean / v1_mean,
        )
        assert v2_max <= MAX_MULTIPLE * v1_max
        assert v2_mean <= MEAN_MULTIPLE * v1_mean
