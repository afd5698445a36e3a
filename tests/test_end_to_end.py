"""End to end through the command line, as CI would run it (issue 15): a FALLBACK verdict and its exit
code, each threshold option changing the verdict it should, the token budget, the automatic model
choice, and report.html escaping user text. CPU, demo-tiny, the 18-sequence patterns set or smaller."""

from __future__ import annotations

import json

import pytest

from core.analysis.analyse import AnalysisOptions, analyse
from core.cli import main
from core.embed.run import run_both_paths
from core.report import charts
from core.report.html import html_report
from core.numerics.environment import default_device
from core.numerics.specs import default_model_spec
from core.report.charts import VERDICT_COLOURS
from tests.test_cli import CPU_DEMO, read_outputs, run_cli, write
from tests.test_dashboard import new_app, run_example, server_config, verdict_html
from tests.test_dashboard import run_counter, runs_dir  # noqa: F401 (the page's fixtures, found by name)

NEGATED = "tests.plugins.example_v2:make_negated"
pytestmark = pytest.mark.usefixtures("light_numerics")  # what the CLI and page do with a verdict, not the gate's power


@pytest.fixture(scope="module")
def fallback_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fallback")
    code = main(["compare", "--example", "patterns", *CPU_DEMO, "--v2", NEGATED, "--seeds", "20",
                 "--fail-on", "fallback", "--out", str(out)])
    return code, out


def test_a_path_that_changes_predictions_is_fallback_and_fails_the_gate(fallback_run, capsys):
    code, out = fallback_run
    summary, table = read_outputs(out)
    assert code == 1, "--fail-on fallback exits 1 on a FALLBACK verdict"
    assert summary["verdict"] == "FALLBACK" and summary["recommendation"].startswith("Fall back")
    assert summary["label_agreement"] < 0.95 and (table["cosine"] < 0).all()


def test_fallback_is_printed_with_the_gate_line(capsys, tmp_path):
    fasta = write(tmp_path / "two.fasta", ">a\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n>b\nGSGSGSLLKKLLEEPEVKVNGQ\n")
    code, out, err = run_cli(capsys, "compare", str(fasta), *CPU_DEMO, "--v2", NEGATED, "--seeds", "10",
                             "--fail-on", "fallback")
    assert code == 1 and "FALLBACK" in out and "at or below --fail-on fallback" in err


@pytest.mark.parametrize("option, value, expected", [
    ("--min-cosine", "1.0", "VALIDATE"),      # every cosine is at or below 1.0: the cosine check fails
    ("--rule-k", "0.5", "VALIDATE"),          # v2.0 within 0.5× of v1.0's error is impossible: numerics fail
    ("--accept-agreement", "1.0", "VALIDATE"),  # 100% agreement is not above 100%
    ("--min-agreement", "0.0", "VALIDATE"),   # with the negated path: 0% agreement is no longer below the floor
])
def test_each_threshold_option_moves_the_verdict(option, value, expected, tmp_path, capsys):
    fasta = write(tmp_path / "two.fasta", ">a\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n>b\nGSGSGSLLKKLLEEPEVKVNGQ\n")
    v2 = ["--v2", NEGATED] if option == "--min-agreement" else []
    code, out, _ = run_cli(capsys, "compare", str(fasta), *CPU_DEMO, *v2, "--seeds", "10", option, value,
                           "--out", str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 0 and summary["verdict"] == expected, summary["recommendation"]


def test_a_token_budget_changes_batching_not_results(tmp_path, capsys):
    fasta = write(tmp_path / "three.fasta", ">a\n" + "MKTAYIAKQR" * 6 + "\n>b\nGSGSGSLLKKLLEE\n>c\n" + "PEVKVNGQ" * 5 + "\n")
    tables = []
    for budget in ("64", "4096"):
        code, _, _ = run_cli(capsys, "compare", str(fasta), *CPU_DEMO, "--seeds", "0", "--max-tokens", budget,
                             "--out", str(tmp_path / budget))
        assert code == 0
        tables.append(read_outputs(tmp_path / budget)[1])
    assert list(tables[0]["id"]) == list(tables[1]["id"]) == ["a", "b", "c"]
    assert (abs(tables[0]["cosine"] - tables[1]["cosine"]) < 1e-9).all()


def test_without_model_the_device_default_is_chosen_and_labelled(tmp_path, capsys):
    fasta = write(tmp_path / "one.fasta", ">a\nMKTAYIAKQRQISFVKSHFSRQ\n")
    code, out, _ = run_cli(capsys, "compare", str(fasta), "--device", "cpu", "--seeds", "0", "--out", str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["model"] == default_model_spec(default_device()) == "demo-8M"
    assert summary["weights"] == "demo" and "demo" in out.lower()


def test_report_html_escapes_user_text(tiny_fp32):
    """The page's report.html (Share tab) over a run whose ids are markup: shown as text, never as markup."""
    model, alphabet = tiny_fp32
    ids = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]
    run = run_both_paths(model, alphabet, ids, ["MKTAYIAKQRQISFVKSHFSRQ", "GSGSGSLLKKLLEE"])
    analysis = analyse(run, model.num_layers, AnalysisOptions(n_heads=0))
    report = html_report(analysis.summary, analysis.table, charts.all_figures(analysis.table, analysis.summary))
    assert "<script>alert(1)</script>" not in report and "<img src=x onerror" not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report


# ---------------------------------------------------------------- the page


def test_the_page_shows_fallback_as_a_red_card(run_counter, monkeypatch, tmp_path):
    server_config(monkeypatch, tmp_path, f'[v2_plugins]\n"Negated" = "{NEGATED}"\n')
    app = new_app(seeds="10")
    app.selectbox(key="v2").set_value("Negated").run()
    app = run_example(app, "real")
    card = verdict_html(app)
    assert not app.exception
    assert "FALLBACK" in card.split("</div>")[0] and VERDICT_COLOURS["FALLBACK"] in card


def test_a_widget_change_is_written_back_to_the_url(run_counter):
    """Not the link's own value read back: the seed is changed in the sidebar and the URL follows."""
    app = new_app()
    assert app.query_params.get("seed") in (None, "0", ["0"])
    app.number_input(key="seed").set_value(17).run()
    app.selectbox(key="proxy").set_value("seed").run()
    seed, proxy = app.query_params["seed"], app.query_params["proxy"]
    assert (seed[0] if isinstance(seed, list) else seed) == "17"
    assert (proxy[0] if isinstance(proxy, list) else proxy) == "seed"
