"""Reference attribution, layer profile, residue track, seed sweep and the v2.0 checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.analysis.attribution import attribute
from core.analysis.checks import determinism, packing_invariance
from core.cli import main
from core.embed.run import run_both_paths
from core.embed.yardstick import YardstickPlan
from core.analysis.profile import layer_profile, residue_divergence
from core.analysis.metrics import compare_embeddings
from core.analysis.analyse import analyse
from core.input.examples import example_sequences
from core.numerics.specs import TINY_ARCHITECTURE
from core.analysis.metrics import binomial_interval
from core.analysis.proxies import HeadBank, vote

SEQUENCES = [r.sequence for r in example_sequences("real")]
IDS = [r.id for r in example_sequences("real")]


def embeddings(n: int = 30, dim: int = 24, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim))


# ---------------------------------------------------------------- attribution on constructed cases


def test_a_path_made_worse_is_reported_further_from_the_reference():
    reference = embeddings()
    rng = np.random.default_rng(0)
    v1 = reference + 1e-4 * rng.standard_normal(reference.shape)
    v2 = reference + 1e-2 * rng.standard_normal(reference.shape)  # deliberately worse
    result = attribute(v1, v2, reference)
    assert (result.closer == "v1").all()
    assert result.overall_closer == "v1"
    assert not result.rule_passed
    assert result.error_ratio == pytest.approx(np.abs(v2 - reference).max() / np.abs(v1 - reference).max())
    summary = result.to_json()
    assert summary["v2_error"]["mean_abs_diff"] > summary["v1_error"]["mean_abs_diff"]
    assert summary["closer_counts"] == {"v1": 30, "v2": 0, "tie": 0}
    assert "fails" in summary["verdict_line"]


def test_rule_passes_within_k_times_and_fails_beyond():
    reference = np.zeros((1, 4))
    v1 = np.array([[1e-3, 0, 0, 0]])
    assert attribute(v1, np.array([[2e-3, 0, 0, 0]]), reference).rule_passed  # exactly 2x
    assert not attribute(v1, np.array([[2.01e-3, 0, 0, 0]]), reference).rule_passed
    assert attribute(v1, np.array([[2.5e-3, 0, 0, 0]]), reference, k=3).rule_passed
    tie = attribute(v1, v1.copy(), reference)
    assert tie.closer.tolist() == ["tie"] and tie.overall_closer == "tie"


def test_a_broken_v2_path_is_caught_against_float64(tiny_fp32):
    """GELU swapped for its tanh approximation in v2.0 only: the reference must blame v2.0."""
    model, alphabet = tiny_fp32
    exact = model.activation
    try:
        model.activation = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
        run = run_both_paths(model, alphabet, IDS, SEQUENCES, layers=[model.num_layers], yardstick=YardstickPlan("reference", "fp64", None))
    finally:
        model.activation = exact
    analysis = analyse(run, model.num_layers)
    reference = analysis.summary.to_json()["reference"]
    assert reference["closer"] == "v1" and reference["closer_counts"]["v1"] == len(SEQUENCES)
    assert not reference["rule_passed"]
    assert reference["v2_error"]["mean_abs_diff"] > 100 * reference["v1_error"]["mean_abs_diff"]


def test_reference_run_on_healthy_paths(tiny_fp32):
    model, alphabet = tiny_fp32
    run = run_both_paths(model, alphabet, IDS, SEQUENCES, layers=None, yardstick=YardstickPlan("reference", "fp64", None))
    assert run.yardstick.dtype == "fp64" and run.yardstick.reference.layers[0].dtype == np.float64
    analysis = analyse(run, model.num_layers)
    reference = analysis.summary.to_json()["reference"]
    assert reference["rule_passed"]
    assert reference["v1_error"]["max_abs_diff"] < 1e-5 and reference["v2_error"]["max_abs_diff"] < 1e-5
    assert {"cosine_v1_ref", "mean_abs_err_v2", "closer_to_ref"} <= set(analysis.table.columns)
    profile = analysis.summary.to_json()["layers"]
    assert [entry["layer"] for entry in profile] == list(range(model.num_layers + 1))
    assert all(entry["v2_mean_abs_error"] < 1e-5 for entry in profile)


# ---------------------------------------------------------------- layers and residues


def test_layer_profile_shows_where_divergence_appears(tiny_fp32):
    model, alphabet = tiny_fp32
    run = run_both_paths(model, alphabet, IDS, SEQUENCES)
    broken = run.v2.layers[3] + 0.5  # divergence introduced at layer 3 only
    run.v2.layers[3] = broken.astype(np.float32)
    profile = {entry.layer: entry for entry in layer_profile(run)}
    assert profile[3].mean_abs_diff == pytest.approx(0.5, rel=1e-3)
    assert all(profile[layer].mean_abs_diff < 1e-5 for layer in profile if layer != 3)
    assert 1 - profile[0].cosine_min < 1e-10  # rounding moves 1 − cos by ~1e-14


def test_residue_track_matches_positions(tiny_fp64):
    model, alphabet = tiny_fp64
    sequence = SEQUENCES[0]
    residues = residue_divergence(model, alphabet, sequence, model.num_layers)
    assert residues["position"].tolist() == list(range(1, len(sequence) + 1))
    assert "".join(residues["residue"]) == sequence
    assert (residues["cosine"] > 1 - 1e-12).all() and (residues["max_abs_diff"] < 1e-10).all()


# ---------------------------------------------------------------- seed sweep


def test_seed_heads_agree_with_single_seed_comparisons_and_are_reproducible():
    v1 = embeddings(40, 16)
    v2 = v1 + 0.3 * np.random.default_rng(9).standard_normal(v1.shape)
    votes = vote(HeadBank.build("seed", range(25), v1), v1, v2, None, 2.0)
    for seed in (0, 7, 24):
        assert votes.raw_agreement[seed] == compare_embeddings(v1, v2, seed).agreement
    again = vote(HeadBank.build("seed", range(25), v1), v1, v2, None, 2.0)
    assert np.array_equal(votes.flips, again.flips)
    summary = votes.to_json()
    assert summary["n_heads"] == 25
    assert summary["agreement_lower"] <= summary["agreement_mean"]
    assert summary["agreement_lower"] < 1.0  # this much noise flips something


def test_flips_come_from_sequences_near_the_decision_boundary():
    v1 = embeddings(200, 32)
    v2 = v1 + 0.05 * np.random.default_rng(1).standard_normal(v1.shape)
    votes = vote(HeadBank.build("balanced", range(50), v1), v1, v2, None, 2.0)
    assert votes.flips.any()
    assert votes.margins[votes.flips].max() < np.median(votes.margins[~votes.flips])


def test_wilson_interval():
    low, high = binomial_interval(18, 18)
    assert high == 1.0 and 0.8 < low < 0.85
    low, high = binomial_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


# ---------------------------------------------------------------- checks


def test_packing_invariance_and_determinism_pass_and_a_corrupt_run_fails(tiny_fp64):
    model, alphabet = tiny_fp64
    run = run_both_paths(model, alphabet, IDS, SEQUENCES, layers=[model.num_layers])
    packed = run.v2.layers[model.num_layers]
    invariance = packing_invariance(model, alphabet, SEQUENCES, packed, model.num_layers, limit=4)
    assert invariance.passed and invariance.n_sequences == 4 and invariance.max_abs_diff < 1e-12
    repeat = determinism(model, alphabet, SEQUENCES, packed, model.num_layers)
    assert repeat.passed and repeat.max_abs_diff == 0.0

    corrupt = packed.copy()
    corrupt[0] = -corrupt[0]
    assert not packing_invariance(model, alphabet, SEQUENCES, corrupt, model.num_layers, limit=9).passed
    assert not determinism(model, alphabet, SEQUENCES, corrupt, model.num_layers).passed


# ---------------------------------------------------------------- CLI


def test_cli_reference_seeds_checks_and_layers(tmp_path, capsys):
    code = main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--reference", "fp64",
                 "--seeds", "30", "--checks", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "FlashAttention rule" in out and "agreement over 30 balanced heads" in out and "packing invariance" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["reference"]) >= {"v1_error", "v2_error", "closer", "rule_passed"}
    heads = summary["predictions"]["heads"]
    assert heads["n_heads"] == 30 and heads["kind"] == "balanced"
    assert heads["agreement_lower"] <= heads["agreement_mean"]
    assert [entry["layer"] for entry in summary["layers"]] == list(range(TINY_ARCHITECTURE.num_layers + 1))
    assert [check["name"] for check in summary["checks_v2"]] == ["packing invariance", "determinism"]
    assert all(check["passed"] for check in summary["checks_v2"])


def test_cli_head_with_extra_features_and_wrong_width(tmp_path, capsys):
    generator = torch.Generator().manual_seed(0)
    head = tmp_path / "head.pt"
    torch.save({"0.weight": torch.randn(16, 68, generator=generator), "0.bias": torch.zeros(16),
                "2.weight": torch.randn(2, 16, generator=generator), "2.bias": torch.zeros(2)}, head)
    features = tmp_path / "extra.csv"
    rows = ["id,f1,f2,f3,f4"] + [f"{seq_id},{i},{i * 0.5},-1,2" for i, seq_id in enumerate(reversed(IDS))]
    features.write_text("\n".join(rows) + "\n")
    code = main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu",
                 "--head", str(head), "--extra-features", str(features), "--out", str(tmp_path / "out")])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["classifier"] == "your head: MLP 68→16→2 (relu) from head.pt + 4 extra features"

    capsys.readouterr()
    code = main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--head", str(head)])
    assert code == 3
    assert "expects 68 input features but gets 64" in capsys.readouterr().err
    code = main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--extra-features", str(features)])
    assert code == 3
