"""Where divergence appears: per layer (from the one all-layer pass) and per residue."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import esm
import numpy as np
import pandas as pd
import torch

from core.embed.batching import pack_tokens, padded_tokens
from core.embed.run import EmbeddingRun
from core.analysis.memo import Memo, compute_now, remembers
from core.analysis.metrics import cosine_similarity, distances_from, max_abs_diff, mean_abs_diff
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.analysis.projection import proxy_labels
from core.analysis.proxies import ProxyKind


@dataclass(frozen=True)
class LayerProfile:
    """One pooled layer: v1.0-vs-v2.0 cosine (min, mean), mean/max abs diff and the label agreement of the
    chosen proxy head fitted at that layer; with a reference, each path's mean abs error against it on
    the numerics sample (None without one)."""

    layer: int
    cosine_min: float
    cosine_mean: float
    mean_abs_diff: float
    max_abs_diff: float
    label_agreement: float
    v1_mean_abs_error: float | None = None
    v2_mean_abs_error: float | None = None

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def layer_profile(run: EmbeddingRun, seed: int = 0, proxy: ProxyKind = "balanced",
                  memo: Memo = compute_now) -> tuple[LayerProfile, ...]:
    """One LayerProfile per pooled layer, from the one all-layer pass. ``memo`` may reuse each layer's
    distances (key ``("profile-distances", layer)``) and agreement (``("profile-agreement", layer, proxy, seed)``)."""
    return tuple(profile_layer(run, layer, seed, proxy, memo) for layer in run.layers)


def profile_layer(run: EmbeddingRun, layer: int, seed: int, proxy: ProxyKind, memo: Memo = compute_now) -> LayerProfile:
    measured = memo(("profile-distances", layer), lambda: layer_distances(run, layer, memo))
    agreement = memo(("profile-agreement", layer, proxy, seed), lambda: layer_agreement(run, layer, seed, proxy, memo))
    return LayerProfile(layer, *measured[:4], agreement, *measured[4:])


def layer_distances(run: EmbeddingRun, layer: int, memo: Memo = compute_now,
                    ) -> tuple[float, float, float, float, float | None, float | None]:
    """(min cosine, mean cosine, mean |v1 − v2|, max |v1 − v2|, v1.0's and v2.0's mean abs error against the
    reference on the numerics sample, or None without one) at ``layer``; none of it depends on a head. The
    per-sequence distances made on the way are left in ``memo`` (key ``("distances", layer)``, the analysis
    of that layer reads them there), so a large run's layer is measured once, when the run is opened."""
    v1, v2 = run.v1.layers[layer].astype(np.float64), run.v2.layers[layer].astype(np.float64)
    cosine = cosine_similarity(v1, v2)
    abs_diff = np.abs(v1 - v2)
    if remembers(memo):  # the CLI's one analysis would only throw them away
        memo(("distances", layer), lambda: distances_from(cosine, abs_diff))
    errors: tuple[float | None, float | None] = (None, None)
    sample = run.reference_sample
    if sample is not None:
        rows, wide = sample.indices, sample.reference_rows(layer)
        errors = (float(mean_abs_diff(v1[rows], wide).mean()), float(mean_abs_diff(v2[rows], wide).mean()))
    return float(cosine.min()), float(cosine.mean()), float(abs_diff.mean()), float(abs_diff.max()), *errors


def layer_agreement(run: EmbeddingRun, layer: int, seed: int, proxy: ProxyKind, memo: Memo = compute_now) -> float:
    """Label agreement of the ``seed``'s ``proxy`` head fitted at ``layer``: the labels an analysis of that
    layer draws (``memo`` key ``("proxy", layer, proxy, seed)``, shared with it; a compact stored layer's from
    its stored form, not expanded: on a large stored run a new seed is this at every layer)."""
    _, labels = memo(("proxy", layer, proxy, seed), lambda: proxy_labels(run.v1.layers, run.v2.layers, layer, proxy, seed))
    return float((labels.labels_v1 == labels.labels_v2).mean())


@torch.inference_mode()
def residue_divergence(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequence: str,
    layer: int,
    backend: str | None = None,
) -> pd.DataFrame:
    """Per-residue divergence of one sequence at ``layer``: both paths run on it alone.

    Returns one row per residue: position (1-based), residue, cosine, mean_abs_diff, max_abs_diff.
    """
    tokens = padded_tokens(alphabet, [sequence])
    residues = slice(1, len(sequence) + 1)
    v1 = model(tokens.to(model.device), repr_layers=[layer])["representations"][layer][0, residues]
    pack = pack_tokens(tokens, [len(sequence)]).to(model.device)
    v2 = model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [layer], backend=backend)
    v2 = v2["representations"][layer][residues]
    v1, v2 = v1.double().cpu().numpy(), v2.double().cpu().numpy()
    return pd.DataFrame({
        "position": np.arange(1, len(sequence) + 1),
        "residue": list(sequence),
        "cosine": cosine_similarity(v1, v2),
        "mean_abs_diff": mean_abs_diff(v1, v2),
        "max_abs_diff": max_abs_diff(v1, v2),
    })
