"""Pluggable v2.0: point the tool at any fast ESM-2 path over the same weights.

A plug-in is named ``module:factory``. The factory receives the loaded
``ESM2WithFlashAttention`` (fair-esm weights, dtype and device already set) and returns an object
with ``name`` and ``version`` attributes and either

- ``forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers) -> {"representations": {layer: (total_tokens, E)}}``, or
- ``forward(tokens, repr_layers) -> {"representations": {layer: (batch, T, E)}}`` on fair-esm's padded tokens,

with fair-esm's layer semantics (0 = scaled embeddings, last = after the final layer norm) and
BOS/EOS kept in place; the tool pools residues itself.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from core.embed.paths import ForwardPath, plugin_path
from core.numerics.esm2_packed import ESM2WithFlashAttention


class PluginError(ValueError):
    """A v2.0 plug-in that cannot be loaded or does not offer the interface; the message says why."""


def load_factory(spec: str) -> Callable[[ESM2WithFlashAttention], Any]:
    """Import ``module:factory`` and return the factory."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"plug-in {spec!r} must be written module:factory, e.g. my_pipeline.esm:make_packed")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the module failing at import time
        raise PluginError(f"cannot import plug-in module {module_name!r}: {type(error).__name__}: {error}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise PluginError(f"plug-in module {module_name!r} has no callable {attribute!r}")
    return factory


def make_plugin_path(spec: str, model: ESM2WithFlashAttention) -> ForwardPath:
    """Build the plug-in from the loaded model and wrap it as the v2.0 path."""
    implementation = load_factory(spec)(model)
    missing = [name for name in ("name", "version") if not isinstance(getattr(implementation, name, None), str)]
    if missing:
        raise PluginError(f"plug-in {spec!r} returned an object without string attribute(s) {', '.join(missing)}")
    if not callable(getattr(implementation, "forward_packed", None)) and not callable(getattr(implementation, "forward", None)):
        raise PluginError(
            f"plug-in {spec!r} offers neither forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers) "
            "nor forward(tokens, repr_layers)"
        )
    return plugin_path(implementation)
