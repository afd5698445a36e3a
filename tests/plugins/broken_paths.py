"""The catalogue of broken packed ESM-2 paths: each v2.0 plug-in carries one known packed-path bug.

``CATALOGUE`` maps a short name to its factory (``tests.plugins.broken_paths:<factory>`` as a
``--v2`` plug-in). Each mutant is this project's packed forward over the *same* fair-esm module with
exactly one step replaced, so any departure is that bug's alone; on a GPU it keeps the FlashAttention
backend (except the FP16 softmax and the causal mask, which run their own attention loop).

The verdict must never be ACCEPT for any of them with default settings (tests/test_broken_paths.py on
the CPU, tests/integration/test_broken_paths_gpu.py and scripts/broken_paths.py on the device).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from esm.modules import gelu

from core.numerics.esm2_packed import ESM2WithFlashAttention, apply_rotary, rotary_tables


class Mutant(ESM2WithFlashAttention):
    """The packed forward over ``model``'s fair-esm module (no copy), to have one step overridden."""

    bug = "none"

    def __init__(self, model: ESM2WithFlashAttention):
        super().__init__(model.esm2, name=model.name, weights=model.weights, backend=model.backend)


class CrossSequenceAttention(Mutant):
    """Attention over the whole packed batch: sequences attend to each other (a missing varlen mask)."""

    bug = "attention across sequence boundaries"

    @staticmethod
    def _attend(q, k, v, cu_seqlens, max_seqlen, backend):
        total = q.shape[0]
        whole = torch.tensor([0, total], dtype=cu_seqlens.dtype, device=cu_seqlens.device)
        return ESM2WithFlashAttention._attend(q, k, v, whole, total, backend)


class NoTokenDropoutScale(Mutant):
    """Embeddings not multiplied by fair-esm's inference-time token-dropout factor (1 − 0.15·0.8)."""

    bug = "token-dropout scale 0.88 missing"

    def _packed_embeddings(self, input_ids, seq_index, seq_lengths):
        return self.esm2.embed_scale * self.esm2.embed_tokens(input_ids)


class TanhGelu(Mutant):
    """GELU's tanh approximation instead of fair-esm's exact erf form."""

    bug = "tanh GELU"

    def __init__(self, model):
        super().__init__(model)
        self.activation = lambda x: torch.nn.functional.gelu(x, approximate="tanh")


class Bf16RotaryTables(Mutant):
    """Rotary cos/sin tables built in bfloat16 instead of the dtype of the model's ``inv_freq``."""

    bug = "rotary tables in bf16"

    def _rotary(self, inv_freq, positions, max_seqlen):
        cos, sin = rotary_tables(inv_freq.to(torch.bfloat16), max_seqlen)
        return cos[positions], sin[positions]


class GlobalPositions(Mutant):
    """Position ids that run on through the packed batch instead of restarting at 0 per sequence."""

    bug = "position ids not restarting per sequence"

    @staticmethod
    def _packed_positions(cu_seqlens, total_tokens):
        seq_index, seq_lengths, _ = ESM2WithFlashAttention._packed_positions(cu_seqlens, total_tokens)
        return seq_index, seq_lengths, torch.arange(total_tokens, device=cu_seqlens.device)

    def _rotary(self, inv_freq, positions, max_seqlen):
        cos, sin = rotary_tables(inv_freq, positions.numel())
        return cos[positions], sin[positions]


class ShortRotaryTables(Mutant):
    """Rotary tables built for 256 positions and indexed modulo their length (a cache sized for short inputs):
    exact on sequences of up to 254 residues, rotated wrongly from position 256 of a longer one on."""

    bug = "rotary tables for 256 positions only"
    TABLE_POSITIONS = 256

    def _rotary(self, inv_freq, positions, max_seqlen):
        cos, sin = rotary_tables(inv_freq, self.TABLE_POSITIONS)
        return cos[positions % self.TABLE_POSITIONS], sin[positions % self.TABLE_POSITIONS]


def each_sequence(attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], q: torch.Tensor,
                  k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """An attention of the mutant's own, sequence by sequence: ``attend`` takes one sequence's q (already
    scaled), k, v as (heads, L, head_dim) and returns its output the same shape; q, k, v and the result
    are packed (total_tokens, heads, head_dim)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        out[start:end] = attend(*(t[start:end].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
    return out


def fp16_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension as an FP16 kernel does it: a tree of pairwise FP16 additions, each
    partial sum rounded to FP16. (n, L) -> (n, 1)."""
    while x.shape[-1] > 1:
        if x.shape[-1] % 2:
            x = torch.nn.functional.pad(x, (0, 1))
        x = x[..., 0::2] + x[..., 1::2]
    return x


class Fp16Softmax(Mutant):
    """A softmax computed in FP16 throughout — max, subtract, exp, the normalising sum and the divide
    each rounded to FP16 — where fair-esm takes it in FP32 whatever the dtype. (``torch.softmax`` on
    FP16 input accumulates in FP32 inside, so calling it on FP16 scores would not be this bug.)"""

    bug = "softmax in FP16"

    @staticmethod
    def _attend(q, k, v, cu_seqlens, max_seqlen, backend):
        def attend(q_s, k_s, v_s):
            scores = torch.bmm(q_s, k_s.transpose(1, 2)).to(torch.float16)
            weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()
            return torch.bmm((weights / fp16_sum(weights)).to(q.dtype), v_s)

        return each_sequence(attend, q, k, v, cu_seqlens)


class EosInPool(Mutant):
    """Rows shifted one token left within each sequence: residue positions 1 … L carry residues 2 … L
    and the EOS — the off-by-one that puts EOS into the mean pool (and drops the first residue)."""

    bug = "EOS inside the mean pool"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(), backend=None):
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers, backend)
        bounds = cu_seqlens.tolist()
        shifted = {}
        for layer, rep in out["representations"].items():
            rep = rep.clone()
            for start, end in zip(bounds[:-1], bounds[1:]):
                rep[start:end] = torch.roll(rep[start:end], -1, dims=0)
            shifted[layer] = rep
        return {**out, "representations": shifted}


class MeanOverAllTokens(Mutant):
    """Each sequence's rows scaled by L / (L + 2): what the tool's mean over the L residues then gives is
    the residues' sum divided by L + 2, BOS and EOS counted in the mean's denominator though not in its
    sum. A per-sequence scale: every cosine stays exactly 1."""

    bug = "BOS and EOS counted in the mean's denominator"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(), backend=None):
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers, backend)
        seq_index, seq_lengths, _ = self._packed_positions(cu_seqlens, input_ids.numel())
        tokens = seq_lengths[seq_index].to(torch.float32)
        scale = ((tokens - 2) / tokens).unsqueeze(-1)
        return {**out, "representations": {layer: (rep.float() * scale).to(rep.dtype)
                                           for layer, rep in out["representations"].items()}}


class BosDropped(Mutant):
    """The BOS token never reaches the model: each sequence runs as residues + EOS (its rows are put back
    in place, with the BOS row a copy of the first residue's, so the tool pools the residues as usual)."""

    bug = "BOS dropped"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(), backend=None):
        input_ids = input_ids.reshape(-1)
        starts = cu_seqlens[:-1].long()
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        keep[starts] = False
        counts = cu_seqlens[1:].long() - starts - 1
        shorter = torch.zeros_like(cu_seqlens)
        shorter[1:] = torch.cumsum(counts, 0).to(cu_seqlens.dtype)
        out = super().forward_packed(input_ids[keep], shorter, max_seqlen - 1, repr_layers, backend)
        restored = {}
        for layer, rep in out["representations"].items():
            full = rep.new_empty((input_ids.numel(), rep.shape[1]))
            full[keep] = rep
            full[starts] = rep[shorter[:-1].long()]
            restored[layer] = full
        return {**out, "representations": restored}


class NoAttentionScale(Mutant):
    """Attention logits not divided by √head_dim (fair-esm scales q by head_dim ** -0.5 before the rotary)."""

    bug = "attention scale 1/√head_dim missing"

    @staticmethod
    def _attend(q, k, v, cu_seqlens, max_seqlen, backend):
        return ESM2WithFlashAttention._attend(q * q.shape[-1] ** 0.5, k, v, cu_seqlens, max_seqlen, backend)


class NoFinalLayerNorm(Mutant):
    """The last layer returned without fair-esm's final layer norm (``emb_layer_norm_after``), as reading a
    Hugging Face ``hidden_states[-1]`` instead of ``last_hidden_state`` gives."""

    bug = "final layer norm missing"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(), backend=None):
        last = self.esm2.num_layers
        if last not in repr_layers:
            return super().forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers, backend)
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, sorted({*repr_layers, last - 1} - {last}), backend)
        _, _, positions = self._packed_positions(cu_seqlens, input_ids.numel())
        before = out["representations"][last - 1]
        x = self._packed_layer(self.esm2.layers[-1], before, positions, cu_seqlens, max_seqlen, out["backend"])
        kept = {layer: rep for layer, rep in out["representations"].items() if layer in repr_layers}
        return {**out, "representations": {**kept, last: x}}


class LayersOffByOne(Mutant):
    """Layer l returned as layer l + 1 (an index shift between fair-esm's 0 = embeddings and a 0-based
    list of block outputs): every layer from the first block on is the one before it."""

    bug = "layers returned off by one"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(), backend=None):
        below = {layer: max(layer - 1, 0) for layer in repr_layers}
        out = super().forward_packed(input_ids, cu_seqlens, max_seqlen, sorted(set(below.values())), backend)
        return {**out, "representations": {layer: out["representations"][source] for layer, source in below.items()}}


class CausalAttention(Mutant):
    """A causal mask inside each sequence (``causal=True`` in a varlen kernel call, as a decoder's code
    has it): each token attends only to itself and the tokens before it."""

    bug = "causal attention mask"

    @staticmethod
    def _attend(q, k, v, cu_seqlens, max_seqlen, backend):
        return each_sequence(lambda q_s, k_s, v_s: torch.nn.functional.scaled_dot_product_attention(
            q_s, k_s, v_s, is_causal=True, scale=1.0), q, k, v, cu_seqlens)


class InterleavedRotaryTables(Mutant):
    """cos/sin tables laid out pairwise (c0, c0, c1, c1, …: the interleaved, GPT-J layout) while the rotation
    pairs the two halves of each head (the GPT-NeoX layout fair-esm uses): a rotary convention mix-up."""

    bug = "rotary tables in the interleaved layout"

    def _rotary(self, inv_freq, positions, max_seqlen):
        cos, sin = super()._rotary(inv_freq, positions, max_seqlen)
        half = cos.shape[-1] // 2
        return cos[:, :half].repeat_interleave(2, dim=-1), sin[:, :half].repeat_interleave(2, dim=-1)


class KeysNotRotated(Mutant):
    """The rotary embedding applied to the queries only: keys enter the attention unrotated."""

    bug = "rotary embedding missing on the keys"

    def _packed_self_attention(self, attn, x, positions, cu_seqlens, max_seqlen, backend):
        total_tokens = x.shape[0]
        shape = (total_tokens, attn.num_heads, attn.head_dim)
        cos, sin = self._rotary(attn.rot_emb.inv_freq, positions, max_seqlen)
        q = apply_rotary((attn.q_proj(x) * attn.scaling).view(shape), cos, sin)
        k, v = attn.k_proj(x).view(shape), attn.v_proj(x).view(shape)
        out = self._attend(q, k, v, cu_seqlens, max_seqlen, backend)
        return attn.out_proj(out.reshape(total_tokens, attn.embed_dim))


class EosDropped(Mutant):
    """The EOS token never reaches the model: each sequence runs as BOS + residues (its EOS row is put
    back as zeros, which the tool does not pool)."""

    bug = "EOS dropped"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(), backend=None):
        input_ids = input_ids.reshape(-1)
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        keep[cu_seqlens[1:].long() - 1] = False
        shorter = cu_seqlens - torch.arange(cu_seqlens.numel(), dtype=cu_seqlens.dtype, device=cu_seqlens.device)
        out = super().forward_packed(input_ids[keep], shorter, max_seqlen - 1, repr_layers, backend)
        restored = {}
        for layer, rep in out["representations"].items():
            full = rep.new_zeros((input_ids.numel(), rep.shape[1]))
            full[keep] = rep
            restored[layer] = full
        return {**out, "representations": restored}


class Bf16Gelu(Mutant):
    """fair-esm's exact GELU taken in bfloat16 (its input rounded to 8 significant bits, its output back in
    the model's dtype): a GELU precision slip, as a mixed-precision kernel may make."""

    bug = "GELU in bf16"

    def __init__(self, model):
        super().__init__(model)
        self.activation = lambda x: gelu(x.to(torch.bfloat16)).to(x.dtype)


class SortedNotPutBack(Mutant):
    """The batch re-packed longest-first (as packers do to balance work) and its rows returned in that
    sorted order: each sequence receives another's rows wherever the batch did not arrive sorted."""

    bug = "batch sorted by length, rows not put back"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(), backend=None):
        input_ids = input_ids.reshape(-1)
        bounds = cu_seqlens.long()
        lengths = bounds[1:] - bounds[:-1]
        order = torch.argsort(-lengths, stable=True)
        sorted_ids = torch.cat([input_ids[bounds[i]:bounds[i + 1]] for i in order.tolist()])
        sorted_cu_seqlens = torch.zeros_like(cu_seqlens)
        sorted_cu_seqlens[1:] = torch.cumsum(lengths[order], 0)
        return super().forward_packed(sorted_ids, sorted_cu_seqlens, max_seqlen, repr_layers, backend)


class RareResiduesAsUnknown(Mutant):
    """X, B, U, Z and O embedded as <unk>: a vocabulary that lost fair-esm's rare residues. Exact on sequences
    of the 20 standard ones (so not in CATALOGUE, whose sets hold none); tests/test_broken_paths.py."""

    bug = "rare residues embedded as <unk>"

    def _packed_embeddings(self, input_ids, seq_index, seq_lengths):
        rare = torch.isin(input_ids, torch.tensor(self.rare_ids, device=input_ids.device))
        return super()._packed_embeddings(input_ids.masked_fill(rare, self.unknown_id), seq_index, seq_lengths)

    def __init__(self, model):
        super().__init__(model)
        alphabet = model.esm2.alphabet
        self.rare_ids, self.unknown_id = [alphabet.get_idx(residue) for residue in "XBUZO"], alphabet.unk_idx


class Plugin:
    """A mutant as a v2.0 plug-in (``name``, ``version``, ``forward_packed``)."""

    version = "catalogue"

    def __init__(self, mutant: Mutant):
        self.mutant = mutant
        self.name = f"broken: {mutant.bug}"

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen: int, repr_layers: Sequence[int]) -> dict:
        return self.mutant.forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)


def _factory(mutant: type[Mutant]) -> Callable[[ESM2WithFlashAttention], Plugin]:
    return lambda model: Plugin(mutant(model))


make_cross_sequence_attention = _factory(CrossSequenceAttention)
make_no_token_dropout_scale = _factory(NoTokenDropoutScale)
make_eos_in_pool = _factory(EosInPool)
make_bos_dropped = _factory(BosDropped)
make_mean_over_all_tokens = _factory(MeanOverAllTokens)
make_tanh_gelu = _factory(TanhGelu)
make_bf16_rotary_tables = _factory(Bf16RotaryTables)
make_fp16_softmax = _factory(Fp16Softmax)
make_global_positions = _factory(GlobalPositions)
make_no_attention_scale = _factory(NoAttentionScale)
make_no_final_layer_norm = _factory(NoFinalLayerNorm)
make_layers_off_by_one = _factory(LayersOffByOne)
make_causal_attention = _factory(CausalAttention)
make_interleaved_rotary_tables = _factory(InterleavedRotaryTables)
make_keys_not_rotated = _factory(KeysNotRotated)
make_eos_dropped = _factory(EosDropped)
make_bf16_gelu = _factory(Bf16Gelu)
make_sorted_not_put_back = _factory(SortedNotPutBack)
make_short_rotary_tables = _factory(ShortRotaryTables)
make_rare_residues_as_unknown = _factory(RareResiduesAsUnknown)

CATALOGUE: dict[str, str] = {
    "attention across sequences": "tests.plugins.broken_paths:make_cross_sequence_attention",
    "token-dropout scale missing": "tests.plugins.broken_paths:make_no_token_dropout_scale",
    "EOS in the pool": "tests.plugins.broken_paths:make_eos_in_pool",
    "BOS dropped": "tests.plugins.broken_paths:make_bos_dropped",
    "tanh GELU": "tests.plugins.broken_paths:make_tanh_gelu",
    "rotary tables in bf16": "tests.plugins.broken_paths:make_bf16_rotary_tables",
    "softmax in FP16": "tests.plugins.broken_paths:make_fp16_softmax",
    "position ids not restarting": "tests.plugins.broken_paths:make_global_positions",
    "attention scale missing": "tests.plugins.broken_paths:make_no_attention_scale",
    "final layer norm missing": "tests.plugins.broken_paths:make_no_final_layer_norm",
    "layers off by one": "tests.plugins.broken_paths:make_layers_off_by_one",
    "BOS and EOS in the mean's count": "tests.plugins.broken_paths:make_mean_over_all_tokens",
    "causal attention mask": "tests.plugins.broken_paths:make_causal_attention",
    "rotary tables interleaved": "tests.plugins.broken_paths:make_interleaved_rotary_tables",
    "keys not rotated": "tests.plugins.broken_paths:make_keys_not_rotated",
    "EOS dropped": "tests.plugins.broken_paths:make_eos_dropped",
    "GELU in bf16": "tests.plugins.broken_paths:make_bf16_gelu",
    "batch sorted, rows not put back": "tests.plugins.broken_paths:make_sorted_not_put_back",
    "rotary tables for 256 positions": "tests.plugins.broken_paths:make_short_rotary_tables",
}
