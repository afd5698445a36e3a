"""An on-disk cache of pooled embeddings, so re-running a set (or a superset) computes only what is new.

One SQLite file (``embeddings.sqlite3``) in the cache directory. Each row is one sequence on one
path (v1.0 or v2.0; the numerics sample is small and always measured afresh): a float32 (float64 for a float64 model) array of shape (n_layers, embed_dim), the pooled
embedding of every layer in the run's layer set, plus the backend and implementation strings
that produced it. A row's key is the sha256 of

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

import contextlib
import functools
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import esm
import numpy as np
import torch

from core.compare import (
    EmbeddingRun, ForwardPath, PathEmbeddings, Progress, YardstickPlan, device_description, measure_yardstick,
    packed_path, pool_dtype, require_one_id_per_sequence, run_both_paths, standard_path,
)
from core.model import DEMO_SEED, ESM2WithFlashAttention, dtype_name, hub_checkpoint, layer_indices, versions

CACHE_ENV = "ESM2_DIVERGENCE_CACHE"
DB_NAME = "embeddings.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,
    n_layers INTEGER NOT NULL,
    embed_dim INTEGER NOT NULL,
    array_dtype TEXT NOT NULL,
    data BLOB NOT NULL,
    backend TEXT NOT NULL,
    implementation TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class CacheUnavailable(RuntimeError):
    """The cache directory or database cannot be used; the message says why."""


# ---------------------------------------------------------------- fingerprints

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def sequence_hash(sequence: str) -> str:
    """sha256 (hex) of the residue string."""
    return hashlib.sha256(sequence.encode("ascii", "replace")).hexdigest()


def file_sha256(path: str | Path, cache: "EmbeddingCache | None" = None) -> str:
    """sha256 of a file, memoised by (resolved path, size, mtime_ns) in-process and in ``cache``'s database."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    memo_key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if memo_key in _FILE_HASHES:
        return _FILE_HASHES[memo_key]
    known = cache.file_hash(*memo_key) if cache is not None else None
    if known is None:
        digest = hashlib.sha256()
        with open(resolved, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
        known = digest.hexdigest()
        if cache is not None:
            cache.remember_file_hash(*memo_key, known)
    _FILE_HASHES[memo_key] = known
    return known


def parameters_sha256(model: ESM2WithFlashAttention) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): exact, but reads all weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.esm2.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _probe_sha256(model: ESM2WithFlashAttention) -> str:
    """A short hash of the token-embedding matrix (33 × embed_dim): tells demo seeds apart cheaply."""
    weight = model.esm2.embed_tokens.weight.detach().cpu().contiguous()
    return hashlib.sha256(weight.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def fingerprint(model: ESM2WithFlashAttention, cache: "EmbeddingCache | None" = None) -> str:
    """A cheap, stable identity of the model's weights.

    demo: ``demo-<size>-seed<DEMO_SEED>`` + fair-esm version + a hash of the token embeddings (so
    another demo seed is told apart); checkpoint / pretrained: sha256 of the weights file, memoised by
    (path, size, mtime_ns); otherwise (no file found) sha256 of the parameter bytes.
    """
    fair_esm = versions().get("fair-esm", "?")
    if model.weights == "demo":
        return f"{model.name}-seed{DEMO_SEED}-fair-esm{fair_esm}-emb{_probe_sha256(model)}"
    source = Path(model.name) if model.weights == "checkpoint" else hub_checkpoint(model.name)
    if source.is_file():
        return f"{model.weights}-sha256:{file_sha256(source, cache)}"
    return f"{model.weights}-params-sha256:{parameters_sha256(model)}"


def device_kind(device: torch.device) -> str:
    """'cpu', or 'cuda <GPU name>' (cuda:0 and cuda:1 of the same model share entries)."""
    if device.type == "cuda":
        return "cuda " + device_description(device).split(" ", 1)[-1].strip("()")
    return device.type


# ---------------------------------------------------------------- storage


@dataclass(frozen=True)
class CachedEmbedding:
    """One sequence on one path: ``layers`` (n_layers, embed_dim) float32/float64, and what produced it."""

    layers: np.ndarray
    backend: str
    implementation: str


class EmbeddingCache:
    """Pooled embeddings in ``directory/embeddings.sqlite3``; safe for several processes at once.

    Construction raises :class:`CacheUnavailable` (one clear line) when the directory cannot be
    created or the file is not a usable SQLite database.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()
        self.path = self.directory / DB_NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.executescript(_SCHEMA)
            self._check_schema()
        except (OSError, sqlite3.Error) as error:
            raise CacheUnavailable(f"cannot use the embedding cache at {self.path}: {error}") from error

    def _check_schema(self) -> None:
        self._connection.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        found = self._connection.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
        if found != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {found}, this tool writes {SCHEMA_VERSION}")

    def close(self) -> None:
        self._connection.close()

    def get_many(self, keys: Sequence[str]) -> dict[str, CachedEmbedding]:
        """The rows that exist and decode; a row that does not decode is deleted (a miss)."""
        found: dict[str, CachedEmbedding] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            rows = self._connection.execute(
                f"SELECT key, n_layers, embed_dim, array_dtype, data, backend, implementation FROM embeddings "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk,
            ).fetchall()
            for key, n_layers, embed_dim, array_dtype, data, backend, implementation in rows:
                entry = _decode(n_layers, embed_dim, array_dtype, data, backend, implementation)
                if entry is None:
                    self._connection.execute("DELETE FROM embeddings WHERE key = ?", (key,))
                else:
                    found[key] = entry
        return found

    def put_many(self, entries: dict[str, CachedEmbedding]) -> None:
        """Store new rows in one transaction; an existing row is kept (the first computation wins)."""
        rows = [
            (key, int(e.layers.shape[0]), int(e.layers.shape[1]), e.layers.dtype.str,
             np.ascontiguousarray(e.layers).tobytes(), e.backend, e.implementation)
            for key, e in entries.items()
        ]
        with self._transaction():
            self._connection.executemany(
                "INSERT OR IGNORE INTO embeddings (key, n_layers, embed_dim, array_dtype, data, backend, implementation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows,
            )

    def file_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = self._connection.execute(
            "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ?", (path, size, mtime_ns)
        ).fetchone()
        return row[0] if row else None

    def remember_file_hash(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        self._connection.execute(
            "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
            (path, size, mtime_ns, sha256),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error): one writer at a time, readers never blocked (WAL)."""
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")


def _decode(
    n_layers: int, embed_dim: int, array_dtype: str, data: bytes, backend: str, implementation: str
) -> CachedEmbedding | None:
    """A stored row back to (n_layers, embed_dim); None when it is damaged (wrong size, dtype or non-finite)."""
    try:
        dtype = np.dtype(array_dtype)
        if dtype not in (np.dtype("<f4"), np.dtype("<f8")) or len(data) != n_layers * embed_dim * dtype.itemsize:
            return None
        values = np.frombuffer(data, dtype=dtype).reshape(n_layers, embed_dim).copy()
    except (TypeError, ValueError):
        return None
    if not np.isfinite(values).all():
        return None
    return CachedEmbedding(values, str(backend), str(implementation))


def open_cache(directory: str | Path | None) -> tuple["EmbeddingCache | None", str | None]:
    """``(cache, None)``, or ``(None, one-line reason)`` when it cannot be used (the run then computes everything)."""
    if directory is None or str(directory) == "":
        return None, None
    try:
        return EmbeddingCache(directory), None
    except CacheUnavailable as error:
        return None, f"{error}; computing without the cache"


def cache_dir_from_env(cli_value: str | None) -> str | None:
    """``--cache DIR`` if given, else ``$ESM2_DIVERGENCE_CACHE`` if set and non-empty, else None (off)."""
    return cli_value if cli_value else (os.environ.get(CACHE_ENV) or None)


# ---------------------------------------------------------------- lookup, merge, store


@dataclass
class CacheStats:
    """hits: sequences served entirely from the cache; computed: sequences run through the model."""

    dir: str | None
    hits: int = 0
    computed: int = 0
    warning: str | None = None

    def to_summary(self) -> dict:
        """The ``"cache"`` object of summary.json."""
        out: dict = {"dir": self.dir, "hits": self.hits, "computed": self.computed}
        if self.warning:
            out["warning"] = self.warning
        return out


def cache_summary(directory: str | Path | None, stats: CacheStats, open_warning: str | None) -> dict | None:
    """summary.json's ``"cache"`` object for a run with the cache at ``directory`` (None when it was off),
    carrying the warning from opening it, else from using it."""
    if directory is None:
        return None
    stats.dir = str(directory)
    stats.warning = open_warning or stats.warning
    return stats.to_summary()


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


NUMERICS_MODULES = ("core/compare.py", "core/model.py", "core/attention.py", "core/batching.py")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of this tool's source that decides the numbers (forward paths, pooling, batching), and the
    torch / flash-attn versions: an edit or an upgrade starts a fresh set of entries."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
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
    return np.dtype(np.float64) if pool_dtype(model.dtype) == torch.float64 else np.dtype(np.float32)


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


def lookup_or_none(
    cache: EmbeddingCache | None,
    model: ESM2WithFlashAttention,
    sequences: Sequence[str],
    layers: Sequence[int] | None = None,
    backend: str | None = None,
    v2_path: ForwardPath | None = None,
) -> tuple[CachePlan, EmbeddingCache | None, str | None]:
    """:func:`plan_lookup`, or, when the cache cannot be read, a plan that computes everything:
    ``(plan, the cache or None when unreadable, one-line warning or None)``."""
    try:
        return plan_lookup(cache, model, sequences, layers, backend, v2_path), cache, None
    except (sqlite3.Error, OSError) as error:
        plan = plan_lookup(None, model, sequences, layers, backend, v2_path)
        return plan, None, f"embedding cache unreadable ({error}); computing without it"


def store_or_warn(cache: EmbeddingCache | None, plan: CachePlan, computed: EmbeddingRun | None) -> str | None:
    """:func:`store_computed`; a failure (disk full, locked or corrupt file) is a one-line warning, not an error."""
    try:
        store_computed(cache, plan, computed)
    except (sqlite3.Error, OSError) as error:
        return f"could not write to the embedding cache ({error}); results are unaffected"
    return None


def run_both_paths_cached(
    cache: EmbeddingCache | None,
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
) -> tuple[EmbeddingRun, CacheStats]:
    """:func:`core.compare.run_both_paths` through the cache: computes only the sequences missing on
    either path (by calling ``run_both_paths`` on that subset), merges in input order, stores them,
    then measures the ``yardstick`` sample on the whole set (never cached: it is small).

    The arguments after ``sequences`` are ``run_both_paths``'s. ``cache=None`` computes everything.
    A cache that fails mid-run (disk full, corrupt file) is reported in ``stats.warning`` and the
    computed result is still returned. In FP16 a sequence's embedding depends slightly (GEMM
    rounding, ~1e-3) on its batch-mates, so a cached embedding is the one from the run that first
    computed it.
    """
    require_one_id_per_sequence(ids, sequences)
    stats = CacheStats(dir=str(cache.directory) if cache is not None else None)
    plan, cache, stats.warning = lookup_or_none(cache, model, sequences, layers, backend, v2_path)
    computed = None
    if plan.missing:
        computed = run_both_paths(
            model, alphabet, [ids[i] for i in plan.missing], [sequences[i] for i in plan.missing],
            layers=plan.layers, backend=backend, max_tokens=max_tokens, progress=progress, v2_path=v2_path,
        )
    stats.hits, stats.computed = len(sequences) - len(plan.missing), len(plan.missing)
    # Nothing from the cache: the computed run already is the whole run, in input order.
    run = computed if stats.hits == 0 else merge_run(plan, model, ids, sequences, computed)
    stats.warning = store_or_warn(cache, plan, computed) or stats.warning
    if yardstick is not None:
        run.yardstick = measure_yardstick(model, alphabet, sequences, plan.layers, yardstick,
                                          v2_path or packed_path(model, backend), max_tokens, progress)
    return run, stats
