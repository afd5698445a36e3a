"""The v1-compatible fallback and pluggable v2.0 implementations."""

from __future__ import annotations

import importlib.metadata
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from core.embed.batching import pack_sequences, padded_tokens
from core.cli import main
from core.embed.paths import fallback_path, packed_path
from core.embed.run import run_both_paths, v1_baseline, with_v2
from core.embed.yardstick import YardstickPlan
from core.numerics.fallback import V1CompatiblePacked
from core.embed.plugins import PluginError, distribution_version, make_plugin_path, plugin_label
from core.analysis.analyse import analyse
from core.input.examples import example_sequences

pytestmark = pytest.mark.usefixtures("light_numerics")  # what the run is used for, not the gate's power

RECORDS = example_sequences("all")
IDS, SEQUENCES = [r.id for r in RECORDS], [r.sequence for r in RECORDS]
PLUGINS = "tests.plugins.example_v2"


@pytest.fixture(scope="module")
def baseline(tiny_fp32):
    """v1.0 and an fp64 reference sample on the whole set, once: each test swaps its own v2.0 in (with_v2
    computes what run_both_paths would for that v2.0; tests/test_broken_paths.py holds it to that)."""
    return v1_baseline(*tiny_fp32, IDS, SEQUENCES, YardstickPlan("reference", "fp64", None))


def test_fallback_is_exact_against_v1_in_float32(tiny_fp32, baseline):
    model, alphabet = tiny_fp32
    run = with_v2(baseline, model, alphabet, SEQUENCES, fallback_path(model))
    assert run.v2.backend == "v1-compatible (fair-esm torch.bmm)"
    for layer in run.layers:
        assert np.array_equal(run.v1.layers[layer], run.v2.layers[layer]), f"layer {layer} differs"
    summary = analyse(run, model.num_layers).summary.to_json()
    assert summary["max_abs_diff"] == 0.0 and summary["verdict"] == "ACCEPT"
    assert summary["impl_v2"].startswith("core V1CompatiblePacked.forward_packed")


def test_fallback_with_any_packing_matches_the_padded_forward(tiny_fp32):
    """Packed however the caller likes, the fallback's per-token output is fair-esm's (float32 rounding)."""
    model, alphabet = tiny_fp32
    sequences = SEQUENCES[:5]
    pack = pack_sequences(alphabet, sequences)
    layers = [0, 3, model.num_layers]
    with torch.inference_mode():
        packed = V1CompatiblePacked(model).forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, layers)
        tokens = padded_tokens(alphabet, sequences)
        standard = model(tokens, repr_layers=layers)["representations"]
    keep = tokens != alphabet.padding_idx
    for layer in layers:
        torch.testing.assert_close(packed["representations"][layer], standard[layer][keep], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory, expected", [("make_packed", "example packed 1.0"), ("make_padded", "example padded 2.1")])
def test_plugin_named_module_factory_runs_end_to_end(tmp_path, capsys, factory, expected):
    code = main(["compare", "--example", "patterns", "--model", "demo-tiny", "--device", "cpu",
                 "--v2", f"{PLUGINS}:{factory}", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["impl_v2"] == expected and summary["backend_v2"] == expected
    assert summary["impl_v1"].startswith("fair-esm") and "ESM2.forward" in summary["impl_v1"]
    assert summary["verdict"] == "ACCEPT" and 1 - summary["cosine"]["min"] < 1e-10
    assert "v2.0 implementation" in capsys.readouterr().out


@pytest.mark.parametrize("factory", ["make_eos_in_pool", "make_no_token_dropout_scale"])
def test_broken_plugins_are_caught(tiny_fp32, baseline, factory):
    model, alphabet = tiny_fp32
    run = with_v2(baseline, model, alphabet, SEQUENCES, make_plugin_path(f"tests.plugins.broken_paths:{factory}", model))
    summary = analyse(run, model.num_layers).summary.to_json()
    below = summary["cosine"]["min"] <= 0.99 or summary["label_agreement"] <= 0.99
    assert below, (summary["cosine"], summary["label_agreement"])
    assert summary["verdict"] != "ACCEPT"
    assert summary["reference"]["closer"] == "v1" and not summary["reference"]["rule_passed"]


def test_a_single_sequence_fast_path_is_part_of_the_comparison(tiny_fp32, baseline):
    """The first batch is the shortest sequence alone, and the numerics sample always holds the shortest, so
    a path wrong only for one sequence at a time is measured against the reference (it was ACCEPT while
    every batch held several sequences)."""
    model, alphabet = tiny_fp32
    run = with_v2(baseline, model, alphabet, SEQUENCES, make_plugin_path(f"{PLUGINS}:make_single_sequence_fast_path", model))
    summary = analyse(run, model.num_layers).summary.to_json()
    shortest = IDS[int(np.argmin([len(seq) for seq in SEQUENCES]))]
    assert summary["verdict"] != "ACCEPT" and not summary["numerics"]["passed"]
    assert summary["numerics"]["first_departing_layer"] == 0
    table = analyse(run, model.num_layers).table.set_index("id")
    assert table["cosine"].idxmin() == shortest and (table["cosine"].drop(shortest) > 1 - 1e-10).all()


def test_eos_in_pool_fails_the_cosine_check(tiny_fp32, baseline):
    model, alphabet = tiny_fp32
    run = with_v2(baseline, model, alphabet, SEQUENCES, make_plugin_path("tests.plugins.broken_paths:make_eos_in_pool", model))
    summary = analyse(run, model.num_layers).summary.to_json()
    assert not summary["checks"]["cosine_all_above_threshold"]
    assert "pattern_01" in summary["cosine_failures"]  # the 10-residue sequence: EOS is a tenth of its pool
    assert "cosine" in summary["recommendation"]


def test_a_plugin_returning_nan_names_its_sequences_and_falls_back(tmp_path, capsys):
    """NaN from v2.0 on one sequence: that sequence named, the others compared as usual (one NaN must not
    reach its batch-mates through the pooling), a strict-JSON summary, and never ACCEPT."""
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">plain\nMKTAYIAKQRQISFVKSHFSRQ\n>with_w\nMKWVTFISLLFLFSSAYS\n>also_plain\nGSHMLEDPVDAFQ\n")
    code = main(["compare", str(fasta), "--model", "demo-tiny", "--device", "cpu",
                 "--v2", f"{PLUGINS}:make_nan_at_tryptophan", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"summary.json holds {name}"))
    assert summary["verdict"] == "FALLBACK"
    assert summary["non_finite"] == {"v1": [], "v2": ["with_w"]}
    assert summary["recommendation"].startswith(
        "Fall back to a v1.0-compatible path: v2.0 returned NaN or infinity for 1 sequence(s) where v1.0 did not (with_w)")
    assert summary["cosine_failures"] == ["with_w"]
    assert summary["numerics"]["likely_cause"].startswith("NaN or infinity in v2.0 from layer 0")
    assert "non-finite embeddings" in out and "(with_w)" in out
    table = pd.read_csv(tmp_path / "out" / "sequences.csv", keep_default_na=False).set_index("id")
    assert table.loc["with_w", "warning"].startswith("v2.0 returned NaN or infinity: no cosine")
    assert table.loc["plain", "warning"] == table.loc["also_plain", "warning"] == ""


def test_nan_left_in_the_padding_of_a_padded_plugin_is_not_pooled(tiny_fp32, baseline):
    model, alphabet = tiny_fp32
    run = with_v2(baseline, model, alphabet, SEQUENCES, make_plugin_path(f"{PLUGINS}:make_padded_nan_padding", model))
    summary = analyse(run, model.num_layers).summary.to_json()
    assert summary["non_finite"] == {"v1": [], "v2": []}
    assert summary["verdict"] == "ACCEPT", summary["headline"]
    assert summary["max_abs_diff"] < 1e-5


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon_here", "module:factory"),
        ("tests.plugins.does_not_exist:make", "cannot import"),
        (f"{PLUGINS}:missing_factory", "no callable"),
        (f"{PLUGINS}:make_no_interface", "neither forward_packed"),
        ("os:getcwd", r"'os:getcwd' failed when called with the loaded model: TypeError: .*takes no arguments"),
        (f"{PLUGINS}:make_failing", "failed when called with the loaded model: RuntimeError: this plug-in needs"),
        (f"{PLUGINS}:make_wrong_signature", r"its forward_packed\(input_ids\) cannot be called as forward_packed\(input_ids, cu_seqlens"),
    ],
)
def test_bad_plugins_are_refused_with_a_message(tiny_fp32, spec, message):
    model, _ = tiny_fp32
    with pytest.raises(PluginError, match=message):
        make_plugin_path(spec, model)


def test_cli_rejects_bad_plugin_and_conflicting_flags(capsys):
    assert main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--v2", "nope:make"]) == 3
    assert "cannot import" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # an argument error, before any model is loaded
        main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu",
              "--v1-attention", "--v2", f"{PLUGINS}:make_packed"])
    assert exit_info.value.code == 2
    assert "give at most one of --v1-attention and --v2" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["os:getcwd", f"{PLUGINS}:make_failing", f"{PLUGINS}:make_wrong_signature"])
def test_cli_plugin_that_cannot_be_built_is_a_setup_error_in_one_line(capsys, spec):
    code = main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--v2", spec])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Traceback" not in err and err.count("\n") == 1 and spec in err


def test_nameless_plugin_is_named_after_its_factory_and_says_so(tmp_path, capsys):
    code = main(["compare", "--example", "patterns", "--model", "demo-tiny", "--device", "cpu",
                 "--v2", f"{PLUGINS}:make_nameless", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend_v2"] == f"{PLUGINS}:make_nameless unversioned"
    assert summary["impl_v2"].startswith(f"{PLUGINS}:make_nameless unversioned (name derived from module:factory")
    assert "no string name or version attribute" in summary["impl_v2"]
    assert summary["verdict"] == "ACCEPT"
    assert "name derived" in capsys.readouterr().out


def test_plugin_version_comes_from_its_distribution():
    assert distribution_version("esm.pretrained") == importlib.metadata.version("fair-esm")
    assert distribution_version("os") == "unversioned"
    assert plugin_label("esm:make", object()) == (f"esm:make {importlib.metadata.version('fair-esm')}", ["name", "version"])


def test_cli_v1_attention_flag(tmp_path):
    assert main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--v1-attention",
                 "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["max_abs_diff"] == 0.0 and summary["backend_v2"] == "v1-compatible (fair-esm torch.bmm)"


def test_checks_rerun_the_v2_that_was_compared(tiny_fp32):
    """Determinism and packing invariance re-run the fallback (or plug-in) itself, not the built-in path."""
    from core.analysis.checks import determinism, packing_invariance

    model, alphabet = tiny_fp32
    sequences, layer = SEQUENCES[:6], model.num_layers
    path = fallback_path(model)
    baseline = run_both_paths(model, alphabet, IDS[:6], sequences, layers=[layer], v2_path=path).v2.layers[layer]
    assert determinism(model, alphabet, sequences, baseline, layer, path=path).max_abs_diff == 0.0
    assert packing_invariance(model, alphabet, sequences, baseline, layer, path=path).passed
    negated = make_plugin_path(f"{PLUGINS}:make_negated", model)
    flipped = run_both_paths(model, alphabet, IDS[:6], sequences, layers=[layer], v2_path=negated).v2.layers[layer]
    assert determinism(model, alphabet, sequences, flipped, layer, path=negated).max_abs_diff == 0.0
    # Without path= the checks run the built-in path, whose rows are not negated.
    assert determinism(model, alphabet, sequences, flipped, layer).max_abs_diff > 0.1


def test_a_failed_check_takes_accept_away_from_a_run_that_would_have_it(tiny_fp32, baseline):
    """The faithful built-in path on the shared baseline is ACCEPT; the same run analysed with a failed
    determinism check of v2.0 is VALIDATE, and the recommendation and summary.json say which check."""
    from core.analysis.checks import CheckResult

    model, alphabet = tiny_fp32
    run = with_v2(baseline, model, alphabet, SEQUENCES, packed_path(model))
    assert analyse(run, model.num_layers).summary.verdict == "ACCEPT"
    flaky = CheckResult("determinism", False, 2e-3, 0.9999, len(SEQUENCES), "v2.0 run twice on the same batches")
    summary = analyse(run, model.num_layers, checks=[flaky]).summary.to_json()
    assert summary["verdict"] == "VALIDATE"
    assert "v2.0 failed its own checks (determinism: max |diff| 0.002 over" in summary["recommendation"]
    assert summary["checks_v2"][0]["passed"] is False


def test_a_drifting_path_is_accept_until_its_checks_run(capsys, tmp_path):
    """A v2.0 that drifts by a few float steps between calls agrees with v1.0 to rounding, so its verdict is
    ACCEPT; with --checks its determinism fails, the verdict is VALIDATE and a --fail-on validate gate trips."""
    argv = ["compare", "--example", "patterns", "--model", "demo-tiny", "--device", "cpu",
            "--v2", f"{PLUGINS}:make_drifting", "--fail-on", "validate"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["verdict"] == "ACCEPT"
    assert "v2.0 checks                        not run (--checks" in capsys.readouterr().out
    assert main([*argv, "--checks", "--out", str(tmp_path / "checked")]) == 1
    summary = json.loads((tmp_path / "checked" / "summary.json").read_text())
    assert summary["verdict"] == "VALIDATE" and "failed its own checks (determinism" in summary["recommendation"]
    out = capsys.readouterr().out
    assert "determinism                        FAIL" in out and "not run (--checks" not in out


def test_checks_count_the_same_nan_twice_as_the_same_result(tiny_fp32):
    """A NaN that v2.0 returns every time, packed or alone, is deterministic and packing-invariant (the NaN
    itself is the verdict's business); a NaN against a number is an infinite difference."""
    from core.analysis.checks import determinism, packing_invariance, repeat_difference

    model, alphabet = tiny_fp32
    sequences, layer = ["MKWVTFISLL", "GSHMLEDPVD", "AWQKLLW"], model.num_layers
    path = make_plugin_path(f"{PLUGINS}:make_nan_at_tryptophan", model)
    pooled = run_both_paths(model, alphabet, ["a", "b", "c"], sequences, layers=[layer], v2_path=path).v2.layers[layer]
    assert np.isnan(pooled[[0, 2]]).all() and np.isfinite(pooled[1]).all()
    assert determinism(model, alphabet, sequences, pooled, layer, path=path).passed
    invariance = packing_invariance(model, alphabet, sequences, pooled, layer, path=path)
    assert invariance.passed and invariance.max_abs_diff < 1e-5  # the finite row: packing changes only rounding
    assert repeat_difference(np.array([np.nan, 1.0, np.inf]), np.array([1.0, 1.0, np.inf])).tolist() == [np.inf, 0.0, 0.0]


@pytest.mark.parametrize("factory, message", [
    ("make_crashing", r"failed in forward_packed on a batch of \d+ tokens: RuntimeError: CUDA error: an illegal "
                      r"memory access was encountered \(at .*example_v2.py:\d+ in forward_packed\)"),
    ("make_dropping_layers", r"forward_packed returned no representation for layer \d+ \(it returned layers \[3\]\)"),
    ("make_padded_output", r"forward_packed returned layer \d+ shaped \(\d+, \d+, 64\), expected \(\d+, 'embed_dim'\)"),
    ("make_numpy_output", r"forward_packed returned layer \d+ as ndarray, not a torch.Tensor"),
    ("make_string_keys", r"forward_packed returned no representation for layer \d+ \(it returned layers \['0', .*\]; "
                         r"layer keys must be ints\)"),
])
def test_a_plugin_failing_while_it_runs_is_a_setup_error_naming_it(capsys, factory, message):
    """Not 'internal error … please report' with the tool's traceback: exit 3, one line, the plug-in and
    the line of its code that raised."""
    code = main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--layer", "3",
                 "--v2", f"{PLUGINS}:{factory}"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Traceback" not in err and "internal error" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert re.search(rf"plug-in '{PLUGINS}:{factory}'.*{message}", line), line


def test_a_plugin_sized_by_its_first_call_meets_a_longer_batch_here(capsys):
    """Batches go in shortest first, so a path that keeps state sized at its first call (here its rotary
    tables) fails in the comparison, as it would in production, instead of being sized for every later
    batch by a longest batch first (it was ACCEPT then). The patterns set spans several CPU batches."""
    code = main(["compare", "--example", "patterns", "--model", "demo-tiny", "--device", "cpu", "--layer", "1",
                 "--v2", f"{PLUGINS}:make_sized_by_its_first_call"])
    err = capsys.readouterr().err
    assert code == 3, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert re.search(rf"plug-in '{PLUGINS}:make_sized_by_its_first_call' failed in forward_packed on a batch of "
                     r"\d+ tokens: IndexError: index \d+ is out of bounds .*\(at .*example_v2.py:\d+ in _rotary\)", line), line


def test_a_plugin_that_changes_the_loaded_model_is_a_setup_error_naming_the_change(capsys):
    """A factory that switches off token dropout on the shared model would take v1.0 and the reference
    with it (the paths would agree on the bug): exit 3, naming the plug-in and what it changed."""
    code = main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu",
                 "--v2", f"{PLUGINS}:make_without_token_dropout"])
    err = capsys.readouterr().err
    assert code == 3, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert (f"plug-in '{PLUGINS}:make_without_token_dropout' changed the loaded model in its factory "
            "(esm2.token_dropout = False (was True))") in line
    assert "change a copy" in line


@pytest.mark.parametrize("factory, replaced", [("make_patches_gelu", r"esm\.modules\.gelu"),
                                               ("make_patches_tensor_method", r"torch\.Tensor\.masked_fill")])
def test_a_plugin_that_patches_fair_esm_while_it_runs_is_stopped_before_the_reference(tiny_fp32, monkeypatch, factory,
                                                                                      replaced):
    import copy

    import esm.modules

    monkeypatch.setattr(esm.modules, "gelu", esm.modules.gelu)  # restored after the plug-in's patch
    monkeypatch.setattr(torch.Tensor, "masked_fill", torch.Tensor.masked_fill)
    model, alphabet = copy.deepcopy(tiny_fp32[0]), tiny_fp32[1]
    path = make_plugin_path(f"{PLUGINS}:{factory}", model)
    reference_built = []
    monkeypatch.setattr("core.embed.yardstick.reference_copy", lambda *args: reference_built.append(args))
    with pytest.raises(PluginError, match=rf"changed the loaded model while it ran \({replaced} replaced\)"):
        run_both_paths(model, alphabet, IDS[:3], SEQUENCES[:3], v2_path=path,
                       yardstick=YardstickPlan("reference", "fp64", None))
    assert reference_built == []


def test_the_model_state_sees_casts_swaps_and_in_place_changes_and_not_a_run(tiny_fp32):
    import copy

    from core.embed.model_state import changes, model_state

    model, alphabet = copy.deepcopy(tiny_fp32[0]), tiny_fp32[1]
    before = model_state(model.esm2)
    run_both_paths(model, alphabet, IDS[:3], SEQUENCES[:3], yardstick=YardstickPlan("reference", "fp64", None))
    assert changes(before, model_state(model.esm2)) == []  # both paths and the reference leave it as it was
    with torch.no_grad():
        model.esm2.layers[2].fc1.weight.mul_(1.0)
    assert changes(before, model_state(model.esm2)) == ["tensor layers.2.fc1.weight modified in place"]
    model.esm2.layers[1] = copy.deepcopy(model.esm2.layers[1])
    assert "module layers.1 replaced" in changes(before, model_state(model.esm2))
    model.esm2.half()
    assert "tensor embed_tokens.weight now torch.float16 [33, 64] on cpu (was torch.float32 [33, 64] on cpu)" in \
        changes(before, model_state(model.esm2))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    try:
        assert f"torch.backends.cuda.matmul.allow_tf32 = {not tf32} (was {tf32})" in changes(before, model_state(model.esm2))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_out_of_memory_inside_a_plugin_still_splits_the_batch(tiny_fp32, monkeypatch):
    """The guard lets out-of-memory through, so the passes halve the batch and retry as for any path."""
    model, alphabet = tiny_fp32
    path = make_plugin_path(f"{PLUGINS}:make_packed", model)
    calls = []
    inner = path.run

    def running_out_on_big_batches(ids, cu_seqlens, max_seqlen, layers):
        calls.append(len(cu_seqlens) - 1)
        if len(cu_seqlens) - 1 > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return inner(ids, cu_seqlens, max_seqlen, layers)

    from dataclasses import replace

    from core.embed.passes import embed_path
    from core.embed.plugins import guarded

    sequences = SEQUENCES[:3]
    flaky = replace(path, run=guarded("flaky:make", running_out_on_big_batches, "forward_packed"))
    embedded = embed_path(model, alphabet, sequences, [model.num_layers], flaky)
    assert embedded.layers[model.num_layers].shape == (3, model.embed_dim)
    # The shortest goes alone first; the batch of the other 2 is split until each fits.
    assert calls[:2] == [1, 2] and calls.count(1) == 3 and len(calls) == 4
