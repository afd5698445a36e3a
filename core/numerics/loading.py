"""Loading ESM-2 weights — pretrained by name, a local fair-esm checkpoint, or demo weights — and the
wider-dtype reference copy of a loaded model."""

from __future__ import annotations

import argparse
import copy
import math
import zlib
from pathlib import Path
from typing import Iterable

import esm
import torch
from esm.model.esm2 import ESM2
from torch import nn

from core.numerics.environment import default_device
from core.numerics.esm2_packed import ESM2WithFlashAttention, reset_rotary_caches, reset_rotary_frequencies, rotary_inv_freq
from core.numerics.precision import parse_dtype
from core.numerics.specs import DEFAULT_MODEL, DEMO_SEED, DEMO_SIZES, Architecture, ModelSpec, hub_checkpoint


class WeightsUnavailable(RuntimeError):
    """Model weights cannot be loaded; the message says how to supply them."""


def _new_alphabet() -> esm.data.Alphabet:
    return esm.data.Alphabet.from_architecture("ESM-1b")


def _demo_values(module: nn.Module, param_name: str, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Values PyTorch's default initialisation would draw, from a per-parameter generator."""
    shape = tuple(param.shape)
    if isinstance(module, nn.Embedding):
        values = torch.randn(shape, generator=generator)
        if module.padding_idx is not None:
            values[module.padding_idx] = 0
        return values
    if isinstance(module, nn.LayerNorm):
        return torch.ones(shape) if param_name == "weight" else torch.zeros(shape)
    if isinstance(module, nn.Linear):
        bound = 1 / math.sqrt(module.in_features)
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)
    return torch.zeros(shape)  # the LM head's output bias


META_FROM_LAYERS_TIMES_WIDTH_SQUARED = 33 * 1280**2  # 650M's shape: built on the meta device from here up


def build_demo_model(arch: Architecture, seed: int, dtype: torch.dtype, device: torch.device) -> ESM2:
    """Random-init ESM-2 of the given shape, identical on every machine for the same seed.

    Filled one parameter at a time from a generator seeded by (seed, parameter name). From 650M up it
    is built on the meta device first, so a 15B model never exists in float32 on the host; smaller ones
    are built on the host directly (any meta-device op imports torch._dynamo, 1.5 s of every process).
    """
    if arch.num_layers * arch.embed_dim**2 < META_FROM_LAYERS_TIMES_WIDTH_SQUARED:
        model = ESM2(arch.num_layers, arch.embed_dim, arch.attention_heads, alphabet=_new_alphabet())
        model = model.to(device=device, dtype=dtype)
    else:
        with torch.device("meta"):
            model = ESM2(arch.num_layers, arch.embed_dim, arch.attention_heads, alphabet=_new_alphabet())
        model = model.to(dtype).to_empty(device=device)
        model.lm_head.weight = model.embed_tokens.weight  # to_empty() replaced the tied parameter
    seen: set[int] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if id(param) in seen:  # the LM head shares the embedding matrix
                    continue
                seen.add(id(param))
                full_name = f"{module_name}.{param_name}"
                generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(full_name.encode()))
                param.copy_(_demo_values(module, param_name, param, generator))
        for layer in model.layers:  # computed in float32, then cast, as model.half() would
            inv_freq = layer.self_attn.rot_emb.inv_freq
            inv_freq.copy_(rotary_inv_freq(2 * inv_freq.numel(), torch.float32, inv_freq.device))
    reset_rotary_caches(model)
    return model


def _first_lines(error: BaseException, lines: int = 4, limit: int = 800) -> str:
    """The start of an exception's message, enough to say what is wrong without a wall of text."""
    return " ".join(line.strip() for line in str(error).splitlines()[:lines] if line.strip())[:limit]


def _safe_torch_load(path: Path) -> dict:
    """torch.load with ``weights_only=True``: tensors and plain containers only, no code runs.

    fair-esm checkpoints keep their config in an ``argparse.Namespace``, the one class allowed.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsUnavailable(
            f"cannot read checkpoint {path}: {type(error).__name__}: {_first_lines(error, 1) or 'empty or truncated file'}. "
            "Only fair-esm ESM-2 checkpoints (tensors and an argparse config) are accepted; "
            "pickled code is refused."
        ) from error


def _esm2_from_model_data(model_data: dict, regression_data: dict | None, source: str) -> ESM2:
    if not isinstance(model_data, dict) or "model" not in model_data or "cfg" not in model_data:
        raise WeightsUnavailable(f"{source} is not a fair-esm ESM-2 checkpoint (expected keys 'cfg' and 'model')")
    cfg = model_data["cfg"].get("model") if isinstance(model_data["cfg"], dict) else None
    if not all(hasattr(cfg, field) for field in ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads")):
        raise WeightsUnavailable(f"{source} has no ESM-2 architecture in cfg['model'] (is it an ESM-1 checkpoint?)")
    try:
        model, _ = esm.pretrained.load_model_and_alphabet_core("esm2", model_data, regression_data)
    except Exception as error:
        raise WeightsUnavailable(f"{source} does not match ESM-2's layout: {_first_lines(error)}") from error
    return model


def save_checkpoint(model: ESM2WithFlashAttention | ESM2, path: str | Path) -> Path:
    """Write weights in fair-esm's checkpoint format (readable by fair-esm and by ``load_esm2_model``)."""
    esm2 = model.esm2 if isinstance(model, ESM2WithFlashAttention) else model
    cfg = argparse.Namespace(
        encoder_layers=esm2.num_layers,
        encoder_embed_dim=esm2.embed_dim,
        encoder_attention_heads=esm2.attention_heads,
        token_dropout=esm2.token_dropout,
    )
    state = {f"encoder.{key}": value.detach().cpu() for key, value in esm2.state_dict().items()}
    path = Path(path)
    torch.save({"cfg": {"model": cfg}, "model": state}, path)
    return path


def _load_pretrained(name: str) -> ESM2:
    local = hub_checkpoint(name)
    if local.is_file():
        regression = local.with_name(f"{name}-contact-regression.pt")
        regression_data = _safe_torch_load(regression) if regression.is_file() else None
        return _esm2_from_model_data(_safe_torch_load(local), regression_data, str(local))
    try:
        model, _ = esm.pretrained.load_model_and_alphabet_hub(name)
    except Exception as error:
        raise WeightsUnavailable(
            f"weights for {name} are not in the torch hub cache ({local}) and could not be downloaded "
            f"({type(error).__name__}: {_first_lines(error, 1) or 'no detail'}). "
            f"On a connected host the first run downloads them; offline, copy {name}.pt into "
            f"{local.parent}, pass a local checkpoint file as the model, or use demo weights "
            f"(demo-{next(size for size, full in DEMO_SIZES.items() if full == name)})."
        ) from error
    return model


def load_esm2_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "fp16",
    device: str | torch.device | None = None,
    *,
    backend: str = "auto",
    demo_seed: int = DEMO_SEED,
) -> tuple[ESM2WithFlashAttention, esm.data.Alphabet]:
    """Load ESM-2 weights and wrap them with both inference paths.

    name_or_path: a fair-esm pretrained name (``esm2_t36_3B_UR50D``), a local fair-esm checkpoint
    file, or ``demo-<size>`` (8M, 35M, 150M, 650M, 3B, 15B, or tiny: see specs.TINY_DEMO) for random
    weights from ``demo_seed``.
    Returns ``(model, alphabet)``; ``model.weights`` says which kind of weights it holds.
    """
    spec = ModelSpec.parse(name_or_path)
    torch_dtype = parse_dtype(dtype)
    target = torch.device(device) if device is not None else default_device()
    if spec.kind == "demo":
        esm2 = build_demo_model(spec.architecture, demo_seed, torch_dtype, target)
    elif spec.kind == "pretrained":
        esm2 = _load_pretrained(spec.name)
    else:
        esm2 = _esm2_from_model_data(_safe_torch_load(Path(spec.name)), None, spec.name)
    model = ESM2WithFlashAttention(esm2.eval(), name=spec.name, weights=spec.kind, backend=backend)
    model = model.to(device=target, dtype=torch_dtype).eval().requires_grad_(False)
    return model, esm2.alphabet


def reference_copy(model: ESM2WithFlashAttention, dtype: torch.dtype = torch.float64) -> ESM2WithFlashAttention:
    """The same weights in a wider dtype, for a reference to measure both paths against.

    Rotary frequencies are recomputed exactly in ``dtype`` (a low-precision model keeps them
    rounded, which is part of that model's error, not of its weights).
    """
    wide = ESM2WithFlashAttention(
        copy.deepcopy(model.esm2), name=model.name, weights=model.weights, backend="reference"
    ).to(dtype)
    reset_rotary_frequencies(wide.esm2)
    return wide.eval().requires_grad_(False)


def layer_indices(model: ESM2WithFlashAttention, layers: Iterable[int] | None = None) -> list[int]:
    """Validate layer numbers (0 … num_layers; negative counts from the end). None = all layers."""
    if layers is None:
        return list(range(model.num_layers + 1))
    resolved = []
    for layer in layers:
        index = layer + model.num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= model.num_layers:
            raise ValueError(f"layer {layer} is out of range for {model.name}: choose 0 … {model.num_layers}")
        resolved.append(index)
    return sorted(set(resolved))
