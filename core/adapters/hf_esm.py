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
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"fair-esm -> EsmModel weight mapping is incomplete: missing {missing}, unexpected {unexpected}")
    # The one non-persistent buffer: positions for absolute embeddings, unused with rotary.
    hf.embeddings.position_ids = torch.arange(config.max_position_embeddings, device=model.device).expand((1, -1))
    unset = [name for name, tensor in chain(hf.named_parameters(), hf.named_buffers()) if tensor.is_meta]
    if unset:
        raise ValueError(f"EsmModel tensors left unset by the fair-esm weights: {unset}")
    return hf.eval().requires_grad_(False)


def _version() -> str:
    return importlib.import_module("transformers").__version__


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
        wanted = sorted(set(repr_layers))
        if any(not 0 <= layer <= self.num_layers for layer in wanted):
            raise ValueError(f"layers {wanted} out of range 0 … {self.num_layers}")
        tokens = tokens.to(self.device)
        with torch.inference_mode():
            out = self.hf(input_ids=tokens, attention_mask=tokens.ne(self.padding_idx).long(), output_hidden_states=True)
        # hidden_states[0] is the input to layer 1 and hidden_states[i] the output of layer i;
        # last_hidden_state (and hidden_states[-1]) is after the final layer norm.
        hidden = {layer: out.hidden_states[layer] for layer in wanted if layer < self.num_layers}
        if self.num_layers in wanted:
            hidden[self.num_layers] = out.last_hidden_state
        return {"representations": hidden}


def make_eager(model: ESM2WithFlashAttention) -> HFEsmImplementation:
    return HFEsmImplementation(model, "eager")


def make_sdpa(model: ESM2WithFlashAttention) -> HFEsmImplementation:
    return HFEsmImplementation(model, "sdpa")


def make_flash_attention_2(model: ESM2WithFlashAttention) -> HFEsmImplementation:
    return HFEsmImplementation(model, "flash_attention_2")
