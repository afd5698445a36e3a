"""The device a run uses, what it is called, and the package versions that decide the numbers."""

from __future__ import annotations

from importlib import metadata

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, in words; None when it can."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to this process (driver missing, or CUDA_VISIBLE_DEVICES empty)"
    return None


def device_or_cpu(requested: torch.device) -> tuple[torch.device, str | None]:
    """``requested``, or the CPU with a notice saying why when it is a CUDA device and CUDA is unavailable."""
    reason = cuda_unavailable_reason() if requested.type == "cuda" else None
    if reason is None:
        return requested, None
    return torch.device("cpu"), (
        f"CUDA was asked for but is not available: {reason}. Running on the CPU instead, which is much "
        "slower; the comparison is otherwise the same"
    )


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    found = {"torch": torch.__version__}
    for package in ("fair-esm", "flash-attn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def device_description(device: torch.device) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type
