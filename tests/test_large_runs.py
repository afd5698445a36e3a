"""Issue 14: the page on large runs. The analysis reuses its parts (and gives the same numbers), the charts
draw at most MAX_POINTS points with the worst sequences kept, the tables are limited, and a stored
100,000-sequence run fits a small quota and redraws from memory (marked slow, ~30 s; the test command
runs it, ``-m "not slow"`` leaves it out)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import dashboard.server
from core.analysis.analyse import AnalysisOptions, analyse
from core.analysis.memo import compute_now
from core.analysis.metrics import Thresholds
from core.analysis.profile import layer_agreement, layer_profile
from core.analysis.projection import compact_products, width
from core.embed.run import EmbeddingRun
from core.report import charts
from core.report.sampling import MAX_POINTS, WORST_KEPT, binned, ecdf_ranks, plotted_rows
from dashboard import views
from dashboard.compact import HalfLayer, compact_run
from dashboard.memo import RunMemo
from dashboard.runs import RunStore
from dashboard.synthetic import pooled_shape, store_synthetic_run, synthetic_input, synthetic_run
from tests.summaries import without_time

pytestmark = pytest.mark.usefixtures("light_numerics")  # what the run is used for, not the gate's power

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def test_a_remembered_analysis_gives_the_same_numbers_as_a_fresh_one():
    run = compact_run(synthetic_run(600, seed=3), [6])
    parsed, memo = synthetic_input(run), RunMemo()
    views_in_turn = [(6, AnalysisOptions()), (6, AnalysisOptions(thresholds=Thresholds(min_cosine=0.999999))),
                     (6, AnalysisOptions(seed=4)), (2, AnalysisOptions(seed=4)), (2, AnalysisOptions(seed=4, n_heads=0)),
                     (2, AnalysisOptions(seed=4, proxy="seed")), (6, AnalysisOptions(seed=4, k=3.0)),
                     (6, AnalysisOptions()), (2, AnalysisOptions(seed=4))]
    for layer, options in views_in_turn:
        remembered = analyse(run, layer, options, parsed, memo=memo)
        fresh = analyse(run, layer, options, parsed, memo=compute_now)
        assert without_time(remembered.summary.to_json()) == without_time(fresh.summary.to_json()), (layer, options)
        pd.testing.assert_frame_equal(remembered.table, fresh.table)
    assert 0 < len(memo) and len(memo._parts["votes"]) <= 3


def far_apart(n: int, seed: int) -> EmbeddingRun:
    """A synthetic run whose v2.0 lies 1% off v1.0 at every layer, so heads' labels do flip."""
    run = synthetic_run(n, seed=seed)
    rng = np.random.default_rng(seed)
    for layer, v1 in run.v1.layers.items():
        run.v2.layers[layer] = v1 + np.float32(0.01) * rng.standard_normal(v1.shape, dtype=np.float32)
    return run


def test_compact_layers_project_onto_heads_without_expanding(monkeypatch):
    run = compact_run(far_apart(3000, seed=5), [6])
    matrix = np.random.default_rng(1).standard_normal((pooled_shape("demo-8M")[1], 3))
    expanded = {layer: (run.v1.layers[layer].astype(np.float64), run.v2.layers[layer].astype(np.float64))
                for layer in run.layers}
    plain = dataclasses.replace(run, v1=dataclasses.replace(run.v1, layers={l: p[0] for l, p in expanded.items()}),
                                v2=dataclasses.replace(run.v2, layers={l: p[1] for l, p in expanded.items()}))
    profile_of_expanded = layer_profile(plain, seed=3)
    # From here on a compact layer may not be expanded: the products come from its stored form.
    monkeypatch.setattr(HalfLayer, "baseline", lambda self: pytest.fail("v1.0 expanded"))
    monkeypatch.setattr(HalfLayer, "candidate", lambda self: pytest.fail("v2.0 expanded"))
    for layer, (v1, v2) in expanded.items():
        products = compact_products(run.v1.layers, run.v2.layers, layer, matrix)
        assert width(run.v1.layers, layer) == pooled_shape("demo-8M")[1]
        if layer == 6:
            assert products is None  # kept as computed: the caller multiplies in float64
            continue
        # float32 products of values float16 holds exactly; v2.0 also differs by its float32 expansion's rounding.
        np.testing.assert_allclose(products[0], v1 @ matrix, rtol=0, atol=1e-4)
        np.testing.assert_allclose(products[1], v2 @ matrix, rtol=0, atol=1e-4)
        assert np.abs(products[1] - products[0]).mean() > 0.05  # the difference is in it, not only v1.0
        sample = run.yardstick.indices  # the numerics sample's rows from their exact values, in float64
        np.testing.assert_allclose(products[0][sample], v1[sample] @ matrix, rtol=1e-13)
    for reference in profile_of_expanded:
        for proxy in ("balanced", "seed"):
            expected = reference.label_agreement if proxy == "balanced" else layer_agreement(plain, reference.layer, 3, proxy)
            assert abs(layer_agreement(run, reference.layer, 3, proxy) - expected) <= 1 / 3000
    assert min(entry.label_agreement for entry in profile_of_expanded) < 1.0  # heads do flip here


def table_of(n: int, flips: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    flip = np.zeros(n, dtype=bool)
    flip[rng.choice(n, flips, replace=False)] = True
    return pd.DataFrame({"id": [f"s{i}" for i in range(n)], "cosine": 1 - rng.random(n) * 1e-6, "label_flip": flip,
                         "length": rng.integers(30, 800, n)})


def test_scatters_keep_every_flip_and_the_lowest_cosines_and_stay_under_the_cap():
    table = table_of(100_000)
    shown = plotted_rows(table)
    assert len(shown) <= MAX_POINTS and shown.index.is_monotonic_increasing
    assert shown["label_flip"].sum() == 50
    lowest = table.sort_values("cosine").head(WORST_KEPT - 50)
    assert set(lowest.index) <= set(shown.index)
    small = table_of(300)
    assert plotted_rows(small) is small
    ranks = ecdf_ranks(100_000)
    assert ranks.size <= MAX_POINTS and ranks[0] == 0 and np.all(np.diff(ranks) > 0)
    assert set(range(100_000 - WORST_KEPT, 100_000)) <= set(ranks.tolist())
    centres, counts = binned(np.log10(1 - table["cosine"].to_numpy()), 0.25)
    assert counts.sum() == 100_000 and centres.size < 100


def test_tables_and_choices_are_limited_on_a_large_run():
    table = table_of(20_000)
    shown, caption = views.shown_table(table)
    assert len(shown) == views.TABLE_ROWS and shown["cosine"].is_monotonic_increasing
    assert shown["cosine"].iloc[0] == table["cosine"].min() and "of 20,000 sequences" in caption
    small, no_caption = views.shown_table(table.head(10))
    assert small is not None and len(small) == 10 and no_caption is None
    assert len(views.residue_choices(table)) == views.RESIDUE_CHOICES
    assert views.residue_choices(table.head(10)) == list(table.head(10)["id"])


def counted(method, calls: list[str], name: str):
    """``method`` recording ``name`` in ``calls`` each time it runs."""
    def wrapper(*args, **kwargs):
        calls.append(name)
        return method(*args, **kwargs)
    return wrapper


def points(figure_spec: dict) -> int:
    """Points a plotly figure ships to the browser (x values over its traces)."""
    return sum(len(trace.get("x") or []) for trace in figure_spec["data"])


def test_every_chart_of_a_large_analysis_ships_at_most_the_cap():
    run = compact_run(synthetic_run(30_000, model="demo-tiny"), [3])  # the cap is on sequences, not the width
    analysis = analyse(run, 3, AnalysisOptions(), synthetic_input(run))
    figures = charts.all_figures(analysis.table, analysis.summary)
    figures["margins"] = charts.flips_vs_margin(analysis.votes.margin_table(run.ids))
    figures["reference"] = charts.reference_errors(analysis.table, "fp64")
    for name, figure in figures.items():
        assert points(json.loads(figure.to_json())) <= 2 * MAX_POINTS + 2, name


@pytest.mark.slow
def test_a_100000_sequence_run_fits_a_small_quota_and_redraws_from_memory(tmp_path, monkeypatch):
    """Shaped like demo-tiny's runs (4 pooled layers of 64; demo-8M's 7 × 320 take 25 s to make up, and
    scripts/bench_page.py times those): the page's limits are on sequences, not on the width."""
    n, quota, model = 100_000, 270_000_000, "demo-tiny"
    root = tmp_path / "runs"
    monkeypatch.setenv(dashboard.server.RUNS_DIR_ENV, str(root))
    run_id = store_synthetic_run(RunStore(root, quota_bytes=quota), n, model=model)
    files = {path.name: path.stat().st_size for path in root.rglob("*") if path.is_file()}
    layers, width = pooled_shape(model)
    as_computed = 2 * layers * n * width * 4  # both paths, every layer as computed: 205 MB
    full_size = sum(files.values()) - files["embeddings.npz"] + as_computed  # 314 MB with the input and table
    assert sum(files.values()) <= quota < full_size

    read, computed = [], []
    for name in ("load_input", "load_embeddings"):
        monkeypatch.setattr(RunStore, name, counted(getattr(RunStore, name), read, name))
    remember = RunMemo.__call__
    monkeypatch.setattr(RunMemo, "__call__", lambda memo, key, compute: remember(
        memo, key, lambda: computed.append(key[0]) or compute()))
    app = AppTest.from_file(APP, default_timeout=900)
    app.query_params.update({"run": run_id})
    app.run()
    assert sorted(read) == ["load_embeddings", "load_input"] and computed, "the first open reads and analyses"
    read.clear(), computed.clear()
    app.number_input(key="min_cosine").set_value(0.999).run()
    assert not app.exception
    # A threshold change redraws from memory: nothing read from disk again, no part of the analysis
    # (distances, labels, heads' votes, profile) computed again.
    assert read == [] and computed == [], (read, computed)
    for chart in app.get("plotly_chart"):
        assert points(json.loads(chart.proto.spec)) <= 2 * MAX_POINTS + 2
    assert [len(frame.value) for frame in app.dataframe if "label_flip" in frame.value.columns] == [views.TABLE_ROWS]
    assert len(app.selectbox(key="residue_sequence").options) == views.RESIDUE_CHOICES
    assert app.text_area(key="sequences_text").value == "", "41 MB of residues stay out of the text area"
    assert any("Scatter charts show 5,000 of 100,000 sequences" in caption.value for caption in app.caption)
