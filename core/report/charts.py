"""Plotly figures of a comparison. Each takes the per-sequence table (core.report.sequence_table).

Cosines of two FP16 paths crowd against 1.0 (0.9999999…), where a linear axis shows nothing, so
the cosine charts plot the cosine distance 1 − cosine on a log axis; hover shows the cosine itself.
Hovering any point names the sequence. ``font_size`` scales text for a shared screen. A large run's
scatters draw at most MAX_POINTS points and its histograms are binned here (core.report.sampling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.analysis.metrics import format_percent
from core.analysis.numerics_gate import NumericsGate
from core.analysis.profile import LayerProfile
from core.report.sampling import MAX_POINTS, binned, ecdf_ranks, plotted_rows

if TYPE_CHECKING:
    from core.report.summary import Summary

VERDICT_COLOURS = {"ACCEPT": "#1a7f37", "VALIDATE": "#b35900", "FALLBACK": "#c62828"}
V1_COLOUR, FLIP_COLOUR, AGREE_COLOUR = "#4063d8", "#c62828", "#4063d8"
DISTANCE_FLOOR = 1e-16  # identical embeddings: log10(0) has no place on the axis


def log_cosine_distance(cosine: pd.Series | np.ndarray) -> np.ndarray:
    """log10(1 - cosine), with 1 - cosine floored at DISTANCE_FLOOR."""
    return np.log10(np.maximum(1.0 - np.asarray(cosine, dtype=np.float64), DISTANCE_FLOOR))


LOG_DISTANCE_TITLE = "log10(1 − cosine)"


def _layout(fig: go.Figure, title: str, font_size: int, **axes) -> go.Figure:
    fig.update_layout(
        title=title,
        font=dict(size=font_size),
        margin=dict(l=60, r=20, t=60, b=50),
        template="plotly_white",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
        **axes,
    )
    return fig


def _threshold_line(fig: go.Figure, min_cosine: float, vertical: bool) -> None:
    """The cosine threshold, drawn at distance 1 - min_cosine; beyond it a sequence fails."""
    place = dict(x=np.log10(1 - min_cosine)) if vertical else dict(y=np.log10(1 - min_cosine))
    (fig.add_vline if vertical else fig.add_hline)(
        **place, line=dict(color=VERDICT_COLOURS["FALLBACK"], dash="dash"),
        annotation_text=f"cosine {min_cosine:g}", annotation_position="top left" if vertical else "bottom right",
    )


def cosine_histogram(table: pd.DataFrame, min_cosine: float, font_size: int = 14) -> go.Figure:
    """Distribution of per-sequence cosine distance (log bins), with the threshold line."""
    log_distance = log_cosine_distance(table["cosine"])
    centres, counts = binned(log_distance, 0.25)
    fig = go.Figure(go.Bar(
        x=centres, y=counts, width=0.25, marker_color=V1_COLOUR, name="sequences",
        hovertemplate="log10(1 − cosine) ≈ %{x}<br>%{y} sequences<extra></extra>",
    ))
    _threshold_line(fig, min_cosine, vertical=True)
    upper = max(log_distance.max(), np.log10(1 - min_cosine)) + 0.5
    ticks = np.arange(np.floor(log_distance.min()), np.ceil(upper) + 1)
    return _layout(fig, "Cosine distance, v1.0 vs v2.0", font_size, yaxis_title="sequences",
                   xaxis=dict(title=LOG_DISTANCE_TITLE, tickvals=ticks))


def cosine_ecdf(table: pd.DataFrame, min_cosine: float, font_size: int = 14) -> go.Figure:
    """Empirical CDF of the cosine distance: the share of sequences at or closer than each value."""
    ranks = ecdf_ranks(len(table))
    ordered = table.sort_values("cosine", ascending=False, kind="stable").iloc[ranks]
    share = (ranks + 1) / len(table)
    fig = go.Figure(go.Scatter(
        x=log_cosine_distance(ordered["cosine"]), y=share, mode="lines+markers", line_shape="hv",
        marker_color=V1_COLOUR, text=ordered["id"], customdata=ordered["cosine"], name="sequences",
        hovertemplate="%{text}<br>cosine %{customdata:.10f}<br>%{y:.1%} of sequences this close or closer<extra></extra>",
    ))
    _threshold_line(fig, min_cosine, vertical=True)
    return _layout(fig, "Cosine distance ECDF", font_size, yaxis=dict(tickformat=".0%", range=[0, 1.02], title="share of sequences"),
                   xaxis_title=LOG_DISTANCE_TITLE)


def flip_groups(table: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, str, dict]]:
    """The rows a scatter draws (core.report.sampling.plotted_rows), agreeing ones then flipped ones, each
    non-empty group with its legend name and marker (flips as red crosses)."""
    shown = plotted_rows(table)
    for flipped, colour, name in ((False, AGREE_COLOUR, "labels agree"), (True, FLIP_COLOUR, "label flip")):
        part = shown[shown["label_flip"] == flipped]
        if len(part):
            yield part, name, dict(color=colour, size=10, symbol="x" if flipped else "circle")


def cosine_vs_length(table: pd.DataFrame, min_cosine: float, font_size: int = 14) -> go.Figure:
    """Cosine distance against sequence length; label flips in red (at most MAX_POINTS sequences drawn)."""
    fig = go.Figure()
    for part, name, marker in flip_groups(table):
        fig.add_trace(go.Scatter(
            x=part["length"], y=log_cosine_distance(part["cosine"]), mode="markers", name=name, text=part["id"],
            customdata=part["cosine"], marker=marker,
            hovertemplate="%{text}<br>length %{x}<br>cosine %{customdata:.10f}<extra></extra>",
        ))
    _threshold_line(fig, min_cosine, vertical=False)
    return _layout(fig, "Cosine distance against sequence length", font_size, xaxis_title="residues",
                   yaxis_title=LOG_DISTANCE_TITLE)


def confidence_scatter(table: pd.DataFrame, font_size: int = 14) -> go.Figure:
    """Proxy-classifier confidence, v1.0 against v2.0; points off the diagonal moved, red ones flipped (at
    most MAX_POINTS sequences drawn)."""
    fig = go.Figure()
    for part, name, marker in flip_groups(table):
        fig.add_trace(go.Scatter(
            x=part["confidence_v1"], y=part["confidence_v2"], mode="markers", name=name,
            text=part["id"], customdata=np.stack([part["label_v1"], part["label_v2"]], axis=1), marker=marker,
            hovertemplate="%{text}<br>v1.0 label %{customdata[0]} at %{x:.6f}"
                          "<br>v2.0 label %{customdata[1]} at %{y:.6f}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(x=[0.5, 1], y=[0.5, 1], mode="lines", name="v1.0 = v2.0",
                             line=dict(color="#888", dash="dot"), hoverinfo="skip"))
    return _layout(fig, "Proxy-classifier confidence", font_size,
                   xaxis_title="confidence v1.0", yaxis_title="confidence v2.0")


def agreement_bands(agreement: float, min_agreement: float, accept_agreement: float, font_size: int = 14) -> go.Figure:
    """Label agreement as a marker over the FALLBACK / VALIDATE / ACCEPT bands."""
    low = max(0.0, min(agreement, min_agreement) - 0.05)
    fig = go.Figure()
    for verdict, start, end in (("FALLBACK", low, min_agreement), ("VALIDATE", min_agreement, accept_agreement),
                                ("ACCEPT", accept_agreement, 1.0)):
        fig.add_shape(type="rect", x0=start, x1=end, y0=0, y1=1, fillcolor=VERDICT_COLOURS[verdict],
                      opacity=0.25, line_width=0, layer="below")
        fig.add_annotation(x=(start + end) / 2, y=0.85, text=verdict, showarrow=False,
                           font=dict(color=VERDICT_COLOURS[verdict]))
    fig.add_trace(go.Scatter(x=[agreement], y=[0.4], mode="markers+text", text=[format_percent(agreement)],
                             textposition="bottom center", marker=dict(size=22, color="#111", symbol="diamond"),
                             name="label agreement", hovertemplate="label agreement %{x:.2%}<extra></extra>"))
    fig = _layout(fig, "Label agreement against the decision bands", font_size,
                  xaxis=dict(range=[low, 1.006], tickformat=".0%", title="label agreement"),
                  yaxis=dict(visible=False, range=[0, 1]), showlegend=False)
    fig.update_layout(height=220)
    return fig


def all_figures(table: pd.DataFrame, summary: Summary, font_size: int = 14) -> dict[str, go.Figure]:
    """Every chart of one comparison, by name, in display order."""
    thresholds = summary.comparison.thresholds
    return {
        "agreement": agreement_bands(summary.comparison.agreement, thresholds.min_agreement,
                                     thresholds.accept_agreement, font_size),
        "histogram": cosine_histogram(table, thresholds.min_cosine, font_size),
        "ecdf": cosine_ecdf(table, thresholds.min_cosine, font_size),
        "length": cosine_vs_length(table, thresholds.min_cosine, font_size),
        "confidence": confidence_scatter(table, font_size),
    }


def layer_curve(profile: Sequence[LayerProfile], font_size: int = 14) -> go.Figure:
    """Divergence at every layer: log10(1 − min/mean cosine) and mean |v1 − v2|; reference errors when present."""
    frame = pd.DataFrame([entry.to_json() for entry in profile])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=frame["layer"], y=log_cosine_distance(frame["cosine_min"]), name="1 − min cosine",
                             mode="lines+markers", line_color=FLIP_COLOUR,
                             customdata=frame["cosine_min"], hovertemplate="layer %{x}<br>min cosine %{customdata:.10f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=frame["layer"], y=log_cosine_distance(frame["cosine_mean"]), name="1 − mean cosine",
                             mode="lines+markers", line_color=V1_COLOUR,
                             customdata=frame["cosine_mean"], hovertemplate="layer %{x}<br>mean cosine %{customdata:.10f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=frame["layer"], y=np.log10(np.maximum(frame["mean_abs_diff"], DISTANCE_FLOOR)),
                             name="mean |v1 − v2|", mode="lines+markers", line=dict(color="#555", dash="dot"),
                             customdata=frame["mean_abs_diff"], hovertemplate="layer %{x}<br>mean |v1 − v2| %{customdata:.3e}<extra></extra>"))
    for path, colour in (("v1", "#1a7f37"), ("v2", "#b35900")):
        column = f"{path}_mean_abs_error"
        if column in frame:
            fig.add_trace(go.Scatter(x=frame["layer"], y=np.log10(np.maximum(frame[column], DISTANCE_FLOOR)),
                                     name=f"mean |{path}.0 − reference|", mode="lines+markers", line=dict(color=colour, dash="dash"),
                                     customdata=frame[column], hovertemplate="layer %{x}<br>%{customdata:.3e}<extra></extra>"))
    return _layout(fig, "Where divergence grows, layer by layer", font_size, xaxis_title="layer",
                   yaxis_title="log10 of the quantity")


def residue_track(residues: pd.DataFrame, sequence_id: str, font_size: int = 14) -> go.Figure:
    """Per-residue divergence of one sequence: log10(1 − cosine) and mean |v1 − v2| along the chain."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=residues["position"], y=log_cosine_distance(residues["cosine"]), name="log10(1 − cosine)",
                             mode="lines", line_color=V1_COLOUR, customdata=np.stack([residues["residue"], residues["cosine"]], axis=1),
                             hovertemplate="%{customdata[0]}%{x}<br>cosine %{customdata[1]:.10f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=residues["position"], y=np.log10(np.maximum(residues["mean_abs_diff"], DISTANCE_FLOOR)),
                             name="log10 mean |v1 − v2|", mode="lines", line=dict(color="#555", dash="dot"), yaxis="y",
                             customdata=np.stack([residues["residue"], residues["mean_abs_diff"]], axis=1),
                             hovertemplate="%{customdata[0]}%{x}<br>mean |v1 − v2| %{customdata[1]:.3e}<extra></extra>"))
    return _layout(fig, f"Residue track: {sequence_id}", font_size, xaxis_title="residue position", yaxis_title="log10")


def head_agreement_histogram(agreement: np.ndarray, lower: float, kind: str, font_size: int = 14) -> go.Figure:
    """Label agreement of each proxy head (flips within the rounding floor left out), with the lower
    quantile the prediction verdict is judged on."""
    fig = go.Figure(go.Histogram(x=agreement, marker_color=V1_COLOUR, name="heads",
                                 hovertemplate="agreement %{x:.2%}<br>%{y} heads<extra></extra>"))
    fig.add_vline(x=lower, line=dict(color="#111", dash="dash"), annotation_text="judged (lower 2.5%)")
    return _layout(fig, f"Label agreement over {agreement.size} {kind} proxy heads", font_size,
                   xaxis=dict(tickformat=".1%", title="label agreement (flips beyond the rounding floor)"),
                   yaxis_title="heads")


def flips_vs_margin(margins: pd.DataFrame, font_size: int = 14) -> go.Figure:
    """Every (head, sequence): v1.0's margin from the head's boundary in rounding floors (log10). Flips left
    of 0 lie within the floor (rounding can cause them) and do not count; flips right of it do."""
    fig = go.Figure()
    x = np.log10(np.maximum(margins["margin_over_floor"].to_numpy(), DISTANCE_FLOOR))
    agree, flips = ~margins["flip"].to_numpy(), margins["flip"].to_numpy()
    centres, counts = binned(x[agree], 0.1)
    fig.add_trace(go.Bar(x=centres, y=counts, width=0.1, name="labels agree", marker_color=AGREE_COLOUR, opacity=0.6,
                         hovertemplate="%{y} pairs<extra></extra>"))
    for name, chosen, colour in (("flip within the rounding floor", flips & ~margins["counted"].to_numpy(), "#888"),
                                 ("flip beyond it (counts)", margins["counted"].to_numpy(), FLIP_COLOUR)):
        chosen = chosen & (np.cumsum(chosen) <= MAX_POINTS)  # the first MAX_POINTS of each kind
        if chosen.any():
            fig.add_trace(go.Scatter(x=x[chosen], y=np.zeros(int(chosen.sum())), mode="markers", name=name,
                                     marker=dict(color=colour, size=12, symbol="x"), text=margins["id"][chosen],
                                     customdata=margins["seed"][chosen],
                                     hovertemplate="%{text}, head %{customdata}<br>log10 margin/floor %{x:.2f}<extra></extra>"))
    fig.add_vline(x=0.0, line=dict(color="#111", dash="dash"), annotation_text="rounding floor")
    return _layout(fig, "Flips against v1.0's margin, in rounding floors (all heads × sequences)", font_size,
                   xaxis_title="log10 (|v1.0 logit gap| / rounding floor)", yaxis_title="(head, sequence) pairs",
                   barmode="overlay")


def numerics_layers(numerics: NumericsGate, font_size: int = 14) -> go.Figure:
    """Per layer: v1.0's and v2.0's max error against the reference (floor mode: the rounding floor and
    v2.0's distance from v1.0), log10; departing layers marked."""
    frame = pd.DataFrame([layer.to_json() for layer in numerics.layers])
    reference = numerics.kind == "reference"
    names = (("max |v1.0 − reference|", "max |v2.0 − reference|") if reference
             else ("rounding floor: max |v1.0 re-batched − v1.0|", "max |v2.0 − v1.0|"))
    fig = go.Figure()
    for column, name, colour in (("baseline_error", names[0], V1_COLOUR), ("candidate_error", names[1], "#b35900")):
        fig.add_trace(go.Scatter(x=frame["layer"], y=np.log10(np.maximum(frame[column], DISTANCE_FLOOR)), name=name,
                                 mode="lines+markers", line_color=colour, customdata=frame[column],
                                 hovertemplate="layer %{x}<br>%{customdata:.3e}<extra></extra>"))
    departs = frame[frame["departs"]]
    if len(departs):
        fig.add_trace(go.Scatter(x=departs["layer"], y=np.log10(np.maximum(departs["candidate_error"], DISTANCE_FLOOR)),
                                 mode="markers", name="departs", marker=dict(color=FLIP_COLOUR, size=14, symbol="x"),
                                 hovertemplate="layer %{x} departs<extra></extra>"))
    where = f"{numerics.dtype} reference" if reference else "rounding floor"
    return _layout(fig, f"Each layer against the {where} ({numerics.n_sample} sequences)", font_size,
                   xaxis_title="layer", yaxis_title="log10 max |error|")


def sign_test_layers(numerics: NumericsGate, font_size: int = 14) -> go.Figure:
    """Per layer: how many sequences have v1.0 or v2.0 closer to the reference, and the sign test's
    −log10 p against its per-layer level."""
    frame = pd.DataFrame([layer.to_json() for layer in numerics.layers])
    fig = go.Figure()
    for column, name, colour in (("closer_v1", "v1.0 closer", V1_COLOUR), ("closer_v2", "v2.0 closer", "#b35900")):
        fig.add_trace(go.Bar(x=frame["layer"], y=frame[column], name=name, marker_color=colour,
                             hovertemplate="layer %{x}<br>%{y} sequences<extra></extra>"))
    fig.add_trace(go.Scatter(x=frame["layer"], y=-np.log10(np.maximum(frame["sign_p"].astype(float), 1e-300)),
                             name="−log10 p (sign test)", mode="lines+markers", yaxis="y2", line_color="#111",
                             hovertemplate="layer %{x}<br>p = %{customdata:.2g}<extra></extra>", customdata=frame["sign_p"]))
    level = -np.log10(float(frame["alpha"].iloc[0]))
    fig.add_hline(y=level, yref="y2", line=dict(color=FLIP_COLOUR, dash="dash"), annotation_text="systematic beyond")
    return _layout(fig, "Which path is closer to the reference, sequence by sequence", font_size, barmode="group",
                   xaxis_title="layer", yaxis_title="sequences",
                   yaxis2=dict(title="−log10 p", overlaying="y", side="right", rangemode="tozero"))


def reference_errors(table: pd.DataFrame, reference_dtype: str, font_size: int = 14) -> go.Figure:
    """Per sequence: v1.0's error against the reference vs v2.0's; below the diagonal v2.0 is closer."""
    table = table[table["mean_abs_err_v1"].notna() & table["mean_abs_err_v2"].notna()]  # the numerics sample
    x = np.log10(np.maximum(table["mean_abs_err_v1"], DISTANCE_FLOOR))
    y = np.log10(np.maximum(table["mean_abs_err_v2"], DISTANCE_FLOOR))
    fig = go.Figure(go.Scatter(x=x, y=y, mode="markers", text=table["id"], customdata=table["closer_to_ref"],
                               marker=dict(size=10, color=V1_COLOUR), name="sequences",
                               hovertemplate="%{text}<br>closer: %{customdata}<extra></extra>"))
    low, high = float(np.nanmin([x.min(), y.min()])), float(np.nanmax([x.max(), y.max()]))
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(color="#888", dash="dot"),
                             name="equal error", hoverinfo="skip"))
    return _layout(fig, f"Error against the {reference_dtype} reference, per sequence", font_size,
                   xaxis_title="log10 mean |v1.0 − reference|", yaxis_title="log10 mean |v2.0 − reference|")
