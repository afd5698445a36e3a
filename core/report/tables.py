"""sequences.csv: one row per sequence; and writing the summary and the table together, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.analysis.attribution import Attribution
from core.analysis.metrics import Comparison
from core.analysis.proxies import HeadVotes
from core.embed.run import EmbeddingRun

if TYPE_CHECKING:
    from core.report.summary import Summary


def sequence_table(
    run: EmbeddingRun,
    comparison: Comparison,
    warnings_by_id: dict[str, str] | None = None,
    attribution: Attribution | None = None,
    votes: HeadVotes | None = None,
) -> pd.DataFrame:
    """One row per sequence, in input order; reference columns (on the numerics sample, empty for the
    other rows) and proxy-head columns when those were computed."""
    warnings_by_id = warnings_by_id or {}
    columns = {
        "id": run.ids,
        "length": run.lengths,
        "cosine": comparison.cosine,
        "mean_abs_diff": comparison.mean_abs_diff,
        "max_abs_diff": comparison.max_abs_diff,
        "label_v1": comparison.labels_v1,
        "label_v2": comparison.labels_v2,
        "confidence_v1": comparison.confidence_v1,
        "confidence_v2": comparison.confidence_v2,
        "label_flip": comparison.flips,
        "warning": [warnings_by_id.get(seq_id, "") for seq_id in run.ids],
    }
    if attribution is not None:
        rows = run.reference_sample.indices
        sampled = np.zeros(len(run.ids), dtype=bool)
        sampled[rows] = True
        columns["in_reference_sample"] = sampled
        for name, values in (("cosine_v1_ref", attribution.v1.cosine), ("cosine_v2_ref", attribution.v2.cosine),
                             ("mean_abs_err_v1", attribution.v1.mean_abs), ("mean_abs_err_v2", attribution.v2.mean_abs)):
            column = np.full(len(run.ids), np.nan)
            column[rows] = values
            columns[name] = column
        closer = np.full(len(run.ids), "", dtype=object)
        closer[rows] = attribution.closer
        columns["closer_to_ref"] = closer
    if votes is not None:
        columns["flip_rate_over_heads"] = votes.flips.mean(axis=0)
        columns["counted_flips_over_heads"] = votes.counted.sum(axis=0)
    return pd.DataFrame(columns)


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Text cells starting with = + - @ get a leading ' so a spreadsheet shows them instead of running them."""
    safe = table.copy()
    for column in ("id", "warning"):
        if column in safe:
            safe[column] = [f"'{value}" if str(value)[:1] in ("=", "+", "-", "@") else value for value in safe[column]]
    return safe


def write_outputs(out_dir: Path, summary: Summary, table: pd.DataFrame) -> tuple[Path, Path]:
    """Write DIR/summary.json and DIR/sequences.csv; returns both paths.

    Both files are written under temporary names first and moved into place only when both are
    complete, so a full disk or a crash never leaves a truncated file, nor a summary that belongs
    to another run than the table beside it. Raises OSError.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path, csv_path = out_dir / "summary.json", out_dir / "sequences.csv"
    partial = {path: path.with_name(f".{path.name}.partial") for path in (summary_path, csv_path)}
    try:
        partial[summary_path].write_text(json.dumps(summary.to_json(), indent=2, allow_nan=False) + "\n")
        spreadsheet_safe(table).to_csv(partial[csv_path], index=False)
        for final, temporary in partial.items():
            os.replace(temporary, final)
    finally:
        for temporary in partial.values():
            temporary.unlink(missing_ok=True)
    return summary_path, csv_path
