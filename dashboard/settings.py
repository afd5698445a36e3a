"""What the sidebar chooses (``Settings``), as it round-trips through the URL and a saved run, and the
comparison request and analysis options it stands for."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from core.analysis.analyse import AnalysisOptions
from core.analysis.metrics import Thresholds
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE
from core.numerics.environment import default_device
from core.numerics.specs import default_dtype, default_model_spec
from core.pipeline import ComparisonRequest


THRESHOLD_DECIMALS = {"min_cosine": 6, "min_agreement": 4, "accept_agreement": 4}
"""Decimals each threshold's number box shows; a link may not ask for more (the box shows what is used)."""


@dataclass
class Settings:
    """The sidebar's choices. Every field round-trips through the URL query string (read back, value by
    value checked, by dashboard.query)."""

    model: str = ""
    dtype: str = ""
    device: str = ""
    backend: str = "auto"
    v2: str = "packed"  # 'packed', 'fallback', or a plug-in label from dashboard/config.toml
    reference: str = "auto"  # the numerics gate's yardstick: 'auto', 'fp32', 'fp64' or 'none' (rounding floor)
    reference_sample: str = str(DEFAULT_REFERENCE_SAMPLE)  # sequences in the numerics sample: a count, or 'all'
    layer: int | None = None  # None: the last layer
    seed: int = 0
    proxy: str = "balanced"  # or 'seed': the seed's uncentred heads
    seeds: int = 100  # proxy heads that decide the prediction verdict (0: the chosen seed's head alone)
    min_cosine: float = Thresholds.min_cosine
    min_agreement: float = Thresholds.min_agreement
    accept_agreement: float = Thresholds.accept_agreement
    present: bool = False

    @classmethod
    def defaults(cls) -> "Settings":
        device = default_device()
        return cls(model=default_model_spec(device), dtype=default_dtype(device), device=device.type)

    def to_query(self) -> dict[str, str]:
        defaults = asdict(Settings.defaults())
        return {
            name: ("1" if value is True else str(value))
            for name, value in asdict(self).items()
            if value != defaults[name] and value is not False and value is not None
        }

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_cosine, self.min_agreement, self.accept_agreement)


def parse_sample(text: str) -> int | None:
    """The numerics sample size from its text: a count >= 0, or None for 'all'; ValueError otherwise."""
    if text.strip().lower() == "all":
        return None
    value = int(text)
    if value < 0:
        raise ValueError(f"the numerics sample must be a count >= 0 or 'all', got {value}")
    return value


def settings_from_dict(document: dict[str, Any]) -> Settings:
    """Settings saved with a run (unknown keys ignored, missing ones default; a layer of -1 in runs saved
    before layers were optional means the last)."""
    names = {field.name for field in fields(Settings)}
    settings = Settings(**{name: value for name, value in document.items() if name in names})
    if settings.layer is not None and settings.layer < 0:
        settings.layer = None
    return settings


def shown_layer(settings: Settings, run_layers: list[int]) -> int:
    """The layer a run is analysed at: the chosen one when the run pooled it, else the last (the worker that
    saves summary.json and the page that draws the view use this one rule)."""
    return settings.layer if settings.layer in run_layers else max(run_layers)


def request_for(settings: Settings, candidate: str, cache_dir: str | None) -> ComparisonRequest:
    """The comparison a Run press asks for: every layer pooled, so layer, seed and thresholds redraw freely."""
    return ComparisonRequest(
        model=settings.model, dtype=settings.dtype, device=settings.device, candidate=candidate,
        backend=settings.backend, reference=settings.reference, reference_sample=parse_sample(settings.reference_sample),
        cache_dir=cache_dir,
    )


def options_for(settings: Settings) -> AnalysisOptions:
    """How the view judges a run: seed, proxy heads and thresholds (a user's head is added by the page)."""
    return AnalysisOptions(seed=settings.seed, thresholds=settings.thresholds, proxy=settings.proxy,
                           n_heads=settings.seeds)
