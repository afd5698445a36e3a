"""v2.0 plug-in: Hugging Face ``transformers``' ``EsmModel`` over the same fair-esm weights.

Answers "does HF's ESM give the same predictions as fair-esm's?". The HF model is built in
memory from the loaded fair-esm model (nothing is downloaded; the hub is never asked) and
shares its tensors: no copy, same dtype and device. Use it as
``--v2 core.adapters.hf_esm:make_sdpa`` (or ``make_eager``, ``make_flash_attention_2``).

Known differences from fair-esm, kept because they are HF's behaviour, which is what is measured:
HF builds the rotary tables and rotates q and k in float32 whatever the model dtype, and
computes the token-dropout mask ratio in float32.
"""

from __future__ import annotations

import importlib
from itertools import chain
from typing import TYPE_CHECKING, Sequence

import torch

from core.numerics.esm2_packed import ESM2WithFlashAttention

if TYPE_CHECKING:
    import transformers

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")

# fair-esm module names inside layers.<i> -> HF names inside encoder.layer.<i>, as in transformers'
# convert_esm.py. The rotary buffer goes to its per-layer name from HF 4.x; newer releases' load
# hook moves it to the model-level rotary_embeddings.inv_freq.
_LAYER_MODULES = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn.rot_emb": "attention.self.rotary_embeddings",
    "self_attn_layer_norm": "attention.LayerNorm",
    "final_layer_norm": "LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
}
_TOP_MODULES = {
    "embed_tokens": "embeddings.word_embeddings",
    "emb_layer_norm_after": "encoder.emb_layer_norm_after",
    "contact_head.regression": "contact_head.regression",
}
_NOT_IN_ESM_MODEL = ("lm_head.",)  # EsmModel has no LM head (EsmForMaskedLM has)
_UNUSED_WITH_ROTARY = ("embeddings.position_embeddings.",)


def hf_available() -> bool:
    """Whether ``transformers`` is importable and offers ``EsmModel``."""
    try:
        return hasattr(importlib.import_module("transformers"), "EsmModel")
    except Exception:  # ImportError, or transformers failing against this torch
        return False


def hf_key(fair_esm_key: str) -> str | None:
    """The HF ``EsmModel`` state-dict name of a fair-esm ESM2 key; None for keys EsmModel lacks."""
    if fair_esm_key.startswith(_NOT_IN_ESM_MODEL):
        return None
    if fair_esm_key.startswith("layers."):
        _, index, rest = fair_esm_key.split(".", 2)
        module, _, leaf = rest.rpartition(".")
        table, prefix = _LAYER_MODULES, f"encoder.layer.{index}."
    else:
        module, _, leaf = fair_esm_key.rpartition(".")
        table, prefix = _TOP_MODULES, ""
    if module not in table:
        raise ValueError(f"fair-esm weight {fair_esm_key!r} has no counterpart in transformers' EsmModel")
    return f"{prefix}{table[module]}.{leaf}"


def hf_state_dict(model: ESM2WithFlashAttention) -> dict[str, torch.Tensor]:
    """fair-esm's tensors (not copies) under HF ``EsmModel`` names."""
    mapped = {}
    for key, tensor in model.esm2.state_dict().items():
        name = hf_key(key)
        if name is not None:
            mapped[name] = tensor
    return mapped


def _check_attn_implementation(model: ESM2WithFlashAttention, attn_implementation: str) -> None:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attn_implementation {attn_implementation!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if attn_implementation != "flash_attention_2":
        return
    from transformers.utils import is_flash_attn_2_available

    problems = []
    if model.device.type != "cuda":
        problems.append(f"it needs a CUDA device, the model is on {model.device.type}")
    if model.dtype not in (torch.float16, torch.bfloat16):
        problems.append(f"it needs fp16 or bf16, the model is {model.dtype}")
    if not is_flash_attn_2_available():
        problems.append("the flash-attn package is not installed")
    if problems:
        raise ValueError("attn_implementation='flash_attention_2' is not available here: " + "; ".join(problems))


def esm_config(model: ESM2WithFlashAttention, attn_implementation: str = "eager") -> "transformers.EsmConfig":
    """The ``EsmConfig`` of the fair-esm ESM-2 architecture (as transformers' convert_esm.py writes it)."""
    from transformers import EsmConfig

    esm2 = model.esm2
    alphabet = esm2.alphabet
    return EsmConfig(
        vocab_size=len(alphabet),
        mask_token_id=alphabet.mask_idx,
        pad_token_id=alphabet.padding_idx,
        bos_token_id=alphabet.cls_idx,
        eos_token_id=alphabet.eos_idx,
        hidden_size=esm2.embed_dim,
        num_hidden_layers=esm2.num_layers,
        num_attention_heads=esm2.attention_heads,
        intermediate_size=4 * esm2.embed_dim,  # hard-coded in ESM-2
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
        layer_norm_eps=esm2.emb_layer_norm_after.eps,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=esm2.token_dropout,
        is_folding_model=False,
        vocab_list=tuple(alphabet.all_toks),
        attn_implementation=attn_implementation,
    )


def build_hf_esm(model: ESM2WithFlashAttention, attn_implementation: str = "eager") -> "transformers.EsmModel":
    """HF ``EsmModel`` (no pooler) sharing ``model``'s weights: same dtype and device, eval mode.

    Every HF parameter and buffer is filled from fair-esm (ValueError naming any that is not);
    ``attn_implementation`` is ``'eager'``, ``'sdpa'`` or ``'flash_attention_2'`` (CUDA, fp16/bf16,
    flash-attn installed), else ValueError.
    """
    from transformers import EsmModel

    if model.esm2.embed_scale != 1:
        raise ValueError("transformers' EsmModel has no embedding scale; this model's is not 1")
    inv_freqs = [layer.self_attn.rot_emb.inv_freq for layer in model.esm2.layers]
    if any(not torch.equal(inv_freq, inv_freqs[0]) for inv_freq in inv_freqs):
        raise ValueError("layers have different rotary frequencies; transformers' EsmModel shares one table")
    _check_attn_implementation(model, attn_implementation)
    config = esm_config(model, attn_implementation)
    try:
        with torch.device("meta"):  # no random init and no second copy: the weights come from fair-esm
            hf = EsmModel(config, add_pooling_layer=False)
    except (ImportError, ValueError) as error:  # transformers refusing the attention implementation
        raise ValueError(f"transformers {_version()} cannot build EsmModel with {attn_implementation!r}: {error}") from error
    assign_fair_esm_weights(hf, model, "EsmModel")
    return hf.eval().requires_grad_(False)


def assign_fair_esm_weights(hf: torch.nn.Module, model: ESM2WithFlashAttention, label: str) -> None:
    """Give a meta-device transformers-style ESM model fair-esm's tensors (shared, not copied).

    Absolute position embeddings, which transformers 4.x builds even for rotary models and never
    reads, are the one thing fair-esm lacks: they are zero-filled. Any other tensor left without a
    fair-esm counterpart, or a fair-esm tensor without a place, is a ValueError naming it.
    """
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    unused = [name for name in missing if name.startswith(_UNUSED_WITH_ROTARY)]
    missing = [name for name in missing if name not in unused]
    if missing or unexpected:
        raise ValueError(f"fair-esm -> {label} weight mapping is incomplete: missing {missing}, unexpected {unexpected}")
    if unused:
        hf.embeddings.position_embeddings.to_empty(device=model.device).weight.data.zero_()
    # The one non-persistent buffer: positions for absolute embeddings, unused with rotary.
    hf.embeddings.position_ids = torch.arange(hf.config.max_position_embeddings, device=model.device).expand((1, -1))
    unset = [name for name, tensor in chain(hf.named_parameters(), hf.named_buffers()) if tensor.is_meta]
    if unset:
        raise ValueError(f"{label} tensors left unset by the fair-esm weights: {unset}")


def _version() -> str:
    return importlib.import_module("transformers").__version__


def fair_esm_layers(hidden_states: Sequence[torch.Tensor], last_hidden_state: torch.Tensor,
                    repr_layers: Sequence[int], num_layers: int) -> dict[int, torch.Tensor]:
    """transformers-style outputs -> fair-esm's ``repr_layers`` numbering, each (batch, T, E).

    ``hidden_states[0]`` is the input to layer 1 (fair-esm's layer 0, after token-dropout scaling)
    and ``hidden_states[i]`` the output of layer i; fair-esm's last layer is after the final layer
    norm, which is ``last_hidden_state``.
    """
    wanted = sorted(set(repr_layers))
    if any(not 0 <= layer <= num_layers for layer in wanted):
        raise ValueError(f"layers {wanted} out of range 0 … {num_layers}")
    hidden = {layer: hidden_states[layer] for layer in wanted if layer < num_layers}
    if num_layers in wanted:
        hidden[num_layers] = last_hidden_state
    return hidden


class HFEsmImplementation:
    """v2.0 plug-in: HF EsmModel over the same weights, padded forward."""

    def __init__(self, model: ESM2WithFlashAttention, attn_implementation: str = "sdpa"):
        if not hf_available():
            raise ValueError("transformers is not installed (pip install 'transformers>=4.40')")
        self.hf = build_hf_esm(model, attn_implementation)
        self.name = f"transformers EsmModel ({attn_implementation})"
        self.version = _version()
        self.padding_idx = model.esm2.padding_idx
        self.num_layers = model.num_layers
        self.device = model.device

    def forward(self, tokens: torch.Tensor, repr_layers: Sequence[int]) -> dict:
        """tokens: fair-esm padded tokens (batch, T) int64.

        Returns ``{"representations": {layer: (batch, T, embed_dim)}}`` with fair-esm's layer
        semantics: 0 = embeddings after token-dropout scaling, i = after layer i, last = after
        the final layer norm.
        """
        tokens = tokens.to(self.device)
        with torch.inference_mode():
            out = self.hf(input_ids=tokens, attention_mask=tokens.ne(self.padding_idx).long(), output_hidden_states=True)
        return {"representations": fair_esm_layers(out.hidden_states, out.last_hidden_state, repr_layers, self.num_layers)}


def make_eager(model: ESM2WithFlashAttention) -> HFEsmImplementation:
    return HFEsmImplementation(model, "eager")


def make_sdpa(model: ESM2WithFlashAttention) -> HFEsmImplementation:
    return HFEsmImplementation(model, "sdpa")


def make_flash_attention_2(model: ESM2WithFlashAttention) -> HFEsmImplementation:
    return HFEsmImplementation(model, "flash_attention_2")
