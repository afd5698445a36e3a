"""summary.json and sequences.csv of the example sets, byte for byte as recorded before the package was
reorganised (issue 12): a refactor must not change a number. Timings and the timestamp aside.

The recorded files were written by
``OMP_NUM_THREADS=1 python3 -m core compare --example <set> --out tests/golden/<set>`` (demo-8M fp32 on
the CPU, every default). CPU matrix products sum in an order that depends on torch's thread count, so
the test pins one thread, what each test worker has anyway. Regenerate them only for a change that is
meant to change the numbers, and say so in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"
UNSTABLE = ("seconds", "created_at")
RECORDED_THREADS = 1


@pytest.fixture
def recorded_threads():
    """torch's thread count as the files were recorded with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(threads)


def stable(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key not in UNSTABLE}


@pytest.mark.parametrize("example", ["patterns", "real"])
def test_example_set_outputs_are_unchanged(tmp_path, capsys, recorded_threads, example):
    assert main(["compare", "--example", example, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    recorded = json.loads((GOLDEN / example / "summary.json").read_text())
    produced = json.loads((tmp_path / "summary.json").read_text())
    assert stable(produced) == stable(recorded)
    assert (tmp_path / "sequences.csv").read_text() == (GOLDEN / example / "sequences.csv").read_text()
