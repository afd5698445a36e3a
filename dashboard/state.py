"""The page's caches and settings: Streamlit glue around ``core``, nothing computed here.

- ``get_model``: one loaded model per (model, dtype, device), shared by every session.
- ``embed_all_layers``: pooled embeddings of *every* layer for both paths, cached per input, so
  changing layer, seed or thresholds afterwards redraws without touching the model.
- ``Settings``: what the sidebar chooses, read from and written to the URL query string.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import streamlit as st
import torch

from core import compare
from core.compare import EmbeddingRun
from core.metrics import Thresholds
from core.model import default_device, default_dtype, default_model_spec, load_esm2_model

STAGES = ("v1.0", "v2.0")


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


@st.cache_data(max_entries=16, show_spinner=False)
def embed_all_layers(spec: str, dtype: str, device: str, backend: str, records: tuple[tuple[str, str], ...]) -> EmbeddingRun:
    """Both paths' pooled embeddings at every layer for ``records`` ((id, sequence) pairs).

    The progress bar lives inside the cached function (Streamlit replays, rather than shares,
    elements of cached functions) and is emptied when done, so a cache hit shows nothing.
    """
    bar = st.progress(0.0, text=f"Loading {spec} in {dtype} on {device}…")
    model, alphabet = get_model(spec, dtype, device, weights_token(spec))
    ids, sequences = zip(*records)
    run = compare.run_both_paths(
        model, alphabet, ids, sequences, layers=None, backend=backend, progress=progress_reporter(bar, len(records))
    )
    bar.empty()
    return run


def progress_reporter(bar: Any, n_sequences: int) -> Callable[[str, int, int], None]:
    """A core.compare progress callback that drives a Streamlit progress bar with time left."""
    start = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        fraction = (STAGES.index(stage) * total + done) / (len(STAGES) * total)
        elapsed = time.perf_counter() - start
        left = elapsed * (1 - fraction) / fraction
        path = "v1.0 standard path" if stage == "v1.0" else "v2.0 packed path"
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
    layer: int = -1  # -1: the last layer
    seed: int = 0
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
