"""Fused element-wise steps of the packed layer (Triton, CUDA, FP16/BF16): the q scaling with the rotary
rotation, and fair-esm's exact-erf GELU.

In eager PyTorch these are five to six kernels each, every one reading and writing a whole activation:
a quarter of v2.0's GPU time on 3B (BENCHMARKS.md). Each kernel here makes one pass and repeats
PyTorch's arithmetic step by step — every operation in float32 from the rounded operands, its result
rounded to the activation dtype — so it is meant to give PyTorch's bits. It is not required to:
its test (tests/integration/test_fused_gpu.py) is FlashAttention's rule against the float64
reference, layer by layer, and no more error than the unfused steps.

``fused_available`` says where they run; elsewhere the packed forward keeps PyTorch's op sequence.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import torch

FUSED_DTYPES = (torch.float16, torch.bfloat16)
# PyTorch's CUDA division by a Python scalar multiplies by the float32 reciprocal of the float32 divisor.
INV_SQRT2 = float(np.float32(1.0) / np.float32(math.sqrt(2.0)))


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def fused_available(device: torch.device, dtype: torch.dtype) -> bool:
    """True where the fused kernels run: a CUDA device, FP16 or BF16, and Triton importable."""
    return device.type == "cuda" and dtype in FUSED_DTYPES and _has_triton()


@functools.cache
def _kernels():
    from core.numerics import fused_kernels  # imports Triton: only when a kernel first runs

    return fused_kernels


def fused_scaled_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scaling: float | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """rotary(x · scaling) as fair-esm computes it (scaling None: no scaling, as for k), into ``out``
    (a new tensor when None; x itself is allowed).

    x: (total_tokens, heads, head_dim) contiguous, FP16/BF16 on CUDA; cos, sin: (total_tokens, head_dim),
    each token's row of the tables, in x's dtype. Returns out.
    """
    kernels = _kernels()
    total_tokens, heads, head_dim = x.shape
    if not x.is_contiguous() or head_dim % 2 or cos.dtype != x.dtype or sin.dtype != x.dtype:
        raise ValueError("fused rotary needs a contiguous x with an even head_dim and tables in its dtype")
    half = head_dim // 2
    out = torch.empty_like(x) if out is None else out
    with torch.cuda.device(x.device):  # Triton launches on the current device: the model's may be another
        kernels.rotary_kernel[(total_tokens,)](
            x, out, cos.contiguous(), sin.contiguous(), 1.0 if scaling is None else float(scaling), heads,
            HALF=half, BLOCK_H=kernels.triton.next_power_of_2(heads), BLOCK_D=kernels.triton.next_power_of_2(half),
            SCALED=scaling is not None,
        )
    return out


def fused_gelu(x: torch.Tensor) -> torch.Tensor:
    """fair-esm's exact-erf GELU in one pass; x: any shape, FP16/BF16 on CUDA. Returns a new tensor."""
    kernels = _kernels()
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    block = 1024
    with torch.cuda.device(x.device):
        kernels.gelu_kernel[(kernels.triton.cdiv(n, block),)](x, out, n, INV_SQRT2, BLOCK=block)
    return out
