"""The packed path in FP16 and BF16 on the CPU, so a half-precision regression shows in CI, not only on a GPU.

Both paths run demo-8M in the half dtype; a float64 copy of the same weights is the reference. At every
layer the packed path's max error against it must be v1.0's to within 5% (measured: equal, ratio
1.000), and each catalogued bug that is visible at that precision must break the same check (measured
in FP16: tanh GELU 1.27×, bf16 rotary tables 1.36×, softmax in FP16 1.51×, EOS in the pool ~400×).
In BF16 only the gross bugs rise above its rounding in this max-error check; the numerics gate's sign
test covers the subtle ones (tests/test_broken_paths.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.embed.passes import PathEmbeddings, embed_path
from core.embed.paths import ForwardPath, packed_path, standard_path
from core.embed.plugins import make_plugin_path
from core.numerics.loading import load_esm2_model, reference_copy
from tests.plugins.broken_paths import CATALOGUE

LIMIT = 1.05  # the packed path may be this much further from float64 than v1.0 at any layer
CAUGHT = {
    "fp16": ["tanh GELU", "rotary tables in bf16", "softmax in FP16", "EOS in the pool", "token-dropout scale missing"],
    "bf16": ["EOS in the pool", "token-dropout scale missing"],
}


def random_sequences(lengths: list[int], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for n in lengths]


SEQUENCES = random_sequences([30, 75, 120, 200, 41])


class HalfPrecisionCase:
    """demo-8M in one half dtype, its float64 twin's pooled layers, and v1.0's."""

    def __init__(self, dtype: str):
        self.model, self.alphabet = load_esm2_model("demo-8M", dtype=dtype, device="cpu")
        self.layers = list(range(self.model.num_layers + 1))
        twin = reference_copy(self.model, torch.float64)
        self.reference = embed_path(twin, self.alphabet, SEQUENCES, self.layers, standard_path(twin))
        self.v1 = self.embed(standard_path(self.model))

    def embed(self, path: ForwardPath) -> PathEmbeddings:
        return embed_path(self.model, self.alphabet, SEQUENCES, self.layers, path)

    def worst_ratio(self, candidate: PathEmbeddings) -> float:
        """max over layers 1 … L of max|candidate − ref| / max|v1.0 − ref| (layer 0 has no arithmetic to differ)."""
        ratios = []
        for layer in self.layers[1:]:
            reference = self.reference.layers[layer]
            v1_error = np.abs(self.v1.layers[layer] - reference).max()
            ratios.append(np.abs(candidate.layers[layer] - reference).max() / max(v1_error, np.finfo(np.float64).tiny))
        return float(max(ratios))


@pytest.fixture(scope="module", params=["fp16", "bf16"])
def case(request) -> HalfPrecisionCase:
    return HalfPrecisionCase(request.param)


def test_packed_path_is_as_close_to_float64_as_v1(case):
    packed = case.embed(packed_path(case.model))
    assert case.model.dtype in (torch.float16, torch.bfloat16)
    assert case.worst_ratio(packed) <= LIMIT
    for layer in case.layers:  # and the two half-precision paths agree to their rounding
        cosine = (packed.layers[layer] * case.v1.layers[layer]).sum(1) / (
            np.linalg.norm(packed.layers[layer], axis=1) * np.linalg.norm(case.v1.layers[layer], axis=1))
        assert 1 - cosine.min() < 1e-5, layer


def test_visible_catalogued_bugs_break_the_half_precision_check(case):
    dtype = "fp16" if case.model.dtype == torch.float16 else "bf16"
    ratios = {name: case.worst_ratio(case.embed(make_plugin_path(CATALOGUE[name], case.model))) for name in CAUGHT[dtype]}
    assert all(ratio > LIMIT for ratio in ratios.values()), ratios
