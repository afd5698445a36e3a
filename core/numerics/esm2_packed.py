"""ESM-2 with two inference paths over the same weights.

- v1.0, ``forward(tokens, repr_layers)``: fair-esm's own padded forward, unmodified.
- v2.0, ``forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)``: padding
  stripped, sequences concatenated, attention by a varlen backend (``core.numerics.attention``).

The packed path reuses fair-esm's modules and repeats its arithmetic in the same order
(token-dropout scaling, q scaled before rotary, rotary tables built in the dtype of the
model's ``inv_freq`` buffer, exact erf GELU), so that with the ``reference`` backend the
two paths agree to rounding; the FlashAttention backends differ only in attention. Each step
is a small method, so a test can replace exactly one (tests/plugins/broken_paths.py).
On a GPU in FP16/BF16 the q scaling + rotary and the GELU run as fused Triton kernels that repeat
the same steps (core.numerics.fused); ``fused=False`` keeps PyTorch's op sequence.
"""

from __future__ import annotations

from typing import Sequence

import torch
from esm.model.esm2 import ESM2
from esm.modules import gelu
from esm.rotary_embedding import rotate_half
from torch import nn

from core.numerics.attention import resolve_backend, varlen_attention
from core.numerics.fused import fused_available, fused_gelu, fused_scaled_rotary
from core.numerics.precision import float64_softmax
from core.numerics.specs import WeightsKind


def rotary_inv_freq(head_dim: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """RoFormer's inverse frequencies, (head_dim // 2,): fair-esm's formula, computed in ``dtype``."""
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=dtype, device=device) / head_dim))


def reset_rotary_frequencies(model: ESM2) -> None:
    """Recompute every layer's rotary ``inv_freq`` buffer in its own dtype."""
    with torch.no_grad():
        for layer in model.layers:
            inv_freq = layer.self_attn.rot_emb.inv_freq
            inv_freq.copy_(rotary_inv_freq(2 * inv_freq.numel(), inv_freq.dtype, inv_freq.device))
    reset_rotary_caches(model)


def reset_rotary_caches(model: ESM2) -> None:
    """Drop fair-esm's cached rotary tables, which are keyed on length only, not dtype."""
    for layer in model.layers:
        layer.self_attn.rot_emb._seq_len_cached = None


def rotary_tables(inv_freq: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_seqlen, head_dim), built exactly as fair-esm builds them: in the
    dtype of ``inv_freq`` (fp16 after ``model.half()``), as the standard path does."""
    positions = torch.arange(max_seqlen, device=inv_freq.device).type_as(inv_freq)
    freqs = torch.einsum("i,j->ij", positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (total_tokens, heads, head_dim); cos, sin: (total_tokens, head_dim). Returns x's dtype."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return ((x * cos) + (rotate_half(x) * sin)).to(x.dtype)


class ESM2WithFlashAttention(nn.Module):
    """fair-esm's ESM2 with a second, packed forward over the same weights.

    Attributes ``name`` and ``weights`` (``'pretrained'``, ``'checkpoint'`` or ``'demo'``)
    say what was loaded; every result downstream carries them.
    """

    def __init__(
        self,
        esm2: ESM2,
        *,
        name: str = "esm2",
        weights: WeightsKind = "pretrained",
        backend: str = "auto",
        fused: bool = True,
    ):
        super().__init__()
        self.esm2 = esm2
        self.name = name
        self.weights = weights
        self.backend = backend
        self.fused = fused  # the fused element-wise kernels wherever they run (fuses()); False: PyTorch's ops
        self.activation = gelu  # fair-esm's exact erf GELU; tests swap it to prove they would notice

    @property
    def num_layers(self) -> int:
        return self.esm2.num_layers

    @property
    def embed_dim(self) -> int:
        return self.esm2.embed_dim

    @property
    def device(self) -> torch.device:
        return self.esm2.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.esm2.embed_tokens.weight.dtype

    def _apply(self, fn, *args, **kwargs):
        # .half(), .to(dtype), .cuda() all land here: fair-esm's rotary cache would go stale.
        result = super()._apply(fn, *args, **kwargs)
        reset_rotary_caches(self.esm2)
        return result

    def forward(self, tokens: torch.Tensor, repr_layers: Sequence[int] = (), **kwargs) -> dict:
        """v1.0: fair-esm's own forward on padded tokens (batch, seq_len); for a float64 model with its
        softmax in float64 too, so that a float64 run is a true float64 reference."""
        with float64_softmax():
            return self.esm2(tokens, repr_layers=list(repr_layers), **kwargs)

    def fuses(self) -> bool:
        """Whether forward_packed runs the fused rotary and GELU kernels (on, and a CUDA FP16/BF16 model)."""
        return self.fused and fused_available(self.device, self.dtype)

    def resolved_backend(self, backend: str | None = None) -> str:
        """The attention backend a packed forward will run with (``'auto'`` resolved)."""
        return resolve_backend(backend or self.backend, self.device, self.dtype)

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        repr_layers: Sequence[int] = (),
        backend: str | None = None,
    ) -> dict:
        """v2.0: packed forward.

        input_ids: (total_tokens,) or (1, total_tokens) int64, each sequence with its BOS and EOS;
        cu_seqlens: (batch + 1,) int32 sequence boundaries; max_seqlen: longest sequence in tokens.
        Returns ``{"representations": {layer: (total_tokens, embed_dim)}, "backend": name}`` with
        fair-esm's layer semantics: 0 = scaled embeddings, last = after the final layer norm.
        Only layers up to the highest one requested are computed. (The v1.0-compatible fallback with
        this same interface is core.numerics.fallback.V1CompatiblePacked.)
        """
        backend = self.resolved_backend(backend)
        model = self.esm2
        input_ids = input_ids.reshape(-1)
        seq_index, seq_lengths, positions = self._packed_positions(cu_seqlens, input_ids.numel())

        x = self._packed_embeddings(input_ids, seq_index, seq_lengths)
        wanted = set(repr_layers)
        last_needed = max(wanted, default=0)
        representations = {0: x} if 0 in wanted else {}

        for layer_idx, layer in enumerate(model.layers[:last_needed]):
            x = self._packed_layer(layer, x, positions, cu_seqlens, max_seqlen, backend)
            if layer_idx + 1 in wanted:
                representations[layer_idx + 1] = x
        if model.num_layers in wanted:
            representations[model.num_layers] = model.emb_layer_norm_after(x)
        return {"representations": representations, "backend": backend}

    @staticmethod
    def _packed_positions(cu_seqlens: torch.Tensor, total_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(seq_index, seq_lengths, positions): for each token its sequence, (total_tokens,) int64; each
        sequence's token count, (batch,) int64; and its position within its sequence, (total_tokens,) int64,
        restarting at 0 for every sequence as v1.0's padded rows do."""
        cu_seqlens_long = cu_seqlens.long()
        seq_lengths = cu_seqlens_long[1:] - cu_seqlens_long[:-1]
        seq_index = torch.repeat_interleave(
            torch.arange(seq_lengths.numel(), device=cu_seqlens.device), seq_lengths, output_size=total_tokens
        )
        positions = torch.arange(total_tokens, device=cu_seqlens.device) - cu_seqlens_long[seq_index]
        return seq_index, seq_lengths, positions

    def _packed_embeddings(
        self, input_ids: torch.Tensor, seq_index: torch.Tensor, seq_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings (total_tokens, embed_dim) with fair-esm's token-dropout rescaling."""
        model = self.esm2
        x = model.embed_scale * model.embed_tokens(input_ids)
        if model.token_dropout:
            is_mask = input_ids == model.mask_idx
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            mask_ratio_train = 0.15 * 0.8
            mask_counts = torch.zeros_like(seq_lengths).index_add_(0, seq_index, is_mask.long())
            mask_ratio_observed = mask_counts.to(x.dtype) / seq_lengths
            x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[seq_index, None]
        return x

    def _packed_layer(
        self,
        layer: nn.Module,
        x: torch.Tensor,
        positions: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: str,
    ) -> torch.Tensor:
        """One pre-LN transformer layer on packed (total_tokens, embed_dim) activations."""
        x = x + self._packed_self_attention(
            layer.self_attn, layer.self_attn_layer_norm(x), positions, cu_seqlens, max_seqlen, backend
        )
        activation = fused_gelu if self.activation is gelu and self.fuses() else self.activation
        return x + layer.fc2(activation(layer.fc1(layer.final_layer_norm(x))))

    def _packed_self_attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,
        positions: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: str,
    ) -> torch.Tensor:
        total_tokens = x.shape[0]
        shape = (total_tokens, attn.num_heads, attn.head_dim)
        cos, sin = self._rotary(attn.rot_emb.inv_freq, positions, max_seqlen)
        # fair-esm scales q before the rotary rotation; the attention kernel then runs with scale 1.
        if self.fuses() and cos.dtype == sin.dtype == x.dtype:
            q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
            fused_scaled_rotary(q, cos, sin, attn.scaling, out=q)
            fused_scaled_rotary(k, cos, sin, out=k)
        else:
            q = apply_rotary((attn.q_proj(x) * attn.scaling).view(shape), cos, sin)
            k = apply_rotary(attn.k_proj(x).view(shape), cos, sin)
        v = attn.v_proj(x).view(shape)
        out = self._attend(q, k, v, cu_seqlens, max_seqlen, backend)
        return attn.out_proj(out.reshape(total_tokens, attn.embed_dim))

    def _rotary(self, inv_freq: torch.Tensor, positions: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for each token's position, each (total_tokens, head_dim)."""
        cos, sin = rotary_tables(inv_freq, max_seqlen)
        return cos[positions], sin[positions]

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                backend: str) -> torch.Tensor:
        """Attention within each packed sequence; q (already scaled), k, v: (total_tokens, heads, head_dim)."""
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=1.0, backend=backend)
