"""The readable table and headline the CLI prints (the HTML report shows the same rows)."""

from __future__ import annotations

from core.analysis.metrics import format_percent
from core.report.summary import DEMO_NOTICE, Summary

Row = tuple[str, str]

NO_CHECKS = "not run (--checks, or the page's Checks tab, runs packing invariance and determinism)"


def _what(summary: Summary) -> list[Row]:
    p = summary.provenance
    refused = f" ({len(summary.refused)} refused)" if summary.refused else ""
    return [
        ("model", f"{p.model} ({p.weights} weights), {p.dtype}, layer {p.layer}"),
        ("device", p.device),
        ("v1.0 implementation", p.impl_v1),
        ("v1.0 attention", p.backend_v1),
        ("v2.0 implementation", p.impl_v2),
        ("v2.0 attention", p.backend_v2),
        ("sequences", f"{p.n_sequences}{refused}"),
    ]


def _metrics(summary: Summary) -> list[Row]:
    c = summary.comparison
    cosine, pearson = c.distribution(c.cosine), c.pearson
    return [
        ("cosine min / mean / max", f"{cosine['min']:.6f} / {cosine['mean']:.6f} / {cosine['max']:.6f}"),
        ("mean |v1 - v2|", f"{float(c.mean_abs_diff.mean()):.3e}"),
        ("max |v1 - v2|", f"{float(c.max_abs_diff.max()):.3e}"),
        ("values within 1e-3 / 1e-2", f"{100 * c.match[1e-3]:.1f}% / {100 * c.match[1e-2]:.1f}%"),
        ("classifier", summary.classifier),
        (f"label agreement (seed {summary.seed})",
         f"{format_percent(c.agreement, 2)} ({int(c.flips.sum())} flips; "
         f"{100 * summary.balance.chosen_share:.1f}% of sequences in the larger class)"),
        ("confidence Pearson", "n/a" if pearson is None else f"{pearson:.6f}"),
        ("max confidence diff", f"{c.max_confidence_diff:.3e}"),
    ]


def _decision(summary: Summary) -> list[Row]:
    headline, thresholds = summary.headline, summary.comparison.thresholds
    votes = summary.balance.votes
    heads = votes.to_json()
    rows = [(f"agreement over {heads['n_heads']} {heads['kind']} heads",
             f"lower {100 * heads['lower_quantile']:g}% {format_percent(heads['agreement_lower'], 2)}, mean "
             f"{format_percent(heads['agreement_mean'], 2)} ({heads['counted_flips']} flips beyond the rounding "
             f"floor, {heads['rounding_flips']} within it; larger class ≤ {100 * float(votes.share.max()):.1f}%)")]
    passed = {True: "pass", False: "FAIL"}
    rows += [
        (f"cosine > {thresholds.min_cosine:g} for all", passed[not headline.cosine_failures]),
        (f"agreement >= {100 * thresholds.min_agreement:g}%", passed[headline.predictions.verdict != "FALLBACK"]),
        ("numerics equivalent to rounding", passed[headline.numerics_passed]),
    ]
    rows += [("non-finite embeddings", clause) for clause in headline.non_finite.reasons()]
    numerics = headline.numerics
    if numerics is not None:
        first = numerics.first_departure
        rows.append(("numerics sample", f"{numerics.n_sample} sequences, {numerics.kind} ({numerics.dtype}), "
                                        f"{len(numerics.layers)} layers"
                                        + ("" if first is None else f"; first departing layer {first.layer}")))
    return rows


def _evidence(summary: Summary) -> list[Row]:
    rows = []
    attribution = summary.attribution
    if attribution is not None:
        for name, error in (("v1", attribution.v1), ("v2", attribution.v2)):
            found = error.summary()
            rows.append((f"{name}.0 vs {attribution.reference_dtype} reference",
                         f"cosine min {found['cosine_min']:.8f}, mean |err| {found['mean_abs_diff']:.3e}, "
                         f"max |err| {found['max_abs_diff']:.3e}, labels {100 * found['label_agreement']:.1f}%"))
        counts = attribution.to_json()["closer_counts"]
        rows.append(("closer to reference", f"{attribution.overall_closer} (per sequence: {counts})"))
        rows.append((f"FlashAttention rule (≤ {attribution.k:g}×)", "pass" if attribution.rule_passed else "FAIL"))
    cache = summary.cache
    if cache is not None:
        rows.append(("embedding cache", f"{cache.hits} from cache, {cache.computed} computed ({cache.dir})"))
    if summary.world_size > 1:
        rows.append(("processes", f"{summary.world_size} (torchrun)"))
    for check in summary.checks:
        rows.append((check.name, f"{'pass' if check.passed else 'FAIL'} (max |diff| {check.max_abs_diff:.3e}, "
                                 f"{check.n_sequences} sequences)"))
    if not summary.checks:
        rows.append(("v2.0 checks", NO_CHECKS))
    return rows


def summary_rows(summary: Summary) -> list[Row]:
    """(name, value) lines of a summary, as the terminal table and the HTML report show them."""
    return _what(summary) + _metrics(summary) + _decision(summary) + _evidence(summary)


def headline_lines(summary: Summary) -> list[str]:
    """The verdict block: verdict, recommendation, the predictions and numerics lines, the seed rule,
    and any proxy-balance warning."""
    demo = "  (demo weights)" if summary.provenance.demo else ""
    headline = summary.headline
    return ([f"VERDICT: {summary.verdict}{demo}", headline.recommendation(), *headline.lines()]
            + [f"warning: {warning}" for warning in summary.balance.warnings])


def format_summary(summary: Summary) -> str:
    """The readable metrics table and verdict printed by the CLI."""
    rows = summary_rows(summary)
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    banner = [f"!! {DEMO_NOTICE}", ""] if summary.provenance.demo else []
    return "\n".join(banner + lines + [""] + [f"  {line}" for line in headline_lines(summary)])
