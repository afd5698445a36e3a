"""The Streamlit page, driven headlessly with streamlit.testing.v1.AppTest (CPU, demo-8M)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core.compare

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 180
GOOD_AND_BAD = (
    ">good_one\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n"
    ">bad_digits\nMKTA1YIAK\n"
    ">good_two\nGSGSGSLLKKLLEEPEVKVNGQ\n"
    ">bad_stop\nMKT*AYIAK\n"
)


@pytest.fixture
def run_counter(monkeypatch):
    """Counts how often the page makes the model embed anything (fresh caches per test)."""
    st.cache_data.clear()
    calls = []
    original = core.compare.run_both_paths

    def counting(*args, **kwargs):
        calls.append(kwargs.get("layers"))
        return original(*args, **kwargs)

    monkeypatch.setattr(core.compare, "run_both_paths", counting)
    return calls


def new_app(**query: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.query_params.update(query)
    return app.run()


def verdict_html(app: AppTest) -> str:
    cards = [m.value for m in app.markdown if "border-left: 14px" in m.value]
    assert len(cards) == 1, "exactly one verdict card expected"
    return cards[0]


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def table_with(app: AppTest, column: str):
    """The one dataframe on the page that has ``column`` (the sequence table has label_flip, problems have record)."""
    frames = [frame.value for frame in app.dataframe if column in frame.value.columns]
    assert len(frames) == 1, f"expected one table with column {column!r}, found {len(frames)}"
    return frames[0]


def run_example(app: AppTest, name: str = "patterns") -> AppTest:
    app.button(key=f"example_{name}").click().run()
    return app.button(key="run").click().run()


def test_example_set_runs_to_a_verdict(run_counter):
    app = run_example(new_app())
    assert not app.exception
    card = verdict_html(app)
    assert "ACCEPT" in card and "18 sequences" in card and "demo-8M" in card
    assert metrics(app)["Label agreement"] == "100.0%"
    assert app.metric[0].delta == "0 label flips"
    assert len(table_with(app, "label_flip")) == 18
    assert run_counter == [None], "one embedding pass, every layer"


def test_demo_banner_appears_with_demo_weights(run_counter):
    app = run_example(new_app())
    assert any("DEMO WEIGHTS" in w.value for w in app.warning)
    assert "demo weights" in verdict_html(app)


def test_bad_input_listed_per_record_and_valid_ones_still_run(run_counter):
    app = new_app()
    app.text_area(key="sequences_text").input(GOOD_AND_BAD).run()
    problems = table_with(app, "record")
    assert list(problems["record"]) == ["bad_digits", "bad_stop"]
    assert "'1'" in problems["problem"][0] and "position 5" in problems["problem"][0]
    assert any("2 record(s) refused" in e.value for e in app.error)
    app.button(key="run").click().run()
    assert not app.exception
    card = verdict_html(app)
    assert "2 sequences" in card
    assert list(table_with(app, "label_flip")["id"]) == ["good_one", "good_two"]


def test_changing_seed_layer_and_thresholds_redraws_without_recomputing(run_counter):
    app = run_example(new_app())
    assert len(run_counter) == 1
    before = verdict_html(app)
    assert "layer 6" in before and "seed 0" in before

    app.number_input(key="seed").set_value(7).run()
    app.slider(key="layer").set_value(2).run()
    app.number_input(key="accept_agreement").set_value(1.0).run()
    assert not app.exception
    after = verdict_html(app)
    assert "layer 2" in after and "seed 7" in after
    assert "VALIDATE" in after  # 100% agreement is not above 1.0
    assert len(run_counter) == 1, "seed, layer and thresholds must not touch the model"


def test_settings_round_trip_through_the_url(run_counter):
    app = new_app(seed="5", example="real", layer="3")
    assert not app.exception
    card = verdict_html(app)  # an example set in the URL reopens the whole view
    assert "seed 5" in card and "layer 3" in card and "9 sequences" in card
    assert app.query_params["seed"] == ["5"] or app.query_params["seed"] == "5"


def test_presentation_mode_hides_controls(run_counter):
    app = run_example(new_app())
    app.toggle(key="present").set_value(True).run()
    assert not app.exception
    assert any(b.key == "exit_present" for b in app.button)
    assert not any(b.key == "run" for b in app.button)
    assert "ACCEPT" in verdict_html(app)
    assert not app.download_button  # sharing controls are off-screen in a meeting


def test_downloads_carry_the_summary(run_counter):
    app = run_example(new_app())
    keys = {button.key for button in app.download_button}
    assert {"download_csv", "download_json", "download_html"} <= keys


def test_missing_checkpoint_is_a_message_not_a_traceback(run_counter):
    app = new_app(model="/nonexistent/model.pt", example="patterns")
    assert not app.exception
    assert any("Cannot run" in e.value and "/nonexistent/model.pt" in e.value for e in app.error)
    assert run_counter == []


def test_user_text_is_never_rendered_as_html(run_counter):
    app = new_app()
    app.text_area(key="sequences_text").input(">x<script>alert(1)</script>\nMKTAYIAKQR\n").run()
    app.button(key="run").click().run()
    assert not app.exception
    for markdown in app.markdown:
        assert "<script>" not in markdown.value
    assert list(table_with(app, "label_flip")["id"]) == ["x<script>alert(1)</script>"]  # shown as plain text



def test_reference_layers_seeds_residues_and_checks_views(run_counter):
    app = new_app()
    app.selectbox(key="reference").set_value("fp64").run()
    app = run_example(app)
    assert not app.exception
    assert run_counter == [None]
    assert any("FlashAttention's rule" in s.value and "fp64 reference" in s.value for s in app.success)
    reference = table_with(app, "path")
    assert list(reference["path"]) == ["v1.0", "v2.0"]
    assert (reference["cosine_min"] > 0.9999).all()
    layers = table_with(app, "layer")
    assert list(layers["layer"]) == list(range(7)) and "v2_mean_abs_error" in layers.columns
    assert any("Agreement over **100** proxy classifiers" in m.value for m in app.markdown)

    app.selectbox(key="residue_sequence").set_value("pattern_03")
    app.button(key="residue_go").click().run()
    worst = table_with(app, "residue")
    assert len(worst) == 10 and set(worst["position"]) <= set(range(1, 57))

    app.button(key="checks_go").click().run()
    badges = [s.value for s in app.success if "PASS" in s.value]
    assert any(b.startswith("packing invariance: PASS") for b in badges)
    assert any(b.startswith("determinism: PASS") for b in badges)
    assert run_counter == [None], "the views reuse the cached embeddings"


def test_uploaded_head_replaces_the_proxy_and_a_wrong_width_is_refused(run_counter, tmp_path):
    import torch

    app = run_example(new_app())
    good, wrong = tmp_path / "good.pt", tmp_path / "wrong.pt"
    torch.save({"weight": torch.randn(3, 320, generator=torch.Generator().manual_seed(1)), "bias": torch.zeros(3)}, good)
    torch.save({"weight": torch.randn(2, 480), "bias": torch.zeros(2)}, wrong)

    app.file_uploader(key="head_file").upload("good.pt", good.read_bytes()).run()
    assert not app.exception
    assert "classifier: your head: linear 320→3 from good.pt" in verdict_html(app)
    labels = table_with(app, "label_flip")["label_v1"]
    assert labels.max() <= 2 and labels.nunique() >= 2, "three-class head labels, not the proxy's two"

    app.file_uploader(key="head_file").upload("wrong.pt", wrong.read_bytes()).run()
    assert any("expects 480 input features but gets 320" in e.value for e in app.error)
    assert run_counter == [None]


def test_fallback_and_server_configured_plugin_as_v2(run_counter, monkeypatch, tmp_path):
    import dashboard.state

    config = tmp_path / "config.toml"
    config.write_text('[v2_plugins]\n"Example packed" = "tests.plugins.example_v2:make_packed"\n'
                      '"Broken import" = "tests.plugins.not_there:make"\n')
    monkeypatch.setattr(dashboard.state, "CONFIG_FILE", config)

    app = new_app()
    assert app.selectbox(key="v2").options == [
        "This project's packed path (v2.0)", "v1-compatible fallback", "Example packed", "Broken import",
    ]
    app.selectbox(key="v2").set_value("fallback").run()
    app = run_example(app)
    card = verdict_html(app)
    assert "forward_packed(v1_compatible=True)" in card and "ACCEPT" in card
    assert metrics(app)["Max confidence diff"] == "0.00e+00"

    app.selectbox(key="v2").set_value("Example packed").run()
    app.button(key="run").click().run()
    assert "v2.0 example packed 1.0" in verdict_html(app)

    app.selectbox(key="v2").set_value("Broken import").run()
    app.button(key="run").click().run()
    assert any("Cannot run" in e.value and "cannot import" in e.value for e in app.error)
    assert not app.exception
