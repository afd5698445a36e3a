"""Which ESM-2: pretrained names, demo sizes and checkpoint files, and what runs where by default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

WeightsKind = Literal["pretrained", "checkpoint", "demo"]


@dataclass(frozen=True)
class Architecture:
    num_layers: int
    embed_dim: int
    attention_heads: int


PRETRAINED: dict[str, Architecture] = {
    "esm2_t6_8M_UR50D": Architecture(6, 320, 20),
    "esm2_t12_35M_UR50D": Architecture(12, 480, 20),
    "esm2_t30_150M_UR50D": Architecture(30, 640, 20),
    "esm2_t33_650M_UR50D": Architecture(33, 1280, 20),
    "esm2_t36_3B_UR50D": Architecture(36, 2560, 40),
    "esm2_t48_15B_UR50D": Architecture(48, 5120, 40),
}

DEMO_SIZES: dict[str, str] = {
    "8M": "esm2_t6_8M_UR50D",
    "35M": "esm2_t12_35M_UR50D",
    "150M": "esm2_t30_150M_UR50D",
    "650M": "esm2_t33_650M_UR50D",
    "3B": "esm2_t36_3B_UR50D",
    "15B": "esm2_t48_15B_UR50D",
}

# Not an ESM-2 size: three layers of 64 with ESM-2's head width (16), random weights like the demo sizes.
# It exercises the tool itself in seconds (plug-in smoke runs, this project's test suite); its numbers say
# nothing about a real model's.
TINY_DEMO = "demo-tiny"
TINY_ARCHITECTURE = Architecture(3, 64, 4)

# Every demo spec and its shape, smallest first: demo-tiny, then one per ESM-2 size.
DEMO_ARCHITECTURES: dict[str, Architecture] = {
    TINY_DEMO: TINY_ARCHITECTURE, **{f"demo-{size}": PRETRAINED[name] for size, name in DEMO_SIZES.items()},
}
_DEMO_SPELLINGS = {spec.lower(): spec for spec in DEMO_ARCHITECTURES}  # a spec in any case -> as written here

DEFAULT_MODEL = "esm2_t36_3B_UR50D"

DEMO_SEED = 20240229


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint cache, where fair-esm keeps downloaded pretrained weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_checkpoint(name: str) -> Path:
    """Where fair-esm keeps (or would download) the pretrained weights called ``name``."""
    return hub_checkpoint_dir() / f"{name}.pt"


def pretrained_available(name: str) -> bool:
    """Whether a pretrained model's weights are already in the local torch hub cache."""
    return hub_checkpoint(name).is_file()


def default_model_spec(device: torch.device) -> str:
    """3B on a GPU (pretrained when cached here, else demo-3B); demo-8M on a CPU so a run finishes."""
    if device.type == "cuda":
        return DEFAULT_MODEL if pretrained_available(DEFAULT_MODEL) else "demo-3B"
    return "demo-8M"


def default_dtype(device: torch.device) -> str:
    """FP16 on a GPU (the seed's setting); FP32 on a CPU, where FP16 matmuls are slow."""
    return "fp16" if device.type == "cuda" else "fp32"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` 'pretrained', 'demo' or 'checkpoint', and ``name`` — the pretrained
    name, a demo spec (as in DEMO_ARCHITECTURES) or the checkpoint file's path."""

    kind: WeightsKind
    name: str

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """ValueError, naming the choices, for a spec that is none of the three."""
        if text in PRETRAINED:
            return cls("pretrained", text)
        if text.lower().startswith("demo-"):
            if text.lower() not in _DEMO_SPELLINGS:
                raise ValueError(f"unknown demo size {text!r}; choose one of " + ", ".join(demo_specs()))
            return cls("demo", _DEMO_SPELLINGS[text.lower()])
        if Path(text).expanduser().is_file():
            return cls("checkpoint", str(Path(text).expanduser()))
        raise ValueError(
            f"unknown model {text!r}: not a pretrained ESM-2 name ({', '.join(PRETRAINED)}), "
            f"not demo-<size> ({', '.join(DEMO_SIZES)}, tiny), and no file at that path"
        )

    @staticmethod
    def is_named(text: str) -> bool:
        """Whether ``text`` names a model (pretrained or demo) rather than a file, without touching the disk."""
        return text in PRETRAINED or text.lower().startswith("demo-")

    @property
    def architecture(self) -> Architecture | None:
        """The shape a pretrained or demo model has; None for a checkpoint (known once it is read)."""
        if self.kind == "checkpoint":
            return None
        return PRETRAINED[self.name] if self.kind == "pretrained" else DEMO_ARCHITECTURES[self.name]


def demo_specs() -> list[str]:
    """Every demo spec, smallest first: demo-tiny (not an ESM-2 size), then one per ESM-2 size."""
    return list(DEMO_ARCHITECTURES)
