"""Example v2.0 plug-ins (``tests.plugins.example_v2:make_packed`` etc.) over the loaded fair-esm model; the
broken ones are in tests/plugins/broken_paths.py."""

from __future__ import annotations

import itertools
from typing import Sequence

import torch

from core.numerics.esm2_packed import ESM2WithFlashAttention, rotary_tables
from tests.plugins.broken_paths import NoTokenDropoutScale


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


class CrashesInForward(PackedReference):
    """Builds, then fails inside its own forward_packed, as a kernel with a bug would."""

    name = "example crashing"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class DropsLayers(PackedReference):
    """Returns only the last layer, whatever was asked."""

    name = "example dropping layers"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        last = max(out["representations"])
        return {"representations": {last: out["representations"][last]}}


class PadsItsOutput(PackedReference):
    """Returns (batch, longest, E) padded representations from the packed API instead of (total_tokens, E)."""

    name = "example padded output"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        return {"representations": {layer: rep.new_zeros(len(cu_seqlens) - 1, max_seqlen, rep.shape[-1])
                                    for layer, rep in out["representations"].items()}}


class TablesFromTheFirstCall(ESM2WithFlashAttention):
    """This project's packed forward with its rotary tables built at the first call's max_seqlen and kept:
    right until a later batch holds a longer sequence, which then indexes past the tables."""

    def _rotary(self, inv_freq, positions, max_seqlen):
        if not hasattr(self, "first_tables"):
            self.first_tables = rotary_tables(inv_freq, max_seqlen)
        cos, sin = self.first_tables
        return cos[positions], sin[positions]


class SizedByItsFirstCall(PackedReference):
    name = "example sized by its first call"

    def __init__(self, model: ESM2WithFlashAttention):
        super().__init__(TablesFromTheFirstCall(model.esm2, name=model.name, weights=model.weights))


class SingleSequenceFastPath(PackedReference):
    """Right for a pack of several sequences, but one sequence alone takes a fast path that forgets the
    token-dropout factor: what a server embedding one query at a time would run every time."""

    name = "example single-sequence fast path"

    def __init__(self, model: ESM2WithFlashAttention):
        super().__init__(model)
        self.alone = NoTokenDropoutScale(model)

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        if cu_seqlens.numel() == 2:
            return self.alone.forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers, backend="reference")
        return super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)


def make_crashing(model):
    return CrashesInForward(model)


def make_single_sequence_fast_path(model):
    return SingleSequenceFastPath(model)


def make_sized_by_its_first_call(model):
    return SizedByItsFirstCall(model)


def make_dropping_layers(model):
    return DropsLayers(model)


def make_padded_output(model):
    return PadsItsOutput(model)


class NanAtTryptophan(PackedReference):
    """Faithful, except that every tryptophan's row comes back NaN (as an overflow on one residue would)."""

    name = "example NaN at W"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        is_w = (input_ids.reshape(-1) == self.model.esm2.alphabet.get_idx("W"))[:, None]
        return {"representations": {layer: rep.masked_fill(is_w, float("nan"))
                                    for layer, rep in out["representations"].items()}}


class PaddedNanInPadding(PaddedStandard):
    """Faithful fair-esm padded forward that leaves NaN in every padding row, BOS and EOS untouched (a
    kernel may leave garbage where the mask says nothing is read): the tool pools residues only."""

    name = "example padded NaN padding"

    def forward(self, tokens: torch.Tensor, repr_layers: Sequence[int]) -> dict:
        out = super().forward(tokens, repr_layers)
        is_pad = (tokens == self.model.esm2.padding_idx)[..., None]
        return {**out, "representations": {layer: rep.masked_fill(is_pad, float("nan"))
                                           for layer, rep in out["representations"].items()}}


def make_nan_at_tryptophan(model):
    return NanAtTryptophan(model)


def make_padded_nan_padding(model):
    return PaddedNanInPadding(model)


class ReturnsNumpy(PackedReference):
    """Returns numpy arrays instead of tensors."""

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        return {"representations": {layer: rep.numpy() for layer, rep in out["representations"].items()}}


class StringLayerKeys(PackedReference):
    """Keys its representations by str(layer), as a JSON round trip would."""

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        return {"representations": {str(layer): rep for layer, rep in out["representations"].items()}}


def make_numpy_output(model):
    return ReturnsNumpy(model)


def make_string_keys(model):
    return StringLayerKeys(model)


def make_without_token_dropout(model):
    """A packed path whose factory switches fair-esm's token dropout off on the shared model: v1.0 would
    lose the 0.88 scaling with it, and the two paths would agree on the bug."""
    model.esm2.token_dropout = False
    return PackedReference(model)


class PatchesGelu(PackedReference):
    """Faithful arithmetic, but its forward swaps fair-esm's GELU for the tanh form in esm.modules, which
    v1.0 and the reference then call too."""

    name = "example patches fair-esm's GELU"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        import esm.modules

        esm.modules.gelu = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
        return super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)


def make_patches_gelu(model):
    return PatchesGelu(model)


class PatchesTensorMethod(PackedReference):
    """A v2.0 whose forward makes ``torch.Tensor.masked_fill`` ignore its mask where the value is 0 — fair-esm's
    token dropout — a process-wide change that v1.0 and the reference would then make too."""

    name = "example patches torch.Tensor.masked_fill"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        original = torch.Tensor.masked_fill
        torch.Tensor.masked_fill = lambda tensor, mask, value: tensor if value == 0 else original(tensor, mask, value)
        return super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)


def make_patches_tensor_method(model):
    return PatchesTensorMethod(model)


_CALLS = itertools.count(1)  # across instances: the page's checks build the plug-in again


class Drifting(PackedReference):
    """Faithful to rounding but not deterministic: each call moves one value (the first residue's first
    feature, in every returned layer) by as many float steps as calls so far in this process, as a kernel
    with unordered atomic sums drifts. Its verdict is ACCEPT; only the determinism check sees it."""

    name = "example drifting"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)
        steps = next(_CALLS)
        for rep in out["representations"].values():
            rep[1, 0] += steps * torch.finfo(rep.dtype).eps * max(abs(float(rep[1, 0])), 1.0)
        return out


def make_drifting(model):
    return Drifting(model)
