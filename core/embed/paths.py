"""How each path turns a batch into per-token representations: v1.0, the built-in v2.0, the fallback,
a plug-in. Every one is a ``ForwardPath``; the passes (core.embed.passes) do not know which they run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.numerics.environment import versions
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.fallback import V1CompatiblePacked

V1_BACKEND = "fair-esm (torch.bmm)"


@dataclass(frozen=True)
class ForwardPath:
    """How one path turns a batch into per-token representations.

    packed: ``run(input_ids, cu_seqlens, max_seqlen, layers)`` on packed batches, else
    ``run(tokens, layers)`` on fair-esm's padded tokens; both return ``{"representations": …}``.
    padded_batches: plan batches as v1.0 does (same batches, same padding), not as packed ones.
    verify: called after every pass of the path (a plug-in's: that it left the loaded model as it found it).
    """

    backend: str
    implementation: str
    packed: bool
    run: Callable[..., dict]
    padded_batches: bool
    verify: Callable[[], None] = lambda: None  # after each pass: raises when the path changed what v1.0 runs on


def standard_path(model: ESM2WithFlashAttention) -> ForwardPath:
    """v1.0: fair-esm's own padded forward."""
    return ForwardPath(V1_BACKEND, f"fair-esm {versions().get('fair-esm', '')} ESM2.forward", packed=False,
                       run=lambda tokens, layers: model(tokens, repr_layers=layers), padded_batches=True)


def packed_path(model: ESM2WithFlashAttention, backend: str | None = None) -> ForwardPath:
    """v2.0: this project's forward_packed with a varlen attention backend."""
    resolved = model.resolved_backend(backend)
    fused = ", fused rotary + GELU" if model.fuses() else ""
    return ForwardPath(
        resolved, f"core ESM2WithFlashAttention.forward_packed ({resolved}{fused})", packed=True,
        run=lambda ids, cu_seqlens, max_seqlen, layers: model.forward_packed(ids, cu_seqlens, max_seqlen, layers, backend=resolved),
        padded_batches=False,
    )


def fallback_path(model: ESM2WithFlashAttention) -> ForwardPath:
    """The v1-compatible fallback behind the packed API, fed v1.0's own batches (so bit-identical to it)."""
    fallback = V1CompatiblePacked(model)
    return ForwardPath(
        fallback.backend, "core V1CompatiblePacked.forward_packed: fair-esm forward behind the packed API",
        packed=True, run=fallback.forward_packed, padded_batches=True,
    )


def plugin_path(implementation: object, label: str | None = None, description: str | None = None) -> ForwardPath:
    """Any v2.0 implementation with ``forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)``
    or a padded ``forward(tokens, repr_layers)``, named ``label`` (default: its ``name`` and ``version``
    attributes) and described in reports as ``description`` (default: the label)."""
    label = label or f"{implementation.name} {implementation.version}".strip()
    description = description or label
    if hasattr(implementation, "forward_packed"):
        return ForwardPath(label, description, packed=True, padded_batches=False,
                           run=lambda ids, cu_seqlens, max_seqlen, layers: implementation.forward_packed(ids, cu_seqlens, max_seqlen, layers))
    return ForwardPath(label, description, packed=False, padded_batches=True,
                       run=lambda tokens, layers: implementation.forward(tokens, layers))
