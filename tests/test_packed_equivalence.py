"""v2.0 (packed, reference attention) equals v1.0 (fair-esm's forward) to rounding.

Also checks each way a packed ESM-2 is known to go wrong (../shared/gpu/README.md):
EOS/padding in the pool, missing token-dropout scaling, a different GELU, and rotary
tables at a different precision — and that these tests would notice each one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.embed.batching import pack_sequences, pack_tokens, padded_tokens, plan_batches
from core.embed.passes import embed_v1, embed_v2, pool_packed, pool_padded
from core.numerics.esm2_packed import rotary_inv_freq, rotary_tables

RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBUZO"
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def batch_tokens(alphabet, lengths: list[int], mask_positions: list[list[int]]) -> torch.Tensor:
    """Padded fair-esm tokens for random residues, with <mask> at the given residue positions."""
    rng = np.random.default_rng(sum(lengths))
    sequences = ["".join(rng.choice(list(RESIDUES), size=n)) for n in lengths]
    tokens = padded_tokens(alphabet, sequences)
    for row, positions in enumerate(mask_positions):
        for position in positions:
            tokens[row, 1 + position % lengths[row]] = alphabet.mask_idx
    return tokens


def unpad(representation: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(batch, T, E) padded -> (total_tokens, E) packed, keeping BOS and EOS."""
    return torch.cat([representation[row, : n + 2] for row, n in enumerate(lengths)])


def both_paths(model, tokens: torch.Tensor, lengths: list[int], layers: list[int]):
    with torch.inference_mode():
        standard = model(tokens, repr_layers=layers)["representations"]
        pack = pack_tokens(tokens, lengths)
        packed = model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, layers, backend="reference")
    return standard, packed


batches = st.lists(st.integers(1, 80), min_size=1, max_size=6).flatmap(
    lambda lengths: st.tuples(
        st.just(lengths),
        st.lists(st.lists(st.integers(0, 200), max_size=3), min_size=len(lengths), max_size=len(lengths)),
    )
)


@pytest.mark.parametrize("fixture", ["demo_fp64", "demo_fp32"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches)
def test_packed_reference_equals_standard_forward(request, fixture, batch):
    model, alphabet = request.getfixturevalue(fixture)
    lengths, masks = batch
    layers = [0, model.num_layers // 2, model.num_layers]
    tokens = batch_tokens(alphabet, lengths, masks)
    standard, packed = both_paths(model, tokens, lengths, layers)
    assert packed["backend"] == "reference"
    for layer in layers:
        assert packed["representations"][layer].shape == (sum(lengths) + 2 * len(lengths), model.embed_dim)
        error = relative_error(packed["representations"][layer], unpad(standard[layer], lengths))
        assert error < TOLERANCE[model.dtype], f"layer {layer}: relative error {error:.3e}"


def test_every_layer_matches_and_only_requested_layers_returned(demo_fp64):
    model, alphabet = demo_fp64
    lengths = [5, 31, 17]
    tokens = batch_tokens(alphabet, lengths, [[], [3], []])
    layers = list(range(model.num_layers + 1))
    standard, packed = both_paths(model, tokens, lengths, layers)
    for layer in layers:
        assert relative_error(packed["representations"][layer], unpad(standard[layer], lengths)) < 1e-10
    _, only_two = both_paths(model, tokens, lengths, [1, 3])
    assert sorted(only_two["representations"]) == [1, 3]


def test_sequence_packed_alone_equals_packed_among_others(demo_fp64):
    model, alphabet = demo_fp64
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "GSGSGSGS", "LLKKLLEELLKKLLEEWYFHC" * 4, "PEVKVNGQ"]
    target = 2
    alone = embed_v2(model, alphabet, [sequences[target]], [model.num_layers]).layers[model.num_layers][0]
    among = embed_v2(model, alphabet, sequences, [model.num_layers]).layers[model.num_layers][target]
    np.testing.assert_allclose(among, alone, rtol=1e-12, atol=1e-12)


def test_pooled_embeddings_of_both_paths_agree(demo_fp32):
    model, alphabet = demo_fp32
    sequences = ["MKTAYIAKQR" * k for k in (1, 3, 7, 12)] + ["WYFHC" * 9]
    layers = [0, model.num_layers]
    v1 = embed_v1(model, alphabet, sequences, layers, max_tokens=256)
    v2 = embed_v2(model, alphabet, sequences, layers, max_tokens=256)
    for layer in layers:
        np.testing.assert_allclose(v2.layers[layer], v1.layers[layer], rtol=1e-4, atol=1e-5)
        assert v1.layers[layer].dtype == np.float32


# ---------------------------------------------------------------- known bugs, one by one


def test_pooling_excludes_bos_eos_and_padding():
    lengths = torch.tensor([2, 4])
    # rows: BOS, residues..., EOS, padding; BOS/EOS/padding hold values that would move the mean.
    padded = torch.full((2, 6, 3), 1000.0)
    padded[0, 1:3] = torch.tensor([[1.0, 2, 3], [3, 4, 5]])
    padded[1, 1:5] = torch.tensor([[1.0, 1, 1], [2, 2, 2], [3, 3, 3], [6, 6, 6]])
    expected = torch.tensor([[2.0, 3, 4], [3, 3, 3]])
    torch.testing.assert_close(pool_padded(padded, lengths), expected)

    packed = torch.cat([padded[0, :4], padded[1, :6]])
    cu_seqlens = torch.tensor([0, 4, 10], dtype=torch.int32)
    torch.testing.assert_close(pool_packed(packed, cu_seqlens), expected)
    # Including EOS, the bug this guards against, would give a different answer.
    assert not torch.allclose(packed[0:3].mean(0), expected[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations_are_pooled_without_rounding(dtype):
    """The mean of FP16/BF16 activations, summed in float64 (where any sum of at most 2^29 of them is exact)
    and rounded once to float32: a pool accumulated in the model's dtype — a bug the GPU limits once
    missed (issue 15) — or in float32 differs."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([700, 1000, 3])
    padded = (torch.randn(3, 1002, 64, generator=generator) * 3 + 5).to(dtype)
    expected = torch.stack([padded[i, 1:n + 1].double().sum(0) / n for i, n in enumerate(lengths.tolist())]).float()
    torch.testing.assert_close(pool_padded(padded, lengths), expected, rtol=0, atol=0)
    packed = torch.cat([padded[i, : n + 2] for i, n in enumerate(lengths.tolist())])
    cu_seqlens = torch.tensor([0, *torch.cumsum(lengths + 2, 0).tolist()], dtype=torch.int32)
    torch.testing.assert_close(pool_packed(packed, cu_seqlens), expected, rtol=0, atol=0)
    in_float32 = torch.stack([padded[i, 1:n + 1].float().cumsum(0)[-1] / n for i, n in enumerate(lengths.tolist())])
    assert not torch.equal(in_float32, expected)  # the check can tell a float32 accumulation apart


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_value_stays_in_its_own_sequence(bad):
    """A 0/1 matrix product multiplies every row: one NaN makes every sequence of the batch NaN (0 × NaN),
    and one in BOS, EOS or padding reaches a mean that excludes them — unless isolated (embed_path pools
    a batch again that way when its fast pooling came out non-finite: tests/test_v2_plugins.py)."""
    lengths = torch.tensor([2, 4, 3])
    padded = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    packed = torch.cat([padded[i, : int(n) + 2] for i, n in enumerate(lengths)])
    cu_seqlens = torch.tensor([0, 4, 10, 15], dtype=torch.int32)
    clean_padded, clean_packed = pool_padded(padded, lengths), pool_packed(packed, cu_seqlens)
    torch.testing.assert_close(clean_padded, clean_packed)

    assert torch.isnan(pool_packed(packed.index_fill(0, torch.tensor([0]), bad), cu_seqlens)).all()  # the fast one
    outside = padded.clone()
    outside[0, 0, 1] = outside[1, 5, 2] = outside[0, 4, 0] = bad  # a BOS, an EOS, a padding row
    assert torch.equal(pool_padded(outside, lengths, isolate_non_finite=True), clean_padded)
    outside_packed = packed.clone()
    outside_packed[0, 1] = outside_packed[9, 2] = outside_packed[14, 0] = bad  # BOS, EOS, EOS
    assert torch.equal(pool_packed(outside_packed, cu_seqlens, isolate_non_finite=True), clean_packed)

    inside = padded.clone()
    inside[1, 2, 3] = bad  # a residue of the second sequence
    inside_packed = packed.clone()
    inside_packed[6, 3] = bad
    for pooled, clean in ((pool_padded(inside, lengths, isolate_non_finite=True), clean_padded),
                          (pool_packed(inside_packed, cu_seqlens, isolate_non_finite=True), clean_packed)):
        assert torch.isnan(pooled[1]).all()
        assert torch.equal(pooled[[0, 2]], clean[[0, 2]])


def test_token_dropout_scaling_is_applied(demo_fp64):
    model, alphabet = demo_fp64
    pack = pack_sequences(alphabet, ["MKTAYIAKQR", "GSW"])
    layer0 = model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [0])["representations"][0]
    raw = model.esm2.embed_tokens(pack.input_ids)
    torch.testing.assert_close(layer0, raw * (1 - 0.15 * 0.8), rtol=0, atol=1e-15)


def test_swapping_gelu_for_tanh_approximation_is_detected(demo_fp64):
    model, alphabet = demo_fp64
    lengths = [12, 40]
    tokens = batch_tokens(alphabet, lengths, [[], []])
    exact_gelu = model.activation
    try:
        model.activation = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
        standard, packed = both_paths(model, tokens, lengths, [model.num_layers])
    finally:
        model.activation = exact_gelu
    error = relative_error(packed["representations"][model.num_layers], unpad(standard[model.num_layers], lengths))
    assert error > 1e3 * TOLERANCE[torch.float64]


def test_rotary_tables_match_fair_esm_in_fp16_and_fp32_tables_do_not(demo_fp64):
    model, _ = demo_fp64
    rot_emb = model.esm2.layers[0].self_attn.rot_emb
    half_inv_freq = rot_emb.inv_freq.half()
    fair_esm = type(rot_emb)(dim=2 * half_inv_freq.numel())
    fair_esm.inv_freq = half_inv_freq
    probe = torch.zeros(1, 700, 2 * half_inv_freq.numel(), dtype=torch.float16)
    fair_cos, fair_sin = fair_esm._update_cos_sin_tables(probe, seq_dimension=-2)

    cos, sin = rotary_tables(half_inv_freq, 700)
    assert cos.dtype == torch.float16
    assert torch.equal(cos, fair_cos[0]) and torch.equal(sin, fair_sin[0])
    cos32, _ = rotary_tables(rotary_inv_freq(2 * half_inv_freq.numel(), torch.float32), 700)  # what an fp32 path builds
    assert not torch.equal(cos32.half(), fair_cos[0])


def test_dtype_change_resets_fair_esm_rotary_cache():
    from core.numerics.loading import load_esm2_model

    model, alphabet = load_esm2_model("demo-8M", dtype="fp32", device="cpu")
    tokens = padded_tokens(alphabet, ["MKTAYIAKQR", "GSW"])
    model(tokens, repr_layers=[1])  # fills fair-esm's cache with float32 tables
    model = model.to(torch.float64)
    assert all(layer.self_attn.rot_emb._seq_len_cached is None for layer in model.esm2.layers)
    out = model(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers]
    assert out.dtype == torch.float64
    fresh, _ = load_esm2_model("demo-8M", dtype="fp64", device="cpu")
    expected = fresh(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers]
    assert relative_error(out, expected) < 1e-12


def test_packing_helper_layout(demo_fp64):
    _, alphabet = demo_fp64
    pack = pack_sequences(alphabet, ["MKT", "GSWYF", "A"])
    assert pack.cu_seqlens.dtype == torch.int32
    assert pack.cu_seqlens.tolist() == [0, 5, 12, 15]
    assert pack.max_seqlen == 7
    ids = pack.input_ids.tolist()
    assert [ids[i] for i in (0, 5, 12)] == [alphabet.cls_idx] * 3
    assert [ids[i] for i in (4, 11, 14)] == [alphabet.eos_idx] * 3
    assert alphabet.padding_idx not in ids
    assert math.prod(pack.input_ids.shape) == 15


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=60), max_tokens=st.integers(50, 2000),
       padded=st.booleans())
def test_batches_cover_every_sequence_under_the_budget_and_none_arrives_sorted(lengths, max_tokens, padded):
    """Each sequence once; a batch over the budget only when it is one sequence; batches filled longest first
    and returned shortest first (every member of a batch at most as long as every member of a later one),
    the first being the shortest sequence alone (a path's first call, and its single-sequence case); and no
    batch handed over
    sorted longest first (of two or more lengths) or shortest first (of three or more), or with a longest
    sequence of its own first or last (a path that sorts its pack and forgets to put the rows back, or
    takes an end of the pack for its longest sequence, must show it in the comparison)."""
    batches = plan_batches(lengths, max_tokens, padded=padded)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert len(batches[0]) == 1 and lengths[batches[0][0]] == min(lengths)  # the first call: the shortest, alone
    for batch in batches:
        members = [lengths[i] for i in batch]
        cost = len(members) * (max(members) + 2) if padded else sum(m + 2 for m in members)
        assert cost <= max_tokens or len(batch) == 1
        if len(set(members)) >= 2:
            assert members != sorted(members, reverse=True), members
        if len(set(members)) >= 3:
            assert members != sorted(members), members
        if len(members) >= 3 and members.count(max(members)) == 1:
            assert max(members) not in (members[0], members[-1]), members
    for earlier, later in zip(batches, batches[1:]):
        assert max(lengths[i] for i in earlier) <= min(lengths[i] for i in later)
