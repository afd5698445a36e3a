"""Exit codes CI can trust, and the edges of the command line's input (issue 14).

Argument errors exit 2 in one line, before any model is loaded; the --fail-on gate alone exits 1;
a bug exits 4 with its traceback; any readable path (FIFO, /dev/fd/N) is input; a closed stdin or a
folder is an input error in words; the size limit is stated and enforced in one unit.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core.cli
from core.cli import main
from core.cli_args import EXIT_CODES_EPILOG, build_parser, parse_arguments
from core.input.decoding import _bytes_too_large
from core.input.fasta import read_sequences
from core.input.records import INPUT_LIMIT_TEXT, MAX_INPUT_BYTES
from core.input.sources import InputUnavailable, read_stdin

pytestmark = pytest.mark.usefixtures("light_numerics")  # what the run is used for, not the gate's power

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = str(REPO_ROOT / "dashboard" / "app.py")
TWO_GOOD = ">alpha\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n>beta\nGSGSGSLLKKLLEEPEVKVNGQ\n"
ONLY_DNA = ">dna\nATGGCCATTGTAATGGGCCGCTGAAAGGGTGCCCGATAG\n"  # refused before any model is loaded
NO_DEVICE = ["--model", "demo-tiny", "--device", "no-such-device"]  # without the checks: exit 3, no model


def run_core(*args: str, shell: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m core ARGS`` (or the bash command ``shell``) in a real process."""
    command = ["bash", "-c", shell] if shell else [sys.executable, "-m", "core", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------- argument errors: exit 2, one line


@pytest.mark.parametrize("argv, option", [
    (["--seed", "-1"], "--seed"), (["--seed", "4294967296"], "--seed"), (["--seed", "x"], "--seed"),
    (["--seeds", "-1"], "--seeds"), (["--max-tokens", "-5"], "--max-tokens"), (["--max-tokens", "0"], "--max-tokens"),
    (["--rule-k", "-1"], "--rule-k"), (["--rule-k", "0"], "--rule-k"), (["--rule-k", "nan"], "--rule-k"),
    (["--rule-k", "inf"], "--rule-k"), (["--min-cosine", "1.5"], "--min-cosine"),
    (["--min-agreement", "-0.1"], "--min-agreement"), (["--accept-agreement", "nan"], "--accept-agreement"),
    (["--out", ""], "--out"), (["--out", "  "], "--out"), (["--cache", ""], "--cache"),
    (["--reference-sample", "-1"], "--reference-sample"), (["--layer", "last"], "--layer"),
    (["--min-agreement", "0.99", "--accept-agreement", "0.9"], "--min-agreement"),
    (["--v1-attention", "--v2", "tests.plugins.example_v2:make_packed"], "--v1-attention"),
])
def test_out_of_range_arguments_exit_2_in_one_line(capsys, argv, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--example", "real", *NO_DEVICE, *argv])
    assert exit_info.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("python -m core compare: error: ") and option in line and "--help" in line


@pytest.mark.parametrize("argv", [[], ["compare"], ["frobnicate"], ["compare", "--example", "nope"],
                                  ["compare", "", *NO_DEVICE]])
def test_usage_errors_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert ": error: " in one_line(capsys.readouterr().err)


def test_values_at_the_edges_of_their_ranges_are_accepted():
    args = parse_arguments(build_parser(), [
        "compare", "--example", "real", "--seed", "4294967295", "--seeds", "0", "--max-tokens", "1", "--rule-k", "0.5",
        "--min-cosine", "0", "--min-agreement", "1", "--accept-agreement", "1", "--reference-sample", "all",
        "--layer", "-1",
    ])
    assert (args.seed, args.seeds, args.max_tokens, args.rule_k) == (2**32 - 1, 0, 1, 0.5)
    assert (args.min_cosine, args.min_agreement, args.accept_agreement, args.reference_sample) == (0, 1, 1, None)


def test_a_real_process_exits_2_in_one_line_and_help_lists_the_codes():
    result = run_core("compare", "x.fasta", "--seed", "-1")
    assert result.returncode == 2 and result.stdout == ""
    assert "expected a seed from 0 to 4,294,967,295, got -1" in one_line(result.stderr)
    help_text = run_core("compare", "--help").stdout
    assert EXIT_CODES_EPILOG.splitlines()[0] in help_text and "4    internal error" in help_text


# ---------------------------------------------------------------- internal errors and interrupts


def test_an_unexpected_exception_is_exit_4_with_its_traceback(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(core.cli, "compare_command", broken)
    assert main(["compare", "--example", "real"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.splitlines()[-1] == "internal error: RuntimeError: boom (exit 4) — please report"


def test_ctrl_c_is_exit_130_in_one_line(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.cli, "models_command", interrupted)
    assert main(["models"]) == 130
    assert one_line(capsys.readouterr().err) == "interrupted (exit 130)"


# ---------------------------------------------------------------- input: streams, folders, stdin


def input_args(path: str):
    return parse_arguments(build_parser(), ["compare", path])


def _feed(path: str, text: str) -> threading.Thread:
    """A thread that opens ``path`` for writing (blocking until it is read) and writes ``text``."""
    def write() -> None:
        with open(path, "w") as handle:
            handle.write(text)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_read_like_a_file(tmp_path):
    fifo = tmp_path / "sequences.fifo"
    os.mkfifo(fifo)
    writer = _feed(str(fifo), TWO_GOOD)
    parsed = core.cli._read_input(input_args(str(fifo)))
    writer.join(timeout=10)
    assert [r.id for r in parsed.records] == ["alpha", "beta"] and not parsed.problems


def test_a_pipe_named_by_dev_fd_is_read_like_a_file():
    """What ``<(command)`` gives: /dev/fd/N, the read end of a pipe whose writer is elsewhere."""
    read_end, write_end = os.pipe()

    def write() -> None:
        os.write(write_end, TWO_GOOD.encode())
        os.close(write_end)  # the reader sees the end of the input

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        parsed = core.cli._read_input(input_args(f"/dev/fd/{read_end}"))
    finally:
        writer.join(timeout=10)
        os.close(read_end)
    assert [r.id for r in parsed.records] == ["alpha", "beta"]


def test_process_substitution_is_read_in_a_real_shell():
    result = run_core(shell=f"exec {sys.executable} -m core compare <(printf '{ONLY_DNA}') --device cpu")
    assert result.returncode == 2, result.stderr
    assert "looks like a nucleotide sequence" in result.stderr and "not found" not in result.stderr


def test_a_folder_is_named_as_a_folder(capsys, tmp_path):
    assert main(["compare", str(tmp_path), *NO_DEVICE]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a folder, not a FASTA file" in err and "Traceback" not in err


def test_a_missing_file_is_not_found(capsys, tmp_path):
    assert main(["compare", str(tmp_path / "nope.fasta"), *NO_DEVICE]) == 2
    assert f"input file not found: {tmp_path / 'nope.fasta'}" in capsys.readouterr().err


def test_a_closed_stdin_is_an_input_error_not_a_traceback():
    result = run_core(shell=f"exec {sys.executable} -m core compare - --device cpu 0<&-")
    assert result.returncode == 2, result.stderr
    assert "stdin is closed" in result.stderr and "Traceback" not in result.stderr


def test_a_reader_that_leaves_early_changes_neither_exit_code_nor_files(tmp_path):
    """``compare … | head -1``: stdout's reader is gone before the table is printed. No traceback, no
    'internal error', the files are written and the exit code is the comparison's (here the gate's 1)."""
    fasta = tmp_path / "two.fasta"
    fasta.write_text(TWO_GOOD)
    command = [sys.executable, "-m", "core", "compare", str(fasta), "--model", "demo-tiny", "--device", "cpu",
               "--seeds", "0", "--reference-sample", "0", "--min-cosine", "1.0", "--fail-on", "validate",
               "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    process.stdout.close()  # the reader leaves before anything is printed
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert "failing: verdict VALIDATE is at or below --fail-on validate" in stderr
    assert (tmp_path / "out" / "summary.json").exists() and (tmp_path / "out" / "sequences.csv").exists()


@pytest.mark.parametrize("stream", [None, io.TextIOWrapper(io.BytesIO())])
def test_unreadable_stdin_raises_input_unavailable(stream):
    if stream is not None:
        stream.close()  # reading it raises ValueError: I/O operation on a closed file
    with pytest.raises(InputUnavailable, match="stdin"):
        read_stdin(stream)


def test_no_stdin_in_process_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["compare", "-", *NO_DEVICE]) == 2
    assert "error: stdin is closed; pipe FASTA into '-' or pass a file" in capsys.readouterr().err


# ---------------------------------------------------------------- the size limit, in one unit


def test_the_limit_is_100_decimal_megabytes():
    assert INPUT_LIMIT_TEXT == "100 MB (100,000,000 bytes)"
    assert _bytes_too_large(99_999_999) is None and _bytes_too_large(100_000_000) is None
    for size in (100_000_001, 104_857_600):  # 100 MiB was accepted before: it is over 100 MB
        problem = _bytes_too_large(size)
        assert problem is not None and f"more than the limit of {INPUT_LIMIT_TEXT}" in problem.message


def test_a_file_of_100_000_001_bytes_is_refused_in_words(tmp_path):
    sparse = tmp_path / "sparse.fasta"
    with open(sparse, "wb") as handle:
        handle.truncate(MAX_INPUT_BYTES + 1)
    (problem,) = read_sequences(sparse).problems
    assert problem.message.startswith("the input is too large: 100,000,001 bytes (100.0 MB), more than the limit "
                                      "of 100 MB (100,000,000 bytes)")


def test_streamlit_lets_oversized_uploads_reach_the_page():
    """Streamlit's own refusal is an icon with hover text: its cap must stay above ours (in its MB)."""
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 1000 * 1000 >= 2 * MAX_INPUT_BYTES


def test_the_page_states_the_limit_and_refuses_in_words():
    st.cache_data.clear()
    app = AppTest.from_file(APP, default_timeout=180).run()
    assert any(INPUT_LIMIT_TEXT in caption.value for caption in app.caption)
    app.file_uploader(key="upload").upload("big.fasta", b">big\n" + b"A" * MAX_INPUT_BYTES).run()
    assert not app.exception
    messages = [m for frame in app.dataframe if "problem" in frame.value.columns for m in frame.value["problem"]]
    assert any(f"more than the limit of {INPUT_LIMIT_TEXT}" in m for m in messages), messages
    assert any("record(s) refused" in e.value for e in app.error)
