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


class Nameless:
    """A faithful packed implementation with neither ``name`` nor ``version``: the tool names it."""

    def __init__(self, model: ESM2WithFlashAttention):
        self.model = model

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        return self.model.forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers, backend="reference")


class WrongSignature:
    """forward_packed without the arguments the passes give it."""

    name = "wrong signature"
    version = "0"

    def forward_packed(self, input_ids) -> dict:
        raise AssertionError("never called: refused when loaded")


def make_nameless(model):
    return Nameless(model)


def make_wrong_signature(model):
    return WrongSignature()


def make_failing(model):
    raise RuntimeError("this plug-in needs a GPU kernel that is not built")


class Negated(PackedReference):
    """A path that changes every prediction: the faithful representations, negated. Balanced heads flip
    every label, so the verdict is FALLBACK."""

    name = "example negated"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        return {**out, "representations": {layer: -rep for layer, rep in out["representations"].items()}}


def make_negated(model):
    return Negated(model)
