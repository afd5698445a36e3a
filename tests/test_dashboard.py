"""The Streamlit page, driven headlessly with streamlit.testing.v1.AppTest (CPU, demo-tiny)."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core.embed.cache_store
import core.embed.run
import core.pipeline
import dashboard.results
import dashboard.runs
import dashboard.server
import dashboard.state
from core.numerics.loading import layer_indices
from dashboard.markup import plain, unescaped
from dashboard.runs import RunStore
from dashboard.views import CHECKPOINT, FAILED_CHECKS_NOTE

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
pytestmark = pytest.mark.usefixtures("short_examples", "light_numerics", "tiny_page_model")  # the page's behaviour, not the numbers
TIMEOUT = 180
GOOD_AND_BAD = (
    ">good_one\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n"
    ">bad_digits\nMKTA1YIAK\n"
    ">good_two\nGSGSGSLLKKLLEEPEVKVNGQ\n"
    ">bad_stop\nMKT*AYIAK\n"
)


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    """Every test saves its runs in its own temporary directory."""
    folder = tmp_path / "runs"
    monkeypatch.setenv(dashboard.server.RUNS_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def run_counter(monkeypatch):
    """Counts how often the page makes the model embed anything (fresh caches per test): one entry per
    run_both_paths call, its ``layers`` (None: every layer). The page calls it through core.pipeline."""
    st.cache_data.clear()
    calls = []
    original = core.embed.run.run_both_paths

    def counting(*args, **kwargs):
        layers = kwargs.get("layers")
        calls.append(None if layers is not None and list(layers) == layer_indices(args[0]) else layers)
        return original(*args, **kwargs)

    monkeypatch.setattr(core.pipeline, "run_both_paths", counting)
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
    assert "ACCEPT" in card and "18 sequences" in card and "demo-tiny" in card
    assert metrics(app)["Label agreement"] == "100.0%"
    assert app.metric[0].delta == "0 flips · 50% in the larger class"  # the balanced head: half on each side
    assert metrics(app)["Agreement, 100 heads"] == "100.0%"
    assert "<b>Predictions:</b> agree" in card and "<b>Numerics:</b> equivalent to rounding" in card
    assert "Seed rule (one uncentred head, seed 0)" in card
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
    assert "layer 3" in before and "seed 0" in before

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
    assert run_counter == [] and any("press Run" in i.value for i in app.info), "a link waits for Run"
    app.button(key="run").click().run()
    card = verdict_html(app)  # an example set in the URL refills the same inputs
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


def test_missing_checkpoint_is_a_message_not_a_traceback(run_counter, monkeypatch, tmp_path):
    server_config(monkeypatch, tmp_path, f'[paths]\ncheckpoint_dirs = ["{tmp_path}"]\n')
    missing = str(tmp_path / "model.pt")
    app = new_app(model=missing, example="patterns")
    app.button(key="run").click().run()
    assert not app.exception
    assert any("Cannot run" in e.value and missing in unescaped(e.value) for e in app.error)
    assert run_counter == []


def test_user_text_is_never_rendered_as_html(run_counter):
    app = new_app()
    app.text_area(key="sequences_text").input(">x<script>alert(1)</script>\nMKTAYIAKQR\n").run()
    app.button(key="run").click().run()
    assert not app.exception
    for markdown in app.markdown:
        assert "<script>" not in markdown.value
    assert list(table_with(app, "label_flip")["id"]) == ["x<script>alert(1)</script>"]  # shown as plain text



def test_numerics_reference_layers_heads_residues_and_checks_views(run_counter):
    app = run_example(new_app())  # the numerics gate is on by default: an fp64 reference on the CPU
    assert not app.exception
    assert run_counter == [None]
    assert any(s.value.startswith("Numerics: equivalent to rounding (fp64 reference") for s in app.success)
    numerics = table_with(app, "sign_p")
    assert list(numerics["layer"]) == [*range(4), 1] and not numerics["departs"].any()
    assert list(numerics["v2.0 packed"]) == ["own batches"] * 4 + ["deep in one pack"]
    assert any("FlashAttention's rule" in s.value and "fp64 reference" in s.value for s in app.success)
    reference = table_with(app, "path")
    assert list(reference["path"]) == ["v1.0", "v2.0"]
    assert (1 - reference["cosine_min"] < 1e-10).all()  # each path against float64: rounding only
    layers = table_with(app, "v2_mean_abs_error")
    assert list(layers["layer"]) == list(range(4)) and "v2_mean_abs_error" in layers.columns
    assert any("100 balanced heads: agreement judged on the lower 2.5%" in m.value for m in app.markdown)

    app.selectbox(key="residue_sequence").set_value("pattern_03")
    app.button(key="residue_go").click().run()
    worst = table_with(app, "residue")
    assert len(worst) == 10 and set(worst["position"]) <= set(range(1, 57))

    app.button(key="checks_go").click().run()
    badges = [s.value for s in app.success if "PASS" in s.value]
    assert any(b.startswith("packing invariance: PASS") for b in badges)
    assert any(b.startswith("determinism: PASS") for b in badges)
    assert run_counter == [None], "the views reuse the cached embeddings"


def test_uncentred_proxy_is_selectable_and_its_imbalance_is_warned(run_counter):
    app = new_app()
    app.selectbox(key="proxy").set_value("seed").run()
    app = run_example(app, "real")
    assert not app.exception
    heads = metrics(app)
    assert "Agreement, 100 heads" in heads
    card = verdict_html(app)
    assert "uncentred proxy" in card
    warnings = [w.value for w in app.warning]
    assert all("uninformative" in w for w in warnings if "class" in w)


def test_a_broken_plugin_is_flagged_on_the_page(run_counter, monkeypatch, tmp_path):
    server_config(monkeypatch, tmp_path, '[v2_plugins]\n"EOS in pool" = "tests.plugins.broken_paths:make_eos_in_pool"\n')
    app = new_app()
    app.selectbox(key="v2").set_value("EOS in pool").run()
    app = run_example(app)
    card = verdict_html(app)
    assert "ACCEPT" not in card.split("</div>")[0]
    assert "<b>Numerics:</b> different — departs from layer 0" in card
    assert any(e.value.startswith("Numerics: different") for e in app.error)


def test_a_failed_check_on_the_page_says_it_withholds_accept(run_counter, monkeypatch, tmp_path):
    """A path that mixes sequences fails packing invariance when the checks are asked for, and the tab says
    that ACCEPT is withheld (passing checks say nothing of the kind)."""
    server_config(monkeypatch, tmp_path,
                  '[v2_plugins]\n"Across" = "tests.plugins.broken_paths:make_cross_sequence_attention"\n')
    app = new_app()
    app.selectbox(key="v2").set_value("Across").run()
    app = run_example(app)
    app.button(key="checks_go").click().run()
    assert not app.exception
    assert any(e.value.startswith("packing invariance: FAIL") for e in app.error)
    assert FAILED_CHECKS_NOTE in [e.value for e in app.error]


def test_a_failed_check_takes_accept_off_the_card_itself(run_counter, monkeypatch, tmp_path):
    """The checks run before the card is drawn once asked for, so an ACCEPT run whose v2.0 then fails one (a
    path that drifts by a few float steps between calls) is VALIDATE on the card, in the recommendation and
    in summary.json (as the CLI's --checks verdict is)."""
    server_config(monkeypatch, tmp_path, '[v2_plugins]\n"Drifting" = "tests.plugins.example_v2:make_drifting"\n')
    offered = offered_summaries(monkeypatch)
    app = new_app()
    app.selectbox(key="v2").set_value("Drifting").run()
    app = run_example(app)
    assert "ACCEPT" in verdict_html(app).split("</div>")[0]
    app.button(key="checks_go").click().run()
    assert not app.exception
    card = unescaped(verdict_html(app))
    assert "VALIDATE" in card.split("</div>")[0] and "ACCEPT" not in card.split("</div>")[0]
    assert "v2.0 failed its own checks (determinism: max |diff|" in card
    assert "<b>Checks:</b> failed (determinism), so ACCEPT is withheld." in card
    assert any(s.value.startswith("packing invariance: PASS") for s in app.success)
    assert any(e.value.startswith("determinism: FAIL") for e in app.error)
    assert FAILED_CHECKS_NOTE in [e.value for e in app.error]
    assert offered[-1]["verdict"] == "VALIDATE"
    assert {check["name"]: check["passed"] for check in offered[-1]["checks_v2"]} == {"packing invariance": True,
                                                                                      "determinism": False}
    app.number_input(key="seed").set_value(3).run()  # another view of the same run keeps the checks
    assert "VALIDATE" in verdict_html(app).split("</div>")[0]
    assert run_counter == [None]


@pytest.mark.parametrize("view, button, what", [
    ("v2_checks", "checks_go", "The checks could not run, so the verdict below leaves them out."),
    ("residue_view", "residue_go", "The residue track could not be computed."),
])
def test_a_view_that_cannot_run_is_a_message_and_the_results_stay(run_counter, monkeypatch, view, button, what):
    """A v2.0 that fails while the checks or a residue track run it leaves the verdict card and the tabs in
    place, says why, and offers the view again instead of retrying it on every rerun."""
    import dashboard.results
    from core.embed.plugins import PluginError

    calls = []

    def failing(*args):
        calls.append(args)
        raise PluginError("plug-in 'x' failed while it ran: CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(dashboard.results, view, failing)
    app = run_example(new_app())
    app.button(key=button).click().run()
    assert not app.exception and len(calls) == 1
    expected = f"{what} Cannot run: plug-in 'x' failed while it ran: CUDA error"
    assert any(unescaped(e.value).startswith(expected) for e in app.error), [e.value for e in app.error]
    assert "ACCEPT" in verdict_html(app).split("</div>")[0]
    app.number_input(key="seed").set_value(2).run()
    assert not app.exception and len(calls) == 1 and app.button(key=button)


def test_a_plugin_returning_nan_is_a_fallback_card_naming_its_sequences(run_counter, monkeypatch, tmp_path):
    server_config(monkeypatch, tmp_path, '[v2_plugins]\n"NaN at W" = "tests.plugins.example_v2:make_nan_at_tryptophan"\n')
    app = new_app()
    app.selectbox(key="v2").set_value("NaN at W").run()
    app = run_example(app)
    assert not app.exception
    card = unescaped(verdict_html(app))
    assert "FALLBACK" in card.split("</div>")[0]
    assert "v2.0 returned NaN or infinity for" in card and "where v1.0 did not (pattern_" in card


def test_uploaded_head_replaces_the_proxy_and_a_wrong_width_is_refused(run_counter, tmp_path):
    import torch

    app = run_example(new_app())
    good, wrong = tmp_path / "good.pt", tmp_path / "wrong.pt"
    torch.save({"weight": torch.randn(3, 64, generator=torch.Generator().manual_seed(1)), "bias": torch.zeros(3)}, good)
    torch.save({"weight": torch.randn(2, 480), "bias": torch.zeros(2)}, wrong)

    app.file_uploader(key="head_file").upload("good.pt", good.read_bytes()).run()
    assert not app.exception
    assert "classifier: your head: linear 64→3 from good.pt" in verdict_html(app)
    labels = table_with(app, "label_flip")["label_v1"]
    assert labels.max() <= 2 and labels.nunique() >= 2, "three-class head labels, not the proxy's two"

    app.file_uploader(key="head_file").upload("wrong.pt", wrong.read_bytes()).run()
    assert any("expects 480 input features but gets 64" in e.value for e in app.error)
    assert run_counter == [None]


def test_fallback_and_server_configured_plugin_as_v2(run_counter, monkeypatch, tmp_path):
    import dashboard.state

    config = tmp_path / "config.toml"
    config.write_text('[v2_plugins]\n"Example packed" = "tests.plugins.example_v2:make_packed"\n'
                      '"Broken import" = "tests.plugins.not_there:make"\n'
                      '"Crashes" = "tests.plugins.example_v2:make_crashing"\n')
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", config)

    app = new_app()
    assert app.selectbox(key="v2").options == [
        "This project's packed path (v2.0)", "v1-compatible fallback", "Example packed", "Broken import", "Crashes",
    ]
    app.selectbox(key="v2").set_value("fallback").run()
    app = run_example(app)
    card = verdict_html(app)
    assert "V1CompatiblePacked.forward_packed" in card and "ACCEPT" in card
    assert metrics(app)["Max confidence diff"] == "0.00e+00"

    app.selectbox(key="v2").set_value("Example packed").run()
    app.button(key="run").click().run()
    assert "v2.0 example packed 1.0" in verdict_html(app)

    app.selectbox(key="v2").set_value("Broken import").run()
    app.button(key="run").click().run()
    assert any("Cannot run" in e.value and "cannot import" in e.value for e in app.error)
    assert not app.exception

    app.selectbox(key="v2").set_value("Crashes").run()
    app.button(key="run").click().run()
    shown = [unescaped(e.value) for e in app.error]
    assert any("Cannot run" in e and "failed in forward_packed" in e and "illegal memory access" in e for e in shown), shown
    assert any("(at tests/plugins/example_v2.py:" in e for e in shown), shown  # no server directory layout
    assert not any(str(Path.cwd().resolve()) in e for e in shown), shown
    assert not app.exception


# ---------------------------------------------------------------- runs, history, queue, allowlist


def current_run(app: AppTest) -> str:
    run_id = app.query_params["run"]
    return run_id[0] if isinstance(run_id, list) else run_id


def server_config(monkeypatch, tmp_path, text: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", config)


def test_a_run_is_saved_and_reopened_by_its_link_without_recomputing(run_counter, runs_dir):
    app = run_example(new_app(seed="4"))
    run_id = current_run(app)
    assert RunStore.is_valid_id(run_id)
    folder = runs_dir / run_id
    assert {"input.fasta", "input.json", "settings.json", "status.json", "embeddings.npz", "run.json",
            "summary.json", "sequences.csv"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "status.json").read_text())["state"] == "done"
    assert json.loads((folder / "summary.json").read_text())["seed"] == 4
    before = table_with(app, "label_flip")
    assert any(b.key == f"history_{run_id}" for b in app.button), "the history lists the run"

    st.cache_data.clear()  # a refresh in another server process would have nothing cached but the disk
    reopened = new_app(run=run_id, seed="4")
    assert not reopened.exception
    assert "18 sequences" in verdict_html(reopened) and "seed 4" in verdict_html(reopened)
    pd.testing.assert_frame_equal(table_with(reopened, "label_flip"), before)
    assert reopened.text_area(key="sequences_text").value.startswith(">pattern_01")
    assert any(b.key == f"history_{run_id}" for b in reopened.button)
    assert run_counter == [None], "reopening reads the saved embeddings"

    stranger = new_app()
    assert not any(b.key.startswith("history_") for b in stranger.button if b.key), \
        "another browser session does not list the run"


def test_unknown_and_malformed_run_links_say_so(run_counter):
    app = new_app(run=RunStore.new_id())
    assert any("No run with this id" in e.value for e in app.error)
    app = new_app(run="../../etc/passwd")
    assert any("No run with this id" in e.value for e in app.error)
    assert not any("passwd" in m.value for m in [*app.error, *app.markdown])
    assert not app.exception


def test_shared_history_lists_every_run(run_counter, monkeypatch, tmp_path):
    run_id = current_run(run_example(new_app()))
    server_config(monkeypatch, tmp_path, "[runs]\nshared_history = true\n")
    stranger = new_app()
    assert any(b.key == f"history_{run_id}" for b in stranger.button)
    stranger.button(key=f"history_{run_id}").click().run()
    assert "18 sequences" in verdict_html(stranger)
    assert run_counter == [None]


def test_a_failed_run_records_and_shows_its_error(run_counter, monkeypatch, tmp_path, runs_dir):
    server_config(monkeypatch, tmp_path, '[v2_plugins]\n"Broken import" = "tests.plugins.not_there:make"\n')
    app = new_app()
    app.selectbox(key="v2").set_value("Broken import").run()
    app = run_example(app)
    assert not app.exception
    status = json.loads((runs_dir / current_run(app) / "status.json").read_text())
    assert status["state"] == "failed" and "cannot import" in status["error"]
    assert any(plain(status["error"]) == e.value for e in app.error), "the recorded message, shown as plain text"
    reopened = new_app(run=current_run(app))
    assert any("cannot import" in e.value for e in reopened.error)


def test_a_full_disk_is_a_clear_message_and_the_results_stay(run_counter, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dashboard.runs.np, "savez", full)
    app = run_example(new_app())
    assert not app.exception
    assert any("disk is full" in e.value for e in app.error)
    assert "ACCEPT" in verdict_html(app) and len(table_with(app, "label_flip")) == 18
    app.number_input(key="seed").set_value(3).run()
    assert "seed 3" in verdict_html(app), "the in-memory run still redraws"
    assert len(run_counter) == 1


def test_a_waiting_page_shows_its_place_and_estimate(run_counter):
    queue = dashboard.state.job_queue()
    gate = threading.Event()
    blocker = f"blocker-{RunStore.new_id()}"
    queue.submit(blocker, 40, lambda progress: gate.wait(60))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(st, "rerun", lambda *args, **kwargs: None)  # look at one poll of the page
            app = run_example(new_app())
        waiting = [i.value for i in app.info if "Waiting for the GPU" in i.value]
        assert len(waiting) == 1 and "place 1 in the queue, 1 job(s) ahead" in waiting[0]
        assert "s per sequence" in waiting[0] and "Starts in about" in waiting[0]
        assert not [m for m in app.markdown if "border-left: 14px" in m.value]
    finally:
        gate.set()
    queue.wait(blocker, 10)
    queue.wait(current_run(app), 120)
    app.run()
    assert "ACCEPT" in verdict_html(app)
    assert run_counter == [None]


def test_checkpoint_paths_outside_the_allowlist_are_refused_untouched(run_counter, monkeypatch, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_config(monkeypatch, tmp_path, f'[paths]\ncheckpoint_dirs = ["{allowed}"]\n')
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"not read")
    (allowed / "escape.pt").symlink_to(outside)
    touched = []
    monkeypatch.setattr(dashboard.state, "weights_token", lambda spec: touched.append(spec) or "")

    for typed in (str(outside), str(allowed / "escape.pt"), str(allowed / ".." / "outside.pt")):
        app = new_app(model=typed, example="patterns")
        assert not app.exception
        ignored = [unescaped(w.value) for w in app.warning if typed in unescaped(w.value)]
        assert len(ignored) == 1 and str(allowed) in ignored[0], "a link's path is ignored, naming the allowed directories"
        app.selectbox(key="model_choice").set_value(CHECKPOINT).run()
        app.text_input(key="checkpoint_path").input(typed).run()
        assert any("not inside an allowed" in e.value for e in app.sidebar.error), "said as soon as it is typed"
        app.button(key="run").click().run()
        refusals = [unescaped(e.value) for e in app.error if e.value.startswith("Cannot run")]
        assert len(refusals) == 1 and "not inside an allowed checkpoint directory" in refusals[0]
        assert str(allowed) in refusals[0], "the message names the allowed directories"
    assert run_counter == [] and touched == []


def test_a_checkpoint_inside_the_allowlist_runs(run_counter, monkeypatch, tmp_path, tiny_fp32):
    from core.numerics.loading import save_checkpoint

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_config(monkeypatch, tmp_path, f'[paths]\ncheckpoint_dirs = ["{allowed}"]\n')
    save_checkpoint(tiny_fp32[0], allowed / "mine.pt")
    app = new_app(model=str(allowed / "mine.pt"), example="patterns", dtype="fp32", device="cpu", seeds="0")
    app.button(key="run").click().run()
    assert not app.exception
    assert "checkpoint weights" in verdict_html(app) and "18 sequences" in verdict_html(app)
    assert run_counter == [None]


def test_a_cuda_link_on_a_host_without_cuda_runs_on_the_cpu_with_a_notice(run_counter):
    app = new_app(device="cuda")
    assert not app.exception
    notices = [w.value for w in app.warning if "CUDA was asked for but is not available" in w.value]
    assert notices and "Running on the CPU instead" in notices[0]
    assert app.session_state["settings"].device == "cpu"


# ---------------------------------------------------------------- embedding cache


def cache_captions(app: AppTest) -> list[str]:
    return [c.value for c in app.caption if c.value.startswith("Embedding cache:")]


def offered_summaries(monkeypatch) -> list[dict]:
    """The summary documents the page offers for download (html_report gets the same summary as summary.json)."""
    seen: list[dict] = []
    original = dashboard.results.html_report

    def recording(summary, *args, **kwargs):
        seen.append(json.loads(json.dumps(summary.to_json())))
        return original(summary, *args, **kwargs)

    monkeypatch.setattr(dashboard.results, "html_report", recording)
    return seen


def test_a_second_run_comes_from_the_embedding_cache_and_says_so(run_counter, monkeypatch, tmp_path, runs_dir):
    cache = tmp_path / "cache"
    monkeypatch.setenv(core.embed.cache_store.CACHE_ENV, str(cache))
    offered = offered_summaries(monkeypatch)

    first = run_example(new_app())
    assert not first.exception
    assert cache_captions(first) == ["Embedding cache: 0 of 18 sequences from the cache, 18 computed"]
    assert run_counter == [None]

    st.cache_data.clear()
    offered.clear()
    second = run_example(new_app())
    assert not second.exception
    assert cache_captions(second) == ["Embedding cache: 18 of 18 sequences from the cache, 0 computed"]
    assert run_counter == [None], "the second run embeds nothing"
    pd.testing.assert_frame_equal(table_with(second, "label_flip"), table_with(first, "label_flip"))
    expected = {"dir": str(cache), "hits": 18, "computed": 0}
    assert offered and offered[-1]["cache"] == expected, "the summary.json download carries the cache"
    run_id = current_run(second)
    assert json.loads((runs_dir / run_id / "summary.json").read_text())["cache"] == expected
    assert not any("Embedding cache" in w.value for w in second.warning)
    second.button(key="checks_go").click().run()  # against a fresh v2.0 run: the cached rows had other batch-mates
    badges = [s.value for s in second.success if "PASS" in s.value]
    assert any(b.startswith("packing invariance: PASS") for b in badges)
    assert any(b.startswith("determinism: PASS") for b in badges)
    assert FAILED_CHECKS_NOTE not in [e.value for e in second.error]

    st.cache_data.clear()
    reopened = new_app(run=run_id)
    assert cache_captions(reopened) == ["Embedding cache: 18 of 18 sequences from the cache, 0 computed"]
    assert run_counter == [None]


def test_an_unusable_cache_is_a_warning_and_the_run_computes_everything(run_counter, monkeypatch, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv(core.embed.cache_store.CACHE_ENV, str(not_a_dir))
    app = run_example(new_app())
    assert not app.exception and "ACCEPT" in verdict_html(app)
    assert cache_captions(app) == ["Embedding cache: 0 of 18 sequences from the cache, 18 computed"]
    assert any(w.value.startswith("Embedding cache: cannot use the embedding cache") for w in app.warning)
    assert run_counter == [None]


def test_with_the_cache_off_nothing_about_it_is_shown(run_counter, monkeypatch, runs_dir):
    monkeypatch.delenv(core.embed.cache_store.CACHE_ENV, raising=False)
    offered = offered_summaries(monkeypatch)
    app = run_example(new_app())
    assert not app.exception
    assert not [element for element in [*app.caption, *app.warning, *app.markdown] if "embedding cache" in element.value.lower()]
    assert offered and offered[-1]["cache"] is None
    folder = runs_dir / current_run(app)
    assert json.loads((folder / "summary.json").read_text())["cache"] is None
    assert json.loads((folder / "run.json").read_text())["cache"] is None


def test_the_cache_directory_comes_from_the_environment_else_the_server_config(monkeypatch, tmp_path):
    monkeypatch.delenv(core.embed.cache_store.CACHE_ENV, raising=False)
    server_config(monkeypatch, tmp_path, '[cache]\ndir = ""\n')
    assert dashboard.server.cache_dir() is None
    server_config(monkeypatch, tmp_path, '[cache]\ndir = "relative/cache"\n')
    assert dashboard.server.cache_dir() == Path(__file__).resolve().parents[1] / "relative" / "cache"
    monkeypatch.setenv(core.embed.cache_store.CACHE_ENV, str(tmp_path / "from_env"))
    assert dashboard.server.cache_dir() == tmp_path / "from_env"
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", tmp_path / "absent.toml")
    monkeypatch.delenv(core.embed.cache_store.CACHE_ENV)
    assert dashboard.server.cache_dir() is None


def test_pasted_text_survives_presentation_mode(run_counter):
    app = new_app()
    app.text_area(key="sequences_text").set_value(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nGSWQGSWQGSWQ\n").run()
    app.button(key="run").click().run()
    app.toggle(key="present").set_value(True).run()
    app.button(key="exit_present").click().run()
    assert not app.exception
    assert app.text_area(key="sequences_text").value.startswith(">a\nMKTAYIAKQRQISFVKSHFSRQ")


def test_a_shared_model_a_plugin_changed_is_loaded_again():
    """A refused plug-in's change stays in the server's one loaded model; the next run gets it fresh, and
    the pipeline refuses a changed model handed to it."""
    from core.pipeline import ComparisonRequest, prepare
    from dashboard.settings import Settings

    settings = Settings(model="demo-tiny", dtype="fp32", device="cpu")
    dashboard.state.get_model.clear()
    first = dashboard.state.loaded_for(settings)
    assert dashboard.state.loaded_for(settings) is first  # shared while unchanged
    first.model.esm2.token_dropout = False
    request = ComparisonRequest(model="demo-tiny", dtype="fp32", device="cpu")
    with pytest.raises(ValueError, match=r"the loaded model has changed since it was loaded \(esm2.token_dropout"):
        prepare(request, first)
    again = dashboard.state.loaded_for(settings)
    assert again is not first and again.model.esm2.token_dropout and again.changed() == []
    dashboard.state.get_model.clear()
