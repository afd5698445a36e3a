"""Run both paths over a sequence set and mean-pool every requested layer.

Pooling averages each sequence's residue positions only (BOS, EOS and padding excluded) and
returns float32 (float64 for a float64 model). The sums are accumulated in float64 so the two
paths' different reduction orders (a padded sum vs a packed index_add) add no error of their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import esm
import numpy as np
import torch

from core.batching import default_max_tokens, pack_tokens, padded_tokens, plan_batches
from core.model import (
    V1_COMPATIBLE_BACKEND, ESM2WithFlashAttention, dtype_name, layer_indices, parse_dtype, reference_copy, versions,
)

V1_BACKEND = "fair-esm (torch.bmm)"

Progress = Callable[[str, int, int], None]
"""progress(stage, sequences_done, sequences_total); stage is 'v1.0', 'v2.0' or 'reference'."""


def pool_dtype(model_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if model_dtype == torch.float64 else torch.float32


def pool_padded(representation: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean over residues of padded activations.

    representation: (batch, T, embed_dim); lengths: (batch,) residue counts.
    Positions 1 … length are residues; 0 is BOS, length + 1 is EOS, the rest padding.
    Returns (batch, embed_dim) in ``dtype``.
    """
    positions = torch.arange(representation.shape[1], device=representation.device)
    lengths = lengths.to(representation.device)
    is_residue = (positions[None, :] >= 1) & (positions[None, :] <= lengths[:, None])
    summed = (representation.to(torch.float64) * is_residue[..., None]).sum(dim=1)
    return (summed / lengths[:, None]).to(dtype)


def pool_packed(representation: torch.Tensor, cu_seqlens: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean over residues of packed activations.

    representation: (total_tokens, embed_dim); cu_seqlens: (batch + 1,) boundaries of
    BOS + residues + EOS per sequence. Returns (batch, embed_dim) in ``dtype``.
    """
    cu_seqlens = cu_seqlens.to(representation.device).long()
    token_counts = cu_seqlens[1:] - cu_seqlens[:-1]
    seq_index = torch.repeat_interleave(torch.arange(token_counts.numel(), device=representation.device), token_counts)
    positions = torch.arange(representation.shape[0], device=representation.device) - cu_seqlens[seq_index]
    is_residue = (positions >= 1) & (positions <= token_counts[seq_index] - 2)
    summed = torch.zeros(token_counts.numel(), representation.shape[1], dtype=torch.float64, device=representation.device)
    summed.index_add_(0, seq_index[is_residue], representation[is_residue].to(torch.float64))
    return (summed / (token_counts - 2)[:, None]).to(dtype)


@dataclass
class PathEmbeddings:
    """Pooled embeddings of one path: layer -> (n_sequences, embed_dim), in input order."""

    layers: dict[int, np.ndarray]
    backend: str  # the attention that ran (for v2.0 with a plug-in: the plug-in's name)
    seconds: float
    implementation: str = ""  # what produced them, for reports (impl_v1 / impl_v2)


@dataclass(frozen=True)
class ForwardPath:
    """How one path turns a batch into per-token representations.

    packed: ``run(input_ids, cu_seqlens, max_seqlen, layers)`` on packed batches, else
    ``run(tokens, layers)`` on fair-esm's padded tokens; both return ``{"representations": …}``.
    padded_batches: plan batches as v1.0 does (same batches, same padding), not as packed ones.
    """

    backend: str
    implementation: str
    packed: bool
    run: Callable[..., dict]
    padded_batches: bool


def standard_path(model: ESM2WithFlashAttention) -> ForwardPath:
    """v1.0: fair-esm's own padded forward."""
    return ForwardPath(V1_BACKEND, f"fair-esm {versions().get('fair-esm', '')} ESM2.forward", packed=False,
                       run=lambda tokens, layers: model(tokens, repr_layers=layers), padded_batches=True)


def packed_path(model: ESM2WithFlashAttention, backend: str | None = None) -> ForwardPath:
    """v2.0: this project's forward_packed with a varlen attention backend."""
    resolved = model.resolved_backend(backend)
    return ForwardPath(
        resolved, f"core ESM2WithFlashAttention.forward_packed ({resolved})", packed=True,
        run=lambda ids, cu_seqlens, max_seqlen, layers: model.forward_packed(ids, cu_seqlens, max_seqlen, layers, backend=resolved),
        padded_batches=False,
    )


def fallback_path(model: ESM2WithFlashAttention) -> ForwardPath:
    """The v1-compatible fallback behind the packed API, fed v1.0's own batches (so bit-identical to it)."""
    return ForwardPath(
        V1_COMPATIBLE_BACKEND, "core forward_packed(v1_compatible=True): fair-esm forward behind the packed API",
        packed=True,
        run=lambda ids, cu_seqlens, max_seqlen, layers: model.forward_packed(ids, cu_seqlens, max_seqlen, layers, v1_compatible=True),
        padded_batches=True,
    )


def plugin_path(implementation: object) -> ForwardPath:
    """Any v2.0 implementation with ``forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)``
    or a padded ``forward(tokens, repr_layers)``, and ``name`` / ``version`` attributes."""
    label = f"{implementation.name} {implementation.version}".strip()
    if hasattr(implementation, "forward_packed"):
        return ForwardPath(label, label, packed=True, padded_batches=False,
                           run=lambda ids, cu_seqlens, max_seqlen, layers: implementation.forward_packed(ids, cu_seqlens, max_seqlen, layers))
    return ForwardPath(label, label, packed=False, padded_batches=True,
                       run=lambda tokens, layers: implementation.forward(tokens, layers))


def embed_v1(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layers: Sequence[int],
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> PathEmbeddings:
    """v1.0: fair-esm's padded forward over length-sorted batches under a token budget."""
    return embed_path(model, alphabet, sequences, layers, standard_path(model), max_tokens, progress, "v1.0")


def embed_v2(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layers: Sequence[int],
    backend: str | None = None,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    path: ForwardPath | None = None,
) -> PathEmbeddings:
    """v2.0: by default the packed forward with ``backend``; or any other ``path`` (fallback, plug-in)."""
    path = path or packed_path(model, backend)
    return embed_path(model, alphabet, sequences, layers, path, max_tokens, progress, "v2.0")


@torch.inference_mode()
def embed_path(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layers: Sequence[int],
    path: ForwardPath,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    stage: str = "v2.0",
) -> PathEmbeddings:
    """Run ``path`` over ``sequences`` in batches under a token budget and mean-pool ``layers``."""
    layers = layer_indices(model, layers)
    max_tokens = max_tokens or default_max_tokens(model.device)
    lengths = [len(seq) for seq in sequences]
    out_dtype = pool_dtype(model.dtype)
    pooled = {layer: torch.empty(len(sequences), model.embed_dim, dtype=out_dtype) for layer in layers}
    done = 0
    start = time.perf_counter()
    for batch in plan_batches(lengths, max_tokens, padded=path.padded_batches):
        tokens = padded_tokens(alphabet, [sequences[i] for i in batch])
        batch_lengths = torch.tensor([lengths[i] for i in batch])
        if path.packed:
            pack = pack_tokens(tokens, batch_lengths.tolist()).to(model.device)
            reps = path.run(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, layers)["representations"]
            for layer in layers:
                pooled[layer][batch] = pool_packed(reps[layer], pack.cu_seqlens, out_dtype).cpu()
        else:
            reps = path.run(tokens.to(model.device), layers)["representations"]
            for layer in layers:
                pooled[layer][batch] = pool_padded(reps[layer], batch_lengths, out_dtype).cpu()
        done += len(batch)
        if progress is not None:
            progress(stage, done, len(sequences))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return PathEmbeddings(
        layers={layer: values.numpy() for layer, values in pooled.items()},
        backend=path.backend,
        seconds=time.perf_counter() - start,
        implementation=path.implementation,
    )


@dataclass
class EmbeddingRun:
    """Both paths' pooled embeddings for one sequence set, with what produced them."""

    ids: list[str]
    lengths: np.ndarray  # (n,) residues
    v1: PathEmbeddings
    v2: PathEmbeddings
    model: str
    weights: str
    dtype: str
    device: str
    layers: list[int] = field(default_factory=list)
    reference: PathEmbeddings | None = None  # the standard path in a wider dtype, same weights
    reference_dtype: str | None = None

    @property
    def is_demo(self) -> bool:
        return self.weights == "demo"


def run_both_paths(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    ids: Sequence[str],
    sequences: Sequence[str],
    layers: Sequence[int] | None = None,
    backend: str | None = None,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    reference_dtype: str | None = None,
    v2_path: ForwardPath | None = None,
) -> EmbeddingRun:
    """Embed ``sequences`` with v1.0 and v2.0 and pool ``layers`` (None = every layer).

    ``reference_dtype`` ('fp32' or 'fp64') adds a third set: the standard path on a copy of the
    same weights in that dtype (see core.attribution). The copy is freed afterwards.
    ``v2_path`` replaces the built-in packed path (the v1-compatible fallback, or a plug-in).
    """
    if len(ids) != len(sequences) or not sequences:
        raise ValueError("need one id per sequence and at least one sequence")
    layers = layer_indices(model, layers)
    v1 = embed_v1(model, alphabet, sequences, layers, max_tokens, progress)
    v2 = embed_v2(model, alphabet, sequences, layers, backend, max_tokens, progress, path=v2_path)
    reference = None
    if reference_dtype is not None:
        wide = reference_copy(model, parse_dtype(reference_dtype))
        reference = embed_path(wide, alphabet, sequences, layers, standard_path(wide), max_tokens, progress, "reference")
        del wide
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    return EmbeddingRun(
        ids=list(ids),
        lengths=np.array([len(seq) for seq in sequences]),
        v1=v1,
        v2=v2,
        model=model.name,
        weights=model.weights,
        dtype=dtype_name(model.dtype),
        device=device_description(model.device),
        layers=layers,
        reference=reference,
        reference_dtype=reference_dtype,
    )


def device_description(device: torch.device) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type
