"""The embedding cache: only new sequences are computed, keys separate what must not mix, and a
broken cache never gives a wrong answer. CPU, demo-tiny, small sets."""

from __future__ import annotations

import json
import multiprocessing
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import core.embed.cache as cache_module
import core.embed.cache_store as store_module
import core.pipeline
from core.cli import main
from core.embed.cache_store import DB_NAME, CachedEmbedding, CacheUnavailable, EmbeddingCache, fingerprint, open_cache
from core.embed.run import EmbeddingRun, run_both_paths
from core.input.examples import example_sequences
from core.numerics.loading import load_esm2_model, save_checkpoint
from core.numerics.precision import dtype_name
from core.pipeline import ComparisonRequest, LoadedModel, run_comparison

pytestmark = pytest.mark.usefixtures("light_numerics")  # what the run is used for, not the gate's power

RECORDS = example_sequences("patterns")[:8]
IDS = [r.id for r in RECORDS]
SEQS = [r.sequence for r in RECORDS]
CPU_DEMO = ["--model", "demo-tiny", "--device", "cpu"]


class Counter:
    """Wraps the pipeline's run_both_paths: how often it ran and on which ids."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, model, alphabet, ids, sequences, **kwargs) -> EmbeddingRun:
        self.calls.append(list(ids))
        return run_both_paths(model, alphabet, ids, sequences, **kwargs)

    @property
    def computed(self) -> int:
        return sum(len(ids) for ids in self.calls)


@pytest.fixture
def counter(monkeypatch) -> Counter:
    spy = Counter()
    monkeypatch.setattr(core.pipeline, "run_both_paths", spy)
    return spy


@pytest.fixture
def no_sample(monkeypatch):
    """These tests are about the cache: the numerics sample (never cached; tested in test_numerics_gate.py)
    is left out to keep them fast."""
    monkeypatch.setattr(core.pipeline, "sample", lambda *args: None)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def cached(directory: Path, model, alphabet, ids, sequences, layer: int | None = None, only_layer: bool = False,
           candidate: str = "packed"):
    """The pipeline through the cache in ``directory``: (run, cache statistics)."""
    request = ComparisonRequest(model=model.name, dtype=dtype_name(model.dtype), device="cpu", candidate=candidate,
                                layer=layer, only_layer=only_layer, cache_dir=str(directory))
    result = run_comparison(request, ids, sequences, loaded=LoadedModel(model, alphabet))
    return result.run, result.cache


def assert_same_run(a: EmbeddingRun, b: EmbeddingRun, atol: float = 0.0) -> None:
    assert a.ids == b.ids
    assert list(a.lengths) == list(b.lengths)
    assert (a.v1.backend, a.v2.backend, a.v1.implementation, a.v2.implementation) == (
        b.v1.backend, b.v2.backend, b.v1.implementation, b.v2.implementation)
    for name in ("v1", "v2", "baseline", "candidate", "reference"):
        source_a, source_b = (run.yardstick if name in ("baseline", "candidate", "reference") else run for run in (a, b))
        pa, pb = (getattr(source, name) if source is not None else None for source in (source_a, source_b))
        if pa is None or pb is None:
            assert pa is pb is None
            continue
        assert pa.layers.keys() == pb.layers.keys()
        for layer in pa.layers:
            assert pa.layers[layer].dtype == pb.layers[layer].dtype
            assert pa.layers[layer].shape == pb.layers[layer].shape
            np.testing.assert_allclose(pa.layers[layer], pb.layers[layer], rtol=0, atol=atol)


# ---------------------------------------------------------------- only what is new


def test_second_run_computes_nothing_and_equals_an_uncached_run(tiny_fp32, cache, counter, no_sample):
    model, alphabet = tiny_fp32
    first, stats = cached(cache, model, alphabet, IDS, SEQS)
    assert (stats.hits, stats.computed) == (0, len(SEQS))
    assert counter.calls == [IDS]
    second, stats = cached(cache, model, alphabet, IDS, SEQS)
    assert (stats.hits, stats.computed) == (len(SEQS), 0)
    assert len(counter.calls) == 1  # the model was not run again
    uncached = run_both_paths(model, alphabet, IDS, SEQS)
    assert_same_run(first, uncached)  # same batches: bit-identical
    assert_same_run(second, uncached)
    assert second.v1.seconds == second.v2.seconds == 0.0
    assert (second.model, second.weights, second.dtype, second.device) == ("demo-tiny", "demo", "fp32", "cpu")


def test_a_superset_computes_only_the_new_sequences(tiny_fp32, cache, counter, no_sample):
    model, alphabet = tiny_fp32
    cached(cache, model, alphabet, IDS[:5], SEQS[:5])
    # The new ones interleaved with old ones, in another order: the merge must follow the input.
    order = [6, 0, 5, 3, 7, 1, 2, 4]
    ids, seqs = [IDS[i] for i in order], [SEQS[i] for i in order]
    merged, stats = cached(cache, model, alphabet, ids, seqs)
    assert (stats.hits, stats.computed) == (5, 3)
    assert counter.calls[-1] == [IDS[6], IDS[5], IDS[7]]
    assert merged.ids == ids
    assert list(merged.lengths) == [len(s) for s in seqs]
    # Batch composition differs from one uncached run over the set: FP32 rounding only.
    assert_same_run(merged, run_both_paths(model, alphabet, ids, seqs), atol=1e-6)


def test_same_residues_under_another_id_are_a_hit(tiny_fp32, cache, counter, no_sample):
    model, alphabet = tiny_fp32
    cached(cache, model, alphabet, IDS[:2], SEQS[:2])
    renamed, stats = cached(cache, model, alphabet, ["x", "y"], SEQS[:2])
    assert (stats.hits, stats.computed) == (2, 0)
    assert renamed.ids == ["x", "y"]


def test_only_layer_is_cached_and_the_numerics_sample_measured_afresh(tiny_fp32, cache, counter):
    model, alphabet = tiny_fp32
    first, _ = cached(cache, model, alphabet, IDS, SEQS, layer=3, only_layer=True)
    again, stats = cached(cache, model, alphabet, IDS, SEQS, layer=3, only_layer=True)
    assert (stats.hits, stats.computed) == (len(SEQS), 0) and len(counter.calls) == 1
    assert again.layers == [3] and again.yardstick is not None and again.yardstick.dtype == "fp64"
    assert again.yardstick.reference.layers[3].dtype == np.float64  # the reference keeps its width
    assert_same_run(again, first)  # the sample, measured again, is the same arithmetic


# ---------------------------------------------------------------- what must not mix


def _computed_after_warm_cache(cache, model, alphabet, **kwargs) -> int:
    return cached(cache, model, alphabet, IDS[:3], SEQS[:3], **kwargs)[1].computed


def test_key_changes_miss(tiny_fp32, tiny_fp64, cache, counter, no_sample):
    model, alphabet = tiny_fp32
    last = {"layer": 3, "only_layer": True}
    cached(cache, model, alphabet, IDS[:3], SEQS[:3], **last)
    assert _computed_after_warm_cache(cache, model, alphabet, **last) == 0
    assert _computed_after_warm_cache(cache, model, alphabet) == 3  # another layer set: every layer
    assert _computed_after_warm_cache(cache, model, alphabet, candidate="fallback", **last) == 3  # another v2.0
    assert _computed_after_warm_cache(cache, tiny_fp64[0], tiny_fp64[1], **last) == 3  # dtype
    other_seed, _ = load_esm2_model("demo-tiny", dtype="fp32", device="cpu", demo_seed=7)
    assert fingerprint(other_seed) != fingerprint(model)
    assert _computed_after_warm_cache(cache, other_seed, alphabet, **last) == 3  # other weights
    # ... and each of those is now cached under its own key.
    assert _computed_after_warm_cache(cache, model, alphabet) == 0
    assert _computed_after_warm_cache(cache, other_seed, alphabet, **last) == 0


def test_checkpoint_fingerprint_is_the_file_hash_and_follows_the_file(tiny_fp32, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    path = save_checkpoint(tiny_fp32[0], tmp_path / "weights.pt")
    model, _ = load_esm2_model(str(path), dtype="fp32", device="cpu")
    first = fingerprint(model, cache)
    assert first.startswith("checkpoint-sha256:") and first == fingerprint(model, cache)
    other, _ = load_esm2_model("demo-tiny", dtype="fp32", device="cpu", demo_seed=7)
    save_checkpoint(other, path)  # new content at the same path
    assert fingerprint(model, cache) != first


def test_fingerprint_falls_back_to_parameter_bytes(tiny_fp32, monkeypatch):
    model = tiny_fp32[0]
    monkeypatch.setattr(model, "weights", "pretrained")  # no such file in the hub cache
    monkeypatch.setattr(store_module, "hub_checkpoint", lambda name: Path("/nonexistent/weights.pt"))
    assert fingerprint(model).startswith("pretrained-params-sha256:")


# ---------------------------------------------------------------- broken caches


def test_corrupt_database_is_refused_in_one_line(tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheUnavailable, match="cannot use the embedding cache"):
        EmbeddingCache(directory)
    cache, warning = open_cache(directory)
    assert cache is None and "computing without the cache" in warning and "\n" not in warning


def test_cache_path_that_is_a_file_is_refused(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cache, warning = open_cache(not_a_dir)
    assert cache is None and str(not_a_dir) in warning


def test_damaged_rows_are_recomputed_never_returned(tiny_fp32, cache, counter, no_sample):
    model, alphabet = tiny_fp32
    good, _ = cached(cache, model, alphabet, IDS, SEQS)
    connection = sqlite3.connect(str(cache / DB_NAME))
    keys = [row[0] for row in connection.execute("SELECT key FROM embeddings ORDER BY key LIMIT 3")]
    connection.execute("UPDATE embeddings SET data = x'00ff' WHERE key = ?", (keys[0],))  # truncated blob
    nan = np.full((4, 64), np.nan, dtype=np.float32).tobytes()  # 4 pooled layers of 64: a well-shaped row
    connection.execute("UPDATE embeddings SET data = ? WHERE key = ?", (nan, keys[1]))  # non-finite values
    connection.execute("UPDATE embeddings SET array_dtype = 'garbage' WHERE key = ?", (keys[2],))
    connection.commit()
    connection.close()
    again, stats = cached(cache, model, alphabet, IDS, SEQS)
    assert 1 <= stats.computed <= 3 and stats.hits == len(SEQS) - stats.computed
    assert_same_run(again, good, atol=1e-6)
    third, stats = cached(cache, model, alphabet, IDS, SEQS)  # the damaged rows were rewritten
    assert stats.computed == 0


def test_a_cache_that_fails_mid_run_still_gives_the_computed_answer(tiny_fp32, cache, counter, monkeypatch, no_sample):
    model, alphabet = tiny_fp32

    def broken(*args, **kwargs):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(EmbeddingCache, "get_many", broken)
    run, stats = cached(cache, model, alphabet, IDS[:3], SEQS[:3])
    assert stats.computed == 3 and "unreadable" in stats.warning
    assert_same_run(run, run_both_paths(model, alphabet, IDS[:3], SEQS[:3]))


def _writer(directory: str, offset: int) -> None:
    cache = EmbeddingCache(directory)
    for start in range(0, 200, 20):
        cache.put_many({f"k{offset + i}": CachedEmbedding(np.full((2, 4), i, np.float32), "b", "impl")
                        for i in range(start, start + 20)})
    cache.close()


def test_two_processes_write_at_once(tmp_path):
    directory = str(tmp_path / "shared")
    EmbeddingCache(directory).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(directory, offset)) for offset in (0, 100)]  # overlapping keys
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    found = EmbeddingCache(directory).get_many([f"k{i}" for i in range(300)])
    assert len(found) == 300


# ---------------------------------------------------------------- the command line


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_reports_hits_and_checks_still_work(capsys, tmp_path, monkeypatch):
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in RECORDS[:4]))
    bigger = tmp_path / "bigger.fasta"
    bigger.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in RECORDS))
    cache_dir = tmp_path / "cache"
    summaries = []
    for name, source, extra in (("a", fasta, ["--cache", str(cache_dir)]), ("b", bigger, ["--cache", str(cache_dir)]),
                                ("c", bigger, [])):
        if not extra:
            monkeypatch.setenv("ESM2_DIVERGENCE_CACHE", str(cache_dir))  # the same cache from the environment
        code, out, err = _cli(capsys, "compare", str(source), *CPU_DEMO, "--checks", "--out", str(tmp_path / name), *extra)
        assert code == 0, err
        assert "Traceback" not in err
        summaries.append((json.loads((tmp_path / name / "summary.json").read_text()), out))
    (first, out_a), (second, out_b), (third, out_c) = summaries
    assert first["cache"] == {"dir": str(cache_dir), "hits": 0, "computed": 4}
    assert second["cache"] == {"dir": str(cache_dir), "hits": 4, "computed": 4}
    assert third["cache"] == {"dir": str(cache_dir), "hits": 8, "computed": 0}
    assert re.search(r"^  embedding cache\s+8 from cache, 0 computed", out_c, re.MULTILINE)
    assert third["world_size"] == 1
    assert [c["passed"] for c in third["checks_v2"]] == [True, True]  # checks run on fresh batches
    for key in ("verdict", "cosine", "label_agreement", "n_sequences"):
        assert second[key] == third[key]


def test_cli_with_a_corrupt_cache_warns_and_computes(capsys, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / DB_NAME).write_bytes(b"\x00garbage" * 64)
    code, out, err = _cli(capsys, "compare", "--example", "patterns", *CPU_DEMO, "--cache", str(cache_dir),
                          "--only-layer", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:") and "cache" in line]
    assert len(warnings) == 1 and "computing without the cache" in warnings[0]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["cache"]["hits"] == 0 and summary["cache"]["computed"] == 18
    assert "computing without the cache" in summary["cache"]["warning"]
    assert summary["verdict"] == "ACCEPT"


def test_a_change_to_the_numerics_code_misses(tiny_fp32, cache, counter, monkeypatch, no_sample):
    model, alphabet = tiny_fp32
    cached(cache, model, alphabet, IDS[:2], SEQS[:2], layer=3, only_layer=True)
    monkeypatch.setattr(cache_module, "code_fingerprint", lambda: "edited-pooling")
    assert cached(cache, model, alphabet, IDS[:2], SEQS[:2], layer=3, only_layer=True)[1].computed == 2


def test_the_key_separates_device_kind_library_versions_and_plugin_version(tiny_fp32, monkeypatch):
    """Entries from another GPU model, another torch or flash-attn, or another plug-in release never mix."""
    from core.embed.paths import plugin_path
    from core.embed.cache import entry_key, path_identities, code_fingerprint
    from tests.plugins.example_v2 import PackedReference

    model, _ = tiny_fp32
    key = lambda device="cuda NVIDIA H100 80GB HBM3", identity="v2 | x": entry_key("w", "fp16", device, identity, [6], "h")  # noqa: E731
    assert key() == key() and key(device="cuda NVIDIA H200") != key() and key(device="cpu") != key()
    import torch

    for name in ("H100 80GB HBM3", "H200"):  # the device part of the key names the GPU model, not its index
        monkeypatch.setattr(store_module, "device_description", lambda device, name=name: f"cuda:{device.index} ({name})")
        assert store_module.device_kind(torch.device("cuda", 0)) == store_module.device_kind(torch.device("cuda", 1))
        assert store_module.device_kind(torch.device("cuda", 1)) == f"cuda {name}"

    first, later = PackedReference(model), PackedReference(model)
    later.version = "1.1"
    identities = [path_identities(model, v2_path=plugin_path(p))[1].identity for p in (first, later)]
    assert identities[0] != identities[1] and key(identity=identities[0]) != key(identity=identities[1])

    code_fingerprint.cache_clear()
    monkeypatch.setattr(cache_module, "versions", lambda: {"torch": "2.11.0", "flash-attn": "2.8.3"})
    before = code_fingerprint()
    for changed in ({"torch": "2.12.0", "flash-attn": "2.8.3"}, {"torch": "2.11.0", "flash-attn": "2.8.4"},
                    {"torch": "2.11.0"}):
        code_fingerprint.cache_clear()
        monkeypatch.setattr(cache_module, "versions", lambda changed=changed: changed)
        assert code_fingerprint() != before, changed
    code_fingerprint.cache_clear()
