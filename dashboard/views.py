"""What the page shows, computed without Streamlit: labels, the verdict card's HTML, the KPIs, captions,
progress text. dashboard/app.py lays these out; tests/test_views.py checks them directly."""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd
import torch

from core.analysis.checks import CheckResult
from core.analysis.metrics import format_percent
from core.analysis.numerics_gate import NumericsGate
from core.analysis.proxies import UNINFORMATIVE_SHARE, HeadVotes
from core.embed.cache import CacheStats
from core.input.records import ParsedInput
from core.numerics.environment import device_or_cpu
from core.numerics.specs import PRETRAINED, ModelSpec, demo_specs, pretrained_available
from core.report.charts import VERDICT_COLOURS
from core.report.summary import Summary
from dashboard.runs import RunInfo
from dashboard.settings import Settings

CHECKPOINT = "Local checkpoint file…"
REFERENCES = {"auto": "auto (fp32 on a GPU, fp64 on a CPU)", "fp32": "fp32 (TF32 off)", "fp64": "fp64",
              "none": "none: v1.0's rounding floor"}
PROXIES = {"balanced": "balanced (centred on v1.0)", "seed": "the seed's uncentred heads"}
EXAMPLES = {"patterns": "Repeat patterns (18)", "real": "Real proteins (9)", "all": "All examples (27)"}
PATH_LABELS = {"v1.0": "v1.0 standard path", "v2.0": "v2.0 packed path",
               "reference": "numerics sample (reference or rounding floor)"}
SETTINGS_THAT_RECOMPUTE = ("model", "dtype", "device", "backend", "v2", "reference", "reference_sample")


def model_label(choice: str) -> str:
    if choice in PRETRAINED:
        return f"{choice} — {'weights here' if pretrained_available(choice) else 'downloads on first use'}"
    if choice in demo_specs():
        return f"{choice} — DEMO random weights"
    return choice


def num_layers_of(spec: str) -> int | None:
    """Layer count from the model name, or None for a checkpoint (known once loaded)."""
    if not ModelSpec.is_named(spec):
        return None
    try:
        return ModelSpec.parse(spec).architecture.num_layers
    except ValueError:
        return None


def device_notice(requested: str) -> str | None:
    """Why a link's CUDA device became the CPU here (a link made on a GPU host, opened on one without)."""
    if not requested.startswith("cuda"):
        return None
    try:
        return device_or_cpu(torch.device(requested))[1]
    except RuntimeError:
        return None


def verdict_card_html(summary: Summary, font_scale: float) -> str:
    """The verdict card: verdict, recommendation, the predictions and numerics lines, the seed rule and what
    was compared. Every interpolated value is escaped."""
    p, headline = summary.provenance, summary.headline
    colour = VERDICT_COLOURS[summary.verdict]
    compared = (f"{p.model} ({p.weights} weights) · {p.dtype} · layer {p.layer} · v1.0 {p.impl_v1} ({p.backend_v1}) "
                f"vs v2.0 {p.impl_v2} · {p.device} · {p.n_sequences} sequences · classifier: {summary.classifier}")
    predictions, numerics, seed_rule = headline.lines()
    lines = "".join(
        f'<div style="font-size: {1.05 * font_scale}rem; margin-top: 0.25rem;"><b>{html.escape(label)}</b> '
        f"{html.escape(text)}</div>"
        for label, text in (("Predictions:", predictions.split(": ", 1)[1]), ("Numerics:", numerics.split(": ", 1)[1]),
                            ("Checks:", checks_line(summary.checks)))
    )
    return f"""<div style="border-left: 14px solid {colour}; background: #f6f7f9; padding: 0.8rem 1.2rem; border-radius: 6px;">
<div style="color: {colour}; font-size: {3.2 * font_scale}rem; font-weight: 800; line-height: 1.1;">{html.escape(summary.verdict)}</div>
<div style="font-size: {1.25 * font_scale}rem; margin-top: 0.3rem;">{html.escape(headline.recommendation())}</div>
{lines}
<div style="color: #555; font-size: {0.95 * font_scale}rem; margin-top: 0.3rem;">{html.escape(seed_rule)}</div>
<div style="color: #555; font-size: {0.9 * font_scale}rem; margin-top: 0.4rem;">{html.escape(compared)}</div></div>"""


def checks_line(checks: tuple[CheckResult, ...]) -> str:
    """The card's word on v2.0's own checks: not run (they are asked for in the Checks tab), passed, or
    which failed."""
    if not checks:
        return "not run — the Checks tab runs packing invariance and determinism (two more v2.0 passes)."
    failed = [check.name for check in checks if not check.passed]
    if failed:
        return f"failed ({', '.join(failed)}), so ACCEPT is withheld."
    return f"passed ({', '.join(check.name for check in checks)})."


@dataclass(frozen=True)
class Kpi:
    label: str
    value: str
    delta: str | None = None
    colour: str = "off"  # st.metric's delta_color
    help: str | None = None


def kpis(summary: Summary) -> list[Kpi]:
    """The KPI row: the chosen head's agreement with its balance, the deciding heads, cosine, confidence, values."""
    c, votes = summary.comparison, summary.balance.votes
    flips, share = int(c.flips.sum()), summary.balance.chosen_share
    heads = votes.to_json()
    pearson = c.pearson
    return [
        Kpi("Label agreement", format_percent(c.agreement), f"{flips} flip{'s' * (flips != 1)} · {share:.0%} in the larger class",
            "red" if flips or share > UNINFORMATIVE_SHARE else "green",
            "The chosen seed's head. Above 90% in one class its agreement cannot fall (uninformative)."),
        Kpi(f"Agreement, {heads['n_heads']} heads", format_percent(heads["agreement_lower"]),
            f"lower 2.5% · {heads['counted_flips']} flips count", "red" if heads["counted_flips"] else "green"),
        Kpi("Min cosine", f"{float(c.cosine.min()):.6f}"),
        Kpi("Confidence Pearson", "n/a" if pearson is None else f"{pearson:.6f}"),
        Kpi("Max confidence diff", f"{c.max_confidence_diff:.2e}"),
        Kpi("Values within 1e-3 / 1e-2", f"{c.match[1e-3]:.1%}", f"{c.match[1e-2]:.1%} within 1e-2"),
    ]


def cache_caption(cache: CacheStats | None) -> str | None:
    """'Embedding cache: 27 of 27 sequences from the cache, 0 computed', or None when the cache was off."""
    if cache is None:
        return None
    return f"Embedding cache: {cache.hits} of {cache.hits + cache.computed} sequences from the cache, {cache.computed} computed"


def numerics_caption(numerics: NumericsGate) -> str:
    return (f"A layer departs when v2.0's max error exceeds {numerics.layers[0].bound:g}× v1.0's (FlashAttention's "
            "rule; without a reference, that many rounding floors) or when one path is closer to the reference on "
            "too many sequences to be chance (two-sided sign test, family-wise level "
            f"{numerics.alpha:g} over the layers). v2.0 also runs the sample deep in one pack at the first attention "
            "layer, so a result that depends on where a sequence sits in its pack shows.")


def numerics_table(numerics: NumericsGate) -> pd.DataFrame:
    """One row per test: every layer with v2.0 in its own batches, then the deep-pack test."""
    rows = [{"v2.0 packed": "own batches"} | layer.to_json() for layer in numerics.layers]
    if numerics.deep_pack is not None:
        rows.append({"v2.0 packed": "deep in one pack"} | numerics.deep_pack.to_json())
    return pd.DataFrame(rows)


def heads_text(votes: HeadVotes) -> str:
    heads = votes.to_json()
    return (f"{heads['n_heads']} {heads['kind']} heads: agreement judged on the lower 2.5% "
            f"**{heads['agreement_lower']:.2%}**, mean **{heads['agreement_mean']:.2%}**; "
            f"{heads['counted_flips']} flip(s) beyond each head's rounding floor count, "
            f"{heads['rounding_flips']} within it do not.")


def input_banner(parsed: ParsedInput, source: str) -> tuple[str, str]:
    """('error' | 'warning' | 'success', the line above the input's problem table)."""
    counts = f"{len(parsed.records)} valid sequence(s) from the {source}"
    if parsed.errors:
        also = f" and {len(parsed.warnings)} warning(s)" if parsed.warnings else ""
        return "error", (f"{counts}; {len(parsed.errors)} record(s) refused{also} — listed below. The valid ones "
                         "will still run.")
    if parsed.warnings:
        return "warning", f"{counts}; {len(parsed.warnings)} warning(s) — listed below."
    return "success", counts


def problems_table(parsed: ParsedInput) -> pd.DataFrame:
    """Per-record problems as plain text (never markup)."""
    return pd.DataFrame([{"": "refused" if p.severity == "error" else "warning", "record": p.record_id,
                          "problem": p.message} for p in parsed.problems])


def changed_since(used: Settings, settings: Settings, typed_model: str) -> bool:
    """Whether the sidebar now asks for other embeddings than the shown run has (``typed_model``: the
    sidebar's model as a run would record it)."""
    now = {name: getattr(settings, name) for name in SETTINGS_THAT_RECOMPUTE} | {"model": typed_model}
    return any(getattr(used, name) != now[name] for name in SETTINGS_THAT_RECOMPUTE)


def progress_fraction(stage: str, done: int, total: int, stages: tuple[str, ...]) -> float:
    """Share of the whole job done when ``stage`` has done ``done`` of ``total`` sequences."""
    return min((stages.index(stage) * total + done) / (len(stages) * total), 1.0)


def progress_text(stage: str, done: int, total: int) -> str:
    return f"{PATH_LABELS[stage]}: {done}/{total} sequences"


def live_throughput(stage: str, done: int, total: int, stages: tuple[str, ...], elapsed: float) -> str:
    """' · 52 sequences/s · about 40 s left', measured on the running job itself; '' before any progress."""
    fraction = progress_fraction(stage, done, total, stages)
    if fraction <= 0 or elapsed <= 0:
        return ""
    rate = fraction * len(stages) * total / elapsed  # sequences through one path per second
    left = elapsed * (1 - fraction) / fraction
    return f" · {rate:,.0f} sequences/s per path · about {left:.0f} s left"


TABLE_ROWS = 1_000  # rows the per-sequence table shows; sequences.csv has them all

FAILED_CHECKS_NOTE = ("A failed check withholds ACCEPT: the verdict above is VALIDATE at best, and summary.json and "
                      "report.html say why.")


def shown_table(table: pd.DataFrame, limit: int = TABLE_ROWS) -> tuple[pd.DataFrame, str | None]:
    """The per-sequence table as the page shows it: whole when it has at most ``limit`` rows, else the
    ``limit`` lowest-cosine rows (most divergent first), with the caption that says so."""
    if len(table) <= limit:
        return table, None
    worst = table.sort_values("cosine", kind="stable").head(limit)
    return worst, (f"Showing the {limit:,} most divergent (lowest-cosine) of {len(table):,} sequences; "
                   "sequences.csv has every one.")


RESIDUE_CHOICES = 500  # sequences the residue track offers on a large run


def residue_choices(table: pd.DataFrame, limit: int = RESIDUE_CHOICES) -> list[str]:
    """Sequence ids the residue track offers: all in input order, or on a large run the ``limit`` most
    divergent, lowest cosine first."""
    if len(table) <= limit:
        return list(table["id"])
    return list(table.sort_values("cosine", kind="stable")["id"].head(limit))


def precision_note(half_layers: set[int], layer: int) -> str | None:
    """Why the numbers at ``layer`` are approximate (it is kept compact, dashboard.compact), or None."""
    if layer not in half_layers:
        return None
    return (f"Layer {layer} is kept compact in this saved run (v1.0 in float16, v2.0 − v1.0 to about 3 significant "
            "digits; the numerics sample exact): its distances are good to about 0.1%, and a label near a head's "
            "boundary may differ from a full-precision run. Press Run with this layer chosen for full precision.")


def history_label(info: RunInfo) -> str:
    """One run-history button: when, how many sequences, its state; for a damaged run what is wrong."""
    when = info.created_at[:16].replace("T", " ")
    if info.state == "damaged":
        return f"{when} · {info.error or 'damaged'}"
    return f"{when} · {info.n_sequences} seq · {info.state}"


REFILL_MAX_RESIDUES = 1_000_000  # a reopened run's input goes back into the text area up to this size


def refills_text(parsed: ParsedInput) -> bool:
    """Whether a reopened run's records go back into the text area: not for a large run, whose text
    (tens of MB) every rerun would send to the browser and parse again."""
    return sum(len(record.sequence) for record in parsed.records) <= REFILL_MAX_RESIDUES
