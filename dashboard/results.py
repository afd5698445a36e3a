"""A finished run on the page: the verdict card, the KPIs and the tabs, at the sidebar's layer, seed,
heads and thresholds (no model involved, except the residue track and the checks, which queue GPU work)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.analysis.analyse import Analysis, analyse
from core.analysis.checks import CheckResult
from core.analysis.heads import HeadClassifier, HeadError
from core.embed.cache import CacheStats
from core.input.head_files import load_extra_features, load_head
from core.input.records import ParsedInput
from core.numerics.environment import versions
from core.report import charts
from core.report.html import html_report
from core.report.sampling import sampling_caption
from core.report.summary import DEMO_NOTICE, Summary
from core.report.tables import spreadsheet_safe
from dashboard import views
from dashboard.markup import plain
from dashboard.settings import Settings, options_for, shown_layer
from dashboard.memo import memo_for
from dashboard.state import failure_message, model_refusal, residue_view, v2_checks

T = TypeVar("T")


def verdict_card(summary: Summary, font_scale: float) -> None:
    st.markdown(views.verdict_card_html(summary, font_scale), unsafe_allow_html=True)  # escaped in views


def kpi_row(summary: Summary) -> None:
    for column, kpi in zip(st.columns(6), views.kpis(summary)):
        column.metric(kpi.label, kpi.value, kpi.delta, delta_color=kpi.colour, delta_arrow="off", help=kpi.help)
    for warning in summary.balance.warnings:
        st.warning(plain(warning), icon="⚠️")  # names the user's head file


def cache_notice(cache: CacheStats | None) -> None:
    """The cache caption under the KPIs, and its warning when the cache could not be used (nothing when off)."""
    caption = views.cache_caption(cache)
    if caption is None:
        return
    if cache.warning:
        st.warning(f"Embedding cache: {cache.warning}", icon="⚠️")
    st.caption(caption, help=f"Cache directory: {cache.dir}")


def head_section(ids: list[str]) -> tuple[HeadClassifier | None, str | None]:
    """The user's own classification head from the sidebar uploads: (classifier, None) or (None, problem)."""
    with st.sidebar.expander("Your classification head (optional)"):
        head_file = st.file_uploader("Head weights", type=["safetensors", "pt", "pth", "bin"], key="head_file",
                                     help="A linear layer or small MLP: safetensors, or a state_dict (loaded weights-only).")
        extra_file = st.file_uploader("Extra per-sequence features", type=["csv", "tsv", "npy"], key="extra_file",
                                      help="Concatenated after the embedding: a CSV with an id column, or .npy rows in input order.")
    if head_file is None:
        return None, "upload head weights first" if extra_file is not None else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            head = dataclasses.replace(load_head(_saved(folder, head_file)), source=head_file.name)
            extra = load_extra_features(_saved(folder, extra_file), ids) if extra_file is not None else None
        return HeadClassifier(head, extra), None
    except HeadError as error:
        return None, str(error)


def _saved(folder: str, upload) -> Path:
    """An upload written to ``folder`` under a safe name with its own suffix (loaders dispatch on it)."""
    path = Path(folder) / f"upload{Path(upload.name).suffix.lower()}"
    path.write_bytes(upload.getvalue())
    return path


def analysis_for(run, layer: int, settings: Settings, parsed: ParsedInput, cache: CacheStats | None,
                 checks: tuple[CheckResult, ...] = ()) -> Analysis:
    """The run analysed at ``layer`` (the view's) and the view's seed, heads and thresholds, with the user's
    head when one is uploaded (the proxy's when it cannot be used, with the reason); a failed one of
    ``checks`` withholds ACCEPT."""
    head, problem = head_section(run.ids) if not settings.present else (None, None)
    options = options_for(settings)
    if head is not None:
        try:
            with_head = dataclasses.replace(options, classifier=head, classifier_name=head.describe())
            return analyse(run, layer, with_head, parsed, versions(), checks=checks, cache=cache, memo=memo_for(run))
        except HeadError as error:
            problem = str(error)
    if problem:
        st.error(plain(f"Your head cannot be used, so the proxy classifier is shown: {problem}"))
    return analyse(run, layer, options, parsed, versions(), checks=checks, cache=cache, memo=memo_for(run))


def results(run, settings: Settings, parsed: ParsedInput, used: Settings, cache: CacheStats | None = None) -> None:
    """The analysis of ``run`` at the view's layer, seed and thresholds; ``used``: the settings it ran with;
    ``cache``: what the embedding cache did for the run (None when it was off). The checks, once asked for
    at this layer, run before the verdict card is drawn, so that a failed one is in the verdict."""
    layer = shown_layer(settings, run.layers)
    checks = requested_checks(run, parsed, used, layer, cache)
    analysis = analysis_for(run, layer, settings, parsed, cache, checks)
    summary, table = analysis.summary, analysis.table
    font_size = 22 if settings.present else 14
    if run.is_demo:
        st.warning(DEMO_NOTICE, icon="⚠️")
    verdict_card(summary, 1.4 if settings.present else 1.0)
    precision = views.precision_note(set(getattr(run.v1.layers, "half", ())), layer)
    if precision:
        st.caption(precision)
    st.write("")
    kpi_row(summary)
    cache_notice(cache)
    if settings.present:
        overview_tab(table, summary, font_size)
        return
    tabs = st.tabs(["Overview", "Numerics", "Reference", "Layers", "Residues", "Heads", "Checks", "Table & share"])
    with tabs[0]:
        figures = overview_tab(table, summary, font_size)
    with tabs[1]:
        numerics_tab(summary)
    with tabs[2]:
        reference_tab(analysis, table)
    with tabs[3]:
        st.plotly_chart(charts.layer_curve(summary.profile), key="chart_layers")
        st.dataframe(pd.DataFrame([entry.to_json() for entry in summary.profile]), hide_index=True, width="stretch",
                     key="layer_table")
    with tabs[4]:
        residue_tab(run, parsed, used, layer, table)
    with tabs[5]:
        heads_tab(analysis, run.ids)
    with tabs[6]:
        checks_tab(layer, checks)
    with tabs[7]:
        share_tab(summary, table, figures)


def overview_tab(table: pd.DataFrame, summary: Summary, font_size: int) -> dict[str, go.Figure]:
    """The overview's charts; returns them (report.html embeds the same figures)."""
    figures = charts.all_figures(table, summary, font_size)
    st.plotly_chart(figures["agreement"], key="chart_agreement")
    for left_name, right_name in (("histogram", "ecdf"), ("length", "confidence")):
        left, right = st.columns(2)
        left.plotly_chart(figures[left_name], key=f"chart_{left_name}")
        right.plotly_chart(figures[right_name], key=f"chart_{right_name}")
    thinned = sampling_caption(len(table))
    if thinned:
        st.caption(thinned)
    return figures


def numerics_tab(summary: Summary) -> None:
    """The numerics gate: per-layer error of both paths against the yardstick, the sign test, the first departure."""
    numerics = summary.headline.numerics
    if numerics is None:
        st.info("This run has no numerics sample (it was saved before the gate existed): press Run again.")
        return
    (st.success if numerics.passed else st.error)(numerics.line())
    st.plotly_chart(charts.numerics_layers(numerics), key="chart_numerics")
    if numerics.kind == "reference":
        st.plotly_chart(charts.sign_test_layers(numerics), key="chart_sign_test")
    st.caption(views.numerics_caption(numerics))
    st.dataframe(views.numerics_table(numerics), hide_index=True, width="stretch", key="numerics_table")


def reference_tab(analysis: Analysis, table: pd.DataFrame) -> None:
    attribution = analysis.attribution
    if attribution is None:
        st.info("The numerics gate ran against v1.0's rounding floor, not a reference: choose a reference "
                "(auto, fp32 or fp64) in the sidebar and press Run to measure both paths against the standard path "
                "on the same weights in a wider dtype, to tell which one is wrong.")
        return
    (st.success if attribution.rule_passed else st.error)(attribution.verdict_line())
    st.dataframe(pd.DataFrame([{"path": f"{name}.0", **error.summary()}
                               for name, error in (("v1", attribution.v1), ("v2", attribution.v2))]),
                 hide_index=True, width="stretch", key="reference_table")
    counts = attribution.to_json()["closer_counts"]
    st.caption(f"On the {sum(counts.values())} sequences of the numerics sample, closer to the reference: "
               f"v1.0 {counts['v1']}, v2.0 {counts['v2']}, tie {counts['tie']}.")
    st.plotly_chart(charts.reference_errors(table, attribution.reference_dtype), key="chart_reference")


def residue_tab(run, parsed: ParsedInput, used: Settings, layer: int, table: pd.DataFrame) -> None:
    records = {record.id: record.sequence for record in parsed.records}
    choices = views.residue_choices(table)
    chosen = st.selectbox("Sequence", choices, key="residue_sequence",
                          help=None if len(choices) == len(run.ids) else f"The {len(choices)} most divergent sequences.")
    if not st.button("Show its residue track", key="residue_go"):
        if st.session_state.get("residue_shown") != (chosen, layer):
            st.caption("Runs both paths on this one sequence at the chosen layer (a few forward passes).")
            return
    st.session_state.residue_shown = (chosen, layer)
    if not_offered(used):
        return
    residues = rerun_or_say_why(lambda: residue_view(used, records[chosen], layer), "residue_shown",
                                "The residue track could not be computed.")
    if residues is None:
        return
    st.plotly_chart(charts.residue_track(residues, chosen), key="chart_residues")
    worst = residues.sort_values("cosine").head(10)
    st.caption("The ten positions where the paths differ most")
    st.dataframe(worst, hide_index=True, width="stretch", key="residue_worst")


def rerun_or_say_why(compute: Callable[[], T], asked: str, what: str) -> T | None:
    """``compute()`` for a view that runs the model again (the checks, a residue track); when it fails, None
    and ``what`` with the reason instead of a traceback, and the view is no longer asked for (session key
    ``asked``), so a rerun does not retry it and its button offers it again."""
    try:
        return compute()
    except Exception as error:  # Streamlit's own rerun and stop are BaseExceptions and pass through
        st.session_state.pop(asked, None)
        st.error(plain(f"{what} {failure_message(error)}"))
        return None


def not_offered(used: Settings) -> bool:
    """Say so, and return True, when this run's model may no longer be loaded from the page."""
    refusal = model_refusal(used)
    if refusal is not None:
        st.warning(plain(f"This view runs the model again, and this server no longer offers it: {refusal}"))
    return refusal is not None


def heads_tab(analysis: Analysis, ids: list[str]) -> None:
    """The proxy heads that decide the prediction verdict: their agreement and where their flips sit."""
    votes = analysis.votes
    if analysis.headline.predictions.votes is None:
        st.caption("Your head decides the prediction verdict; the proxy heads are shown for comparison.")
    st.markdown(views.heads_text(votes))
    left, right = st.columns(2)
    left.plotly_chart(charts.head_agreement_histogram(votes.agreement, float(votes.lower_agreement), votes.bank.kind),
                      key="chart_heads")
    right.plotly_chart(charts.flips_vs_margin(votes.margin_table(ids)), key="chart_margins")


def ask_for_checks(layer: int) -> None:
    st.session_state.checks_layer = layer  # cleared by a new run (dashboard.session)


def requested_checks(run, parsed: ParsedInput, used: Settings, layer: int,
                     cache: CacheStats | None) -> tuple[CheckResult, ...]:
    """Packing invariance and determinism at ``layer`` once the checks tab asked for them (none before, or
    when the run's model is no longer offered). They compare against the stored packed embeddings, or
    against a fresh v2.0 run when some came from the embedding cache (packed with other batch-mates) or
    the layer is kept compact (not bit for bit)."""
    if st.session_state.get("checks_layer") != layer or not_offered(used):
        return ()
    compact = layer in getattr(run.v1.layers, "half", {})  # stored to ~3 digits, not bits
    fresh_baseline = bool(cache and cache.hits) or compact
    records = tuple((record.id, record.sequence) for record in parsed.records)
    checks = rerun_or_say_why(lambda: v2_checks(used, records, layer, None if fresh_baseline else run.v2.layers[layer]),
                              "checks_layer", "The checks could not run, so the verdict below leaves them out.")
    return tuple(checks or ())


def checks_tab(layer: int, checks: tuple[CheckResult, ...]) -> None:
    """The checks' outcomes at ``layer``, or the button that asks for them."""
    st.caption("Packing invariance: each sequence run alone must match itself packed with others. "
               "Determinism: v2.0 run twice must give bit-identical embeddings. Both cost extra v2.0 passes.")
    if not checks:
        st.button("Run the checks", key="checks_go", on_click=ask_for_checks, args=(layer,))
        return
    for check in checks:
        badge = st.success if check.passed else st.error
        badge(f"{check.name}: {'PASS' if check.passed else 'FAIL'} — max |difference| {check.max_abs_diff:.3e}, "
              f"min cosine {check.min_cosine:.10f} over {check.n_sequences} sequences. {check.detail}.")
    if not all(check.passed for check in checks):
        st.error(views.FAILED_CHECKS_NOTE)


def share_tab(summary: Summary, table: pd.DataFrame, figures: dict[str, go.Figure]) -> None:
    """The per-sequence table (a large run's most divergent rows) and the downloads: sequences.csv with every
    sequence, summary.json, report.html with the table shown. A large run's are built when clicked (a
    100,000-row CSV takes seconds), a small run's at once."""
    shown, caption = views.shown_table(table)
    st.dataframe(shown, hide_index=True, width="stretch", key="sequence_table")
    if caption:
        st.caption(caption)
    builders = {"csv": lambda: spreadsheet_safe(table).to_csv(index=False),
                "json": lambda: json.dumps(summary.to_json(), indent=2),
                "html": lambda: html_report(summary, shown, figures, caption)}
    data = builders if caption else {kind: build() for kind, build in builders.items()}
    columns = st.columns(3)
    columns[0].download_button("sequences.csv", data["csv"], "sequences.csv", "text/csv", key="download_csv")
    columns[1].download_button("summary.json", data["json"], "summary.json", "application/json", key="download_json")
    columns[2].download_button("report.html", data["html"], "report.html", "text/html", key="download_html")
    st.caption("The page's URL holds these settings: share it to reopen the same view "
               "(with an example set, the same inputs too).")
