"""A synthetic run of any size, shaped like a demo model's (demo-8M's 7 pooled layers × 320 by default),
for benchmarks and tests: no model involved. Both paths are a float64 "truth" plus independent
float32-sized noise (a faithful v2.0), a few sequences' v2.0 much further off so the views have flips
and a worst list; the numerics sample's fp64 reference is the truth itself."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from core.analysis.analyse import analyse
from core.embed.passes import PathEmbeddings
from core.embed.run import EmbeddingRun
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE, Yardstick, spanning_sample
from core.input.records import ParsedInput, ProteinRecord
from core.numerics.environment import versions
from core.numerics.specs import ModelSpec
from dashboard.compact import compact_run
from dashboard.runs import RunStore
from dashboard.settings import Settings, options_for

SHAPED_LIKE = "demo-8M"  # the model whose runs a synthetic run is shaped like, by default
NOISE = 1e-6  # relative error of each path, about float32 rounding through a few layers
OUTLIERS = 20  # sequences (at most 1 in 50 outside the numerics sample) whose v2.0 is NOISE × 1e4 off
AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def pooled_shape(model: str) -> tuple[int, int]:
    """(pooled layers, width) of a demo or pretrained model's runs: demo-8M's are (7, 320)."""
    architecture = ModelSpec.parse(model).architecture
    return architecture.num_layers + 1, architecture.embed_dim


def synthetic_run(n: int, seed: int = 0, model: str = SHAPED_LIKE) -> EmbeddingRun:
    """An EmbeddingRun of ``n`` sequences shaped like ``model``'s: per layer (n, width) float32 v1.0 and
    v2.0, lengths 30…800."""
    layers, width = pooled_shape(model)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(30, 800, size=n)
    indices = spanning_sample(lengths, DEFAULT_REFERENCE_SAMPLE)
    others = np.setdiff1d(np.arange(n), indices)  # the numerics sample stays faithful
    outliers = rng.choice(others, size=min(OUTLIERS, others.size // 50), replace=False)
    v1, v2, reference = {}, {}, {}
    for layer in range(layers):
        truth = rng.standard_normal((n, width), dtype=np.float32)
        relative = rng.standard_normal((n, width), dtype=np.float32)
        relative *= np.float32(NOISE)
        # v2.0's relative errors: the next sequence's draw, independent of this one's (one draw, not two:
        # a 100,000-sequence run is generated in half the time)
        wobble = np.roll(relative, 1, axis=0)
        wobble[outliers] *= np.float32(1e4)
        v1[layer] = np.add(np.multiply(truth, relative, out=relative), truth, out=relative)  # in place: 100,000
        v2[layer] = np.add(np.multiply(truth, wobble, out=wobble), truth, out=wobble)  # rows are 128 MB a draw
        reference[layer] = truth[indices].astype(np.float64)
    sample = Yardstick("reference", "fp64", indices, (), path({l: a[indices] for l, a in v1.items()}, 0.5),
                       path({l: a[indices] for l, a in v2.items()}, 0.5), path(reference, 1.0))
    return EmbeddingRun(ids=[f"seq_{i:06d}" for i in range(n)], lengths=lengths, v1=path(v1, n * 1e-3),
                        v2=path(v2, n * 5e-4), model=model, weights="demo", dtype="fp32", device="cpu",
                        layers=list(range(layers)), yardstick=sample)


def path(layers: dict[int, np.ndarray], seconds: float) -> PathEmbeddings:
    return PathEmbeddings(layers=layers, backend="synthetic", seconds=seconds, implementation="synthetic")


def synthetic_input(run: EmbeddingRun) -> ParsedInput:
    """Records for the run's ids (random residues of each length): what input.json would hold."""
    rng = np.random.default_rng(len(run.ids))
    residues = AMINO_ACIDS[rng.integers(0, AMINO_ACIDS.size, size=int(np.sum(run.lengths)))].tobytes().decode()
    ends = np.cumsum(run.lengths)
    return ParsedInput(records=[ProteinRecord(seq_id, residues[end - length:end], ())
                                for seq_id, length, end in zip(run.ids, run.lengths.tolist(), ends.tolist())],
                       problems=[])


def store_synthetic_run(store: RunStore, n: int, seed: int = 0, layer: int | None = None,
                        model: str = SHAPED_LIKE) -> str:
    """Save a synthetic run of ``n`` sequences shaped like ``model``'s in ``store`` as the page saves a
    finished run (compact but for ``layer``, by default the last; summary.json and sequences.csv, state
    done); returns its id."""
    layer = pooled_shape(model)[0] - 1 if layer is None else layer
    run = compact_run(synthetic_run(n, seed, model), [layer])
    parsed = synthetic_input(run)
    settings = Settings(model=model, dtype="fp32", device="cpu", layer=layer)
    run_id = store.new_id()
    store.create(run_id, parsed, asdict(settings))
    pruned = store.save_embeddings(run_id, run)
    analysis = analyse(run, layer, options_for(settings), parsed, versions())
    store.save_outputs(run_id, analysis.summary, analysis.table)
    store.set_status(run_id, "done", seconds=run.v1.seconds + run.v2.seconds, pruned_runs=pruned)
    return run_id
