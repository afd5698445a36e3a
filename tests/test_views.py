"""dashboard.views (what the page shows, without Streamlit) and the one pipeline behind the CLI and the page."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
import torch

import core.pipeline
from core.analysis.analyse import analyse
from core.cli import main
from core.embed.cache import CacheStats
from core.input.examples import example_sequences
from core.input.fasta import parse_sequences
from core.pipeline import ComparisonRequest, LoadedModel, run_comparison
from dashboard import views
from dashboard.settings import Settings

pytestmark = pytest.mark.usefixtures("light_numerics")  # what the run is used for, not the gate's power

RECORDS = example_sequences("real")


@pytest.fixture(scope="module")
def summary(tiny_fp32):
    model, alphabet = tiny_fp32
    request = ComparisonRequest(model="demo-tiny", dtype="fp32", device="cpu")
    result = run_comparison(request, [r.id for r in RECORDS], [r.sequence for r in RECORDS],
                            loaded=LoadedModel(model, alphabet))
    return analyse(result.run, result.layer).summary


def test_verdict_card_says_both_lines_and_escapes_user_text(summary):
    card = views.verdict_card_html(summary, 1.0)
    assert f">{summary.verdict}<" in card
    assert "<b>Predictions:</b> agree" in card and "<b>Numerics:</b> equivalent to rounding" in card
    assert html.escape(summary.headline.seed_rule.line()) in card
    assert "9 sequences" in card and "demo-tiny (demo weights)" in card
    assert "<b>Checks:</b> not run — the Checks tab runs packing invariance and determinism" in card


def test_the_card_says_whether_the_checks_ran_and_which_failed():
    from core.analysis.checks import CheckResult

    passed = CheckResult("packing invariance", True, 0.0, 1.0, 9, "d")
    failed = CheckResult("determinism", False, 2e-7, 1.0, 9, "d")
    assert views.checks_line((passed,)) == "passed (packing invariance)."
    assert views.checks_line((passed, failed)) == "failed (determinism), so ACCEPT is withheld."


def test_kpis_carry_the_chosen_heads_balance_and_the_deciding_heads(summary):
    kpis = {kpi.label: kpi for kpi in views.kpis(summary)}
    assert kpis["Label agreement"].value == "100.0%"
    assert kpis["Label agreement"].delta.endswith("in the larger class")
    assert kpis["Agreement, 100 heads"].value == "100.0%" and kpis["Agreement, 100 heads"].colour == "green"
    assert kpis["Min cosine"].value.startswith("1.0000") or kpis["Min cosine"].value.startswith("0.9999")


def test_numerics_table_lists_every_layer_then_the_deep_pack(summary):
    table = views.numerics_table(summary.headline.numerics)
    assert list(table["layer"]) == [*range(4), 1]
    assert list(table["v2.0 packed"])[-1] == "deep in one pack" and not table["departs"].any()


def test_captions_and_labels():
    assert views.cache_caption(None) is None
    assert views.cache_caption(CacheStats("/c", hits=3, computed=2)) == (
        "Embedding cache: 3 of 5 sequences from the cache, 2 computed")
    assert views.model_label("demo-3B") == "demo-3B — DEMO random weights"
    assert views.num_layers_of("demo-650M") == 33 and views.num_layers_of("/no/such/file.pt") is None
    assert views.num_layers_of("demo-7B") is None
    kind, line = views.input_banner(parse_sequences(">a\nMKT\n>b\nMK1T\n"), "pasted text")
    assert kind == "error" and line.startswith("1 valid sequence(s) from the pasted text; 1 record(s) refused —")
    kind, line = views.input_banner(parse_sequences(">a\nMKT*\n>b\nMK1T\n"), "pasted text")
    assert kind == "error" and line.startswith("1 valid sequence(s) from the pasted text; 1 record(s) refused and "
                                               "1 warning(s) —")


def test_changed_since_watches_only_what_recomputes():
    used = Settings(model="demo-tiny", dtype="fp32", device="cpu")
    assert not views.changed_since(used, Settings(model="demo-tiny", dtype="fp32", device="cpu", seed=5, layer=2), "demo-tiny")
    assert views.changed_since(used, Settings(model="demo-tiny", dtype="fp32", device="cpu", reference="none"), "demo-tiny")
    assert views.changed_since(used, Settings(model="demo-tiny", dtype="fp32", device="cpu"), "demo-35M")


def test_progress_text():
    stages = ("v1.0", "v2.0", "reference")
    assert views.progress_fraction("v2.0", 50, 100, stages) == pytest.approx(0.5)
    assert views.progress_text("reference", 3, 32) == "numerics sample (reference or rounding floor): 3/32 sequences"


def test_cli_and_page_run_the_one_pipeline(monkeypatch, capsys, tmp_path, tiny_page_model):
    """Both front ends reach core.pipeline.prepare through run_comparison (torchrun ranks do too, through
    their executor: tests/test_distributed.py)."""
    from streamlit.testing.v1 import AppTest

    requests: list[ComparisonRequest] = []
    original = core.pipeline.prepare

    def spy(request, loaded=None):
        requests.append(request)
        return original(request, loaded)

    monkeypatch.setattr(core.pipeline, "prepare", spy)
    assert main(["compare", "--example", "real", "--model", "demo-tiny", "--device", "cpu", "--only-layer"]) == 0
    capsys.readouterr()
    assert [(r.model, r.only_layer, r.candidate) for r in requests] == [("demo-tiny", True, "packed")]
    monkeypatch.setenv("ESM2_RUNS_DIR", str(tmp_path / "runs"))
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py"), default_timeout=180)
    app.query_params.update({"example": "real"})
    app.run()
    assert len(requests) == 1, "a link fills the input and waits for Run"
    app.button(key="run").click().run()
    assert not app.exception and len(requests) == 2
    assert requests[1].model == "demo-tiny" and requests[1].layer is None and not requests[1].only_layer
    assert torch.device(requests[1].device).type == "cpu"
