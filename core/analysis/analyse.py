"""One layer of a run, analysed: the chosen head's metrics, the proxy heads, the numerics gate, the
headline they give, the typed summary and the per-sequence table. No model involved: the page calls
it on every redraw."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.analysis.attribution import DEFAULT_K, Attribution, attribute
from core.analysis.balance import ProxyBalance, majority_share
from core.analysis.checks import CheckResult
from core.analysis.memo import Memo, compute_now
from core.analysis.metrics import (Classifier, Comparison, ProxyClassifier, Thresholds, comparison_of, distances,
                                   head_labels)
from core.analysis.numerics_gate import numerics_gate, rounding_noise
from core.analysis.profile import layer_profile
from core.analysis.proxies import DEFAULT_HEADS, HeadBank, HeadVotes, ProxyKind, proxy_head, vote
from core.analysis.verdict import Headline, SeedRule, predictions_from_head, predictions_from_votes
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


def chosen_head(run: EmbeddingRun, layer: int, options: AnalysisOptions, memo: Memo = compute_now,
                ) -> tuple[Classifier, str]:
    """The head whose labels are drawn (a user's head, else the ``seed``'s proxy) and its name."""
    if options.classifier is not None:
        return options.classifier, options.classifier_name or "your head"
    width = run.v1.layers[layer].shape[1]
    kind = "balanced" if options.proxy == "balanced" else "uncentred"
    head = memo(("head", layer, options.proxy, options.seed),
                lambda: proxy_head(options.proxy, options.seed, run.v1.layers[layer]))
    return head, f"{kind} proxy (random linear {width}→2, seed {options.seed})"


def compare(run: EmbeddingRun, layer: int, options: AnalysisOptions, classifier: Classifier,
            memo: Memo = compute_now) -> Comparison:
    """core.analysis.metrics.compare_embeddings at ``layer``: the distances remembered per layer, a proxy
    head's labels per (layer, proxy, seed), a user's head's never."""
    v1, v2 = run.v1.layers[layer], run.v2.layers[layer]
    measured = memo(("distances", layer), lambda: distances(v1, v2))
    labels = (head_labels(v1, v2, classifier) if options.classifier is not None else
              memo(("labels", layer, options.proxy, options.seed), lambda: head_labels(v1, v2, classifier)))
    return comparison_of(measured, labels, options.thresholds)


def judge(run: EmbeddingRun, layer: int, options: AnalysisOptions, comparison: Comparison, head_name: str,
          memo: Memo = compute_now) -> tuple[Headline, HeadVotes, ProxyBalance]:
    """The headline (predictions, numerics, cosine, seed rule), the proxy heads' votes and their balance."""
    v1, v2 = run.v1.layers[layer], run.v2.layers[layer]
    seeds = tuple(range(options.n_heads)) if options.n_heads > 0 else (options.seed,)
    votes = memo(("votes", layer, options.proxy, seeds, options.k), lambda: vote(
        HeadBank.build(options.proxy, seeds, v1), v1, v2, rounding_noise(run, layer), options.k))
    predictions = (predictions_from_head(comparison, head_name, options.thresholds) if options.classifier is not None
                   else predictions_from_votes(votes, options.thresholds))
    seed_comparison = comparison_of(
        memo(("distances", layer), lambda: distances(v1, v2)),
        memo(("labels", layer, "seed", options.seed),
             lambda: head_labels(v1, v2, ProxyClassifier.from_seed(v1.shape[1], options.seed))),
        options.thresholds)
    seed_rule = SeedRule(seed_comparison, options.seed, majority_share(seed_comparison.labels_v1))
    failing = tuple(seq_id for seq_id, bad in zip(run.ids, comparison.cosine_failures) if bad)
    gate = memo(("numerics", options.k), lambda: numerics_gate(run, options.k))
    headline = Headline(predictions, gate, failing, options.thresholds, seed_rule)
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
    v1, v2 = run.v1.layers[layer], run.v2.layers[layer]
    classifier, head_name = chosen_head(run, layer, options, memo)
    comparison = compare(run, layer, options, classifier, memo)
    headline, votes, balance = judge(run, layer, options, comparison, head_name, memo)
    sample = run.reference_sample
    attribution = (
        attribute(v1[sample.indices], v2[sample.indices], sample.reference_rows(layer), classifier, options.k,
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
    table = sequence_table(run, comparison, warnings_by_id, attribution, votes)
    return Analysis(summary, votes, table)
