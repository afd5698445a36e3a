"""The page's caches and settings: Streamlit glue around ``core``, nothing computed here.

- ``get_model``: one loaded model per (model, dtype, device), shared by every session.
- ``embed_all_layers``: pooled embeddings of *every* layer for both paths, cached per input, so
  changing layer, seed or thresholds afterwards redraws without touching the model.
- ``Settings``: what the sidebar chooses, read from and written to the URL query string.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import streamlit as st
import torch

from core import compare
from core.checks import CheckResult, determinism, packing_invariance
from core.compare import EmbeddingRun
from core.layers import residue_divergence
from core.plugins import PluginError, make_plugin_path
from core.metrics import Thresholds
from core.model import default_device, default_dtype, default_model_spec, load_esm2_model

STAGES = ("v1.0", "v2.0", "reference")


@st.cache_resource(max_entries=1, show_spinner=False)
def get_model(spec: str, dtype: str, device: str, weights_token: str = ""):
    """(model, alphabet), loaded once per (spec, dtype, device) and shared by all sessions.

    ``weights_token`` changes when a checkpoint file changes on disk. One entry: loading another
    model releases the previous one's GPU memory.
    """
    return load_esm2_model(spec, dtype=dtype, device=device)


def weights_token(spec: str) -> str:
    """Size and mtime of a checkpoint file, so an overwritten file is reloaded."""
    path = Path(spec).expanduser()
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return ""


BUILTIN_V2 = {"packed": "This project's packed path (v2.0)", "fallback": "v1-compatible fallback"}
CONFIG_FILE = Path(__file__).with_name("config.toml")


def v2_plugins() -> dict[str, str]:
    """Plug-ins the server offers: label -> module:factory, from dashboard/config.toml."""
    if not CONFIG_FILE.is_file():
        return {}
    return dict(tomllib.loads(CONFIG_FILE.read_text()).get("v2_plugins", {}))


def v2_path_for(choice: str, model, backend: str):
    """The v2.0 ForwardPath for a sidebar choice: 'packed', 'fallback', or a plug-in label."""
    if choice == "fallback":
        return compare.fallback_path(model)
    if choice == "packed":
        return compare.packed_path(model, backend)
    plugins = v2_plugins()
    if choice not in plugins:
        raise PluginError(f"no v2.0 plug-in called {choice!r} in {CONFIG_FILE.name}")
    return make_plugin_path(plugins[choice], model)


@st.cache_data(max_entries=16, show_spinner=False)
def embed_all_layers(
    spec: str, dtype: str, device: str, backend: str, records: tuple[tuple[str, str], ...], reference: str = "none",
    v2: str = "packed",
) -> EmbeddingRun:
    """Both paths' pooled embeddings at every layer for ``records`` ((id, sequence) pairs),
    plus the reference set when ``reference`` is 'fp32' or 'fp64'. ``v2`` picks the v2.0 side.

    The progress bar lives inside the cached function (Streamlit replays, rather than shares,
    elements of cached functions) and is emptied when done, so a cache hit shows nothing.
    """
    bar = st.progress(0.0, text=f"Loading {spec} in {dtype} on {device}…")
    model, alphabet = get_model(spec, dtype, device, weights_token(spec))
    ids, sequences = zip(*records)
    stages = STAGES if reference != "none" else STAGES[:2]
    run = compare.run_both_paths(
        model, alphabet, ids, sequences, layers=None, backend=backend,
        progress=progress_reporter(bar, len(records), stages),
        reference_dtype=None if reference == "none" else reference,
        v2_path=v2_path_for(v2, model, backend),
    )
    bar.empty()
    return run


@st.cache_data(max_entries=64, show_spinner="Running both paths on this sequence alone…")
def residue_view(spec: str, dtype: str, device: str, backend: str, sequence: str, layer: int):
    """Per-residue divergence of one sequence (core.layers.residue_divergence), cached."""
    model, alphabet = get_model(spec, dtype, device, weights_token(spec))
    return residue_divergence(model, alphabet, sequence, layer, backend)


@st.cache_data(max_entries=16, show_spinner="Running v2.0 again: each sequence alone, then the whole set…")
def v2_checks(spec: str, dtype: str, device: str, backend: str, records: tuple[tuple[str, str], ...],
              layer: int, _packed: Any) -> list[CheckResult]:
    """Packing invariance and determinism of v2.0 at ``layer`` against the cached packed embeddings."""
    model, alphabet = get_model(spec, dtype, device, weights_token(spec))
    sequences = [sequence for _, sequence in records]
    return [
        packing_invariance(model, alphabet, sequences, _packed, layer, backend),
        determinism(model, alphabet, sequences, _packed, layer, backend),
    ]


def progress_reporter(bar: Any, n_sequences: int, stages: tuple[str, ...] = STAGES[:2]) -> Callable[[str, int, int], None]:
    """A core.compare progress callback that drives a Streamlit progress bar with time left."""
    start = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        fraction = (stages.index(stage) * total + done) / (len(stages) * total)
        elapsed = time.perf_counter() - start
        left = elapsed * (1 - fraction) / fraction
        path = {"v1.0": "v1.0 standard path", "v2.0": "v2.0 packed path", "reference": "reference (standard path, wide dtype)"}[stage]
        eta = f" · about {left:.0f} s left" if fraction < 1 and n_sequences >= 50 else ""
        bar.progress(min(fraction, 1.0), text=f"{path}: {done}/{total} sequences{eta}")

    return report


@dataclass
class Settings:
    """The sidebar's choices. Every field round-trips through the URL query string."""

    model: str = ""
    dtype: str = ""
    device: str = ""
    backend: str = "auto"
    v2: str = "packed"  # 'packed', 'fallback', or a plug-in label from dashboard/config.toml
    reference: str = "none"  # or 'fp32' / 'fp64': a third, wider-dtype embedding set
    layer: int = -1  # -1: the last layer
    seed: int = 0
    seeds: int = 100  # proxy classifiers in the seed sweep (0: off)
    min_cosine: float = Thresholds.min_cosine
    min_agreement: float = Thresholds.min_agreement
    accept_agreement: float = Thresholds.accept_agreement
    present: bool = False

    @classmethod
    def defaults(cls) -> "Settings":
        device = default_device()
        return cls(model=default_model_spec(device), dtype=default_dtype(device), device=device.type)

    @classmethod
    def from_query(cls, query: dict[str, str]) -> "Settings":
        """Defaults overridden by whatever the query string holds and parses."""
        settings = cls.defaults()
        for field in fields(cls):
            if field.name not in query:
                continue
            raw = query[field.name]
            try:
                value = raw in ("1", "true", "True") if field.type == "bool" else _parse(field.type, raw)
            except ValueError:
                continue  # a hand-edited URL with a bad value keeps the default
            setattr(settings, field.name, value)
        if settings.device == "cuda" and not torch.cuda.is_available():
            settings.device = "cpu"
        return settings

    def to_query(self) -> dict[str, str]:
        defaults = asdict(Settings.defaults())
        return {
            name: ("1" if value is True else str(value))
            for name, value in asdict(self).items()
            if value != defaults[name] and value is not False
        }

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_cosine, self.min_agreement, self.accept_agreement)


def _parse(type_name: str, raw: str) -> Any:
    return {"int": int, "float": float}.get(type_name, str)(raw)
