"""A run's EmbeddingRun as embeddings.npz arrays plus run.json, and back, checking every shape.

Arrays: ``lengths`` (n,) int64; per path (v1, v2, sample_v1, sample_v2, sample_reference, sample_v2_deep)
and layer kept as computed, ``<path>_layer<L>`` (rows, d) float32/float64; per compact layer
(dashboard.compact), ``half_layer<L>_v1`` and ``half_layer<L>_delta`` (n, d) float16,
``half_layer<L>_scale`` (n,) float32, ``half_layer<L>_rows`` (m,) int64 and ``half_layer<L>_exact_v1``,
``_exact_v2`` (m, d) as computed; ``yardstick_indices`` (m,) int64 with a numerics sample.
run.json: ids, model, weights, dtype, device, layers, per path what produced it and its layers,
``compact`` ({"half_layers": {L: dtype}}; absent in runs saved before compaction), ``cache``, ``yardstick``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from core.embed.cache import CacheStats
from core.embed.passes import PathEmbeddings
from core.embed.run import EmbeddingRun
from core.embed.yardstick import Yardstick
from dashboard.compact import CompactLayers, HalfLayer
from dashboard.run_files import DamagedRun, field

SAMPLE_PATHS = {"sample_v1": "baseline", "sample_v2": "candidate", "sample_reference": "reference",
                "sample_v2_deep": "deep"}
HALF_PARTS = ("v1", "delta", "scale", "rows", "exact_v1", "exact_v2")


def _paths(run: EmbeddingRun) -> dict[str, PathEmbeddings]:
    sample = run.yardstick
    extra = {} if sample is None else {name: getattr(sample, part) for name, part in SAMPLE_PATHS.items()}
    return {name: embeddings for name, embeddings in ({"v1": run.v1, "v2": run.v2} | extra).items()
            if embeddings is not None}


def embedding_arrays(run: EmbeddingRun, cache: CacheStats | None = None,
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(the arrays of embeddings.npz, the run.json document) holding ``run`` as it is held (compact or not)."""
    arrays: dict[str, np.ndarray] = {"lengths": np.asarray(run.lengths, dtype=np.int64)}
    paths, half = {}, {}
    for name, embeddings in _paths(run).items():
        paths[name] = {"backend": embeddings.backend, "seconds": embeddings.seconds,
                       "implementation": embeddings.implementation, "layers": sorted(embeddings.layers),
                       "oom_splits": embeddings.oom_splits, "host_wait_seconds": embeddings.host_wait_seconds}
        layers = embeddings.layers
        stored = layers.full if isinstance(layers, CompactLayers) else layers
        arrays |= {f"{name}_layer{layer}": values for layer, values in stored.items()}
        if isinstance(layers, CompactLayers):
            half |= layers.half
    for layer, part in half.items():
        arrays |= {f"half_layer{layer}_{key}": getattr(part, key) for key in HALF_PARTS}
    sample = run.yardstick
    if sample is not None:
        arrays["yardstick_indices"] = np.asarray(sample.indices, dtype=np.int64)
    meta = {"ids": list(run.ids), "model": run.model, "weights": run.weights, "dtype": run.dtype,
            "device": run.device, "layers": list(run.layers), "paths": paths,
            "compact": {"half_layers": {str(layer): part.dtype.name for layer, part in half.items()}},
            "cache": cache.to_json() if cache is not None else None,
            "yardstick": None if sample is None else {"kind": sample.kind, "dtype": sample.dtype,
                                                      "probes": list(sample.probes)}}
    return arrays, meta


def half_layers(meta: dict[str, Any]) -> dict[int, np.dtype]:
    """Compact layers named by run.json and the dtype each expands to."""
    compact = field(meta, "compact", dict, "run.json", {})
    named = field(compact, "half_layers", dict, "run.json", {})
    try:
        dtypes = {int(layer): np.dtype(dtype) for layer, dtype in named.items()}
    except (TypeError, ValueError):
        dtypes = None
    if dtypes is None or any(dtype.kind != "f" for dtype in dtypes.values()):
        raise DamagedRun("run.json", "names a compact layer or dtype that is not one")
    return dtypes


def path_layers(meta: dict[str, Any]) -> dict[str, list[int]]:
    """Each stored path and its layers, as run.json lists them (v1 and v2 required)."""
    paths = field(meta, "paths", dict, "run.json")
    if "v1" not in paths or "v2" not in paths or any(not isinstance(info, dict) for info in paths.values()):
        raise DamagedRun("run.json", "does not describe the v1 and v2 paths")
    layers = {name: field(info, "layers", list, "run.json") for name, info in paths.items()}
    if any(not isinstance(layer, int) or isinstance(layer, bool) for listed in layers.values() for layer in listed):
        raise DamagedRun("run.json", "lists a layer that is not a number")
    return layers


def array_names(meta: dict[str, Any]) -> list[str]:
    """Every array embeddings.npz must hold for run.json's description."""
    half = half_layers(meta)
    names = ["lengths"] + (["yardstick_indices"] if meta.get("yardstick") is not None else [])
    for name, layers in path_layers(meta).items():
        names += [f"{name}_layer{layer}" for layer in layers if not (name in ("v1", "v2") and layer in half)]
    names += [f"half_layer{layer}_{key}" for layer in half for key in HALF_PARTS]
    return names


def _shaped(arrays: Mapping[str, np.ndarray], name: str, rows: int | None, ndim: int = 2, kinds: str = "f",
            ) -> np.ndarray:
    """``arrays[name]``, which must have ``ndim`` dimensions, ``rows`` rows (None: any) and a dtype of one
    of the numpy ``kinds`` ('f' float, 'i'/'u' integer); DamagedRun if not."""
    array = arrays[name]
    if array.ndim != ndim or (rows is not None and array.shape[0] != rows) or array.dtype.kind not in kinds:
        expected = f"{rows} rows" if rows is not None else f"{ndim} dimensions"
        raise DamagedRun("embeddings.npz", f"holds {name} of shape {array.shape} ({array.dtype}), expected {expected}")
    return array


def _path(meta_path: dict[str, Any], name: str, layers: list[int], arrays: Mapping[str, np.ndarray],
          rows: int | None, half: dict[int, HalfLayer]) -> PathEmbeddings:
    full = {layer: _shaped(arrays, f"{name}_layer{layer}", rows) for layer in layers if layer not in half}
    if half and name in ("v1", "v2"):
        stored: Mapping[int, np.ndarray] = CompactLayers(full, {l: half[l] for l in layers if l in half}, name)
    else:
        stored = full
    file = "run.json"
    return PathEmbeddings(layers=stored, backend=field(meta_path, "backend", str, file),
                          seconds=float(field(meta_path, "seconds", (int, float), file)),
                          implementation=field(meta_path, "implementation", str, file, ""),
                          oom_splits=int(field(meta_path, "oom_splits", int, file, 0)),
                          host_wait_seconds=float(field(meta_path, "host_wait_seconds", (int, float), file, 0.0)))


def _half(arrays: Mapping[str, np.ndarray], meta: dict[str, Any], n: int) -> dict[int, HalfLayer]:
    half = {}
    for layer, dtype in half_layers(meta).items():
        name = f"half_layer{layer}"
        v1, delta = (_shaped(arrays, f"{name}_{key}", n) for key in ("v1", "delta"))
        scale = _shaped(arrays, f"{name}_scale", n, ndim=1)
        rows = _shaped(arrays, f"{name}_rows", None, ndim=1, kinds="iu")
        exact = [_shaped(arrays, f"{name}_{key}", rows.size) for key in ("exact_v1", "exact_v2")]
        if delta.shape != v1.shape or any(part.shape[1:] != v1.shape[1:] for part in exact) or (
                rows.size and (rows.min() < 0 or rows.max() >= n)):
            raise DamagedRun("embeddings.npz", f"holds {name} parts of different shapes")
        half[layer] = HalfLayer(v1, delta, scale, dtype, rows, *exact)
    return half


def rebuild_run(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> EmbeddingRun:
    """The EmbeddingRun that embedding_arrays stored, every shape checked against the ids."""
    file = "run.json"
    ids = field(meta, "ids", list, file)
    if not ids or not all(isinstance(seq_id, str) for seq_id in ids):
        raise DamagedRun(file, "has no list of sequence ids")
    n, layers, half = len(ids), path_layers(meta), _half(arrays, meta, len(ids))
    infos = field(meta, "paths", dict, file)
    v1, v2 = (_path(infos[name], name, layers[name], arrays, n, half) for name in ("v1", "v2"))
    if any(v1.layers[layer].shape != v2.layers[layer].shape for layer in layers["v1"] if layer in v2.layers):
        raise DamagedRun("embeddings.npz", "holds v1 and v2 layers of different shapes")
    run = EmbeddingRun(ids=ids, lengths=_shaped(arrays, "lengths", n, ndim=1, kinds="iu"), v1=v1, v2=v2,
                       model=field(meta, "model", str, file), weights=field(meta, "weights", str, file),
                       dtype=field(meta, "dtype", str, file), device=field(meta, "device", str, file),
                       layers=[int(layer) for layer in field(meta, "layers", list, file)])
    described = field(meta, "yardstick", (dict, type(None)), file, None)
    if described is not None:
        run.yardstick = _yardstick(described, infos, layers, arrays, n)
    return run


def _yardstick(described: dict[str, Any], infos: dict[str, Any], layers: dict[str, list[int]],
               arrays: Mapping[str, np.ndarray], n: int) -> Yardstick:
    file = "run.json"
    indices = _shaped(arrays, "yardstick_indices", None, ndim=1, kinds="iu")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise DamagedRun("embeddings.npz", "holds numerics sample rows outside the run")
    probes = tuple(field(described, "probes", list, file))
    rows = indices.size + len(probes)
    if not all(name in infos for name in ("sample_v1", "sample_v2", "sample_reference")):
        raise DamagedRun(file, "describes a numerics sample without its paths")
    parts = {part: _path(infos[name], name, layers[name], arrays, rows, {}) if name in infos else None
             for name, part in SAMPLE_PATHS.items()}
    return Yardstick(field(described, "kind", str, file), field(described, "dtype", str, file), indices, probes,
                     parts["baseline"], parts["candidate"], parts["reference"], parts["deep"])
