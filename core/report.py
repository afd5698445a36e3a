"""What a comparison reports: summary.json, sequences.csv and the terminal table."""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.attribution import DEFAULT_K, Attribution, attribute
from core.checks import CheckResult
from core.compare import EmbeddingRun
from core.layers import layer_profile
from core.metrics import (
    MATCH_TOLERANCES, Classifier, Comparison, ProxyClassifier, Thresholds, binomial_interval, compare_embeddings,
    format_percent,
)
from core.numerics_gate import NumericsGate, numerics_gate, rounding_noise
from core.proxies import DEFAULT_HEADS, UNINFORMATIVE_SHARE, HeadBank, HeadVotes, ProxyKind, proxy_head, vote
from core.sequences import ParsedInput
from core.verdict import Headline, SeedRule, predictions_from_head, predictions_from_votes

DEMO_NOTICE = (
    "DEMO WEIGHTS: random-init ESM-2, not the pretrained model. This verdict exercises the "
    "tool and says nothing about whether v2.0 changes pretrained ESM-2 predictions."
)


def compare_layer(
    run: EmbeddingRun, layer: int, seed: int, thresholds: Thresholds = Thresholds(), classifier: Classifier | None = None
) -> Comparison:
    """Metrics between the two paths' pooled embeddings at ``layer`` (the seed's uncentred head unless
    ``classifier`` is given)."""
    if layer not in run.v1.layers:
        raise ValueError(f"layer {layer} was not pooled in this run (pooled: {sorted(run.v1.layers)})")
    return compare_embeddings(run.v1.layers[layer], run.v2.layers[layer], seed, thresholds, classifier)


def majority_share(labels: np.ndarray) -> float:
    """Share of the sequences in the most common label, (n,) int labels -> float."""
    return float(np.bincount(np.asarray(labels, dtype=np.int64)).max() / labels.size)


@dataclass
class Analysis:
    """One layer's view of a run: the chosen head's metrics, the proxy heads, the numerics gate, the
    headline they give, and the summary.json document and per-sequence table built from them."""

    comparison: Comparison
    votes: HeadVotes
    numerics: NumericsGate | None
    headline: Headline
    attribution: Attribution | None
    summary: dict[str, Any]
    table: pd.DataFrame


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


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def proxy_balance(comparison: Comparison, votes: HeadVotes, seed_rule: SeedRule, chosen: str) -> dict[str, Any]:
    """summary.json's "proxy_balance": each head's majority-class share under v1.0, with a warning for every
    head that puts more than UNINFORMATIVE_SHARE of the sequences in one class (its agreement cannot fall)."""
    chosen_share = majority_share(comparison.labels_v1)
    warnings = []
    if chosen_share > UNINFORMATIVE_SHARE:
        warnings.append(f"{chosen} puts {100 * chosen_share:.1f}% of sequences in one class: its agreement cannot "
                        "fall (uninformative)")
    uninformative = votes.uninformative
    if uninformative.any():
        warnings.append(f"{int(uninformative.sum())} of {votes.bank.size} {votes.bank.kind} proxy heads put more than "
                        f"{100 * UNINFORMATIVE_SHARE:g}% of sequences in one class: their agreement cannot fall "
                        "(uninformative)")
    if not seed_rule.informative:
        warnings.append(f"the seed rule's uncentred head (seed {seed_rule.seed}) puts {100 * seed_rule.share:.1f}% of "
                        "sequences in one class: its agreement cannot fall (uninformative)")
    return {
        "kind": votes.bank.kind,
        "uninformative_above": UNINFORMATIVE_SHARE,
        "chosen_head": {"name": chosen, "majority_share": chosen_share, "informative": chosen_share <= UNINFORMATIVE_SHARE},
        "heads": {"n": votes.bank.size, "seeds": votes.bank.seeds.tolist(), "majority_share": votes.share.tolist(),
                  "n_uninformative": int(uninformative.sum())},
        "seed_rule_head": {"seed": seed_rule.seed, "majority_share": seed_rule.share, "informative": seed_rule.informative},
        "warnings": warnings,
    }


def build_summary(
    run: EmbeddingRun,
    comparison: Comparison,
    headline: Headline,
    layer: int,
    seed: int,
    warnings: list[str] | None = None,
    refused: list[dict[str, str]] | None = None,
    versions: dict[str, str] | None = None,
    *,
    classifier: str,
    proxy_balance: dict[str, Any],
    attribution: Attribution | None = None,
    profile: list[dict] | None = None,
    checks: list[CheckResult] | None = None,
    cache: dict[str, Any] | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """The summary.json document (the CLI's and the dashboard's schema).

    ``cache``: the embedding cache's ``{"dir", "hits", "computed"}`` (None when it was off);
    ``world_size``: how many processes embedded the set (torchrun), 1 when not given.
    """
    warnings = list(warnings or [])
    if run.is_demo:
        warnings.insert(0, DEMO_NOTICE)
    predictions_line, numerics_line, seed_rule_line = headline.lines()
    return {
        "verdict": headline.verdict,
        "headline": {"predictions": predictions_line, "numerics": numerics_line, "seed_rule": seed_rule_line},
        "recommendation": headline.recommendation(),
        "demo_weights": run.is_demo,
        "predictions": headline.predictions.to_summary(),
        "numerics": headline.numerics.to_summary() if headline.numerics is not None else None,
        "proxy_balance": proxy_balance,
        "seed_rule": headline.seed_rule.to_summary(),
        "label_agreement": comparison.agreement,
        "label_agreement_interval": dict(zip(("low", "high"), binomial_interval(comparison.n_agree, comparison.n)))
        | {"method": "Wilson 95%, over sequences"},
        "n_label_flips": int(comparison.flips.sum()),
        "pearson": _finite_or_none(comparison.pearson),
        "max_confidence_diff": comparison.max_confidence_diff,
        "cosine": comparison.distribution(comparison.cosine),
        "mean_abs_diff": float(comparison.mean_abs_diff.mean()),
        "max_abs_diff": float(comparison.max_abs_diff.max()),
        "embedding_match": {f"atol_{atol:g}": comparison.match[atol] for atol in MATCH_TOLERANCES},
        "checks": {
            "cosine_all_above_threshold": not headline.cosine_failures,
            "agreement_at_least_threshold": headline.predictions.verdict != "FALLBACK",
            "numerics_equivalent": headline.numerics_passed,
        },
        "cosine_failures": list(headline.cosine_failures),
        "n_sequences": comparison.n,
        "model": run.model,
        "weights": run.weights,
        "dtype": run.dtype,
        "layer": layer,
        "seed": seed,
        "classifier": classifier,
        "backend_v1": run.v1.backend,
        "backend_v2": run.v2.backend,
        "impl_v1": run.v1.implementation,
        "impl_v2": run.v2.implementation,
        "device": run.device,
        "thresholds": asdict(comparison.thresholds),
        "reference": attribution.to_summary() if attribution is not None else None,
        "layers": list(profile or []),
        "checks_v2": [check.to_summary() for check in checks or []],
        "cache": dict(cache) if cache is not None else None,
        "world_size": int(world_size) if world_size is not None else 1,
        "warnings": warnings,
        "refused": list(refused or []),
        "seconds": {"v1": run.v1.seconds, "v2": run.v2.seconds}
        | ({"reference": run.yardstick.seconds} if run.yardstick is not None else {}),
        "versions": dict(versions or {}),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def analyse(
    run: EmbeddingRun,
    layer: int,
    seed: int,
    thresholds: Thresholds = Thresholds(),
    parsed: ParsedInput | None = None,
    versions: dict[str, str] | None = None,
    *,
    proxy: ProxyKind = "balanced",
    n_heads: int = DEFAULT_HEADS,
    classifier: Classifier | None = None,
    classifier_name: str | None = None,
    k: float = DEFAULT_K,
    checks: list[CheckResult] | None = None,
    cache: dict[str, Any] | None = None,
    world_size: int | None = None,
) -> Analysis:
    """The headline, metrics, summary and table for ``layer`` of ``run``; ``parsed`` contributes warnings
    and refusals.

    Predictions are decided by ``n_heads`` proxy heads of kind ``proxy`` (seeds 0 … n_heads − 1; the
    chosen ``seed``'s head alone when 0), or by ``classifier`` (a user's head) alone; the numerics gate
    runs over every pooled layer with FlashAttention's rule at ``k``. Cheap (no model involved): the
    dashboard calls it on every redraw. ``cache`` and ``world_size`` are recorded as they are.
    """
    if layer not in run.v1.layers:
        raise ValueError(f"layer {layer} was not pooled in this run (pooled: {sorted(run.v1.layers)})")
    v1, v2 = run.v1.layers[layer], run.v2.layers[layer]
    chosen = classifier or proxy_head(proxy, seed, v1)
    chosen_name = classifier_name or (f"{'balanced' if proxy == 'balanced' else 'uncentred'} proxy "
                                      f"(random linear {v1.shape[1]}→2, seed {seed})")
    comparison = compare_embeddings(v1, v2, seed, thresholds, chosen)
    noise = rounding_noise(run, layer)
    votes = vote(HeadBank.build(proxy, range(n_heads) if n_heads > 0 else [seed], v1), v1, v2, noise, k)
    predictions = (predictions_from_head(comparison, chosen_name, thresholds) if classifier is not None
                   else predictions_from_votes(votes, thresholds))
    seed_comparison = compare_embeddings(v1, v2, seed, thresholds, ProxyClassifier.from_seed(v1.shape[1], seed))
    seed_rule = SeedRule(seed_comparison, seed, majority_share(seed_comparison.labels_v1))
    gate = numerics_gate(run, k)
    failing = tuple(seq_id for seq_id, bad in zip(run.ids, comparison.cosine_failures) if bad)
    headline = Headline(predictions, gate, failing, thresholds, seed_rule)
    sample = run.reference_sample
    attribution = (
        attribute(v1[sample.indices], v2[sample.indices], sample.reference_rows(layer), chosen, k, sample.dtype)
        if sample is not None and sample.indices.size else None
    )
    problems = parsed.problems if parsed is not None else []
    records = parsed.records if parsed is not None else []
    summary = build_summary(
        run, comparison, headline, layer, seed,
        warnings=[p.message for p in problems if p.severity == "warning"],
        refused=[{"id": p.record_id, "message": p.message} for p in problems if p.severity == "error"],
        versions=versions,
        classifier=chosen_name,
        proxy_balance=proxy_balance(comparison, votes, seed_rule, chosen_name),
        attribution=attribution,
        profile=layer_profile(run, seed, proxy),
        checks=checks,
        cache=cache,
        world_size=world_size,
    )
    warnings_by_id = {r.id: "; ".join(r.warnings) for r in records if r.warnings}
    table = sequence_table(run, comparison, warnings_by_id, attribution, votes)
    return Analysis(comparison, votes, gate, headline, attribution, summary, table)


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Text cells starting with = + - @ get a leading ' so a spreadsheet shows them instead of running them."""
    safe = table.copy()
    for column in ("id", "warning"):
        if column in safe:
            safe[column] = [f"'{value}" if str(value)[:1] in ("=", "+", "-", "@") else value for value in safe[column]]
    return safe


def write_outputs(out_dir: Path, summary: dict[str, Any], table: pd.DataFrame) -> tuple[Path, Path]:
    """Write DIR/summary.json and DIR/sequences.csv; returns both paths.

    Both files are written under temporary names first and moved into place only when both are
    complete, so a full disk or a crash never leaves a truncated file, nor a summary that belongs
    to another run than the table beside it. Raises OSError.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path, csv_path = out_dir / "summary.json", out_dir / "sequences.csv"
    partial = {path: path.with_name(f".{path.name}.partial") for path in (summary_path, csv_path)}
    try:
        partial[summary_path].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        spreadsheet_safe(table).to_csv(partial[csv_path], index=False)
        for final, temporary in partial.items():
            os.replace(temporary, final)
    finally:
        for temporary in partial.values():
            temporary.unlink(missing_ok=True)
    return summary_path, csv_path


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) lines of a summary, as the terminal table and the HTML report show them."""
    cosine = summary["cosine"]
    match = summary["embedding_match"]
    thresholds = summary["thresholds"]
    balance = summary["proxy_balance"]
    heads = summary["predictions"]["heads"]
    rows = [
        ("model", f"{summary['model']} ({summary['weights']} weights), {summary['dtype']}, layer {summary['layer']}"),
        ("device", summary["device"]),
        ("v1.0 implementation", summary["impl_v1"]),
        ("v1.0 attention", summary["backend_v1"]),
        ("v2.0 implementation", summary["impl_v2"]),
        ("v2.0 attention", summary["backend_v2"]),
        ("sequences", str(summary["n_sequences"]) + (f" ({len(summary['refused'])} refused)" if summary["refused"] else "")),
        ("cosine min / mean / max", f"{cosine['min']:.6f} / {cosine['mean']:.6f} / {cosine['max']:.6f}"),
        ("mean |v1 - v2|", f"{summary['mean_abs_diff']:.3e}"),
        ("max |v1 - v2|", f"{summary['max_abs_diff']:.3e}"),
        ("values within 1e-3 / 1e-2", f"{100 * match['atol_0.001']:.1f}% / {100 * match['atol_0.01']:.1f}%"),
        ("classifier", summary["classifier"]),
        (f"label agreement (seed {summary['seed']})",
         f"{format_percent(summary['label_agreement'], 2)} ({summary['n_label_flips']} flips; "
         f"{100 * balance['chosen_head']['majority_share']:.1f}% of sequences in the larger class)"),
        ("confidence Pearson", _fmt(summary["pearson"], ".6f")),
        ("max confidence diff", f"{summary['max_confidence_diff']:.3e}"),
    ]
    if heads:
        rows.append((f"agreement over {heads['n_heads']} {heads['kind']} heads",
                     f"lower {100 * heads['lower_quantile']:g}% {format_percent(heads['agreement_lower'], 2)}, mean "
                     f"{format_percent(heads['agreement_mean'], 2)} ({heads['counted_flips']} flips beyond the rounding "
                     f"floor, {heads['rounding_flips']} within it; larger class ≤ "
                     f"{100 * max(balance['heads']['majority_share']):.1f}%)"))
    rows += [
        (f"cosine > {thresholds['min_cosine']:g} for all", "pass" if summary["checks"]["cosine_all_above_threshold"] else "FAIL"),
        (f"agreement >= {100 * thresholds['min_agreement']:g}%", "pass" if summary["checks"]["agreement_at_least_threshold"] else "FAIL"),
        ("numerics equivalent to rounding", "pass" if summary["checks"]["numerics_equivalent"] else "FAIL"),
    ]
    numerics = summary.get("numerics")
    if numerics:
        first = numerics["first_departing_layer"]
        rows.append(("numerics sample", f"{numerics['n_sample']} sequences, {numerics['kind']} "
                                        f"({numerics['dtype']}), {len(numerics['layers'])} layers"
                                        + ("" if first is None else f"; first departing layer {first}")))
    reference = summary.get("reference")
    if reference:
        for path in ("v1", "v2"):
            error = reference[f"{path}_error"]
            rows.append((f"{path}.0 vs {reference['dtype']} reference",
                         f"cosine min {error['cosine_min']:.8f}, mean |err| {error['mean_abs_diff']:.3e}, "
                         f"max |err| {error['max_abs_diff']:.3e}, labels {100 * error['label_agreement']:.1f}%"))
        rows.append(("closer to reference", f"{reference['closer']} (per sequence: {reference['closer_counts']})"))
        rows.append((f"FlashAttention rule (≤ {reference['k']:g}×)", "pass" if reference["rule_passed"] else "FAIL"))
    cache = summary.get("cache")
    if cache:
        rows.append(("embedding cache", f"{cache['hits']} from cache, {cache['computed']} computed ({cache['dir']})"))
    if summary.get("world_size", 1) > 1:
        rows.append(("processes", f"{summary['world_size']} (torchrun)"))
    for check in summary.get("checks_v2") or []:
        rows.append((check["name"], f"{'pass' if check['passed'] else 'FAIL'} (max |diff| {check['max_abs_diff']:.3e}, "
                                    f"{check['n_sequences']} sequences)"))
    return rows


def headline_lines(summary: dict[str, Any]) -> list[str]:
    """The verdict block: verdict, recommendation, the predictions and numerics lines, the seed rule,
    and any proxy-balance warning."""
    headline = summary["headline"]
    demo = "  (demo weights)" if summary["demo_weights"] else ""
    lines = [f"VERDICT: {summary['verdict']}{demo}", summary["recommendation"],
             headline["predictions"], headline["numerics"], headline["seed_rule"]]
    return lines + [f"warning: {w}" for w in summary["proxy_balance"]["warnings"]]


def format_summary(summary: dict[str, Any]) -> str:
    """The readable metrics table and verdict printed by the CLI."""
    rows = _summary_rows(summary)
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    banner = [f"!! {DEMO_NOTICE}", ""] if summary["demo_weights"] else []
    return "\n".join(banner + lines + [""] + [f"  {line}" for line in headline_lines(summary)])


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
    headline = "".join(f'<p class="line">{esc(line)}</p>' for line in headline_lines(summary)[2:])
    notes = [m for m in summary["warnings"] if m != DEMO_NOTICE] + [r["message"] for r in summary["refused"]]
    problems = "".join(f"<li>{esc(message)}</li>" for message in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ESM-2 attention divergence: {esc(summary['verdict'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #111; }}
.verdict {{ border-left: 12px solid {colour}; padding: 0.6em 1em; background: #f6f6f6; }}
.verdict h1 {{ color: {colour}; margin: 0; font-size: 2.6em; }}
.line {{ margin: 0.2em 0; }}
.demo {{ background: #fff3cd; border: 2px solid #b35900; padding: 0.8em; font-weight: bold; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 0.25em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }}
</style></head><body>
{banner}
<div class="verdict"><h1>{esc(summary['verdict'])}</h1><p>{esc(summary['recommendation'])}</p>{headline}</div>
<h2>Summary</h2><table>{rows}</table>
{f'<h2>Input notes</h2><ul>{problems}</ul>' if problems else ''}
<h2>Charts</h2>{charts}
<h2>Per sequence</h2>{table.to_html(index=False, escape=True, float_format=lambda v: f'{v:.8g}')}
<p><small>Created {esc(summary['created_at'])} · {esc(json.dumps(summary['versions']))}</small></p>
</body></html>
"""
