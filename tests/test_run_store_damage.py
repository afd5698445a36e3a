"""Issue 14: stored runs read defensively, runs interrupted by a restart, the runs folder's quota, and the
compact storage that keeps reopened verdicts exact. RunStore directly, then the page (AppTest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import dashboard.server
from core.analysis.analyse import analyse
from core.embed.run import run_both_paths
from core.embed.yardstick import YardstickPlan
from core.input.fasta import parse_sequences
from dashboard.compact import CompactLayers, compact_run
from dashboard.markup import unescaped
from dashboard.quota import PRUNED_MESSAGE
from dashboard.run_files import DamagedRun
from dashboard.runs import INTERRUPTED_MESSAGE, RunStorageError, RunStore
from dashboard.stored import disk_status, opened_store
from dashboard.synthetic import store_synthetic_run, synthetic_run
from tests.summaries import without_time

pytestmark = pytest.mark.usefixtures("light_numerics")  # what the run is used for, not the gate's power

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs")


def rewrite_npz(path: Path, change) -> None:
    """Save the .npz at ``path`` again with ``change(arrays)`` applied (a dict of name -> array)."""
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    change(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


# (file, how it is damaged, what the message says after "damaged: <file> ")
DAMAGE = {
    "status empty": ("status.json", lambda p: p.write_text(""), "is empty"),
    "status truncated": ("status.json", lambda p: p.write_text(p.read_text()[:25]), "is not valid JSON"),
    "status a list": ("status.json", lambda p: p.write_text("[1, 2]"), "holds a JSON list"),
    "status unknown state": ("status.json", lambda p: p.write_text('{"state": "exploded"}'), "has an unknown state"),
    "settings empty": ("settings.json", lambda p: p.write_bytes(b""), "is empty"),
    "settings truncated": ("settings.json", lambda p: p.write_text(p.read_text()[:30]), "is not valid JSON"),
    "settings wrong type": ("settings.json", lambda p: p.write_text('{"seed": "seven"}'),
                            "has a 'seed' of the wrong type"),
    "input truncated": ("input.json", lambda p: p.write_text(p.read_text()[:40]), "is not valid JSON"),
    "input wrong shape": ("input.json", lambda p: p.write_text('{"records": [{"id": 1}], "problems": []}'),
                          "has a record or problem of the wrong shape"),
    "run.json empty": ("run.json", lambda p: p.write_text(""), "is empty"),
    "run.json no paths": ("run.json", lambda p: p.write_text('{"ids": ["a"]}'), "has no 'paths'"),
    "summary truncated": ("summary.json", lambda p: p.write_text(p.read_text()[:50]), "is not valid JSON"),
    "npz empty": ("embeddings.npz", lambda p: p.write_bytes(b""), "is truncated or corrupt"),
    "npz truncated": ("embeddings.npz", lambda p: p.write_bytes(p.read_bytes()[:1000]), "is truncated or corrupt"),
    "npz missing": ("embeddings.npz", lambda p: p.unlink(), "is missing"),
    "npz lacks an array": ("embeddings.npz", lambda p: rewrite_npz(p, lambda a: a.pop("v2_layer6")),
                           "lacks the array v2_layer6"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_every_damaged_file_is_listed_as_damaged_and_never_breaks_the_others(store, case):
    file, damage, says = DAMAGE[case]
    good, broken = store_synthetic_run(store, 40, seed=1), store_synthetic_run(store, 40, seed=2)
    damage(store.run_dir(broken) / file)

    for listing in (store.list_runs(), store.list_runs([good, broken])):
        by_id = {info.id: info for info in listing}
        assert by_id[good].state == "done" and by_id[good].error is None
        assert by_id[broken].state == "damaged"
        assert by_id[broken].error.startswith(f"damaged: {file} {says}"), by_id[broken].error
    assert disk_status(store, broken).state == "damaged"
    assert disk_status(store, broken).error.startswith(f"damaged: {file}")
    assert disk_status(store, good).state == "done"
    store.load_embeddings(good)


@pytest.mark.parametrize("how", ["truncated", "missing array", "wrong shape", "corrupt in the middle"])
def test_loading_a_damaged_npz_raises_damaged_run_naming_it(store, how):
    run_id = store_synthetic_run(store, 40)
    path = store.run_dir(run_id) / "embeddings.npz"
    damage = {"truncated": lambda: path.write_bytes(path.read_bytes()[:-500]),
              "missing array": lambda: rewrite_npz(path, lambda a: a.pop("half_layer2_delta")),
              "wrong shape": lambda: rewrite_npz(path, lambda a: a.update(lengths=a["lengths"][:-1])),
              "corrupt in the middle": lambda: corrupt_middle(path)}
    damage[how]()
    with pytest.raises(DamagedRun) as raised:
        store.load_embeddings(run_id)
    assert str(raised.value).startswith("damaged: embeddings.npz")


def test_a_folder_of_junk_lists_without_raising(store):
    run_id = store_synthetic_run(store, 20)
    (store.root / "not-a-run").mkdir()
    (store.root / ("x" * 22)).mkdir()  # a well-formed id with nothing in it
    (store.root / "stray-file.txt").write_text("hello")
    listing = {info.id: info for info in store.list_runs()}
    assert listing[run_id].state == "done"
    assert listing["x" * 22].state == "damaged" and listing["x" * 22].error == "damaged: status.json is missing"


def test_a_damaged_status_is_replaced_when_the_run_moves_on(store):
    run_id = store_synthetic_run(store, 20)
    (store.run_dir(run_id) / "status.json").write_text("{")
    store.set_status(run_id, "failed", error="Run failed: x")
    assert store.read_status(run_id).state == "failed"


# ---------------------------------------------------------------- interrupted by a restart


def test_runs_left_queued_or_running_are_marked_interrupted_when_the_store_is_first_opened(tmp_path):
    root = tmp_path / "runs"
    store = RunStore(root)
    done = store_synthetic_run(store, 20)
    queued, running, owned = (store.new_id() for _ in range(3))
    for run_id, state in ((queued, "queued"), (running, "running"), (owned, "running")):
        store.set_status(run_id, state, created_at="2026-01-01T00:00:00+00:00", n_sequences=3, model="demo-8M")

    opened = opened_store(str(root), None, lambda run_id: run_id == owned)
    for run_id in (queued, running):
        status = opened.read_status(run_id)
        assert status.state == "interrupted" and status.error == INTERRUPTED_MESSAGE
        assert disk_status(opened, run_id).state == "interrupted"
    assert opened.read_status(owned).state == "running", "a job of this process owns it"
    assert opened.read_status(done).state == "done"
    assert {info.id: info.state for info in opened.list_runs()}[queued] == "interrupted"
    store.set_status(queued, "running")
    opened_store(str(root), None, lambda run_id: False)
    assert opened.read_status(queued).state == "running", "only the first opening in a process sweeps"


# ---------------------------------------------------------------- the quota


def test_the_oldest_finished_runs_make_room_and_their_links_say_so(tmp_path):
    sizing = RunStore(tmp_path / "sizing")
    one_run = sum(p.stat().st_size for p in sizing.run_dir(store_synthetic_run(sizing, 200)).iterdir())
    store = RunStore(tmp_path / "runs", quota_bytes=int(3.5 * one_run))
    oldest, middle, newest = (store_synthetic_run(store, 200, seed=seed) for seed in (1, 2, 3))
    store.set_status(middle, "running")  # never removed, however old
    assert store.list_runs() and all(disk_status(store, r).state != "pruned" for r in (oldest, middle, newest))

    fourth = store_synthetic_run(store, 200, seed=4)
    assert disk_status(store, oldest).state == "pruned"
    assert disk_status(store, oldest).error == PRUNED_MESSAGE
    assert [p.name for p in store.run_dir(oldest).iterdir()] == ["status.json"]
    assert disk_status(store, middle).state == "interrupted" and disk_status(store, newest).state == "done"
    assert store.read_status(fourth).pruned == 1 and disk_status(store, fourth).pruned == 1
    assert sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file()) <= store.quota_bytes


def test_a_run_larger_than_the_quota_is_refused_in_words(tmp_path):
    store = RunStore(tmp_path / "runs", quota_bytes=100_000)
    keep = store.new_id()
    store.set_status(keep, "running")
    with pytest.raises(RunStorageError, match="quota of .* leaves too little room"):
        store_synthetic_run(store, 200)
    assert store.read_status(keep).state == "running"


def test_the_quota_comes_from_the_server_config(monkeypatch, tmp_path):
    config = tmp_path / "config.toml"
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", config)
    for text, expected in (("[runs]\nquota_gb = 20\n", 20_000_000_000), ("[runs]\nquota_gb = 0.5\n", 500_000_000),
                           ("[runs]\nquota_gb = 0\n", None), ("[runs]\n", None), ('[runs]\nquota_gb = "x"\n', None)):
        config.write_text(text)
        assert dashboard.server.runs_quota_bytes() == expected


# ---------------------------------------------------------------- compact storage


FASTA = ">alpha\nMKTAYIAKQRQISFVKSHFSRQ\n>beta\nGSGSGSLLKKLLEEPEVKVNGQ\n>gamma\nMQIFVKTLTGKTITLEV\n"


def test_a_compact_run_reopens_to_the_same_summary_and_the_analysed_layer_is_exact(store, demo_fp32):
    parsed = parse_sequences(FASTA)
    model, alphabet = demo_fp32
    records = parsed.records
    run = run_both_paths(model, alphabet, [r.id for r in records], [r.sequence for r in records],
                         yardstick=YardstickPlan("reference", "fp64", None))
    compact = compact_run(run, [4])
    run_id = store.new_id()
    store.create(run_id, parsed, {"model": "demo-8M", "layer": 4})
    store.save_embeddings(run_id, compact)
    reopened = store.load_embeddings(run_id)

    at_finish = analyse(compact, 4, parsed=parsed).summary.to_json()
    assert without_time(analyse(reopened, 4, parsed=parsed).summary.to_json()) == without_time(at_finish)
    full = analyse(run, 4, parsed=parsed).summary.to_json()
    for key in set(full) - {"created_at", "layers"}:
        assert at_finish[key] == full[key], key
    assert at_finish["verdict"] == full["verdict"]
    for exact, approximate in zip(full["layers"], at_finish["layers"]):
        assert exact["layer"] == approximate["layer"]
        assert exact["v1_mean_abs_error"] == approximate["v1_mean_abs_error"], "the numerics sample stays exact"
        assert approximate["mean_abs_diff"] == pytest.approx(exact["mean_abs_diff"], rel=2e-3)
        assert 1 - approximate["cosine_min"] == pytest.approx(1 - exact["cosine_min"], rel=5e-3, abs=1e-12)
        if exact["layer"] == 4:
            assert exact == approximate
    np.testing.assert_array_equal(reopened.v2.layers[4], run.v2.layers[4])
    assert isinstance(reopened.v1.layers, CompactLayers) and sorted(reopened.v1.layers.half) == [0, 1, 2, 3, 5, 6]


def test_compact_storage_halves_a_demo_8m_shaped_run(store):
    run = synthetic_run(5_000)
    sizes = []
    for stored in (run, compact_run(run, [6])):
        run_id = store.new_id()
        store.create(run_id, parse_sequences(">a\nMKT\n"), {})
        store.save_embeddings(run_id, stored)
        sizes.append((store.run_dir(run_id) / "embeddings.npz").stat().st_size)
    assert sizes[1] / sizes[0] < 0.6  # (1 full + 6 × half) / 7 layers ≈ 0.57


def test_a_layer_float16_cannot_hold_stays_as_computed():
    run = synthetic_run(50)
    run.v1.layers[3] = run.v1.layers[3] * 1e5  # beyond float16's 65504
    compact = compact_run(run, [6])
    assert sorted(compact.v1.layers.full) == [3, 6]
    np.testing.assert_array_equal(compact.v1.layers[3], run.v1.layers[3])


# ---------------------------------------------------------------- the page


@pytest.fixture
def page_runs(tmp_path, monkeypatch) -> RunStore:
    folder = tmp_path / "page-runs"
    monkeypatch.setenv(dashboard.server.RUNS_DIR_ENV, str(folder))
    return RunStore(folder)


def open_page(**query: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=300)
    app.query_params.update(query)
    return app.run()


def texts(elements) -> list[str]:
    return [unescaped(element.value) for element in elements]


@pytest.mark.parametrize("case", ["status truncated", "settings wrong type", "npz truncated", "input wrong shape"])
def test_a_damaged_run_opens_as_a_message_and_a_shared_history_still_loads(page_runs, monkeypatch, tmp_path, case):
    file, damage, says = DAMAGE[case]
    good, broken = store_synthetic_run(page_runs, 30, seed=1), store_synthetic_run(page_runs, 30, seed=2)
    damage(page_runs.run_dir(broken) / file)

    app = open_page(run=broken)
    assert not app.exception
    assert any(f"damaged: {file} {says}" in text for text in texts(app.error)), texts(app.error)

    config = tmp_path / "config.toml"
    config.write_text("[runs]\nshared_history = true\n")
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", config)
    stranger = open_page()
    assert not stranger.exception
    labels = {button.key: button.label for button in stranger.button if button.key}
    assert f"damaged: {file} {says}" in labels[f"history_{broken}"]
    stranger.button(key=f"history_{good}").click().run()
    assert not stranger.exception and "30 sequences" in unescaped(str([m.value for m in stranger.markdown]))


def test_interrupted_pruned_and_making_room_show_on_the_page(page_runs, monkeypatch, tmp_path):
    running = page_runs.new_id()
    page_runs.set_status(running, "running", created_at="2026-01-01T00:00:00+00:00", n_sequences=3, model="demo-8M")
    opened_store.clear()  # a server starting
    app = open_page(run=running)
    assert not app.exception and any("did not finish" in text for text in texts(app.warning))
    assert page_runs.read_status(running).state == "interrupted"

    sizing = sum(p.stat().st_size for p in page_runs.run_dir(store_synthetic_run(page_runs, 30)).iterdir())
    config = tmp_path / "config.toml"
    config.write_text(f"[runs]\nquota_gb = {1.5 * sizing / 1e9}\n")
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", config)
    oldest = [info.id for info in page_runs.list_runs() if info.state == "done"][0]
    newest = store_synthetic_run(RunStore(page_runs.root, dashboard.server.runs_quota_bytes()), 30, seed=5)
    assert page_runs.read_status(oldest).state == "pruned"
    app = open_page(run=oldest)
    assert not app.exception and any(text.startswith("This run was removed to stay within the storage quota")
                                     for text in texts(app.warning))
    app = open_page(run=newest)
    removed = page_runs.read_status(newest).pruned  # the oldest finished run, and the interrupted one
    assert removed == 2 and page_runs.read_status(running).state == "pruned"
    assert not app.exception and any(f"removed the {removed} oldest finished run(s)" in text for text in texts(app.info))


def test_the_checks_at_a_compact_layer_compare_against_a_fresh_v2_run(page_runs, monkeypatch):
    """Determinism is bit for bit, so a layer stored compact cannot be its baseline: the page asks for a fresh
    v2.0 run there (baseline None), and passes the stored embeddings at the exact layer."""
    import dashboard.results

    baselines = []
    monkeypatch.setattr(dashboard.results, "v2_checks", lambda used, records, layer, packed: baselines.append(packed) or [])
    app = open_page(run=store_synthetic_run(page_runs, 30))
    app.button(key="checks_go").click().run()
    app.slider(key="layer").set_value(2).run()
    app.button(key="checks_go").click().run()
    assert not app.exception and any("Layer 2 is kept compact" in caption.value for caption in app.caption)
    assert isinstance(baselines[0], np.ndarray) and baselines[-1] is None
