"""A layer's pooled embeddings times a head's weights, straight from a compact stored form.

Heads are linear, so what a head makes of a layer is ``embeddings @ matrix``. Layers a stored page run
keeps compact (dashboard.compact: v1.0 in float16 plus a scaled float16 difference) give that product
for both paths from their stored form, several times cheaper on a large run than expanding the layer and
converting it to float64 first. Such a layer mapping offers ``compact_products(layer, matrix)`` and
``width(layer)``; plain arrays are multiplied by the caller as before.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from core.analysis.metrics import Labels, ProxyClassifier, head_labels
from core.analysis.proxies import ProxyKind, proxy_head


@runtime_checkable
class CompactLayers(Protocol):
    def compact_products(self, layer: int, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(v1.0 @ matrix, v2.0 @ matrix) at ``layer``, float64, or None where the layer is a plain array."""

    def width(self, layer: int) -> int:
        """embed_dim of ``layer``."""


def compact_products(baseline: Mapping[int, np.ndarray], candidate: Mapping[int, np.ndarray], layer: int,
                     matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(``baseline[layer] @ matrix``, ``candidate[layer] @ matrix``): (n, K) float64 for ``matrix``
    (embed_dim, K), to the rounding of float32 products, where ``layer`` is held compact; None where it is a
    plain array (multiply it in float64 yourself)."""
    if isinstance(candidate, CompactLayers) and isinstance(baseline, CompactLayers):
        return candidate.compact_products(layer, matrix)
    return None


def width(layers: Mapping[int, np.ndarray], layer: int) -> int:
    """embed_dim of ``layers[layer]``, without expanding a compact layer."""
    if isinstance(layers, CompactLayers):
        return layers.width(layer)
    return int(layers[layer].shape[1])


def proxy_labels(baseline: Mapping[int, np.ndarray], candidate: Mapping[int, np.ndarray], layer: int,
                 kind: ProxyKind, seed: int, wide: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
                 ) -> tuple[ProxyClassifier, Labels]:
    """The ``seed``'s ``kind`` proxy head fitted at ``layer``, and its labels and confidences of both paths.

    A plain layer: ``proxy_head(kind, seed, v1)`` and ``head_labels`` in float64, on ``wide()`` (the layer's
    (v1, v2) already in float64) when given. A compact layer: from float32 products of its stored form
    (the same labels as its expansion's, to rounding), without expanding it.
    """
    head = ProxyClassifier.from_seed(width(baseline, layer), seed)
    products = compact_products(baseline, candidate, layer, np.column_stack([head.weight, head.direction]))
    if products is None:
        v1, v2 = wide() if wide is not None else (np.asarray(baseline[layer], np.float64),
                                                  np.asarray(candidate[layer], np.float64))
        head = proxy_head(kind, seed, v1)
        return head, head_labels(v1, v2, head)
    if kind == "balanced":
        head = head.thresholded_at(float(np.median(products[0][:, 2])))
    return head, Labels.of(*(head.probabilities_of(side[:, :2]) for side in products))
