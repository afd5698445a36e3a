"""The embedding cache's storage: one SQLite file of pooled embeddings, and the fingerprints of weights
and sequences its keys are made of (core.embed.cache decides what to look up and store).

SQLite (WAL journal, busy timeout, ``INSERT OR IGNORE``) makes it safe for several processes.
The first run that computes a sequence's embedding wins; later runs read that one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from core.numerics.environment import device_description, versions
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.specs import DEMO_SEED, hub_checkpoint


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
