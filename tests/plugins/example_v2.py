"""Example v2.0 plug-ins (``tests.plugins.example_v2:make_packed`` etc.) over the loaded fair-esm model."""

from __future__ import annotations

from typing import Sequence

import torch

from core.model import ESM2WithFlashAttention


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


class EosInPool(PackedReference):
    """Broken: rows shifted one token left within each sequence, so residue positions 1 … L carry
    residues 2 … L and the EOS — the off-by-one that puts EOS into the mean pool."""

    name = "broken: EOS in pool"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        bounds = cu_seqlens.tolist()
        shifted = {}
        for layer, rep in out["representations"].items():
            rep = rep.clone()
            for start, end in zip(bounds[:-1], bounds[1:]):
                rep[start:end] = torch.roll(rep[start:end], -1, dims=0)
            shifted[layer] = rep
        return {"representations": shifted}


class NoTokenDropoutScaling(PackedReference):
    """Broken: embeddings not multiplied by fair-esm's inference-time token-dropout factor 0.88."""

    name = "broken: no token-dropout scaling"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers) -> dict:
        esm2 = self.model.esm2
        original = esm2.token_dropout
        esm2.token_dropout = False
        try:
            return super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        finally:
            esm2.token_dropout = original


class NoInterface:
    name = "nothing to call"
    version = "0"


def make_packed(model):
    return PackedReference(model)


def make_padded(model):
    return PaddedStandard(model)


def make_eos_in_pool(model):
    return EosInPool(model)


def make_no_token_dropout_scaling(model):
    return NoTokenDropoutScaling(model)


def make_no_interface(model):
    return NoInterface()
