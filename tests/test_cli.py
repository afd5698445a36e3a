"""The command line, ``python -m core``: outputs, exit codes and messages.

Runs ``core.cli.main`` in-process on the CPU with demo-tiny and small inputs, plus one real
subprocess reading FASTA from stdin.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.cli import main
from core.numerics.loading import save_checkpoint
from core.numerics.specs import DEMO_SIZES, PRETRAINED
from core.input.examples import example_sequences
from core.input.records import MAX_RESIDUES

pytestmark = pytest.mark.usefixtures("light_numerics")  # what the run is used for, not the gate's power

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_DEMO = ["--model", "demo-tiny", "--device", "cpu"]
SUMMARY_KEYS = {
    "verdict", "recommendation", "label_agreement", "pearson", "max_confidence_diff", "cosine",
    "mean_abs_diff", "n_sequences", "model", "weights", "dtype", "layer", "seed", "backend_v1",
    "backend_v2", "device", "thresholds", "warnings",
}
CSV_COLUMNS = {
    "id", "length", "cosine", "mean_abs_diff", "label_v1", "label_v2", "confidence_v1", "confidence_v2", "warning",
}
TWO_GOOD = ">alpha some description\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n>beta\nGSGSGSLLKKLLEEPEVKVNGQ\n"



def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def read_outputs(out_dir: Path) -> tuple[dict, pd.DataFrame]:
    summary = json.loads((out_dir / "summary.json").read_text())
    table = pd.read_csv(out_dir / "sequences.csv", keep_default_na=False)
    return summary, table


@pytest.fixture(scope="module")
def patterns_run(tmp_path_factory):
    """``compare --example patterns --model demo-tiny --out DIR`` once: (code, stdout, stderr, DIR)."""
    out_dir = tmp_path_factory.mktemp("patterns") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["compare", "--example", "patterns", *CPU_DEMO, "--out", str(out_dir)])
    return code, stdout.getvalue(), stderr.getvalue(), out_dir


@pytest.fixture
def two_good(tmp_path) -> Path:
    return write(tmp_path / "two.fasta", TWO_GOOD)


# ---------------------------------------------------------------- the example run


def test_patterns_exit_code_and_terminal_table(patterns_run):
    code, out, err, out_dir = patterns_run
    assert code == 0, err
    assert "Traceback" not in err
    assert out.startswith("!! DEMO WEIGHTS: random-init ESM-2, not the pretrained model.")
    for row in (
        "model", "device", "v1.0 attention", "v2.0 attention", "sequences", "cosine min / mean / max",
        "mean |v1 - v2|", "max |v1 - v2|", "label agreement (seed 0)", "confidence Pearson", "max confidence diff",
    ):
        assert re.search(rf"^  {re.escape(row)}\s", out, re.MULTILINE), row
    assert re.search(r"^  model\s+demo-tiny \(demo weights\), fp32, layer 3$", out, re.MULTILINE)
    assert re.search(r"^  sequences\s+18$", out, re.MULTILINE)
    assert re.search(r"^  v2\.0 attention\s+reference$", out, re.MULTILINE)
    assert re.search(r"^  VERDICT: ACCEPT  \(demo weights\)$", out, re.MULTILINE)
    assert f"wrote {out_dir / 'summary.json'} and {out_dir / 'sequences.csv'}" in out


def test_patterns_summary_json(patterns_run):
    code, _, _, out_dir = patterns_run
    assert code == 0
    summary, _ = read_outputs(out_dir)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["verdict"] == "ACCEPT"
    assert summary["recommendation"].startswith("Adopt v2.0")
    assert summary["weights"] == "demo"
    assert summary["model"] == "demo-tiny"
    assert summary["dtype"] == "fp32"
    assert summary["device"] == "cpu"
    assert summary["n_sequences"] == 18
    assert summary["layer"] == 3  # the last layer by default (demo-tiny has 3)
    assert summary["seed"] == 0
    assert summary["backend_v2"] == "reference"
    assert summary["backend_v1"] != summary["backend_v2"]
    assert summary["label_agreement"] == 1.0
    assert {"min", "mean", "max"} <= summary["cosine"].keys()
    assert 0.99 < summary["cosine"]["min"] <= summary["cosine"]["mean"] <= summary["cosine"]["max"] <= 1.0
    assert 0 <= summary["mean_abs_diff"] < 1e-4
    assert summary["pearson"] > 0.999
    assert 0 <= summary["max_confidence_diff"] < 1e-4
    assert summary["thresholds"] == {"min_cosine": 0.99, "min_agreement": 0.95, "accept_agreement": 0.99}
    assert any("DEMO WEIGHTS" in warning for warning in summary["warnings"])
    assert summary["refused"] == []


def test_patterns_sequences_csv(patterns_run):
    _, _, _, out_dir = patterns_run
    _, table = read_outputs(out_dir)
    examples = example_sequences("patterns")
    assert len(table) == 18
    assert CSV_COLUMNS <= set(table.columns)
    assert list(table["id"]) == [record.id for record in examples]
    assert list(table["length"]) == [len(record.sequence) for record in examples]
    assert (1 - table["cosine"]).max() < 1e-9 and (table["cosine"] <= 1.0 + 1e-12).all()  # measured 1 − cos ≤ 2e-14
    assert (table["label_v1"] == table["label_v2"]).all()
    assert ((table["confidence_v1"] >= 0.5) & (table["confidence_v1"] <= 1.0)).all()
    assert (table["warning"] == "").all()


# ---------------------------------------------------------------- layer and seed


def test_layer_option_is_recorded(capsys, tmp_path, two_good):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "compare", str(two_good), *CPU_DEMO, "--layer", "2", "--out", str(out_dir))
    assert code == 0, err
    summary, table = read_outputs(out_dir)
    assert summary["layer"] == 2
    assert summary["n_sequences"] == 2
    assert list(table["id"]) == ["alpha", "beta"]
    assert re.search(r"^  model\s+demo-tiny \(demo weights\), fp32, layer 2$", out, re.MULTILINE)


def test_negative_layer_counts_from_the_end(capsys, tmp_path, two_good):
    out_dir = tmp_path / "out"
    code, _, err = run_cli(capsys, "compare", str(two_good), *CPU_DEMO, "--layer", "-2", "--out", str(out_dir))
    assert code == 0, err
    assert read_outputs(out_dir)[0]["layer"] == 2


def test_layer_out_of_range_is_a_setup_error(capsys, tmp_path, two_good):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "compare", str(two_good), *CPU_DEMO, "--layer", "9", "--out", str(out_dir))
    assert code == 3
    assert "layer 9 is out of range" in err
    assert "0 … 3" in err
    assert "VERDICT" not in out
    assert not (out_dir / "summary.json").exists()


def test_seed_changes_the_proxy_classifier_only(capsys, tmp_path, two_good):
    runs = {}
    for seed in ("0", "12345"):
        out_dir = tmp_path / f"seed{seed}"
        code, out, err = run_cli(capsys, "compare", str(two_good), *CPU_DEMO, "--seed", seed, "--out", str(out_dir))
        assert code == 0, err
        assert f"label agreement (seed {seed})" in out
        runs[seed] = read_outputs(out_dir)
    (summary_a, table_a), (summary_b, table_b) = runs["0"], runs["12345"]
    assert (summary_a["seed"], summary_b["seed"]) == (0, 12345)
    assert list(table_a["cosine"]) == list(table_b["cosine"])
    assert list(table_a["mean_abs_diff"]) == list(table_b["mean_abs_diff"])
    assert summary_a["cosine"] == summary_b["cosine"]
    # The seed is used: a different random head gives different confidences.
    assert list(table_a["confidence_v1"]) != list(table_b["confidence_v1"])


# ---------------------------------------------------------------- input problems


def test_bad_records_are_named_and_the_rest_compared(capsys, tmp_path):
    fasta = write(
        tmp_path / "mixed.fasta",
        ">good_1\nMKTAYIAKQRQISFVKSHFSRQ\n"
        ">bad_digits\nMKTAY12IAKQR\n"
        ">good_2\nGSGSGSLLKKLLEEPEVKVNGQ\n"
        ">bad_stop\nMKTAY*IAKQR\n",
    )
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "compare", str(fasta), *CPU_DEMO, "--out", str(out_dir))
    assert code == 2
    assert "Traceback" not in err
    assert re.search(r"^error: bad_digits: .*digits", err, re.MULTILINE)
    assert re.search(r"^error: bad_stop: .*stop codon", err, re.MULTILINE)
    assert "2 record(s) refused" in err
    assert "VERDICT:" in out  # the valid records were still compared
    summary, table = read_outputs(out_dir)
    assert summary["n_sequences"] == 2
    assert [entry["id"] for entry in summary["refused"]] == ["bad_digits", "bad_stop"]
    assert all(entry["message"].startswith(entry["id"]) for entry in summary["refused"])
    assert list(table["id"]) == ["good_1", "good_2"]


def test_fail_on_does_not_hide_refused_records(capsys, tmp_path):
    fasta = write(tmp_path / "mixed.fasta", ">ok\nMKTAYIAKQRQISFVKSHFSRQ\n>bad\nMKT1\n")
    code, _, err = run_cli(capsys, "compare", str(fasta), *CPU_DEMO, "--fail-on", "fallback")
    assert code == 2
    assert "bad" in err


def test_too_long_record_is_truncated_with_a_warning(capsys, tmp_path):
    long_sequence = ("MKTAYIAKQRQISFVKSHFSRQ" * 60)[:1100]
    fasta = write(tmp_path / "long.fasta", f">short\nMKTAYIAKQR\n>long_one\n{long_sequence}\n")
    out_dir = tmp_path / "out"
    code, _, err = run_cli(capsys, "compare", str(fasta), *CPU_DEMO, "--out", str(out_dir))
    assert code == 0, err
    assert re.search(r"^warning: long_one: 1100 residues .*truncated", err, re.MULTILINE)
    summary, table = read_outputs(out_dir)
    rows = table.set_index("id")
    assert rows.loc["long_one", "length"] == MAX_RESIDUES
    assert "truncated" in rows.loc["long_one", "warning"]
    assert "1100 residues" in rows.loc["long_one", "warning"]
    assert rows.loc["short", "warning"] == ""
    assert any("long_one" in w and "truncated" in w for w in summary["warnings"])
    assert summary["refused"] == []


def test_too_long_record_rejected_on_request(capsys, tmp_path):
    fasta = write(tmp_path / "long.fasta", f">short\nMKTAYIAKQR\n>long_one\n{'MKTAYIAKQR' * 110}\n")
    code, _, err = run_cli(capsys, "compare", str(fasta), *CPU_DEMO, "--too-long", "reject")
    assert code == 2
    assert re.search(r"^error: long_one: 1100 residues is longer than the limit of 1022", err, re.MULTILINE)


def test_empty_input_file(capsys, tmp_path):
    empty = write(tmp_path / "empty.fasta", "\n  \n")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "compare", str(empty), *CPU_DEMO, "--out", str(out_dir))
    assert code == 2
    assert "no sequences" in err
    assert "no valid sequences" in err
    assert "Traceback" not in err
    assert "VERDICT" not in out
    assert not out_dir.exists()


def test_missing_input_file(capsys, tmp_path):
    missing = tmp_path / "nope.fasta"
    code, out, err = run_cli(capsys, "compare", str(missing), *CPU_DEMO)
    assert code == 2
    assert f"input file not found: {missing}" in err
    assert out == ""


# ---------------------------------------------------------------- --fail-on gate


def test_fail_on_validate_fails_a_validate_verdict(capsys, tmp_path, two_good):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys, "compare", str(two_good), *CPU_DEMO, "--fail-on", "validate", "--accept-agreement", "1.0",
        "--out", str(out_dir),
    )
    assert code == 1
    summary, _ = read_outputs(out_dir)
    assert summary["label_agreement"] == 1.0  # 100 % is not > 1.0 ...
    assert summary["verdict"] == "VALIDATE"  # ... so the verdict drops to VALIDATE
    assert summary["thresholds"]["accept_agreement"] == 1.0
    assert "VERDICT: VALIDATE" in out
    assert "at or below --fail-on validate" in err


def test_fail_on_fallback_passes_a_validate_verdict(capsys, two_good):
    code, out, err = run_cli(
        capsys, "compare", str(two_good), *CPU_DEMO, "--fail-on", "fallback", "--accept-agreement", "1.0"
    )
    assert code == 0, err
    assert "VERDICT: VALIDATE" in out


def test_fail_on_validate_passes_an_accept_verdict(capsys, two_good):
    code, out, err = run_cli(capsys, "compare", str(two_good), *CPU_DEMO, "--fail-on", "validate")
    assert code == 0, err
    assert "VERDICT: ACCEPT" in out


# ---------------------------------------------------------------- setup errors and arguments


def test_flash_backend_on_cpu_is_a_setup_error(capsys, two_good):
    code, out, err = run_cli(capsys, "compare", str(two_good), *CPU_DEMO, "--backend", "torch-flash")
    assert code == 3
    assert "torch-flash" in err and "CUDA" in err
    assert "Available here: reference" in err
    assert "VERDICT" not in out


def test_unknown_demo_size_is_a_setup_error(capsys, two_good):
    code, _, err = run_cli(capsys, "compare", str(two_good), "--model", "demo-7B", "--device", "cpu")
    assert code == 3
    assert "unknown demo size 'demo-7B'" in err
    assert "demo-tiny" in err


def test_invalid_threshold_is_an_argument_error(capsys, two_good):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(two_good), *CPU_DEMO, "--accept-agreement", "1.5"])
    assert exit_info.value.code == 2
    assert "argument --accept-agreement: expected a number from 0 to 1, got 1.5" in capsys.readouterr().err


def test_invalid_device_is_a_setup_error(capsys, two_good):
    code, _, err = run_cli(capsys, "compare", str(two_good), "--model", "demo-tiny", "--device", "bogus")
    assert code == 3
    assert err.startswith("error:") and "bogus" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "input.fasta", "--example", "patterns"],
        ["compare"],
        ["compare", "--example", "nonexistent"],
        ["compare", "--example", "patterns", "--dtype", "fp8"],
        [],
    ],
)
def test_argument_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m core") and ": error: " in err and err.count("\n") == 1  # one line, no usage


def test_input_and_example_together_names_the_rule(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "x.fasta", "--example", "patterns", *CPU_DEMO])
    assert exit_info.value.code == 2
    assert "give exactly one of INPUT or --example" in capsys.readouterr().err


# ---------------------------------------------------------------- models


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub directory; the previous one is restored afterwards."""
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored at teardown
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    return hub


def test_models_lists_pretrained_and_demo_sizes(capsys, empty_hub, tiny_fp32):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in PRETRAINED:
        assert re.search(rf"^  {name}\s+not cached", out, re.MULTILINE), name
    for size in DEMO_SIZES:
        assert f"demo-{size}" in out
    assert re.search(r"^v2\.0 attention backends in fp32: .*reference", out, re.MULTILINE)

    cached = empty_hub / "checkpoints" / "esm2_t6_8M_UR50D.pt"
    cached.parent.mkdir(parents=True)
    save_checkpoint(tiny_fp32[0], cached)
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert re.search(r"^  esm2_t6_8M_UR50D\s+available$", out, re.MULTILINE)
    assert re.search(r"^  esm2_t12_35M_UR50D\s+not cached", out, re.MULTILINE)


# ---------------------------------------------------------------- a real process, stdin


def test_module_entry_point_reads_stdin():
    result = subprocess.run(
        [sys.executable, "-m", "core", "compare", "-", "--model", "demo-tiny"],
        input=TWO_GOOD,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"^  VERDICT: ACCEPT  \(demo weights\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^  sequences\s+2$", result.stdout, re.MULTILINE)


def test_formula_like_ids_are_defused_in_the_csv(tmp_path, capsys):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">=HYPERLINK(1)\nMKTAYIAKQR\n>plain\nGSGSLLKKLLEE\n")
    assert main(["compare", str(fasta), "--model", "demo-tiny", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    table = pd.read_csv(tmp_path / "o" / "sequences.csv")
    assert list(table["id"]) == ["'=HYPERLINK(1)", "plain"]


def test_cache_is_off_by_default_and_one_process_is_recorded(capsys, tmp_path, two_good, monkeypatch):
    monkeypatch.delenv("ESM2_DIVERGENCE_CACHE", raising=False)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "compare", str(two_good), *CPU_DEMO, "--only-layer", "--out", str(out_dir))
    assert code == 0, err
    summary, _ = read_outputs(out_dir)
    assert summary["cache"] is None
    assert summary["world_size"] == 1
    assert "embedding cache" not in out and "processes" not in out


def test_stdin_cannot_be_shared_by_torchrun_ranks(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, out, err = run_cli(capsys, "compare", "-", *CPU_DEMO)
    assert code == 2
    assert "stdin cannot be shared by torchrun ranks" in err
    assert out == ""


def test_cuda_asked_for_without_cuda_runs_on_the_cpu_with_a_warning(capsys, tmp_path, two_good, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(capsys, "compare", str(two_good), "--model", "demo-tiny", "--device", "cuda", "--out", str(tmp_path))
    assert code == 0
    assert "warning: CUDA was asked for but is not available" in err and "Running on the CPU instead" in err
    assert json.loads((tmp_path / "summary.json").read_text())["device"] == "cpu"


def test_full_disk_keeps_the_printed_summary_and_earlier_files(capsys, tmp_path, two_good, monkeypatch):
    import errno

    import pandas as pd

    out = tmp_path / "out"
    assert run_cli(capsys, "compare", str(two_good), "--model", "demo-tiny", "--out", str(out))[0] == 0
    before = {name: (out / name).read_text() for name in ("summary.json", "sequences.csv")}

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    code, stdout, err = run_cli(capsys, "compare", str(two_good), "--model", "demo-tiny", "--seed", "3", "--out", str(out))
    assert code == 3 and "VERDICT" in stdout
    assert f"error: cannot write results to {out}: No space left on device. The summary above is complete" in err
    assert {name: (out / name).read_text() for name in before} == before and not list(out.glob(".*partial"))
