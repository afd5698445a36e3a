"""GPU fixtures: the seed's 3B model in FP16 (pretrained when cached locally, else demo weights)."""

from __future__ import annotations

import logging

import pytest
import torch

from core.numerics.loading import load_esm2_model
from core.numerics.specs import DEFAULT_MODEL, pretrained_available

log = logging.getLogger("divergence")


@pytest.fixture(scope="session")
def esm2_3b_fp16():
    """(model, alphabet): esm2_t36_3B_UR50D in FP16 on the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    spec = DEFAULT_MODEL if pretrained_available(DEFAULT_MODEL) else "demo-3B"
    model, alphabet = load_esm2_model(spec, dtype="fp16", device="cuda")
    log.warning("loaded %s with %s weights on %s", model.name, model.weights.upper(), torch.cuda.get_device_name())
    return model, alphabet
