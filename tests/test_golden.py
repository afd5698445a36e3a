"""summary.json and sequences.csv of the example sets as recorded before the package was reorganised
(issue 12): a refactor must not change a number beyond rounding. Timings, the timestamp and the
package versions aside (another torch may round otherwise, which the comparison allows).

The recorded files were written by
``OMP_NUM_THREADS=1 python3 -m core compare --example <set> --model demo-tiny --out tests/golden/<set>``
(demo-tiny fp32 on the CPU, every other default; demo-8M's files until 2026-11-27 held the same
arithmetic at five times the cost). CPU matrix products round differently from one CPU to another (MKL takes other
kernels on different CPUs, and other blockings for other batch shapes), so the files are compared
to float32 rounding, not byte for byte: every decision, label, count of sequences and word exactly;
every number to 1e-6 (float32's unit rounding at the embeddings' scale is 6e-8), cosines and Pearson's r
to 1e-10 (1 − cos is quadratic in a difference); and the statistics
*of* rounding noise (which path is closer to float64, their error ratio, the sign test's p, flips within
the rounding floor) only by their presence and type, because on another CPU they are other noise.
Regenerate the files only for a change that is meant to change the numbers, and say so in the commit.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"
UNSTABLE = ("seconds", "created_at", "versions")  # when and with what, not what
RECORDED_THREADS = 1
ATOL = 1e-6
# 1 − cosine and 1 − Pearson grow with the square of a difference: 1e-6 there would let a relative change
# of 1e-3 through. Rounding moves them by ~1e-14 between CPUs.
NEAR_ONE_ATOL = 1e-10

# Statistics of rounding noise itself: the same code gives other values on another CPU.
ROUNDING_NOISE = {
    "ratio", "error_ratio", "sign_p", "closer", "closer_v1", "closer_v2", "ties", "closer_counts",
    "rounding_flips", "raw_agreement_mean", "raw_agreement_min",  # summary.json
    "closer_to_ref", "flip_rate_over_heads",  # sequences.csv
}
# Agreement between two float32 paths at a layer other than the analysed one, or with float64: a
# sequence whose demo-weight confidence sits at 0.5 to rounding can change side on another CPU.
ROUNDING_NOISE_IN = {"layers": {"label_agreement"}, "v1_error": {"label_agreement"},
                     "v2_error": {"label_agreement"}}
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
CLOSER = re.compile(r"closer overall: \w+")


@pytest.fixture
def recorded_threads():
    """torch's thread count as the files were recorded with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(threads)


def words(text: str) -> str:
    """A report line with its numbers (checked in the typed fields) and the noise word masked."""
    return NUMBER.sub("#", CLOSER.sub("closer overall: ?", text))


def differences(produced, recorded, path: str = "", parent: str = "") -> list[str]:
    """Where ``produced`` differs from ``recorded`` beyond float32 rounding: a list of 'path: a != b'."""
    key = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if key in ROUNDING_NOISE or key in ROUNDING_NOISE_IN.get(parent, ()):
        same_kind = type(produced) is type(recorded) or {type(produced), type(recorded)} <= {int, float}
        return [] if same_kind else [f"{path}: {produced!r} != {recorded!r} (type)"]
    if isinstance(recorded, dict) and isinstance(produced, dict):
        found = [f"{path}.{k}: missing or extra" for k in set(produced) ^ set(recorded)]
        for k in recorded.keys() & produced.keys():
            found += differences(produced[k], recorded[k], f"{path}.{k}", key)
        return found
    if isinstance(recorded, list) and isinstance(produced, list):
        if len(produced) != len(recorded):
            return [f"{path}: {len(produced)} items != {len(recorded)}"]
        return [d for i, (a, b) in enumerate(zip(produced, recorded))
                for d in differences(a, b, f"{path}[{i}]", parent if key == "" else key)]
    if isinstance(recorded, float) or isinstance(produced, float):
        if isinstance(recorded, bool) or isinstance(produced, bool) or None in (produced, recorded):
            return [] if produced == recorded else [f"{path}: {produced!r} != {recorded!r}"]
        tolerance = NEAR_ONE_ATOL if "cosine" in key or "cosine" in parent or key == "pearson" else ATOL
        close = math.isclose(produced, recorded, rel_tol=0.0, abs_tol=tolerance)
        return [] if close else [f"{path}: {produced!r} != {recorded!r}"]
    if isinstance(recorded, str) and isinstance(produced, str):
        return [] if words(produced) == words(recorded) else [f"{path}: {produced!r} != {recorded!r}"]
    return [] if produced == recorded and type(produced) is type(recorded) else [f"{path}: {produced!r} != {recorded!r}"]


def table_differences(produced: str, recorded: str) -> list[str]:
    """sequences.csv compared row by row, column by column, as ``differences`` compares summaries."""
    read = lambda text: pd.read_csv(io.StringIO(text), keep_default_na=False)  # noqa: E731
    a, b = read(produced), read(recorded)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return [f"columns or rows: {list(a.columns)} × {len(a)} != {list(b.columns)} × {len(b)}"]
    # The balanced head's boundary is the median sequence's own logit gap: with an odd count one
    # sequence sits on it exactly (confidence 0.5), and rounding alone picks its side.
    on_the_boundary = (b["confidence_v1"] - 0.5).abs() <= ATOL
    for frame in (a, b):
        frame.loc[on_the_boundary, ["label_v1", "label_v2"]] = -1
    return differences(a.to_dict("list"), b.to_dict("list"), "sequences.csv")


def stable(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if key not in UNSTABLE}


@pytest.mark.parametrize("example", ["patterns", "real"])
def test_example_set_outputs_are_unchanged(tmp_path, capsys, recorded_threads, example):
    assert main(["compare", "--example", example, "--model", "demo-tiny", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    recorded = json.loads((GOLDEN / example / "summary.json").read_text())
    produced = json.loads((tmp_path / "summary.json").read_text())
    assert differences(stable(produced), stable(recorded)) == []
    produced_table = (tmp_path / "sequences.csv").read_text()
    assert table_differences(produced_table, (GOLDEN / example / "sequences.csv").read_text()) == []


def test_the_comparison_fails_on_a_changed_decision_label_or_number_and_not_on_noise():
    recorded = stable(json.loads((GOLDEN / "patterns" / "summary.json").read_text()))
    assert differences(copy.deepcopy(recorded), recorded) == []

    def changed(edit) -> list[str]:
        produced = copy.deepcopy(recorded)
        edit(produced)
        return differences(produced, recorded)

    noise = lambda s: (s["numerics"]["layers"][1].update(ratio=1.37, sign_p=0.06, closer_v1=5, ties=27),  # noqa: E731
                       s["reference"].update(closer="v2", error_ratio=1.37))
    assert changed(noise) == []
    assert changed(lambda s: s.update(verdict="VALIDATE")) == [".verdict: 'VALIDATE' != 'ACCEPT'"]
    assert changed(lambda s: s["cosine"].update(min=s["cosine"]["min"] - 1e-9))
    assert changed(lambda s: s["layers"][3].update(cosine_min=s["layers"][3]["cosine_min"] - 1e-9))
    assert changed(lambda s: s.update(pearson=s["pearson"] - 1e-9))
    assert changed(lambda s: s["predictions"]["heads"].update(agreement_mean=0.99)) != []
    assert changed(lambda s: s["layers"][2].update(mean_abs_diff=2e-6))
    assert changed(lambda s: s["numerics"].update(passed=False))
    assert changed(lambda s: s["predictions"]["heads"].update(counted_flips=1))
    assert changed(lambda s: s.update(label_agreement=0.9))
    assert changed(lambda s: s.update(headline={**s["headline"], "numerics": "Numerics: departs"}))
    assert changed(lambda s: s["numerics"]["layers"].pop())
    assert changed(lambda s: s["numerics"]["layers"][1].update(ratio="1.37"))  # noise keeps its type

    table = (GOLDEN / "patterns" / "sequences.csv").read_text()
    assert table_differences(table, table) == []
    frame = pd.read_csv(io.StringIO(table), keep_default_na=False)
    assert abs(frame.loc[3, "confidence_v1"] - 0.5) > 0.01
    for column, value in (("label_v1", 1 - frame.loc[3, "label_v1"]), ("cosine", frame.loc[3, "cosine"] - 1e-9),
                          ("confidence_v2", frame.loc[3, "confidence_v2"] + 1e-4), ("id", "other")):
        edited = frame.copy()
        edited.loc[3, column] = value
        assert table_differences(edited.to_csv(index=False), table), column
    edited = frame.copy()
    edited.loc[3, "closer_to_ref"] = "v2" if frame.loc[3, "closer_to_ref"] != "v2" else "v1"
    assert table_differences(edited.to_csv(index=False), table) == []
