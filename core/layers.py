"""Where divergence appears: per layer (from the one all-layer pass) and per residue."""

from __future__ import annotations

import esm
import numpy as np
import pandas as pd
import torch

from core.batching import pack_tokens, padded_tokens
from core.compare import EmbeddingRun
from core.metrics import cosine_similarity, max_abs_diff, mean_abs_diff
from core.model import ESM2WithFlashAttention
from core.proxies import ProxyKind, proxy_head


def layer_profile(run: EmbeddingRun, seed: int = 0, proxy: ProxyKind = "balanced") -> list[dict[str, float | int]]:
    """One entry per pooled layer: v1.0-vs-v2.0 cosine (min, mean), mean/max abs diff, label agreement of
    the ``proxy`` head of ``seed`` (fitted at that layer); with a reference in the run, each path's mean
    abs error against it on the sample too."""
    profile = []
    sample = run.reference_sample
    for layer in run.layers:
        v1, v2 = run.v1.layers[layer].astype(np.float64), run.v2.layers[layer].astype(np.float64)
        classifier = proxy_head(proxy, seed, v1)
        cosine = cosine_similarity(v1, v2)
        abs_diff = np.abs(v1 - v2)
        entry = {
            "layer": layer,
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "mean_abs_diff": float(abs_diff.mean()),
            "max_abs_diff": float(abs_diff.max()),
            "label_agreement": float(
                (classifier.probabilities(v1).argmax(1) == classifier.probabilities(v2).argmax(1)).mean()
            ),
        }
        if sample is not None:
            rows, wide = sample.indices, sample.reference_rows(layer)
            entry["v1_mean_abs_error"] = float(mean_abs_diff(v1[rows], wide).mean())
            entry["v2_mean_abs_error"] = float(mean_abs_diff(v2[rows], wide).mean())
        profile.append(entry)
    return profile


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
