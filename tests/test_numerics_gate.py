"""The numerics gate: FlashAttention's rule and the sign test at every layer, the floor without a reference,
the first departing layer and its likely cause; and the numerics sample it runs on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.embed.paths import packed_path, plugin_path
from core.embed.run import run_both_paths
from core.embed.yardstick import (covering_sample, DEEP_PACK_OFFSET, MIN_NUMERICS_SAMPLE, plan_yardstick, spanning_sample,
                                  YardstickPlan)
from core.analysis.numerics_gate import length_split, LengthSplit, measure_layer, sign_test
from core.input.examples import example_sequences, probe_sequences

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def sample(m: int = 40, dim: int = 24, seed: int = 0, scale: float = 1e-4):
    """(reference, v1, v2): v1 and v2 each off the reference by independent noise of the same size."""
    rng = np.random.default_rng(seed)
    reference = rng.standard_normal((m, dim))
    return reference, reference + scale * rng.standard_normal((m, dim)), reference + scale * rng.standard_normal((m, dim))


def test_sign_test_is_the_exact_binomial():
    assert sign_test(0, 18) == pytest.approx(2 * 0.5 ** 18)
    assert sign_test(18, 0) == pytest.approx(2 * 0.5 ** 18)
    assert sign_test(9, 9) == pytest.approx(1.0)
    assert sign_test(0, 0) == 1.0  # every sequence tied: nothing to test


def test_a_faithful_candidate_passes_every_test():
    reference, v1, v2 = sample()
    layer = measure_layer(v1, v2, reference, "reference", 3, k=2.0, alpha=1e-3, floor_multiple=4.0)
    assert layer.within_bound and not layer.systematic and not layer.departs
    assert layer.closer_v1 + layer.closer_v2 + layer.ties == 40
    assert layer.ratio == pytest.approx(np.abs(v2 - reference).max() / np.abs(v1 - reference).max())


def test_a_small_systematic_error_fails_the_sign_test_but_not_the_rule():
    reference, v1, v2 = sample()
    worse = v2 + 6e-5 * np.sign(v2 - reference)  # a little further on every value: within 2x, but always
    layer = measure_layer(v1, worse, reference, "reference", 1, k=2.0, alpha=1e-3, floor_multiple=4.0)
    assert layer.within_bound and layer.systematic and layer.departs and layer.farther
    assert layer.closer_v1 == 40 and layer.sign_p == pytest.approx(2 * 0.5 ** 40)


def test_a_closer_but_different_candidate_is_systematic_too():
    """More precise than v1.0 everywhere is still not v1.0's arithmetic (e.g. rotary tables in fp32)."""
    reference, v1, _ = sample()
    better = reference + 0.2 * (v1 - reference) * np.random.default_rng(5).uniform(0.5, 1.0, v1.shape)
    layer = measure_layer(v1, better, reference, "reference", 1, k=2.0, alpha=1e-3, floor_multiple=4.0)
    assert layer.systematic and not layer.farther


def test_a_large_error_fails_the_rule():
    reference, v1, v2 = sample()
    v2 = v2.copy()
    v2[7, 3] += 1e-2
    layer = measure_layer(v1, v2, reference, "reference", 0, k=2.0, alpha=1e-3, floor_multiple=4.0)
    assert not layer.within_bound and layer.departs and layer.ratio > 2


def test_an_exact_baseline_with_an_inexact_candidate_departs():
    reference, _, v2 = sample()
    layer = measure_layer(reference.copy(), v2, reference, "reference", 0, k=2.0, alpha=1e-3, floor_multiple=4.0)
    assert layer.ratio == float("inf") and layer.departs
    same = measure_layer(reference.copy(), reference.copy(), reference, "reference", 0, 2.0, 1e-3, 4.0)
    assert same.ratio is None and not same.departs and same.ties == 40


def test_floor_mode_measures_distance_in_floors():
    _, v1, _ = sample(scale=1e-3)
    again = v1 + 1e-6 * np.random.default_rng(2).standard_normal(v1.shape)
    near = v1 + 2e-6 * np.random.default_rng(3).standard_normal(v1.shape)
    far = v1 + 1e-4 * np.random.default_rng(4).standard_normal(v1.shape)
    assert not measure_layer(v1, near, again, "floor", 2, 2.0, 1e-3, 4.0).departs
    departing = measure_layer(v1, far, again, "floor", 2, 2.0, 1e-3, 4.0)
    assert departing.departs and departing.sign_p is None and departing.ratio > 4


def test_floor_of_bit_identical_rebatching_is_one_float32_rounding():
    _, v1, _ = sample()
    layer = measure_layer(v1, v1.copy(), v1.copy(), "floor", 0, 2.0, 1e-3, 4.0)
    assert layer.baseline_error == pytest.approx(np.finfo(np.float32).eps * np.abs(v1).max())
    assert not layer.departs


def test_a_departure_of_the_longer_sequences_alone_is_put_down_to_length():
    """Only sequences past a length departing (all or some of them), the shorter ones as a faithful path's.
    A precision difference (every sequence to one side), a short sequence departing too, a packing bug that
    spares only the few alone in their packs, or nothing departing: no split."""
    reference, v1, v2 = sample()
    lengths = np.arange(40) * 10 + 30  # 30 … 420 residues
    broken = v2.copy()
    broken[lengths > 250] += 1e-2  # a table sized for 256 positions, say
    assert length_split(v1, broken, reference, "reference", 2.0, lengths) == LengthSplit(250, 260, 17, 17, 23)
    shuffled = np.random.default_rng(1).permutation(40)  # the rows in any order
    assert length_split(v1[shuffled], broken[shuffled], reference[shuffled], "reference", 2.0,
                        lengths[shuffled]) == LengthSplit(250, 260, 17, 17, 23)
    partly = v2.copy()
    partly[(lengths > 250) & (lengths % 20 == 0)] += 1e-2  # a bug past a position moves some long ones too little
    assert length_split(v1, partly, reference, "reference", 2.0, lengths) == LengthSplit(250, 260, 9, 17, 23)
    rebatched = v1 + 1e-6 * np.random.default_rng(2).standard_normal(v1.shape)  # without a reference: the floor
    cut_short = v1 + 1e-6 * np.random.default_rng(3).standard_normal(v1.shape)
    cut_short[lengths > 250] += 1e-2
    assert length_split(v1, cut_short, rebatched, "floor", 4.0, lengths) == LengthSplit(250, 260, 17, 17, 23)
    short_too = broken.copy()
    short_too[2] += 1e-2
    assert length_split(v1, short_too, reference, "reference", 2.0, lengths) is None
    imprecise = broken + 6e-5 * np.sign(broken - reference)  # the shorter ones systematically farther as well
    assert length_split(v1, imprecise, reference, "reference", 2.0, lengths) is None
    assert length_split(v1, v2, reference, "reference", 2.0, lengths) is None
    assert length_split(v1, v2 + 1e-2, reference, "reference", 2.0, lengths) is None  # every one departs
    one_long = v2.copy()
    one_long[lengths == 420] += 1e-2  # the longest alone: something in that sequence, not its length
    assert length_split(v1, one_long, reference, "reference", 2.0, lengths) is None
    few = v2.copy()
    few[(lengths > 250) & (lengths % 50 == 0)] += 1e-2  # 3 of the 17 longer ones: not a length limit either
    assert length_split(v1, few, reference, "reference", 2.0, lengths) is None
    packed = v2 + 1e-2
    packed[lengths < 100] = v2[lengths < 100]  # the few alone in their packs agree whatever a packing bug does
    assert length_split(v1, packed, reference, "reference", 2.0, lengths) is None


# ---------------------------------------------------------------- which yardstick


def test_plan_yardstick_defaults_and_refusals():
    assert plan_yardstick("auto", 64, torch.float32, CPU) == YardstickPlan("reference", "fp64", 64)
    assert plan_yardstick("auto", 64, torch.float16, CUDA) == YardstickPlan("reference", "fp32", 64)
    assert plan_yardstick("auto", 64, torch.bfloat16, CUDA) == YardstickPlan("reference", "fp32", 64)
    assert plan_yardstick("auto", 64, torch.float16, CPU) == YardstickPlan("reference", "fp64", 64)
    assert plan_yardstick("auto", None, torch.float64, CPU) == YardstickPlan("floor", "fp64", None)
    assert plan_yardstick("none", 10, torch.float32, CPU) == YardstickPlan("floor", "fp32", 10)
    assert plan_yardstick("fp64", 0, torch.float32, CPU) == YardstickPlan("floor", "fp32", 64)
    with pytest.raises(ValueError, match="not wider"):
        plan_yardstick("fp32", 64, torch.float32, CPU)
    with pytest.raises(ValueError, match=">= 0"):
        plan_yardstick("auto", -1, torch.float32, CPU)


def test_spanning_sample_keeps_the_shortest_and_the_longest():
    lengths = [50, 10, 400, 30, 200, 20, 1000, 5]
    chosen = spanning_sample(lengths, 3)
    assert chosen.tolist() == sorted(chosen.tolist()) and len(chosen) == 3
    assert {7, 6} <= set(chosen.tolist())  # 5 and 1000 residues
    assert spanning_sample(lengths, None).tolist() == list(range(8))
    assert spanning_sample(lengths, 100).tolist() == list(range(8))


class PackRecorder:
    """A faithful packed plug-in that records every pack's boundaries."""

    name, version = "recorder", "1"

    def __init__(self, model):
        self.model, self.packs = model, []

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, repr_layers):
        self.packs.append(cu_seqlens.tolist())
        return self.model.forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)


def test_the_sample_holds_every_residue_letter_of_the_set():
    """A path wrong only on a rare residue must be measured: each letter the length span misses brings the
    shortest sequence holding it. A set whose span already holds every letter keeps the span alone."""
    sequences = ["MKT" * (10 + i) for i in range(40)]
    sequences[7] = "MKTX" + "MKT" * 20  # X only here; U in two sequences, the shorter one chosen
    sequences[30], sequences[12] = "MKU" * 45, "MKU" * 25
    sequences[21] = "MKB" * 31 + "Z"
    span = spanning_sample([len(seq) for seq in sequences], 5)
    chosen = covering_sample(sequences, 5)
    assert set(span) <= set(chosen) and list(chosen) == sorted(chosen)
    extra = set(chosen) - set(span)
    assert {7, 12, 21} <= set(chosen) and 30 not in extra and len(extra) <= 3
    assert set("".join(sequences)) == set("".join(sequences[i] for i in chosen))
    plain = ["MKT" * (10 + i) for i in range(40)]
    assert covering_sample(plain, 5).tolist() == spanning_sample([len(seq) for seq in plain], 5).tolist()
    assert covering_sample(sequences, None).tolist() == list(range(40))


def test_numerics_sample_tops_up_small_sets_and_packs_v2_deep(tiny_fp32):
    model, alphabet = tiny_fp32
    records = example_sequences("real")
    recorder = PackRecorder(model)
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], layers=[0, 3],
                         v2_path=plugin_path(recorder), yardstick=YardstickPlan("reference", "fp64", None))
    sample = run.yardstick
    assert sample.indices.tolist() == list(range(len(records)))
    assert sample.probes == tuple(probe_sequences(MIN_NUMERICS_SAMPLE - len(records))) and sample.size == MIN_NUMERICS_SAMPLE
    for embeddings in (sample.baseline, sample.candidate, sample.reference):
        assert embeddings.layers[3].shape == (MIN_NUMERICS_SAMPLE, model.embed_dim)
    assert sample.reference.layers[3].dtype == np.float64
    assert list(sample.deep.layers) == [3]  # the first pooled layer after an attention, alone
    deep = max(recorder.packs, key=len)  # the deep pack: filler first, then the sample
    starts = deep[:-1][-MIN_NUMERICS_SAMPLE:]
    assert min(starts) >= DEEP_PACK_OFFSET
    # v2.0 deep in a pack and in the run's batches agree to float32 rounding (the path is faithful).
    np.testing.assert_allclose(sample.deep.layers[3], sample.candidate.layers[3], atol=1e-5)
    # The sample's rows of the set are the run's own, not embedded again: v2.0 saw each of the set's
    # sequences once (the run) and each probe once (its own batches), besides the deep pack.
    for layer in (0, 3):
        assert np.array_equal(sample.baseline.layers[layer][: len(records)], run.v1.layers[layer])
        assert np.array_equal(sample.candidate.layers[layer][: len(records)], run.v2.layers[layer])
    seen = sorted(b - a for pack in recorder.packs if pack is not deep for a, b in zip(pack, pack[1:]))
    assert seen == sorted(len(seq) + 2 for seq in [*(r.sequence for r in records), *sample.probes])


def test_floor_yardstick_runs_each_sequence_alone(tiny_fp32):
    model, alphabet = tiny_fp32
    records = example_sequences("real")
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], layers=[3],
                         yardstick=YardstickPlan("floor", "fp32", 4))
    sample = run.yardstick
    assert sample.kind == "floor" and sample.indices.size == 4 and sample.size == MIN_NUMERICS_SAMPLE
    assert sample.reference.layers[3].dtype == np.float32
    np.testing.assert_allclose(sample.reference.layers[3], sample.baseline.layers[3], atol=1e-5)
    assert sample.deep is not None and sample.deep_skipped is None  # a faithful path keeps its deep pack


def test_the_floor_is_at_least_one_float32_rounding():
    """Identical re-batching gives v1.0 a floor of 0; one float32 rounding of v1.0 stands in, so a faithful
    v2.0 a rounding away is 1 floor away (not infinitely many: no departure, and its deep pack is built)."""
    from core.embed.yardstick import largest_errors

    v1 = np.array([[1.0, -2.0, 0.5]])
    v2 = v1 * (1 + np.finfo(np.float32).eps)
    floor, candidate = largest_errors(v1, v2, v1.copy(), "floor")
    assert floor == pytest.approx(2 * np.finfo(np.float32).eps) and candidate == pytest.approx(floor)
    reference = v1 + 1e-9
    assert largest_errors(v1, v2, reference, "reference") == (pytest.approx(1e-9), pytest.approx(np.abs(v2 - reference).max()))


def test_default_path_of_the_sample_is_the_built_in_packed_path(tiny_fp32):
    model, alphabet = tiny_fp32
    records = example_sequences("real")[:3]
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], layers=[0, 1, 3],
                         yardstick=YardstickPlan("reference", "fp64", None))
    assert run.yardstick.candidate.implementation == packed_path(model).implementation
    assert list(run.yardstick.deep.layers) == [1]


def test_padded_paths_get_no_deep_pack(tiny_fp32):
    from core.embed.paths import fallback_path

    model, alphabet = tiny_fp32
    records = example_sequences("real")[:3]
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], layers=[3],
                         v2_path=fallback_path(model), yardstick=YardstickPlan("reference", "fp64", None))
    assert run.yardstick.deep is None


def test_a_path_already_far_off_in_its_own_batches_gets_no_deep_pack(tiny_fp32, monkeypatch):
    """Attention across the whole pack would need tokens² scores per head deep in a 16,384-token pack (72 GB
    for demo-8M on a 128 GB CPU host, where the allocation does not fail): not built once v2.0 is already
    DEEP_PACK_NEEDLESS_RATIO× v1.0's error at that layer, which departs whatever the pack shows. The
    skipped pack still counts among the gate's tests, and the report says why it is missing."""
    import core.embed.yardstick as yardstick
    from core.analysis.numerics_gate import numerics_gate
    from core.embed.plugins import make_plugin_path
    from tests.plugins.broken_paths import CATALOGUE

    model, alphabet = tiny_fp32
    records = example_sequences("real")[:4]
    built = []
    monkeypatch.setattr(yardstick, "deep_pack_embeddings", lambda *args: built.append(args) or "a deep pack")
    plan = YardstickPlan("reference", "fp64", None)
    ids, sequences = [r.id for r in records], [r.sequence for r in records]
    broken = run_both_paths(model, alphabet, ids, sequences, layers=[0, 1, 3], yardstick=plan,
                            v2_path=make_plugin_path(CATALOGUE["attention across sequences"], model))
    assert broken.yardstick.deep is None and built == []
    assert broken.yardstick.deep_skipped.reason == "needless"
    assert broken.yardstick.deep_skipped.ratio > yardstick.DEEP_PACK_NEEDLESS_RATIO
    gate = numerics_gate(broken)
    assert not gate.passed and gate.first_departure.layer == 1
    assert gate.layers[0].alpha == pytest.approx(gate.alpha / 4)  # 3 layers + the pack it did not need
    assert "no deep pack: v2.0 already" in gate.line() and gate.to_json()["deep_pack_skipped"]["ratio"] > 100

    faithful = run_both_paths(model, alphabet, ids, sequences, layers=[0, 1, 3], yardstick=plan)
    assert len(built) == 1 and built[0][3] == 1  # the pack is built, at the first attention layer
    assert faithful.yardstick.deep == "a deep pack" and faithful.yardstick.deep_skipped is None
    assert yardstick.error_ratio_at(faithful.yardstick, 1) < 2


def test_a_deep_pack_that_does_not_fit_is_named_and_not_counted(tiny_fp32, monkeypatch):
    """Out of memory for the deep pack: the gate says the depth went untested, and does not count it."""
    import core.embed.yardstick as yardstick
    from core.analysis.numerics_gate import numerics_gate

    model, alphabet = tiny_fp32
    records = example_sequences("real")[:4]
    monkeypatch.setattr(yardstick, "deep_pack_embeddings", lambda *args: None)  # what running out of memory returns
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], layers=[0, 1, 3],
                         yardstick=YardstickPlan("reference", "fp64", None))
    assert run.yardstick.deep is None and run.yardstick.deep_skipped == yardstick.DeepPackSkipped("out of memory")
    gate = numerics_gate(run)
    assert gate.passed and gate.layers[0].alpha == pytest.approx(gate.alpha / 3)
    assert "no deep pack: it did not fit in memory" in gate.line()
    assert gate.to_json()["deep_pack_skipped"] == {"reason": "out of memory", "ratio": None}


def test_a_cpu_reference_alone_per_sequence_equals_the_batched_one(demo_fp32):
    """On the CPU the float64 reference runs each sequence alone (cheaper than fair-esm's padded batches);
    its values are the batched ones to float64 rounding, so the choice decides no result."""
    from core.embed.passes import embed_path
    from core.embed.paths import standard_path
    from core.embed.yardstick import reference_budget
    from core.numerics.loading import layer_indices, reference_copy

    model, alphabet = demo_fp32  # demo-tiny's small products can sum alike either way (MKL on an Intel Xeon)
    wide = reference_copy(model, torch.float64)
    assert reference_budget(wide, 4096) == 1
    sequences = list(probe_sequences(6))
    layers = layer_indices(wide, None)
    alone = embed_path(wide, alphabet, sequences, layers, standard_path(wide), reference_budget(wide, None))
    batched = embed_path(wide, alphabet, sequences, layers, standard_path(wide), None)
    for layer in layers:
        np.testing.assert_allclose(alone.layers[layer], batched.layers[layer], rtol=0, atol=1e-13)
    assert any(not np.array_equal(alone.layers[layer], batched.layers[layer]) for layer in layers)  # two ways
