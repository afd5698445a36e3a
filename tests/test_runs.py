"""dashboard.runs.RunStore (runs on disk) and dashboard.jobs.JobQueue (the one GPU worker), without Streamlit."""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest

import dashboard.runs
from core.embed.run import run_both_paths
from core.embed.yardstick import YardstickPlan
from dashboard.jobs import JobQueue
from core.analysis.analyse import analyse
from core.embed.cache import CacheStats
from dashboard.runs import RunStorageError, RunStore, UnknownRun
from core.input.fasta import parse_sequences

FASTA = ">alpha\nMKTAYIAKQRQISFVKSHFSRQ\n>beta\nGSGSGSLLKKLLEEPEVKVNGQ\n>bad\nMKT1AYIAK\n>gamma\nMQIFVKTLTGKTITLEV\n"


@pytest.fixture(scope="module")
def parsed():
    return parse_sequences(FASTA)


@pytest.fixture(scope="module")
def embedding_run(tiny_fp32, parsed):
    """demo-tiny fp32 on CPU, every layer, with an fp64 reference: (n=3, 64) float32 / float64 arrays."""
    model, alphabet = tiny_fp32
    records = parsed.records
    return run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records], yardstick=YardstickPlan("reference", "fp64", None))


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs")


def leftovers(folder) -> list[str]:
    """Temporary files or staging folders a write left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def assert_same(loaded, original, where: str = "run") -> None:
    """Every dataclass field equal, arrays bit for bit with their dtype (so a new field is not forgotten)."""
    if dataclasses.is_dataclass(original):
        assert type(loaded) is type(original), where
        for field in dataclasses.fields(original):
            assert_same(getattr(loaded, field.name), getattr(original, field.name), f"{where}.{field.name}")
    elif isinstance(original, dict):
        assert sorted(loaded) == sorted(original), where
        for key, value in original.items():
            assert_same(loaded[key], value, f"{where}[{key}]")
    elif isinstance(original, np.ndarray):
        assert loaded.dtype == original.dtype, where
        np.testing.assert_array_equal(loaded, original, err_msg=where)
    else:
        assert loaded == original, where


def test_ids_are_unguessable_and_path_safe(store):
    ids = {store.new_id() for _ in range(100)}
    assert len(ids) == 100 and all(RunStore.is_valid_id(i) and len(i) >= 22 for i in ids)
    for bad in ("../etc", "abc", "a/b" * 10, "", "x" * 21, "%2e%2e" * 5, "x" * 22 + "\n", "x" * 65):
        assert not RunStore.is_valid_id(bad)
        with pytest.raises(UnknownRun):
            store.run_dir(bad)
    assert store.status("../../etc/passwd") is None


def test_round_trip_rebuilds_the_embedding_run(store, embedding_run, parsed):
    run_id = store.new_id()
    store.create(run_id, parsed, {"model": "demo-tiny", "seed": 3})
    store.save_embeddings(run_id, embedding_run)
    back = store.load_embeddings(run_id)

    assert_same(back, embedding_run)
    assert back.yardstick.reference.layers[3].dtype == np.float64 and back.v1.layers[0].dtype == np.float32

    # the rebuilt run analyses to the same numbers
    before = analyse(embedding_run, 3, parsed=parsed).summary.to_json()
    after = analyse(back, 3, parsed=store.load_input(run_id)).summary.to_json()
    for key in ("label_agreement", "cosine", "mean_abs_diff", "reference", "refused", "warnings", "layers"):
        assert after[key] == before[key], key

    loaded_input = store.load_input(run_id)
    assert [r.id for r in loaded_input.records] == ["alpha", "beta", "gamma"]
    assert [p.record_id for p in loaded_input.errors] == ["bad"]
    assert (store.run_dir(run_id) / "input.fasta").read_text().startswith(">alpha\nMKTAYIAKQRQISFVKSHFSRQ")
    assert store.load_settings(run_id) == {"model": "demo-tiny", "seed": 3}


def test_the_embedding_cache_summary_is_saved_with_the_embeddings(store, embedding_run, parsed):
    cached, off, older = store.new_id(), store.new_id(), store.new_id()
    summary = CacheStats(dir="/tmp/cache", hits=2, computed=1, warning="could not write")
    for run_id in (cached, off, older):
        store.create(run_id, parsed, {})
    store.save_embeddings(cached, embedding_run, cache=summary)
    store.save_embeddings(off, embedding_run)
    store.save_embeddings(older, embedding_run)
    meta = json.loads((store.run_dir(older) / "run.json").read_text())
    del meta["cache"]  # a run saved before the cache existed
    (store.run_dir(older) / "run.json").write_text(json.dumps(meta))

    assert store.load_cache_stats(cached) == summary
    assert store.load_cache_stats(off) is None and store.load_cache_stats(older) is None
    assert_same(store.load_embeddings(cached), embedding_run)
    with pytest.raises(UnknownRun):
        store.load_cache_stats(store.new_id())


def test_outputs_are_written_by_write_outputs(store, embedding_run, parsed):
    run_id = store.new_id()
    store.create(run_id, parsed, {})
    analysis = analyse(embedding_run, 3, parsed=parsed)
    store.save_outputs(run_id, analysis.summary, analysis.table)
    folder = store.run_dir(run_id)
    assert store.load_summary(run_id)["n_sequences"] == 3
    table = pd.read_csv(folder / "sequences.csv")
    assert list(table["id"]) == ["alpha", "beta", "gamma"]
    assert leftovers(folder) == []


def test_status_and_errors_are_recorded(store, parsed):
    run_id = store.new_id()
    store.create(run_id, parsed, {"model": "demo-tiny"})
    status = store.status(run_id)
    assert status["state"] == "queued" and status["n_sequences"] == 3 and status["error"] is None
    store.set_status(run_id, "running")
    store.set_status(run_id, "failed", error="Cannot run: no such backend")
    status = store.status(run_id)
    assert status["state"] == "failed" and status["error"] == "Cannot run: no such backend"
    assert status["created_at"] and status["model"] == "demo-tiny", "earlier fields are kept"
    with pytest.raises(ValueError):
        store.set_status(run_id, "exploded")
    assert store.status(store.new_id()) is None


def test_listing_is_newest_first_and_limited_to_given_ids(store, parsed, monkeypatch):
    ticks = itertools.count(1)
    monkeypatch.setattr(dashboard.runs, "now", lambda: f"2026-01-{next(ticks):02d}T00:00:00+00:00")
    ids = [store.new_id() for _ in range(3)]
    for run_id in ids:
        store.create(run_id, parsed, {"model": "demo-tiny"})
    (store.root / "not-a-run").mkdir()
    assert [info.id for info in store.list_runs()] == ids[::-1]
    mine = store.list_runs([ids[0], ids[2], store.new_id(), "../x"])
    assert [info.id for info in mine] == [ids[2], ids[0]]
    assert mine[0].state == "queued" and mine[0].n_sequences == 3 and mine[0].model == "demo-tiny"
    assert RunStore(store.root / "nothing-here").list_runs() == []


def test_writes_are_atomic_temp_file_then_replace(store, parsed, monkeypatch):
    run_id = store.new_id()
    store.create(run_id, parsed, {"model": "demo-tiny"})
    folder = store.run_dir(run_id)
    replaced = []
    real_replace = dashboard.runs.os.replace

    def recording(source, target):
        assert dashboard.runs.Path(source).parent == dashboard.runs.Path(target).parent == folder
        assert dashboard.runs.Path(source).name.startswith(".") and dashboard.runs.Path(source).is_file()
        replaced.append(dashboard.runs.Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(dashboard.runs.os, "replace", recording)
    store.set_status(run_id, "running")
    assert replaced == ["status.json"]

    # a write that dies half-way leaves the previous file whole and no temporary file behind
    def half_written(document, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(dashboard.runs.json, "dumps", half_written)
    with pytest.raises(RunStorageError, match="I/O error"):
        store.set_status(run_id, "done")
    monkeypatch.undo()
    assert json.loads((folder / "status.json").read_text())["state"] == "running"
    assert leftovers(folder) == []


def test_a_full_disk_gives_a_clear_message(store, parsed, embedding_run, monkeypatch):
    run_id = store.new_id()
    store.create(run_id, parsed, {})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dashboard.runs.np, "savez", full)
    with pytest.raises(RunStorageError) as raised:
        store.save_embeddings(run_id, embedding_run)
    message = str(raised.value)
    assert "disk is full" in message and run_id in message and str(store.root) in message
    assert "kept in memory" in message
    assert not (store.run_dir(run_id) / "embeddings.npz").exists()
    assert leftovers(store.run_dir(run_id)) == []
    assert store.status(run_id)["state"] == "queued", "what was saved before is intact"


# ---------------------------------------------------------------- the queue


def test_queue_runs_jobs_one_at_a_time_in_submission_order():
    queue = JobQueue(default_seconds_per_sequence=2.0)
    gate = threading.Event()
    order, running, overlap = [], [], []

    def job(name):
        def work(progress):
            running.append(name)
            overlap.append(len(running))
            if name == "a":
                gate.wait(10)
            progress("v1.0", 1, 1)
            order.append(name)
            running.remove(name)
            return name.upper()
        return work

    for name, n in (("a", 4), ("b", 3), ("c", 5), ("d", 1)):
        queue.submit(name, n, job(name))
    deadline = time.monotonic() + 5
    while queue.get("a").state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)

    first, second, fourth = queue.estimate("a"), queue.estimate("b"), queue.estimate("d")
    assert first.place == 0 and not first.measured and first.seconds_per_sequence == 2.0
    assert (second.place, second.jobs_ahead) == (1, 1)
    assert (fourth.place, fourth.jobs_ahead) == (3, 3)
    # d waits for what is left of a (at most 4 × 2 s) plus b and c (8 × 2 s), then runs 1 × 2 s
    assert 16.0 <= fourth.wait_seconds <= 24.0 and fourth.total_seconds == pytest.approx(fourth.wait_seconds + 2.0)
    assert second.wait_seconds < fourth.wait_seconds

    gate.set()
    for name in "abcd":
        assert queue.wait(name, 10).state == "done"
    assert order == ["a", "b", "c", "d"] and max(overlap) == 1
    assert queue.get("c").result == "C" and queue.get("c").progress == ("v1.0", 1, 1)
    assert queue.estimate("a") is None, "finished jobs have no estimate"
    per_sequence, measured = queue.seconds_per_sequence()
    assert measured and 0 < per_sequence < 2.0


def test_a_failing_job_is_recorded_and_the_worker_goes_on():
    queue = JobQueue()

    def broken(progress):
        raise ValueError("unknown backend 'warp'")

    queue.submit("broken", 1, broken)
    assert queue.call("after", 1, lambda progress: 42, timeout=10) == 42
    job = queue.wait("broken", 10)
    assert job.state == "failed" and job.message == "unknown backend 'warp'"
    with pytest.raises(ValueError, match="warp"):
        queue.call("again", 1, broken, timeout=10)
    with pytest.raises(ValueError):
        queue.submit("after", 1, lambda progress: None)  # ids are unique
    assert queue.seconds_per_sequence()[1], "the successful job was measured"


def test_live_throughput_from_the_running_job():
    from dashboard.views import live_throughput

    stages = ("v1.0", "v2.0")
    # Half of v1.0 done after 10 s: a quarter of the job, 100 of 200 sequences through one path.
    assert live_throughput("v1.0", 100, 200, stages, 10.0) == " · 10 sequences/s per path · about 30 s left"
    assert live_throughput("v2.0", 200, 200, stages, 40.0) == " · 10 sequences/s per path · about 0 s left"
    assert live_throughput("v1.0", 0, 200, stages, 5.0) == ""
