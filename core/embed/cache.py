"""An on-disk cache of pooled embeddings, so re-running a set (or a superset) computes only what is new.

One SQLite file (``embeddings.sqlite3``) in the cache directory. Each row is one sequence on one
path (v1.0 or v2.0): a float32 (float64 for a float64 model) array of shape (n_layers, embed_dim),
stored exactly, the pooled embedding of every layer in the run's layer set, plus the backend and
implementation strings that produced it. The numerics sample takes its rows of the set from the run,
cached or not (the very rows the report judges); its reference, probes and deep pack are always
measured afresh. A row's key is the sha256 of

- the weights fingerprint (see :func:`fingerprint`),
- the model dtype, the device kind ('cpu' or 'cuda <GPU name>'), the torch / flash-attn versions
  (kernels differ in rounding) and a hash of this tool's numerics source (``code_fingerprint``),
- the path identity: v1.0 = fair-esm's forward and version; v2.0 = its backend and implementation
  string (a plug-in's name and version),
- the layer set,
- the sha256 of the residue string.

SQLite (WAL journal, busy timeout, ``INSERT OR IGNORE``) makes it safe for several processes.
The first run that computes a sequence's embedding wins; later runs read that one.

In FP16/BF16 a sequence's embedding depends slightly (GEMM rounding, ~1e-3) on its batch-mates,
so a cached embedding is the one from the run that first computed it, not necessarily bit-equal
to what the current batch composition would give. In FP32 on a CPU the difference is ~1e-7 at most.

An unreadable or corrupt cache never gives a wrong answer: the run says so in one line (``stats.
warning``) and computes everything; a row that does not decode is a miss and is rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.embed.cache_store import SCHEMA_VERSION, CachedEmbedding, EmbeddingCache, device_kind, fingerprint, sequence_hash
from core.embed.passes import PathEmbeddings
from core.embed.paths import ForwardPath, packed_path, standard_path
from core.embed.run import EmbeddingRun
from core.numerics.environment import device_description, versions
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.loading import layer_indices
from core.numerics.precision import accumulation_dtype, dtype_name


@dataclass
class CacheStats:
    """hits: sequences served entirely from the cache; computed: sequences run through the model."""

    dir: str | None
    hits: int = 0
    computed: int = 0
    warning: str | None = None

    def to_json(self) -> dict:
        """The ``"cache"`` object of summary.json."""
        out: dict = {"dir": self.dir, "hits": self.hits, "computed": self.computed}
        if self.warning:
            out["warning"] = self.warning
        return out


@dataclass(frozen=True)
class PathIdentity:
    """One path as the cache keys it (``role`` is 'v1' or 'v2')."""

    role: str
    identity: str


@dataclass
class CachePlan:
    """What a lookup found: per path, the cached (n_layers, embed_dim) arrays by input index, and the misses."""

    layers: list[int]
    paths: list[PathIdentity]
    keys: dict[str, list[str]]  # role -> key per input index
    found: dict[str, dict[int, CachedEmbedding]] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)


def path_identities(
    model: ESM2WithFlashAttention, backend: str | None = None, v2_path: ForwardPath | None = None
) -> list[PathIdentity]:
    """The identities of the two paths a run_both_paths call with these arguments would run."""
    v1 = standard_path(model)
    v2 = v2_path or packed_path(model, backend)
    return [
        PathIdentity("v1", f"{v1.implementation} | {v1.backend}"),
        PathIdentity("v2", f"{v2.implementation} | {v2.backend}"),
    ]


NUMERICS_MODULES = ("core/numerics/esm2_packed.py", "core/numerics/attention.py", "core/numerics/precision.py",
                    "core/numerics/fallback.py", "core/embed/paths.py", "core/embed/passes.py", "core/embed/batching.py")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of this tool's source that decides the numbers (forward paths, pooling, batching), and the
    torch / flash-attn versions: an edit or an upgrade starts a fresh set of entries."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]
    for name in NUMERICS_MODULES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    found = versions()
    digest.update(f"torch {found.get('torch', '?')}, flash-attn {found.get('flash-attn', '-')}".encode())
    return digest.hexdigest()[:16]


def entry_key(weights: str, dtype: str, device: str, identity: str, layers: Sequence[int], seq_hash: str) -> str:
    """sha256 of the key parts, as one JSON list (with :func:`code_fingerprint`)."""
    parts = [SCHEMA_VERSION, code_fingerprint(), weights, dtype, device, identity, list(layers), seq_hash]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def plan_lookup(
    cache: EmbeddingCache | None,
    model: ESM2WithFlashAttention,
    sequences: Sequence[str],
    layers: Sequence[int] | None = None,
    backend: str | None = None,
    v2_path: ForwardPath | None = None,
) -> CachePlan:
    """Look every sequence up on both paths; a sequence missing on either is in ``plan.missing``."""
    layers = layer_indices(model, layers)
    paths = path_identities(model, backend, v2_path)
    if cache is None:
        return CachePlan(layers, paths, {}, {p.role: {} for p in paths}, list(range(len(sequences))))
    weights = fingerprint(model, cache)
    dtype, device = dtype_name(model.dtype), device_kind(model.device)
    hashes = [sequence_hash(seq) for seq in sequences]
    keys = {p.role: [entry_key(weights, dtype, device, p.identity, layers, h) for h in hashes] for p in paths}
    found: dict[str, dict[int, CachedEmbedding]] = {}
    for p in paths:
        rows = cache.get_many(keys[p.role])
        shape, out_dtype = (len(layers), model.embed_dim), _np_pool(model)
        found[p.role] = {
            i: rows[key] for i, key in enumerate(keys[p.role])
            if key in rows and rows[key].layers.shape == shape and rows[key].layers.dtype == out_dtype
        }
    missing = [i for i in range(len(sequences)) if any(i not in found[p.role] for p in paths)]
    return CachePlan(layers, paths, keys, found, missing)


def _np_pool(model: ESM2WithFlashAttention) -> np.dtype:
    """The numpy dtype of both paths' pooled embeddings: float64 for a float64 model, else float32."""
    return np.dtype(str(accumulation_dtype(model.dtype)).removeprefix("torch."))


def _path_of(run: EmbeddingRun | None, role: str) -> PathEmbeddings | None:
    if run is None:
        return None
    return {"v1": run.v1, "v2": run.v2}[role]


def merge_run(
    plan: CachePlan,
    model: ESM2WithFlashAttention,
    ids: Sequence[str],
    sequences: Sequence[str],
    computed: EmbeddingRun | None,
) -> EmbeddingRun:
    """Cached rows and ``computed`` (a run over ``plan.missing``, in that order) into one run in input order.

    Each path's layers are (n_sequences, embed_dim); seconds are those of the computed part (0 when
    everything came from the cache); backend and implementation strings come from the computed part,
    else from the cached rows.
    """
    n, width = len(sequences), model.embed_dim
    missing = np.asarray(plan.missing, dtype=np.int64)
    merged: dict[str, PathEmbeddings] = {}
    for p in plan.paths:
        fresh = _path_of(computed, p.role)
        out_dtype = _np_pool(model)
        hits = sorted(plan.found[p.role].keys() - set(plan.missing))
        cached = np.stack([plan.found[p.role][i].layers for i in hits]) if hits else None  # (n_hits, n_layers, width)
        layers = {}
        for j, layer in enumerate(plan.layers):
            values = np.empty((n, width), dtype=out_dtype)
            if fresh is not None:
                values[missing] = fresh.layers[layer]
            if cached is not None:
                values[hits] = cached[:, j]
            layers[layer] = values
        if fresh is not None:
            backend, implementation, seconds = fresh.backend, fresh.implementation, fresh.seconds
        else:
            first = plan.found[p.role][0]
            backend, implementation, seconds = first.backend, first.implementation, 0.0
        merged[p.role] = PathEmbeddings(layers, backend, seconds, implementation)
    return EmbeddingRun(
        ids=list(ids), lengths=np.array([len(seq) for seq in sequences]), v1=merged["v1"], v2=merged["v2"],
        model=model.name, weights=model.weights, dtype=dtype_name(model.dtype), device=device_description(model.device),
        layers=list(plan.layers),
    )


def store_computed(cache: EmbeddingCache | None, plan: CachePlan, computed: EmbeddingRun | None) -> None:
    """Write the computed rows (every path, all of the plan's layers stacked) into the cache."""
    if cache is None or computed is None or not plan.keys:
        return
    entries: dict[str, CachedEmbedding] = {}
    for p in plan.paths:
        fresh = _path_of(computed, p.role)
        stacked = np.stack([fresh.layers[layer] for layer in plan.layers], axis=1)  # (n_missing, n_layers, width)
        for row, index in enumerate(plan.missing):
            entries[plan.keys[p.role][index]] = CachedEmbedding(stacked[row], fresh.backend, fresh.implementation)
    cache.put_many(entries)


