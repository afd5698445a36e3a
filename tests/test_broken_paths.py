"""Every catalogued packed-path bug is flagged with default settings on the CPU; no faithful path is.

demo-tiny in float32 on the seed's 18 example sequences (the "patterns" set), with the defaults: 100
balanced heads, the numerics gate with an fp64 reference on a sample topped up to 32 sequences, v2.0 in a
deep pack. v1.0 and the reference do not depend on v2.0, so they are computed once and each v2.0 is
swapped in — the same arrays the pipeline would compute for it (run_both_paths is deterministic).
The device runs the same catalogue in FP16 (scripts/broken_paths.py, docs/gpu-runs/).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.embed.paths import fallback_path, packed_path
from core.embed.plugins import make_plugin_path
from core.analysis.analyse import analyse
from core.input.examples import example_sequences
from scripts.broken_paths import baseline_run, compare, row, shared_baseline
from core.embed.run import with_v2
from tests.plugins.broken_paths import CATALOGUE

RECORDS = example_sequences("patterns")
SEQUENCES = [r.sequence for r in RECORDS]


@pytest.fixture(scope="module")
def faithful_run(tiny_fp32):
    """The mutation script's shared baseline (scripts/broken_paths.py: the CLI's and the page's defaults;
    v1.0 and the numerics sample, each v2.0 swapped in)."""
    return shared_baseline(*tiny_fp32, SEQUENCES)


@pytest.fixture(scope="module")
def judged(tiny_fp32, faithful_run):
    """name -> the catalogued bug's summary.json document through the mutation script's own compare(),
    against the shared baseline; each bug computed once for the module's tests."""
    model, alphabet = tiny_fp32
    return functools.cache(lambda name: compare(model, alphabet, SEQUENCES, make_plugin_path(CATALOGUE[name], model),
                                                faithful_run))


def summary_of(run, model) -> dict:
    return analyse(run, model.num_layers).summary.to_json()


def test_the_shared_baseline_is_what_the_pipeline_computes(tiny_fp32, faithful_run):
    """A v2.0 swapped into the shared baseline (whose own v2.0 was never computed) gives the numbers a
    whole comparison with that v2.0 gives."""
    model, alphabet = tiny_fp32
    swapped = summary_of(with_v2(faithful_run, model, alphabet, SEQUENCES, packed_path(model)), model)
    whole = summary_of(baseline_run(model, alphabet, SEQUENCES), model)
    for key in ("numerics", "predictions", "verdict", "cosine", "max_abs_diff", "impl_v2"):
        assert swapped[key] == whole[key], key
    assert faithful_run.v2 is faithful_run.v1 and faithful_run.yardstick.deep is None
    assert faithful_run.yardstick.candidate is faithful_run.yardstick.baseline  # the probes embedded once, not twice


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_each_catalogued_bug_is_never_accepted(judged, name):
    """Through the mutation script's own compare(), so CI runs the script the device record comes from."""
    summary = judged(name)
    assert row(name, "not ACCEPT", summary)[1]
    assert summary["verdict"] != "ACCEPT", summary["headline"]
    assert not summary["numerics"]["passed"]
    # Before or at the first attention; the final layer norm only at the last layer (the pooled one here).
    expected = (summary["layer"],) if name == "final layer norm missing" else (0, 1)
    assert summary["numerics"]["first_departing_layer"] in expected
    assert summary["recommendation"].startswith(("Validate", "Fall back"))


@pytest.mark.parametrize("faithful", ["built-in packed", "fallback", "Hugging Face eager", "Hugging Face sdpa"])
def test_faithful_paths_are_accepted(tiny_fp32, faithful_run, faithful):
    model, alphabet = tiny_fp32
    if faithful.startswith("Hugging Face"):
        path = make_plugin_path(f"core.adapters.hf_esm:make_{faithful.split()[-1]}", model)
    else:
        path = packed_path(model) if faithful == "built-in packed" else fallback_path(model)
    summary = summary_of(with_v2(faithful_run, model, alphabet, SEQUENCES, path), model)
    assert summary["verdict"] == "ACCEPT", summary["headline"]
    assert summary["predictions"]["heads"]["counted_flips"] == 0
    assert summary["numerics"]["passed"] and summary["numerics"]["first_departing_layer"] is None


def test_the_catalogue_names_its_bug_classes(judged):
    causes = {name: judged(name)["numerics"]["likely_cause"]
              for name in ("attention across sequences", "token-dropout scale missing", "EOS in the pool", "tanh GELU",
                           "attention scale missing", "final layer norm missing", "layers off by one")}
    assert "masking or packing" in causes["attention across sequences"]
    assert "the attention scale" in causes["attention scale missing"]
    assert "layers returned off by one" in causes["layers off by one"]
    assert "final layer norm" in causes["final layer norm missing"]
    assert "final layer norm" not in causes["attention across sequences"]
    assert "token-dropout scaling" in causes["token-dropout scale missing"]
    assert "wrong count" in judged("BOS and EOS in the mean's count")["numerics"]["likely_cause"]
    assert "which positions are pooled" in causes["EOS in the pool"]
    assert causes["tanh GELU"] is not None
    assert "a causal mask" in judged("causal attention mask")["numerics"]["likely_cause"]
    assert "a missing BOS or EOS" in judged("EOS dropped")["numerics"]["likely_cause"]
    for rotary in ("rotary tables interleaved", "keys not rotated"):
        assert "the rotary embedding (its table layout, or left off q or k)" in judged(rotary)["numerics"]["likely_cause"]
    assert "precision difference" in judged("GELU in bf16")["numerics"]["likely_cause"]
    assert ("from layer 1 only on the longer sequences (all 7 sequences of 262 residues or more depart; the 25 of 239 "
            "or fewer agree as a faithful path's do)"
            in judged("rotary tables for 256 positions")["numerics"]["likely_cause"])
    assert judged("rotary tables for 256 positions")["numerics"]["departs_by_length"] == {
        "agree_up_to": 239, "depart_from": 262, "departing": 7, "at_least": 7, "shorter": 25}
    # every other bug reaches sequences of every length: none is put down to a length limit
    assert [name for name in CATALOGUE if judged(name)["numerics"]["departs_by_length"] is not None] == [
        "rotary tables for 256 positions"]


def test_a_batch_sorted_and_not_put_back_changes_predictions_in_the_comparison_itself(judged):
    """No batch reaches a path sorted longest first (plan_batches hands each over with its shortest sequence
    first), so a path that sorts its pack and returns the rows in that order gives sequences other
    sequences' rows in the main comparison: FALLBACK from layer 0, not only a departure deep in a pack."""
    summary = judged("batch sorted, rows not put back")
    assert summary["verdict"] == "FALLBACK", summary["headline"]
    assert summary["numerics"]["first_departing_layer"] == 0 and not summary["numerics"]["departs_only_deep_in_a_pack"]
    assert "rows returned for the wrong sequences" in summary["numerics"]["likely_cause"]
    assert summary["cosine"]["min"] < 0.99 and summary["predictions"]["heads"]["counted_flips"] > 0


def test_a_bug_past_the_longest_sequence_is_accepted_only_up_to_that_length(tmp_path, capsys):
    """Rotary tables for 256 positions: the patterns set (up to 400 residues) is flagged (above), while on the
    "real" set (up to 238) v2.0 *is* v1.0's arithmetic, so ACCEPT is right there, and says how far it holds."""
    bug = CATALOGUE["rotary tables for 256 positions"]
    assert main(["compare", "--example", "real", "--model", "demo-tiny", "--v2", bug, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "ACCEPT" and summary["longest_residues"] == 238
    assert summary["recommendation"].startswith("Adopt v2.0 for sequences of up to 238 residues (the longest here;")
    assert "Adopt v2.0 for sequences of up to 238 residues" in capsys.readouterr().out


def test_a_bug_on_a_rare_residue_is_measured_though_the_length_span_misses_it(tmp_path, capsys):
    """X and U embedded as <unk>, in two of 40 sequences that a sample spanning the lengths would leave out:
    the sample takes them in for their letters, and the gate departs from layer 0, where it would otherwise
    have measured only sequences the bug leaves exact."""
    from core.embed.yardstick import spanning_sample
    from core.input.examples import random_proteins

    sequences = random_proteins(40, seed=5, median=50, sigma=0.3, shortest=20, longest=90)
    rare = [i for i in np.argsort([len(seq) for seq in sequences]) if i not in spanning_sample(
        [len(seq) for seq in sequences], 8)][10:12]
    for i, residue in zip(rare, "XU"):
        sequences[i] = sequences[i][:10] + residue + sequences[i][11:]
    fasta = tmp_path / "rare.fasta"
    fasta.write_text("".join(f">s{i}\n{seq}\n" for i, seq in enumerate(sequences)))
    code = main(["compare", str(fasta), "--model", "demo-tiny", "--reference-sample", "8", "--seeds", "20",
                 "--v2", "tests.plugins.broken_paths:make_rare_residues_as_unknown", "--out", str(tmp_path / "out")])
    capsys.readouterr()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    table = pd.read_csv(tmp_path / "out" / "sequences.csv")
    assert code == 0 and summary["verdict"] != "ACCEPT" and not summary["numerics"]["passed"]
    assert summary["numerics"]["first_departing_layer"] == 0 and summary["numerics"]["departs_by_length"] is None
    assert set(table.loc[table["in_reference_sample"], "id"]) >= {f"s{i}" for i in rare}


def test_cli_flags_a_broken_path_end_to_end(tmp_path, capsys):
    """The whole CLI with defaults (on demo-tiny): EOS in the pool exits 1 under --fail-on validate, and says why."""
    code = main(["compare", "--example", "patterns", "--model", "demo-tiny", "--v2", CATALOGUE["EOS in the pool"],
                 "--fail-on", "validate",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] in ("VALIDATE", "FALLBACK") and not summary["numerics"]["passed"]
    assert "Numerics: different — departs from layer 0" in out
    assert f"VERDICT: {summary['verdict']}" in out and "failing: verdict" in err


def test_report_html_and_terminal_carry_the_headline(tiny_fp32, faithful_run):
    from core.report.html import html_report
    from core.report.terminal import format_summary

    model, alphabet = tiny_fp32
    analysis = analyse(with_v2(faithful_run, model, alphabet, SEQUENCES,
                               make_plugin_path(CATALOGUE["tanh GELU"], model)), model.num_layers)
    summary = analysis.summary
    page = html_report(summary, analysis.table, {})
    text = format_summary(summary)
    for line in summary.headline.lines():
        assert line.split(" (")[0] in text
    assert "<h1>VALIDATE</h1>" in page and "Numerics: different — departs from layer 1" in page
    assert "Seed rule (one uncentred head, seed 0)" in page and "Predictions: agree" in page
