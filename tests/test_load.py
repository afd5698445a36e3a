"""Eight people at once: eight page sessions, each from its own thread, submit different sequences.

Each must end with its own correct result (equal to computing its set alone), never show another
session's sequences, and the GPU work (core.embed.run.run_both_paths) must never overlap.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
from pathlib import Path
from unittest.mock import MagicMock

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner.script_cache import ScriptCache
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test

import core.embed.run
import core.pipeline
import dashboard.jobs
import dashboard.server
import dashboard.state
from core.analysis.analyse import AnalysisOptions, analyse

pytestmark = pytest.mark.usefixtures("light_numerics", "tiny_page_model")  # what the run is used for, not the gate's power

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
SESSIONS = 8
TIMEOUT = 300
AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
ORIGINAL_RUN_BOTH_PATHS = core.embed.run.run_both_paths  # for the direct computation, unmonitored


def session_records(k: int) -> list[tuple[str, str]]:
    """Session k's own set: 2-4 distinct random proteins with ids no other session uses."""
    rng = np.random.default_rng(1000 + k)
    return [(f"user{k}_protein{j}", "".join(rng.choice(AMINO, size=int(rng.integers(12, 48)))))
            for j in range(2 + k % 3)]


def fasta(records: list[tuple[str, str]]) -> str:
    return "".join(f">{seq_id}\n{sequence}\n" for seq_id, sequence in records)


def page_text(app: AppTest) -> str:
    """Everything the page shows as text: markdown, messages, labels, tables and the text area."""
    parts = [str(e.value) for e in [*app.markdown, *app.caption, *app.error, *app.warning, *app.success,
                                    *app.info, *app.title, *app.subheader]]
    parts += [str(b.label) for b in app.button] + [m.label + str(m.value) for m in app.metric]
    parts += [frame.value.to_csv() for frame in app.dataframe]
    parts += [str(box.value) for box in app.selectbox]
    parts += [str(area.value) for area in app.text_area]
    return "\n".join(parts)


@pytest.fixture
def concurrent_apptests(monkeypatch):
    """Let AppTest instances run at the same time from several threads.

    AppTest installs a mock Runtime in a process-global slot for each run and clears it when the run
    ends, and toggles the global ``global.appTest`` option the same way, so a second AppTest running
    in parallel loses both mid-run. Here one mock runtime (built as AppTest builds its own) stays
    installed for the whole test, AppTest's per-run install lands on a throw-away subclass, and the
    option is set once around the test.
    """
    shared = MagicMock(spec=Runtime)
    shared.media_file_mgr = app_test.MediaFileManager(app_test.MemoryMediaFileStorage("/mock/media"))
    shared.dataframe_source_mgr = app_test.DataframeSourceManager()
    shared.cache_storage_manager = app_test.MemoryCacheStorageManager()
    components = app_test.BidiComponentManager()
    components.discover_and_register_components(start_file_watching=False)
    shared.bidi_component_registry = components
    monkeypatch.setattr(Runtime, "_instance", shared)
    monkeypatch.setattr(app_test, "Runtime", type("PerRunSlot", (Runtime,), {}))
    compile_lock = threading.Lock()
    get_bytecode = ScriptCache.get_bytecode

    def get_bytecode_serially(self, script_path):
        with compile_lock:
            return get_bytecode(self, script_path)

    monkeypatch.setattr(ScriptCache, "get_bytecode", get_bytecode_serially)
    patch_options = app_test.patch_config_options
    monkeypatch.setattr(app_test, "patch_config_options", lambda options: contextlib.nullcontext())
    with patch_options({"global.appTest": True}):
        yield


@pytest.fixture
def gpu_monitor(monkeypatch, tmp_path):
    """Runs land in a temporary directory; run_both_paths counts calls and how many ran at once."""
    monkeypatch.setenv(dashboard.server.RUNS_DIR_ENV, str(tmp_path / "runs"))
    st.cache_data.clear()
    original = core.embed.run.run_both_paths
    lock = threading.Lock()
    stats = {"calls": 0, "now": 0, "max": 0, "in_queue": 0}
    submit = dashboard.jobs.JobQueue.submit

    def counting_submit(queue, *args, **kwargs):
        """How many jobs were queued or running at once: sessions run one after another would leave it at 1."""
        job = submit(queue, *args, **kwargs)
        with queue._lock:
            active = len(queue._waiting) + (queue._running is not None)
        with lock:
            stats["in_queue"] = max(stats["in_queue"], active)
        return job

    def monitored(*args, **kwargs):
        with lock:
            stats["calls"] += 1
            stats["now"] += 1
            stats["max"] = max(stats["max"], stats["now"])
        try:
            time.sleep(0.05)  # widen the window in which an overlap would show
            return original(*args, **kwargs)
        finally:
            with lock:
                stats["now"] -= 1

    monkeypatch.setattr(core.pipeline, "run_both_paths", monitored)  # the page calls it through the pipeline
    monkeypatch.setattr(dashboard.jobs.JobQueue, "submit", counting_submit)
    return stats


def drive_session(k: int, start: threading.Barrier, out: dict, text: str | None = None) -> None:
    """Session k pastes its own records (or ``text``) and presses Run when every session is ready."""
    try:
        app = AppTest.from_file(APP, default_timeout=TIMEOUT)
        app.query_params.update({"seeds": "0"})
        app.run()
        app.text_area(key="sequences_text").input(fasta(session_records(k)) if text is None else text).run()
        start.wait(60)
        app.button(key="run").click().run()
        out[k] = app
    except BaseException as error:  # noqa: BLE001 - reported by the test thread
        error.add_note(traceback.format_exc())
        out[k] = error


def run_sessions(drive) -> dict[int, object]:
    """``drive(k, barrier, out)`` in SESSIONS threads released together; each session's result, none failed."""
    start = threading.Barrier(SESSIONS)
    out: dict[int, object] = {}
    threads = [threading.Thread(target=drive, args=(k, start, out)) for k in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT + 120)
    failures = {k: v for k, v in out.items() if isinstance(v, BaseException)}
    assert not failures and len(out) == SESSIONS, [error.__notes__ for error in failures.values()]
    return out


def test_eight_sessions_at_once_each_get_their_own_result(concurrent_apptests, gpu_monitor, tiny_fp32, tmp_path):
    out = run_sessions(drive_session)

    assert gpu_monitor["calls"] == SESSIONS, "one embedding pass per session"
    assert gpu_monitor["max"] == 1, "GPU work overlapped"
    assert gpu_monitor["in_queue"] >= 2, "the sessions never waited on each other: they did not run at once"

    model, alphabet = tiny_fp32
    all_ids = {k: [seq_id for seq_id, _ in session_records(k)] for k in range(SESSIONS)}
    run_ids = set()
    for k, app in out.items():
        assert not app.exception, (k, app.exception)
        records = session_records(k)
        ids = all_ids[k]
        table = next(f.value for f in app.dataframe if "label_flip" in f.value.columns)
        assert list(table["id"]) == ids
        card = next(m.value for m in app.markdown if "border-left: 14px" in m.value)
        assert f"{len(ids)} sequences" in card

        text = page_text(app)
        for other, other_ids in all_ids.items():
            if other != k:
                assert not any(seq_id in text for seq_id in other_ids), f"session {k} shows session {other}'s ids"
                assert not any(sequence in text for _, sequence in session_records(other))

        run_id = app.query_params["run"]
        run_id = run_id[0] if isinstance(run_id, list) else run_id
        run_ids.add(run_id)
        history = {b.key for b in app.button if b.key and b.key.startswith("history_")}
        assert history == {f"history_{run_id}"}, "each session lists only its own run"
        folder = tmp_path / "runs" / run_id
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["n_sequences"] == len(ids)
        assert list(pd.read_csv(folder / "sequences.csv")["id"]) == ids

        direct = analyse(
            ORIGINAL_RUN_BOTH_PATHS(model, alphabet, ids, [s for _, s in records], backend="auto"),
            summary["layer"], AnalysisOptions(seed=summary["seed"]),
        )
        np.testing.assert_allclose(table["cosine"].to_numpy(), direct.table["cosine"].to_numpy(), rtol=0, atol=1e-12)
        for column in ("mean_abs_diff", "max_abs_diff", "confidence_v1", "confidence_v2"):
            np.testing.assert_allclose(table[column].to_numpy(), direct.table[column].to_numpy(), rtol=1e-6, atol=1e-9)
        assert list(table["label_v1"]) == list(direct.table["label_v1"])
        assert summary["label_agreement"] == direct.summary.comparison.agreement
        assert summary["cosine"]["min"] == pytest.approx(float(direct.summary.comparison.cosine.min()), rel=0, abs=1e-12)
    assert len(run_ids) == SESSIONS


IDENTICAL = fasta(session_records(0))


def drive_identical_session(k: int, start: threading.Barrier, out: dict) -> None:
    """Session k pastes the same input as every other session and presses Run at the same moment."""
    drive_session(k, start, out, IDENTICAL)


def test_eight_identical_submissions_at_once_are_one_run(concurrent_apptests, gpu_monitor, tmp_path):
    out = run_sessions(drive_identical_session)
    assert gpu_monitor["calls"] == 1, "identical runs are computed once"
    run_ids = set()
    for k, app in out.items():
        assert not app.exception, (k, app.exception)
        run_id = app.query_params["run"]
        run_ids.add(run_id[0] if isinstance(run_id, list) else run_id)
        table = next(f.value for f in app.dataframe if "label_flip" in f.value.columns)
        assert list(table["id"]) == [seq_id for seq_id, _ in session_records(0)]
    assert len(run_ids) == 1 and [p.name for p in (tmp_path / "runs").iterdir()] == list(run_ids)
