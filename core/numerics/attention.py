"""Variable-length (packed) self-attention backends for the v2.0 path.

Every backend computes, for each packed sequence ``s`` independently,

    out[s] = softmax(q[s] @ k[s].T * softmax_scale) @ v[s]

on packed tensors of shape ``(total_tokens, num_heads, head_dim)`` whose
sequence boundaries are given by ``cu_seqlens`` (int32, shape ``(batch + 1,)``,
``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == total_tokens``).

Backends:
- ``flash-attn``: the flash-attn package's ``flash_attn_varlen_func`` (CUDA, fp16/bf16).
- ``torch-flash``: PyTorch's built-in FlashAttention varlen kernel (CUDA, fp16/bf16).
- ``reference``: plain PyTorch, one sequence at a time, with fair-esm's numerics
  (scores in the input dtype, softmax in float32 — float64 for float64 inputs).
  Any device, any dtype.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Callable

import torch

from core.numerics.precision import accumulation_dtype

BACKENDS: tuple[str, ...] = ("flash-attn", "torch-flash", "reference")
FLASH_DTYPES = (torch.float16, torch.bfloat16)

AttentionFn = Callable[..., torch.Tensor]


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run here; the message says why."""


def reference_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
) -> torch.Tensor:
    """Attention one packed sequence at a time, in fair-esm's operation order.

    q, k, v: (total_tokens, num_heads, head_dim), any dtype. Returns the same shape and dtype.
    """
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q_s = q[start:end].transpose(0, 1) * softmax_scale  # (H, L, D)
        k_s = k[start:end].transpose(0, 1)
        v_s = v[start:end].transpose(0, 1)
        scores = torch.bmm(q_s, k_s.transpose(1, 2))  # (H, L, L), input dtype like fair-esm
        probs = torch.softmax(scores, dim=-1, dtype=accumulation_dtype(q.dtype)).type_as(q)
        out[start:end] = torch.bmm(probs, v_s).transpose(0, 1)
    return out


def _flash_attn_package_function() -> AttentionFn:
    module = importlib.import_module("flash_attn")
    return module.flash_attn_varlen_func


def flash_attn_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
) -> torch.Tensor:
    """The flash-attn package's varlen kernel (FP32 accumulation inside the kernel)."""
    flash_attn_varlen_func = _flash_attn_package_function()
    return flash_attn_varlen_func(
        q, k, v,
        cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
        dropout_p=0.0, softmax_scale=softmax_scale, causal=False,
    )


@functools.cache
def _torch_varlen_attn_with_scale() -> AttentionFn | None:
    """``torch.nn.attention.varlen.varlen_attn`` if this torch has it with a ``scale`` argument."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if "scale" in inspect.signature(varlen_attn).parameters else None


def torch_flash_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
) -> torch.Tensor:
    """PyTorch's own FlashAttention varlen kernel (FP32 accumulation inside the kernel)."""
    varlen_attn = _torch_varlen_attn_with_scale()
    if varlen_attn is not None:
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=softmax_scale)
    output, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
        0.0, False, False, scale=softmax_scale,
    )
    return output


_FUNCTIONS: dict[str, AttentionFn] = {
    "flash-attn": flash_attn_varlen_attention,
    "torch-flash": torch_flash_varlen_attention,
    "reference": reference_varlen_attention,
}


def unavailable_reason(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``backend`` cannot run on ``device`` in ``dtype``, or None when it can."""
    if backend not in _FUNCTIONS:
        return f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'"
    if backend == "reference":
        return None
    if device.type != "cuda":
        return f"{backend} needs a CUDA device (the model is on {device.type})"
    if dtype not in FLASH_DTYPES:
        return f"{backend} runs only in fp16 or bf16 (the model is {str(dtype).removeprefix('torch.')})"
    if backend == "flash-attn":
        try:
            _flash_attn_package_function()
        except Exception as error:  # an ImportError, or a broken CUDA extension
            return f"the flash-attn package cannot be imported ({type(error).__name__}: {error})"
        return None
    has_kernel = _torch_varlen_attn_with_scale() is not None or hasattr(
        torch.ops.aten, "_flash_attention_forward"
    )
    if not has_kernel or not torch.backends.cuda.is_flash_attention_available():
        return f"this torch ({torch.__version__}) has no FlashAttention varlen kernel"
    return None


def available_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Backends that can run on ``device`` in ``dtype``, best first."""
    return [name for name in BACKENDS if unavailable_reason(name, device, dtype) is None]


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn ``'auto'`` into the best available backend; check an explicit one can run.

    Raises BackendUnavailable with the reason and the alternatives.
    """
    if requested == "auto":
        return available_backends(device, dtype)[0]
    reason = unavailable_reason(requested, device, dtype)
    if reason is not None:
        alternatives = ", ".join(available_backends(device, dtype))
        raise BackendUnavailable(f"attention backend {requested!r} cannot run: {reason}. Available here: {alternatives}")
    return requested


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
    backend: str,
) -> torch.Tensor:
    """Non-causal self-attention over packed sequences with the named backend.

    q, k, v: (total_tokens, num_heads, head_dim); cu_seqlens: int32 (batch + 1,);
    max_seqlen: longest sequence. Returns (total_tokens, num_heads, head_dim) in q's dtype.
    """
    return _FUNCTIONS[backend](q, k, v, cu_seqlens, max_seqlen, softmax_scale)
