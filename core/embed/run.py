"""Both paths over one sequence set: the EmbeddingRun every analysis reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import esm
import numpy as np

from core.embed.passes import PathEmbeddings, Progress, embed_v1, embed_v2
from core.embed.paths import ForwardPath, packed_path, standard_path
from core.embed.yardstick import Yardstick, YardstickPlan, measure_yardstick, sample_rows, with_deep_pack
from core.numerics.environment import device_description
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.loading import layer_indices
from core.numerics.precision import dtype_name


@dataclass
class EmbeddingRun:
    """Both paths' pooled embeddings for one sequence set, with what produced them."""

    ids: list[str]
    lengths: np.ndarray  # (n,) residues
    v1: PathEmbeddings
    v2: PathEmbeddings
    model: str
    weights: str
    dtype: str
    device: str
    layers: list[int] = field(default_factory=list)
    yardstick: Yardstick | None = None  # the numerics sample; None only for runs saved before it existed

    @property
    def is_demo(self) -> bool:
        return self.weights == "demo"

    @property
    def reference_sample(self) -> Yardstick | None:
        """The numerics sample when it has a wider-dtype reference (not the rounding floor), else None."""
        return self.yardstick if self.yardstick is not None and self.yardstick.kind == "reference" else None


def require_one_id_per_sequence(ids: Sequence[str], sequences: Sequence[str]) -> None:
    """ValueError unless there is at least one sequence and exactly one id for each."""
    if len(ids) != len(sequences) or not sequences:
        raise ValueError("need one id per sequence and at least one sequence")


def run_both_paths(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    ids: Sequence[str],
    sequences: Sequence[str],
    layers: Sequence[int] | None = None,
    backend: str | None = None,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    yardstick: YardstickPlan | None = None,
    v2_path: ForwardPath | None = None,
) -> EmbeddingRun:
    """Embed ``sequences`` with v1.0 and v2.0 and pool ``layers`` (None = every layer).

    ``yardstick`` adds the numerics sample (a wider-dtype reference, or v1.0's rounding floor; see
    measure_yardstick); None leaves it out (torchrun shards: rank 0 adds it to the whole set).
    ``v2_path`` replaces the built-in packed path (the v1-compatible fallback, or a plug-in).
    """
    require_one_id_per_sequence(ids, sequences)
    layers = layer_indices(model, layers)
    v2_path = v2_path or packed_path(model, backend)
    v1 = embed_v1(model, alphabet, sequences, layers, max_tokens, progress)
    v2 = embed_v2(model, alphabet, sequences, layers, backend, max_tokens, progress, path=v2_path)
    run = _embedding_run(model, ids, sequences, layers, v1, v2)
    if yardstick is not None:
        run.yardstick = measure_yardstick(model, alphabet, sequences, layers, yardstick, v2_path, v1, v2, max_tokens,
                                          progress)
    return run


def v1_baseline(model: ESM2WithFlashAttention, alphabet: esm.data.Alphabet, ids: Sequence[str],
                sequences: Sequence[str], yardstick: YardstickPlan, max_tokens: int | None = None) -> EmbeddingRun:
    """The run many v2.0s are judged against, each swapped in by with_v2 (the broken-path catalogue, the
    peer table): v1.0 over ``sequences`` at every layer with its numerics sample, and as its own v2.0 the
    standard path — v1.0's embeddings, not computed again (analysed as it is, it compares v1.0 with
    itself). No v2.0 pass is spent on a path that with_v2 replaces."""
    require_one_id_per_sequence(ids, sequences)
    layers = layer_indices(model, None)
    v1 = embed_v1(model, alphabet, sequences, layers, max_tokens)
    run = _embedding_run(model, ids, sequences, layers, v1, v1)
    run.yardstick = measure_yardstick(model, alphabet, sequences, layers, yardstick, standard_path(model), v1, v1,
                                      max_tokens)
    return run


def _embedding_run(model: ESM2WithFlashAttention, ids: Sequence[str], sequences: Sequence[str], layers: list[int],
                   v1: PathEmbeddings, v2: PathEmbeddings) -> EmbeddingRun:
    return EmbeddingRun(ids=list(ids), lengths=np.array([len(seq) for seq in sequences]), v1=v1, v2=v2,
                        model=model.name, weights=model.weights, dtype=dtype_name(model.dtype),
                        device=device_description(model.device), layers=layers)


def with_v2(run: EmbeddingRun, model: ESM2WithFlashAttention, alphabet: esm.data.Alphabet, sequences: Sequence[str],
            path: ForwardPath, max_tokens: int | None = None) -> EmbeddingRun:
    """``run`` (over ``sequences``, with a numerics sample; e.g. v1_baseline's) with its v2.0 — on the whole
    set, on the sample and deep in a pack — recomputed on ``path``. v1.0 and the reference do not depend on
    v2.0, so this is what run_both_paths would compute for ``path``, without computing them again (the
    broken-path catalogue and the peer table judge many v2.0s against one v1.0)."""
    sample = run.yardstick
    chosen = [*(sequences[i] for i in sample.indices), *sample.probes]
    v2 = embed_v2(model, alphabet, sequences, run.layers, max_tokens=max_tokens, path=path)
    candidate = sample_rows(v2, sample.indices, sample.probes, model, alphabet, run.layers, path, max_tokens)
    sample = with_deep_pack(dataclasses.replace(sample, candidate=candidate), model, alphabet, chosen, run.layers, path)
    return dataclasses.replace(run, v2=v2, yardstick=sample)
