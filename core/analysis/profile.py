"""Where divergence appears: per layer (from the one all-layer pass) and per residue."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import esm
import numpy as np
import pandas as pd
import torch

from core.embed.batching import pack_tokens, padded_tokens
from core.embed.run import EmbeddingRun
from core.analysis.memo import Memo, compute_now, remembers
from core.analysis.metrics import cosine_similarity, distances, max_abs_diff, mean_abs_diff
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.analysis.projection import proxy_labels
from core.analysis.proxies import ProxyKind


PREWARM_MEMORY = 4 * 2**30  # bytes of working arrays the parallel prewarm may hold at once


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
    distances (key ``("profile-distances", layer)``), sample errors (``("profile-errors", layer)``) and
    agreement (``("profile-agreement", layer, proxy, seed)``)."""
    return tuple(profile_layer(run, layer, seed, proxy, memo) for layer in run.layers)


def profile_layer(run: EmbeddingRun, layer: int, seed: int, proxy: ProxyKind, memo: Memo = compute_now) -> LayerProfile:
    measured = memo(("profile-distances", layer), lambda: layer_distances(run, layer, memo))
    errors = memo(("profile-errors", layer), lambda: sample_errors(run, layer))
    agreement = memo(("profile-agreement", layer, proxy, seed), lambda: layer_agreement(run, layer, seed, proxy, memo))
    return LayerProfile(layer, *measured, agreement, *errors)


def prewarm_profile(run: EmbeddingRun, seed: int, proxy: ProxyKind, memo: Memo, workers: int | None = None) -> None:
    """Into ``memo``, the bulk of the layer profile and of the analysed layer's comparison: every layer's
    distances and its proxy head's labels. None of it needs the numerics sample, so it can run while the
    sample is measured (core.pipeline.run_comparison's ``meanwhile``). Layers go to ``workers`` threads
    (default: prewarm_workers) — numpy and torch release the interpreter in this work, and each layer's
    memo keys are its own."""

    def prewarm(layer: int) -> None:
        memo(("profile-distances", layer), lambda: layer_distances(run, layer, memo))
        memo(("profile-agreement", layer, proxy, seed), lambda: layer_agreement(run, layer, seed, proxy, memo))

    workers = workers or prewarm_workers(run)
    if workers <= 1:
        for layer in run.layers:
            prewarm(layer)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prewarm") as pool:
        list(pool.map(prewarm, run.layers))


def prewarm_workers(run: EmbeddingRun, memory_budget: int = PREWARM_MEMORY) -> int:
    """Threads for prewarm_profile: as many as torch may use (a torchrun rank's share of the host,
    core.threads), at most one per layer, and no more than ``memory_budget`` bytes of working arrays at
    once (a layer needs about two float64 copies of one path's (n, d): its proxy head's; its distances are
    measured in blocks)."""
    n, d = np.shape(run.v1.layers[run.layers[0]])
    per_layer = 2 * 8 * n * d
    return int(max(1, min(len(run.layers), torch.get_num_threads(), memory_budget // max(per_layer, 1))))


def layer_distances(run: EmbeddingRun, layer: int, memo: Memo = compute_now) -> tuple[float, float, float, float]:
    """(min cosine, mean cosine, mean |v1 − v2|, max |v1 − v2|) at ``layer``: needs no head and no numerics
    sample. What a remembering ``memo`` is offered on the way, from the same arrays (a stored run's compact
    layer is expanded once): the per-sequence distances (key ``("distances", layer)``, the analysis of that
    layer reads them there) and, when the run has its reference sample, the sample errors
    (``("profile-errors", layer)``): a large run's layer is measured once, when the run is opened."""
    v1, v2 = run.v1.layers[layer], run.v2.layers[layer]
    measured = distances(v1, v2)
    if remembers(memo):
        memo(("distances", layer), lambda: measured)
        sample = run.reference_sample
        if sample is not None:
            rows = sample.indices
            memo(("profile-errors", layer), lambda: errors_on_rows(np.asarray(v1[rows], np.float64),
                                                                   np.asarray(v2[rows], np.float64),
                                                                   sample.reference_rows(layer)))
    return (float(measured.cosine.min()), float(measured.cosine.mean()), measured.overall_mean_abs_diff,
            float(measured.max_abs_diff.max()))


def errors_on_rows(v1_rows: np.ndarray, v2_rows: np.ndarray, wide: np.ndarray) -> tuple[float, float]:
    """v1.0's and v2.0's mean abs error against the reference; each (m, embed_dim), float64."""
    return float(mean_abs_diff(v1_rows, wide).mean()), float(mean_abs_diff(v2_rows, wide).mean())


def sample_errors(run: EmbeddingRun, layer: int) -> tuple[float | None, float | None]:
    """errors_on_rows on the numerics sample's rows at ``layer`` (reading only those rows); (None, None)
    without a reference sample."""
    sample = run.reference_sample
    if sample is None:
        return None, None
    rows = sample.indices
    return errors_on_rows(np.asarray(run.v1.layers[layer][rows], np.float64),
                          np.asarray(run.v2.layers[layer][rows], np.float64), sample.reference_rows(layer))


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
