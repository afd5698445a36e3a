"""What the benchmarks measure with: FLOPs of a pass, the device's matmul ceiling, peak memory, and the
header every BENCHMARKS.md section starts with (shared by ``python -m core.bench`` and its ``--peers``)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Sequence

import numpy as np
import torch

from core.numerics.environment import versions
from core.numerics.esm2_packed import ESM2WithFlashAttention


def non_embedding_parameters(model: ESM2WithFlashAttention) -> int:
    """Parameters of the transformer layers and the final layer norm (not embeddings or heads)."""
    esm2 = model.esm2
    return sum(p.numel() for module in (esm2.layers, esm2.emb_layer_norm_after) for p in module.parameters())


def pass_flops(model: ESM2WithFlashAttention, sequences: Sequence[str]) -> float:
    """FLOPs of one forward pass over ``sequences`` without padding (see the module docstring)."""
    tokens = np.array([len(seq) + 2 for seq in sequences], dtype=np.float64)
    return 2.0 * non_embedding_parameters(model) * tokens.sum() + model.num_layers * 4.0 * model.embed_dim * (tokens**2).sum()


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 20) -> float:
    """Best achieved FLOP/s of a ``size``³ matrix product in ``dtype`` on ``device``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = max(best, 2.0 * size**3 * repeats / (time.perf_counter() - start))
    return best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def report_header(title: str, command: str, device: torch.device, ceilings: dict[str, float], note: str = "") -> list[str]:
    """The first lines of a BENCHMARKS.md section: when and where, the command, versions, the ceiling."""
    return [
        f"## {title}{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC — {device_label(device)}{note}",
        "",
        f"Command: `{command.strip()}`  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}  ",
        "Ceiling (measured matrix product): " + ", ".join(f"{d} {c / 1e12:.0f} TFLOP/s" for d, c in ceilings.items()) + "  ",
    ]
