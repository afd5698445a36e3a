"""v2.0 plug-in: FAESM (PyPI ``faesm``), the FlashAttention ESM-2 many users adopt, over fair-esm's weights.

Answers the question FAESM's users ask, "does it match fair-esm?". ``FAEsmModel`` is built in memory
from the loaded fair-esm model (nothing downloaded; FAESM's module names are transformers'
``EsmModel`` ones, so the same weight mapping serves) and shares its tensors. Two of FAESM's paths:

- ``make_flash``: ``use_fa=True`` — FAESM unpads, applies flash-attn's Triton rotary in the model
  dtype and calls ``flash_attn_varlen_qkvpacked_func``. Refused unless flash-attn imports, because
  FAESM itself would silently fall back to SDPA.
- ``make_sdpa``: ``use_fa=False`` — padded ``F.scaled_dot_product_attention`` with transformers' rotary.

FAESM 0.1.1 subclasses transformers 4.x internals (it imports names transformers 5 removed), so it
needs ``transformers<5``; with another release the factory says so instead of failing deep inside.
Use it as ``--v2 core.adapters.faesm:make_flash`` (or ``make_sdpa``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
from typing import Any, Sequence

import torch

from core.adapters.hf_esm import assign_fair_esm_weights, esm_config, fair_esm_layers
from core.numerics.esm2_packed import ESM2WithFlashAttention

PATHS = {"flash": True, "sdpa": False}  # FAESM's attention path -> its config.use_fa


def faesm_module() -> Any:
    """``faesm.esm``, imported with its start-up notice sent to stderr (it prints to stdout).

    Raises ValueError naming what is missing or incompatible.
    """
    try:
        importlib.metadata.version("faesm")
    except importlib.metadata.PackageNotFoundError as error:
        raise ValueError("FAESM is not installed (pip install faesm)") from error
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return importlib.import_module("faesm.esm")
    except ImportError as error:
        transformers = _version("transformers")
        raise ValueError(f"FAESM {_version('faesm')} does not import with transformers {transformers} "
                         f"(it needs transformers<5): {error}") from error


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def faesm_available() -> bool:
    """Whether FAESM imports here (whatever its flash-attn path can do)."""
    try:
        faesm_module()
    except ValueError:
        return False
    return True


def build_faesm(model: ESM2WithFlashAttention, path: str = "flash") -> Any:
    """FAESM's ``FAEsmModel`` (no pooler) sharing ``model``'s weights, eval mode.

    ``path`` is ``'flash'`` (needs CUDA, fp16/bf16 and flash-attn) or ``'sdpa'``; ValueError otherwise
    or when a FAESM tensor is left without a fair-esm counterpart.
    """
    if path not in PATHS:
        raise ValueError(f"unknown FAESM path {path!r}; choose one of {', '.join(PATHS)}")
    module = faesm_module()
    if PATHS[path]:
        _check_flash(model, module)
    config = esm_config(model, "eager")
    config.use_fa = PATHS[path]
    with torch.device("meta"):  # no random init and no second copy: the weights come from fair-esm
        faesm = module.FAEsmModel(config, add_pooling_layer=False)
    assign_fair_esm_weights(faesm, model, "FAEsmModel")
    return faesm.eval().requires_grad_(False)


def _check_flash(model: ESM2WithFlashAttention, module: Any) -> None:
    problems = []
    if not getattr(module, "flash_attn_installed", False):
        problems.append("flash-attn does not import here (FAESM would silently use SDPA)")
    if model.device.type != "cuda":
        problems.append(f"it needs a CUDA device, the model is on {model.device.type}")
    if model.dtype not in (torch.float16, torch.bfloat16):
        problems.append(f"it needs fp16 or bf16, the model is {model.dtype}")
    if problems:
        raise ValueError("FAESM's flash-attn path is not available here: " + "; ".join(problems))


class FAESMImplementation:
    """v2.0 plug-in: FAESM over the same weights, through its public padded-input forward."""

    def __init__(self, model: ESM2WithFlashAttention, path: str = "flash"):
        self.faesm = build_faesm(model, path)
        self.path = path
        self.name = f"FAESM FAEsmModel ({'flash-attn' if PATHS[path] else 'sdpa'})"
        self.version = f"{_version('faesm')} (transformers {_version('transformers')})"
        self.padding_idx = model.esm2.padding_idx
        self.num_layers = model.num_layers
        self.device = model.device

    def forward(self, tokens: torch.Tensor, repr_layers: Sequence[int]) -> dict:
        """tokens: fair-esm padded tokens (batch, T) int64 -> ``{"representations": {layer: (batch, T, E)}}``.

        FAESM's flash path returns hidden states unpadded, (real tokens, E) in row-major order of
        the mask; they are scattered back into the padded shape (zeros at padding).
        """
        tokens = tokens.to(self.device)
        mask = tokens.ne(self.padding_idx)  # bool: FAESM's unpad asserts it
        with torch.inference_mode():
            out = self.faesm(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
        hidden = [self._padded(state, mask) for state in out.hidden_states]
        return {"representations": fair_esm_layers(hidden, out.last_hidden_state, repr_layers, self.num_layers)}

    @staticmethod
    def _padded(state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(real tokens, E) -> (batch, T, E); already padded states pass through."""
        if state.dim() == 3:
            return state
        padded = state.new_zeros(*mask.shape, state.shape[-1])
        padded[mask] = state
        return padded


def make_flash(model: ESM2WithFlashAttention) -> FAESMImplementation:
    return FAESMImplementation(model, "flash")


def make_sdpa(model: ESM2WithFlashAttention) -> FAESMImplementation:
    return FAESMImplementation(model, "sdpa")
