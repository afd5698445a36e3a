"""summary.json, typed: what the CLI writes, the page offers and the terminal, HTML and page views read.

``Summary`` holds the analysis' typed results; ``to_json`` is the one place they become the
document (its keys are listed in the README).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from core.analysis.attribution import Attribution
from core.analysis.balance import ProxyBalance
from core.analysis.checks import CheckResult
from core.analysis.metrics import MATCH_TOLERANCES, Comparison, Verdict, binomial_interval
from core.analysis.profile import LayerProfile
from core.analysis.verdict import Headline
from core.embed.cache import CacheStats
from core.embed.run import EmbeddingRun
from core.input.records import InputProblem

DEMO_NOTICE = (
    "DEMO WEIGHTS: random-init ESM-2, not the pretrained model. This verdict exercises the "
    "tool and says nothing about whether v2.0 changes pretrained ESM-2 predictions."
)


def finite_json(value):
    """``value`` (nested dicts, lists, tuples, scalars) with every float NaN or infinity replaced by None,
    so that a strict JSON writer (allow_nan=False) and a browser's JSON.parse accept it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


@dataclass(frozen=True)
class Provenance:
    """What was compared: the model and its weights, dtype, layer, device, and each side's implementation."""

    model: str
    weights: str
    dtype: str
    layer: int
    device: str
    impl_v1: str
    backend_v1: str
    impl_v2: str
    backend_v2: str
    n_sequences: int

    @property
    def demo(self) -> bool:
        return self.weights == "demo"

    @classmethod
    def of(cls, run: EmbeddingRun, layer: int) -> "Provenance":
        return cls(run.model, run.weights, run.dtype, layer, run.device, run.v1.implementation, run.v1.backend,
                   run.v2.implementation, run.v2.backend, len(run.ids))


@dataclass(frozen=True)
class Timings:
    """Seconds each pass took (the numerics sample's: None when the run has none)."""

    v1: float
    v2: float
    reference: float | None = None

    @classmethod
    def of(cls, run: EmbeddingRun) -> "Timings":
        return cls(run.v1.seconds, run.v2.seconds, run.yardstick.seconds if run.yardstick is not None else None)

    def to_json(self) -> dict:
        return {"v1": self.v1, "v2": self.v2} | ({"reference": self.reference} if self.reference is not None else {})


@dataclass(frozen=True)
class Summary:
    """One layer of one comparison, analysed; see core.analysis.analyse."""

    provenance: Provenance
    headline: Headline
    comparison: Comparison  # the chosen head's view
    balance: ProxyBalance
    seed: int
    classifier: str
    attribution: Attribution | None
    profile: tuple[LayerProfile, ...]
    checks: tuple[CheckResult, ...]
    cache: CacheStats | None
    world_size: int
    notes: tuple[InputProblem, ...]  # input warnings and refused records
    timings: Timings
    versions: dict[str, str]
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def verdict(self) -> Verdict:
        return self.headline.verdict

    @property
    def warnings(self) -> list[str]:
        """The demo notice (demo weights) and every input warning."""
        demo = [DEMO_NOTICE] if self.provenance.demo else []
        return demo + [p.message for p in self.notes if p.severity == "warning"]

    @property
    def refused(self) -> list[InputProblem]:
        return [p for p in self.notes if p.severity == "error"]

    def to_json(self) -> dict:
        """The summary.json document: strict JSON (a NaN or infinity, from a path that returned one, is null)."""
        return finite_json(self._document())

    def _document(self) -> dict:
        headline, comparison, provenance = self.headline, self.comparison, self.provenance
        return {
            "verdict": self.verdict,
            "headline": dict(zip(("predictions", "numerics", "seed_rule"), headline.lines())),
            "recommendation": headline.recommendation(),
            "demo_weights": provenance.demo,
            "predictions": headline.predictions.to_json(),
            "numerics": headline.numerics.to_json() if headline.numerics is not None else None,
            "proxy_balance": self.balance.to_json(),
            "seed_rule": headline.seed_rule.to_json(),
        } | self._metrics_json() | {
            "checks": {
                "cosine_all_above_threshold": not headline.cosine_failures,
                "agreement_at_least_threshold": headline.predictions.verdict != "FALLBACK",
                "numerics_equivalent": headline.numerics_passed,
            },
            "cosine_failures": list(headline.cosine_failures),
            "non_finite": headline.non_finite.to_json(),
            "n_sequences": comparison.n,
            "longest_residues": headline.longest,
        } | self._provenance_json() | {
            "thresholds": asdict(comparison.thresholds),
            "reference": self.attribution.to_json() if self.attribution is not None else None,
            "layers": [entry.to_json() for entry in self.profile],
            "checks_v2": [check.to_json() for check in self.checks],
            "cache": self.cache.to_json() if self.cache is not None else None,
            "world_size": self.world_size,
            "warnings": self.warnings,
            "refused": [{"id": p.record_id, "message": p.message} for p in self.refused],
            "seconds": self.timings.to_json(),
            "versions": dict(self.versions),
            "created_at": self.created_at,
        }

    def _metrics_json(self) -> dict:
        comparison = self.comparison
        low, high = binomial_interval(comparison.n_agree, comparison.n)
        return {
            "label_agreement": comparison.agreement,
            "label_agreement_interval": {"low": low, "high": high, "method": "Wilson 95%, over sequences"},
            "n_label_flips": int(comparison.flips.sum()),
            "pearson": comparison.pearson,
            "max_confidence_diff": comparison.max_confidence_diff,
            "cosine": comparison.distribution(comparison.cosine),
            "mean_abs_diff": float(comparison.mean_abs_diff.mean()),
            "max_abs_diff": float(comparison.max_abs_diff.max()),
            "embedding_match": {f"atol_{atol:g}": comparison.match[atol] for atol in MATCH_TOLERANCES},
        }

    def _provenance_json(self) -> dict:
        p = self.provenance
        return {"model": p.model, "weights": p.weights, "dtype": p.dtype, "layer": p.layer, "seed": self.seed,
                "classifier": self.classifier, "backend_v1": p.backend_v1, "backend_v2": p.backend_v2,
                "impl_v1": p.impl_v1, "impl_v2": p.impl_v2, "device": p.device}
