"""One layer of a run, analysed: the chosen head's metrics, the proxy heads, the numerics gate, the
headline they give, the typed summary and the per-sequence table. No model involved: the page calls
it on every redraw."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import pandas as pd

from core.analysis.attribution import DEFAULT_K, Attribution, attribute
from core.analysis.balance import ProxyBalance, majority_share
from core.analysis.checks import CheckResult
from core.analysis.memo import Memo, compute_now
from core.analysis.metrics import (Classifier, Comparison, Labels, ProxyClassifier, Thresholds, comparison_of,
                                   distances, head_labels)
from core.analysis.numerics_gate import numerics_gate, rounding_noise
from core.analysis.profile import layer_profile
from core.analysis.projection import compact_products, proxy_labels, width
from core.analysis.proxies import DEFAULT_HEADS, HeadBank, HeadVotes, ProxyKind, head_directions, vote
from core.analysis.verdict import Headline, NonFinite, SeedRule, predictions_from_head, predictions_from_votes
from core.embed.cache import CacheStats
from core.embed.run import EmbeddingRun
from core.input.records import ParsedInput
from core.report.summary import Provenance, Summary, Timings
from core.report.tables import sequence_table


@dataclass(frozen=True)
class AnalysisOptions:
    """How a run is judged. Predictions are decided by ``n_heads`` proxy heads of kind ``proxy`` (seeds
    0 … n_heads − 1; the ``seed`` head alone when 0), or by ``classifier`` (a user's head) alone; the
    numerics gate applies FlashAttention's rule at ``k``. ``seed`` also picks the head drawn and the
    seed rule's."""

    seed: int = 0
    thresholds: Thresholds = Thresholds()
    proxy: ProxyKind = "balanced"
    n_heads: int = DEFAULT_HEADS
    k: float = DEFAULT_K
    classifier: Classifier | None = None
    classifier_name: str | None = None


@dataclass(frozen=True)
class Analysis:
    """The summary (every typed result), the proxy heads' votes behind its predictions, the table."""

    summary: Summary
    votes: HeadVotes
    table: pd.DataFrame

    @property
    def comparison(self) -> Comparison:
        return self.summary.comparison

    @property
    def headline(self) -> Headline:
        return self.summary.headline

    @property
    def attribution(self) -> Attribution | None:
        return self.summary.attribution


@dataclass(frozen=True)
class LayerValues:
    """One layer of both paths, read when first asked for: ``v1``, ``v2`` (n, embed_dim) as stored (float32
    or float64; a compact stored layer expanded), ``wide_v1``, ``wide_v2`` the same in float64. Parts that
    a memo remembers, or that a compact layer gives from its stored form, never ask."""

    run: EmbeddingRun
    layer: int

    @cached_property
    def v1(self) -> np.ndarray:
        return self.run.v1.layers[self.layer]

    @cached_property
    def v2(self) -> np.ndarray:
        return self.run.v2.layers[self.layer]

    @cached_property
    def wide_v1(self) -> np.ndarray:
        return np.asarray(self.v1, np.float64)

    @cached_property
    def wide_v2(self) -> np.ndarray:
        return np.asarray(self.v2, np.float64)

    def wide(self) -> tuple[np.ndarray, np.ndarray]:
        return self.wide_v1, self.wide_v2

    def proxy(self, kind: ProxyKind, seed: int, memo: Memo) -> tuple[ProxyClassifier, Labels]:
        """The ``seed``'s ``kind`` proxy head at this layer and its labels (memo key shared with the layer
        profile: core.analysis.profile.layer_agreement)."""
        return memo(("proxy", self.layer, kind, seed), lambda: proxy_labels(
            self.run.v1.layers, self.run.v2.layers, self.layer, kind, seed, self.wide))


def chosen_head(values: LayerValues, options: AnalysisOptions, memo: Memo = compute_now) -> tuple[Classifier, str]:
    """The head whose labels are drawn (a user's head, else the ``seed``'s proxy) and its name."""
    if options.classifier is not None:
        return options.classifier, options.classifier_name or "your head"
    kind = "balanced" if options.proxy == "balanced" else "uncentred"
    head, _ = values.proxy(options.proxy, options.seed, memo)
    return head, f"{kind} proxy (random linear {head.weight.shape[0]}→2, seed {options.seed})"


def compare(values: LayerValues, options: AnalysisOptions, classifier: Classifier,
            memo: Memo = compute_now) -> Comparison:
    """core.analysis.metrics.compare_embeddings at the layer: the distances remembered per layer, a proxy
    head's labels per (layer, proxy, seed), a user's head's never."""
    measured = memo(("distances", values.layer), lambda: distances(values.wide_v1, values.wide_v2))
    labels = (head_labels(values.wide_v1, values.wide_v2, classifier) if options.classifier is not None
              else values.proxy(options.proxy, options.seed, memo)[1])
    return comparison_of(measured, labels, options.thresholds)


def heads_vote(values: LayerValues, kind: ProxyKind, seeds: tuple[int, ...], k: float) -> HeadVotes:
    """The bank of ``seeds``' ``kind`` heads fitted at the layer, and its votes (a compact layer's gaps from
    its stored form)."""
    run, layer = values.run, values.layer
    directions = head_directions(seeds, width(run.v1.layers, layer))
    products = compact_products(run.v1.layers, run.v2.layers, layer, directions.T)
    noise = rounding_noise(run, layer)
    if products is None:
        bank, baseline_gaps = HeadBank.fitted(kind, seeds, values.wide_v1)
        return vote(bank, values.v1, values.wide_v2, noise, k, baseline_gaps)
    bank, baseline_gaps = HeadBank.fitted_to(kind, seeds, directions, products[0])
    return vote(bank, values.v1, values.v2, noise, k, baseline_gaps, products[1] - bank.offsets)


def non_finite_ids(ids: Sequence[str], v1: np.ndarray, v2: np.ndarray) -> NonFinite:
    """The ids whose pooled embedding ((n, embed_dim) each) holds a NaN or an infinity, per path."""
    def broken(values: np.ndarray) -> tuple[str, ...]:
        return tuple(seq_id for seq_id, finite in zip(ids, np.isfinite(values).all(axis=1)) if not finite)
    return NonFinite(broken(v1), broken(v2))


def judge(values: LayerValues, options: AnalysisOptions, comparison: Comparison, head_name: str,
          memo: Memo = compute_now, checks: Sequence[CheckResult] = ()) -> tuple[Headline, HeadVotes, ProxyBalance]:
    """The headline (predictions, numerics, cosine, seed rule, v2.0's failed checks), the proxy heads' votes
    and their balance."""
    run, layer = values.run, values.layer
    seeds = tuple(range(options.n_heads)) if options.n_heads > 0 else (options.seed,)
    votes = memo(("votes", layer, options.proxy, seeds, options.k), lambda: heads_vote(values, options.proxy, seeds, options.k))
    predictions = (predictions_from_head(comparison, head_name, options.thresholds) if options.classifier is not None
                   else predictions_from_votes(votes, options.thresholds))
    seed_comparison = comparison_of(memo(("distances", layer), lambda: distances(values.wide_v1, values.wide_v2)),
                                    values.proxy("seed", options.seed, memo)[1], options.thresholds)
    seed_rule = SeedRule(seed_comparison, options.seed, majority_share(seed_comparison.labels_v1))
    failing = tuple(seq_id for seq_id, bad in zip(run.ids, comparison.cosine_failures) if bad)
    gate = memo(("numerics", options.k), lambda: numerics_gate(run, options.k))
    non_finite = memo(("non_finite", layer), lambda: non_finite_ids(run.ids, values.v1, values.v2))
    failed_checks = tuple(f"{check.name}: max |diff| {check.max_abs_diff:.3g} over {check.n_sequences} sequences"
                          for check in checks if not check.passed)
    longest = int(run.lengths.max()) if len(run.ids) else None
    headline = Headline(predictions, gate, failing, options.thresholds, seed_rule, non_finite, failed_checks, longest)
    return headline, votes, ProxyBalance(head_name, majority_share(comparison.labels_v1), votes, seed_rule)


def analyse(run: EmbeddingRun, layer: int, options: AnalysisOptions = AnalysisOptions(),
            parsed: ParsedInput | None = None, versions: dict[str, str] | None = None, *,
            checks: tuple[CheckResult, ...] | list[CheckResult] = (), cache: CacheStats | None = None,
            world_size: int = 1, memo: Memo = compute_now) -> Analysis:
    """The analysis of ``layer`` of ``run``; ``parsed`` contributes warnings and refusals, ``checks``,
    ``cache`` and ``world_size`` are recorded as they are; ``memo`` may reuse parts computed before for
    this same run (core.analysis.memo)."""
    if layer not in run.v1.layers:
        raise ValueError(f"layer {layer} was not pooled in this run (pooled: {sorted(run.v1.layers)})")
    values = LayerValues(run, layer)
    classifier, head_name = chosen_head(values, options, memo)
    comparison = compare(values, options, classifier, memo)
    headline, votes, balance = judge(values, options, comparison, head_name, memo, checks)
    sample = run.reference_sample
    attribution = (
        attribute(values.v1[sample.indices], values.v2[sample.indices], sample.reference_rows(layer), classifier, options.k,
                  sample.dtype)
        if sample is not None and sample.indices.size else None
    )
    summary = Summary(
        Provenance.of(run, layer), headline, comparison, balance, options.seed, head_name, attribution,
        layer_profile(run, options.seed, options.proxy, memo), tuple(checks), cache, world_size,
        tuple(parsed.problems) if parsed is not None else (), Timings.of(run), dict(versions or {}),
    )
    records = parsed.records if parsed is not None else []
    warnings_by_id = {r.id: "; ".join(r.warnings) for r in records if r.warnings}
    for seq_id, warning in headline.non_finite.row_warnings().items():
        warnings_by_id[seq_id] = "; ".join(filter(None, (warnings_by_id.get(seq_id), warning)))
    table = sequence_table(run, comparison, warnings_by_id, attribution, votes)
    return Analysis(summary, votes, table)
