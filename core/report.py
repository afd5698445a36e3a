"""What a comparison reports: summary.json, sequences.csv and the terminal table."""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from core.compare import EmbeddingRun
from core.metrics import MATCH_TOLERANCES, Comparison, Thresholds, compare_embeddings
from core.sequences import ParsedInput

DEMO_NOTICE = (
    "DEMO WEIGHTS: random-init ESM-2, not the pretrained model. This verdict exercises the "
    "tool and says nothing about whether v2.0 changes pretrained ESM-2 predictions."
)
SEQUENCE_COLUMNS = [
    "id", "length", "cosine", "mean_abs_diff", "max_abs_diff",
    "label_v1", "label_v2", "confidence_v1", "confidence_v2", "label_flip", "warning",
]


def compare_layer(run: EmbeddingRun, layer: int, seed: int, thresholds: Thresholds = Thresholds()) -> Comparison:
    """Metrics between the two paths' pooled embeddings at ``layer``."""
    if layer not in run.v1.layers:
        raise ValueError(f"layer {layer} was not pooled in this run (pooled: {sorted(run.v1.layers)})")
    return compare_embeddings(run.v1.layers[layer], run.v2.layers[layer], seed, thresholds)


def sequence_table(run: EmbeddingRun, comparison: Comparison, warnings_by_id: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per sequence, columns SEQUENCE_COLUMNS, in input order."""
    warnings_by_id = warnings_by_id or {}
    return pd.DataFrame(
        {
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
        },
        columns=SEQUENCE_COLUMNS,
    )


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def build_summary(
    run: EmbeddingRun,
    comparison: Comparison,
    layer: int,
    seed: int,
    warnings: list[str] | None = None,
    refused: list[dict[str, str]] | None = None,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The summary.json document (the CLI's and the dashboard's schema)."""
    failing = [seq_id for seq_id, bad in zip(run.ids, comparison.cosine_failures) if bad]
    warnings = list(warnings or [])
    if run.is_demo:
        warnings.insert(0, DEMO_NOTICE)
    return {
        "verdict": comparison.verdict,
        "recommendation": comparison.recommendation(failing),
        "demo_weights": run.is_demo,
        "label_agreement": comparison.agreement,
        "n_label_flips": int(comparison.flips.sum()),
        "pearson": _finite_or_none(comparison.pearson),
        "max_confidence_diff": comparison.max_confidence_diff,
        "cosine": comparison.distribution(comparison.cosine),
        "mean_abs_diff": float(comparison.mean_abs_diff.mean()),
        "max_abs_diff": float(comparison.max_abs_diff.max()),
        "embedding_match": {f"atol_{atol:g}": comparison.match[atol] for atol in MATCH_TOLERANCES},
        "checks": comparison.checks,
        "cosine_failures": failing,
        "n_sequences": comparison.n,
        "model": run.model,
        "weights": run.weights,
        "dtype": run.dtype,
        "layer": layer,
        "seed": seed,
        "backend_v1": run.v1.backend,
        "backend_v2": run.v2.backend,
        "device": run.device,
        "thresholds": asdict(comparison.thresholds),
        "warnings": warnings,
        "refused": list(refused or []),
        "seconds": {"v1": run.v1.seconds, "v2": run.v2.seconds},
        "versions": dict(versions or {}),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class Analysis:
    """One layer's view of a run: the metrics, the summary.json document and the per-sequence table."""

    comparison: Comparison
    summary: dict[str, Any]
    table: pd.DataFrame


def analyse(
    run: EmbeddingRun,
    layer: int,
    seed: int,
    thresholds: Thresholds = Thresholds(),
    parsed: ParsedInput | None = None,
    versions: dict[str, str] | None = None,
) -> Analysis:
    """Metrics, summary and table for ``layer`` of ``run``; ``parsed`` contributes warnings and refusals.

    Cheap (no model involved): the dashboard calls it on every redraw.
    """
    comparison = compare_layer(run, layer, seed, thresholds)
    problems = parsed.problems if parsed is not None else []
    records = parsed.records if parsed is not None else []
    summary = build_summary(
        run, comparison, layer, seed,
        warnings=[p.message for p in problems if p.severity == "warning"],
        refused=[{"id": p.record_id, "message": p.message} for p in problems if p.severity == "error"],
        versions=versions,
    )
    warnings_by_id = {r.id: "; ".join(r.warnings) for r in records if r.warnings}
    return Analysis(comparison, summary, sequence_table(run, comparison, warnings_by_id))


def write_outputs(out_dir: Path, summary: dict[str, Any], table: pd.DataFrame) -> tuple[Path, Path]:
    """Write DIR/summary.json and DIR/sequences.csv; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    csv_path = out_dir / "sequences.csv"
    summary_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    table.to_csv(csv_path, index=False)
    return summary_path, csv_path


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) lines of a summary, as the terminal table and the HTML report show them."""
    cosine = summary["cosine"]
    match = summary["embedding_match"]
    thresholds = summary["thresholds"]
    return [
        ("model", f"{summary['model']} ({summary['weights']} weights), {summary['dtype']}, layer {summary['layer']}"),
        ("device", summary["device"]),
        ("v1.0 attention", summary["backend_v1"]),
        ("v2.0 attention", summary["backend_v2"]),
        ("sequences", str(summary["n_sequences"]) + (f" ({len(summary['refused'])} refused)" if summary["refused"] else "")),
        ("cosine min / mean / max", f"{cosine['min']:.6f} / {cosine['mean']:.6f} / {cosine['max']:.6f}"),
        ("mean |v1 - v2|", f"{summary['mean_abs_diff']:.3e}"),
        ("max |v1 - v2|", f"{summary['max_abs_diff']:.3e}"),
        ("values within 1e-3 / 1e-2", f"{100 * match['atol_0.001']:.1f}% / {100 * match['atol_0.01']:.1f}%"),
        (f"label agreement (seed {summary['seed']})", f"{100 * summary['label_agreement']:.2f}% ({summary['n_label_flips']} flips)"),
        ("confidence Pearson", _fmt(summary["pearson"], ".6f")),
        ("max confidence diff", f"{summary['max_confidence_diff']:.3e}"),
        (f"cosine > {thresholds['min_cosine']:g} for all", "pass" if summary["checks"]["cosine_all_above_threshold"] else "FAIL"),
        (f"agreement >= {100 * thresholds['min_agreement']:g}%", "pass" if summary["checks"]["agreement_at_least_threshold"] else "FAIL"),
    ]


def format_summary(summary: dict[str, Any]) -> str:
    """The readable metrics table and verdict printed by the CLI."""
    rows = _summary_rows(summary)
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    banner = [f"!! {DEMO_NOTICE}", ""] if summary["demo_weights"] else []
    verdict = [
        "",
        f"  VERDICT: {summary['verdict']}" + ("  (demo weights)" if summary["demo_weights"] else ""),
        f"  {summary['recommendation']}",
    ]
    return "\n".join(banner + lines + verdict)


def html_report(summary: dict[str, Any], table: pd.DataFrame, figures: dict[str, Any]) -> str:
    """A self-contained HTML report (plotly.js inlined once): readable offline, user text escaped."""
    from core.charts import VERDICT_COLOURS  # plotly is only needed for reports and the page

    esc = html.escape
    colour = VERDICT_COLOURS[summary["verdict"]]
    banner = f'<p class="demo">{esc(DEMO_NOTICE)}</p>' if summary["demo_weights"] else ""
    rows = "".join(f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in _summary_rows(summary))
    charts = "".join(
        figure.to_html(full_html=False, include_plotlyjs=(index == 0), default_width="100%")
        for index, figure in enumerate(figures.values())
    )
    notes = [m for m in summary["warnings"] if m != DEMO_NOTICE] + [r["message"] for r in summary["refused"]]
    problems = "".join(f"<li>{esc(message)}</li>" for message in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ESM-2 attention divergence: {esc(summary['verdict'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #111; }}
.verdict {{ border-left: 12px solid {colour}; padding: 0.6em 1em; background: #f6f6f6; }}
.verdict h1 {{ color: {colour}; margin: 0; font-size: 2.6em; }}
.demo {{ background: #fff3cd; border: 2px solid #b35900; padding: 0.8em; font-weight: bold; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 0.25em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }}
</style></head><body>
{banner}
<div class="verdict"><h1>{esc(summary['verdict'])}</h1><p>{esc(summary['recommendation'])}</p></div>
<h2>Summary</h2><table>{rows}</table>
{f'<h2>Input notes</h2><ul>{problems}</ul>' if problems else ''}
<h2>Charts</h2>{charts}
<h2>Per sequence</h2>{table.to_html(index=False, escape=True, float_format=lambda v: f'{v:.8g}')}
<p><small>Created {esc(summary['created_at'])} · {esc(json.dumps(summary['versions']))}</small></p>
</body></html>
"""
