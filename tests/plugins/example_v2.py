"""Example v2.0 plug-ins (``tests.plugins.example_v2:make_packed`` etc.) over the loaded fair-esm model; the
broken ones are in tests/plugins/broken_paths.py."""

from __future__ import annotations

from typing import Sequence

import torch

from core.numerics.esm2_packed import ESM2WithFlashAttention


class PackedReference:
    """A faithful packed implementation: this project's forward_packed with the reference backend."""

    name = "example packed"
    version = "1.0"

    def __init__(self, model: ESM2WithFlashAttention):
        self.model = model

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        return self.model.forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers, backend="reference")


class PaddedStandard:
    """A padded implementation: fair-esm's forward itself."""

    name = "example padded"
    version = "2.1"

    def __init__(self, model: ESM2WithFlashAttention):
        self.model = model

    def forward(self, tokens: torch.Tensor, repr_layers: Sequence[int]) -> dict:
        return self.model(tokens, repr_layers=repr_layers)


class NoInterface:
    name = "nothing to call"
    version = "0"


def make_packed(model):
    return PackedReference(model)


def make_padded(model):
    return PaddedStandard(model)


def make_no_interface(model):
    return NoInterface()
