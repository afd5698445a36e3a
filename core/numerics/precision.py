"""Dtypes by name, and the softmax precision of the standard path.

fair-esm computes the attention softmax in float32 whatever the model's dtype. That is right for
fp16/bf16/fp32 models; a float64 reference must take it in float64, or it is no float64 reference.
``float64_softmax`` widens it for float64 inputs, and only inside its block (the reference uses it).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import esm.multihead_attention
import numpy as np
import torch


DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp64": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``'fp16'``/``'bf16'``/``'fp32'``/``'fp64'`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def torch_dtype(dtype: np.dtype | str) -> torch.dtype:
    """torch's dtype for a numpy ``dtype`` (the one ``torch.from_numpy`` gives an array of it)."""
    return torch.from_numpy(np.empty(0, np.dtype(dtype))).dtype


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype softmax and the pooled sums of a ``dtype`` model work in: float64 for float64, float32
    otherwise (fair-esm takes its softmax in float32 whatever the dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _softmax_in_input_precision(x: torch.Tensor, dim: int, onnx_trace: bool = False) -> torch.Tensor:
    return torch.softmax(x, dim=dim, dtype=accumulation_dtype(x.dtype))


@contextlib.contextmanager
def float64_softmax() -> Iterator[None]:
    """Inside the block, fair-esm's attention softmax runs in float64 for float64 inputs (float32 for every
    other dtype, exactly as fair-esm does, so concurrent fp16/fp32 work is unaffected)."""
    saved = esm.multihead_attention.utils_softmax
    esm.multihead_attention.utils_softmax = _softmax_in_input_precision
    try:
        yield
    finally:
        esm.multihead_attention.utils_softmax = saved
