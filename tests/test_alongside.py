"""The numerics sample alongside the metrics that need none (core.pipeline.alongside): the two overlap,
errors are never lost, and an analysis from the prewarmed memo equals a fresh one."""

from __future__ import annotations

import threading
import time

import pytest

from core.analysis.analyse import AnalysisOptions, analyse
from core.analysis.memo import remembering
from core.analysis.profile import prewarm_profile, prewarm_workers
from core.input.examples import example_sequences
from core.pipeline import ComparisonRequest, SetupFailed, alongside, run_comparison
from tests.summaries import without_time


def test_concurrently_both_run_at_once_and_the_work_is_returned():
    started, released = threading.Event(), threading.Event()

    def work():
        started.set()
        assert released.wait(10), "meanwhile never ran while the work was running"
        return 42

    def meanwhile():
        assert started.wait(10), "the work never started while meanwhile was running"
        released.set()

    assert alongside(work, meanwhile, concurrently=True) == 42


def test_in_sequence_meanwhile_comes_first():
    order: list[str] = []
    assert alongside(lambda: order.append("work") or "done", lambda: order.append("meanwhile"), concurrently=False) == "done"
    assert order == ["meanwhile", "work"]


def test_an_error_on_either_side_is_raised_after_both_have_finished():
    finished: list[str] = []

    def slow_work():
        time.sleep(0.2)
        finished.append("work")
        return 1

    def failing_metrics():
        raise ValueError("metrics broke")

    with pytest.raises(ValueError, match="metrics broke"):
        alongside(slow_work, failing_metrics, concurrently=True)
    assert finished == ["work"]

    def failing_sample():
        raise SetupFailed("the sample does not fit")

    with pytest.raises(SetupFailed, match="does not fit"):
        alongside(failing_sample, lambda: finished.append("metrics"), concurrently=True)
    assert finished == ["work", "metrics"]


def test_an_analysis_from_the_prewarmed_memo_equals_a_fresh_one():
    records = example_sequences("patterns")[:8]
    ids, sequences = [r.id for r in records], [r.sequence for r in records]
    memo, prewarmed_without_sample = remembering(), []

    def meanwhile(run):
        prewarmed_without_sample.append(run.yardstick is None)
        prewarm_profile(run, 3, "balanced", memo, workers=3)  # layers on three threads

    result = run_comparison(ComparisonRequest("demo-tiny", "fp32", "cpu"), ids, sequences, meanwhile=meanwhile)
    assert prewarmed_without_sample == [True] and result.run.yardstick is not None
    options = AnalysisOptions(seed=3)
    warm, fresh = analyse(result.run, result.layer, options, memo=memo), analyse(result.run, result.layer, options)
    assert without_time(warm.summary.to_json()) == without_time(fresh.summary.to_json())
    assert warm.table.equals(fresh.table)
    assert [p.v1_mean_abs_error for p in warm.summary.profile] == [p.v1_mean_abs_error for p in fresh.summary.profile]
    assert all(p.v1_mean_abs_error is not None for p in warm.summary.profile)


def test_prewarm_threads_are_bounded_by_cores_layers_and_memory(monkeypatch):
    from types import SimpleNamespace

    import numpy as np
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)

    def run_of(n, d, layers):
        return SimpleNamespace(layers=list(range(layers)), v1=SimpleNamespace(layers={0: np.empty((n, d), np.float32)}))

    assert prewarm_workers(run_of(100, 320, 7)) == 7  # one per layer
    assert prewarm_workers(run_of(100, 320, 37)) == 16  # one per thread torch may use
    assert prewarm_workers(run_of(10_000, 2560, 37)) == 10  # ~0.4 GB of working arrays a layer, 4 GiB in all
    assert prewarm_workers(run_of(100_000, 2560, 37)) == 1
