"""What a browser may not do (issue 14): choose a model the server does not offer, start GPU work from a
link, slip an invalid value through a link, have its text rendered as Markdown, queue copies of a run
or more sequences than the page allows, or keep a job its owner cancelled.

Pure functions first (dashboard.query, dashboard.markup, dashboard.server, dashboard.jobs,
dashboard.state without a page), then the page driven with AppTest (CPU, demo-8M).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core.embed.run
import core.pipeline
import dashboard.server
import dashboard.state
from core.analysis.proxies import MAX_SEED
from core.embed.passes import embed_v1
from core.input.fasta import parse_sequences
from core.numerics.environment import default_device
from dashboard.jobs import Cancelled, CancelOutcome, JobQueue
from dashboard.markup import plain, unescaped
from dashboard.query import MAX_HEADS, LinkPolicy, check_query
from dashboard.runs import RunStore
from dashboard.server import ModelNotAllowed
from dashboard.settings import Settings
from dashboard.state import Submission
from dashboard.views import CHECKPOINT
from tests.test_dashboard import new_app

pytestmark = pytest.mark.usefixtures("short_examples", "tiny_page_model")  # the page's limits, not the example set's numbers

POLICY = LinkPolicy(("demo-8M", "demo-35M"), (Path("/srv/checkpoints"),), ("packed", "fallback"))
DEFAULTS = Settings(model="demo-8M", dtype="fp32", device="cpu")
SETTINGS = Settings(model="demo-tiny", dtype="fp32", device="cpu", seeds=0)  # what the queue runs
FASTA = ">alpha\nMKTAYIAKQRQISFVKSHFSRQ\n>beta\nGSGSGSLLKKLLEEPEVKVNGQ\n"
EVIL_MODEL = "![x](http://evil/x.png)"
EVIL_ID = "**bold** <img src=x>"


def checked(**query: str):
    return check_query(query, POLICY, DEFAULTS)


# ---------------------------------------------------------------- link values (dashboard.query)


@pytest.mark.parametrize("name, value", [
    ("min_cosine", "2"), ("min_cosine", "inf"), ("min_cosine", "nan"), ("min_cosine", "-0.1"),
    ("min_cosine", "1e999"), ("min_cosine", "0.1234567"), ("min_cosine", "0x1p-1"), ("min_cosine", ""),
    ("min_agreement", "1.5"), ("min_agreement", "NaN"), ("accept_agreement", "-1"), ("accept_agreement", "Infinity"),
    ("seed", "12345678901234567890123"), ("seed", str(MAX_SEED + 1)), ("seed", "-1"), ("seed", "1.5"),
    ("seed", "1_000"), ("seed", "\u0663"), ("seed", "1" * 5000), ("seeds", str(MAX_HEADS + 1)), ("seeds", "-5"),
    ("reference_sample", "-1"), ("reference_sample", "lots"), ("layer", "7"), ("layer", "-1"), ("dtype", "fp8"),
    ("device", "cuda:1"), ("backend", "turbo"), ("v2", "mine"), ("reference", "fp128"), ("proxy", "other"),
    ("present", "yes"), ("model", "demo-15B"), ("model", "esm2_t48_15B_UR50D"), ("model", "demo-7B"),
    ("model", "/etc/passwd"), ("model", "/srv/checkpoints/../../etc/passwd"), ("model", EVIL_MODEL),
])
def test_an_invalid_link_value_is_ignored_and_named(name, value):
    link = checked(**{name: value})
    assert getattr(link.settings, name) == getattr(DEFAULTS, name), "the default is kept"
    (problem,) = link.problems
    assert (problem.parameter, problem.value) == (name, value)
    shown = value if len(value) <= 300 else value[:300] + "…"
    assert f"{name}={shown!r} ignored" in problem.message()


@pytest.mark.parametrize("name, value, expected", [
    ("seed", str(MAX_SEED), MAX_SEED), ("seed", "0", 0), ("seeds", str(MAX_HEADS), MAX_HEADS), ("seeds", "0", 0),
    ("min_cosine", "0.999999", 0.999999), ("min_cosine", "1e-3", 0.001), ("min_cosine", "1", 1.0),
    ("min_agreement", "0", 0.0), ("accept_agreement", "0.9999", 0.9999), ("reference_sample", "all", "all"),
    ("reference_sample", "ALL", "all"), ("reference_sample", "007", "7"), ("layer", "6", 6),
    ("model", "DEMO-35m", "demo-35M"), ("model", "/srv/checkpoints/mine.pt", "/srv/checkpoints/mine.pt"),
    ("present", "1", True), ("present", "true", True), ("v2", "fallback", "fallback"), ("dtype", "bf16", "bf16"),
])
def test_a_valid_link_value_is_used_exactly(name, value, expected):
    link = checked(**{name: value})
    assert not link.problems
    assert getattr(link.settings, name) == expected


def test_a_model_outside_the_servers_list_is_refused_naming_the_list():
    (problem,) = checked(model="demo-15B").problems
    assert "allowed: demo-8M, demo-35M" in problem.reason
    (problem,) = checked(model="/etc/passwd").problems
    assert "allowed directory (/srv/checkpoints)" in problem.reason


def test_the_first_offered_model_replaces_a_default_the_server_does_not_offer():
    link = check_query({}, dataclasses.replace(POLICY, models=("demo-35M",)), DEFAULTS)
    assert link.settings.model == "demo-35M" and not link.problems


def test_agreement_bounds_out_of_order_both_fall_back():
    link = checked(min_agreement="0.99", accept_agreement="0.5")
    assert (link.settings.min_agreement, link.settings.accept_agreement) == (0.95, 0.99)
    (problem,) = link.problems
    assert problem.parameter == "min_agreement" and "must not exceed accept_agreement" in problem.reason
    link.settings.thresholds  # a valid rule, no ValueError


def test_example_run_and_foreign_parameters():
    assert checked(example="real").example == "real"
    link = checked(example="evil")
    assert link.example is None and "no example set was loaded" in link.problems[0].message()
    assert checked(run="abc").run == "abc"  # checked where it is opened (RunStore.is_valid_id)
    assert checked(utm_source="newsletter").problems == ()


def test_settings_round_trip_through_a_link_unchanged():
    settings = dataclasses.replace(DEFAULTS, seed=MAX_SEED, min_cosine=0.999999, min_agreement=0.5, layer=3,
                                   reference_sample="all", seeds=MAX_HEADS, present=True, model="demo-35M")
    query = {name: value for name, value in settings.to_query().items()}
    link = checked(**query)
    assert not link.problems and link.settings == settings


# ---------------------------------------------------------------- Markdown (dashboard.markup)


MARKDOWN = [EVIL_MODEL, EVIL_ID, "[link](javascript:alert(1))", "$x^2$", "# title", ":red[alert] :smile:",
            "a\\b\\", "`code`", "<script>alert(1)</script>", "1. list", "---", "~~gone~~", "|a|b|", "&lt;"]


@pytest.mark.parametrize("text", MARKDOWN)
def test_plain_escapes_every_markdown_character(text):
    escaped = plain(text)
    assert unescaped(escaped) == text
    characters = iter(escaped)
    for character in characters:
        if character == "\\":
            assert next(characters) in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
        else:
            assert not (character.isascii() and not character.isalnum() and not character.isspace()), (text, escaped)


# ---------------------------------------------------------------- server settings (dashboard.server)


def server_config(monkeypatch, tmp_path, text: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", config)


def test_without_config_links_offer_the_default_model_and_small_demos(monkeypatch, tmp_path):
    monkeypatch.setattr(dashboard.server, "CONFIG_FILE", tmp_path / "absent.toml")
    expected = list(dict.fromkeys([dashboard.server.default_model_spec(default_device()), "demo-8M", "demo-35M"]))
    assert dashboard.server.allowed_models() == expected
    assert dashboard.server.links_autorun() is False
    assert dashboard.server.max_sequences() == 10_000


def test_the_shipped_config_keeps_the_safe_defaults():
    assert dashboard.server.links_autorun() is False
    assert dashboard.server.max_sequences() == 10_000
    assert "demo-15B" not in dashboard.server.allowed_models()


def test_a_config_file_named_in_the_environment_replaces_the_shipped_one(monkeypatch, tmp_path):
    elsewhere = tmp_path / "deployment.toml"
    elsewhere.write_text('[models]\nallowed = ["demo-tiny"]\n[limits]\nmax_sequences = 5\n')
    monkeypatch.setenv(dashboard.server.CONFIG_ENV, str(elsewhere))
    assert dashboard.server.config_file() == elsewhere
    assert dashboard.server.allowed_models() == ["demo-tiny"] and dashboard.server.max_sequences() == 5
    assert dashboard.server.v2_plugins() == {}, "nothing of dashboard/config.toml is mixed in"
    monkeypatch.setenv(dashboard.server.CONFIG_ENV, "")
    assert dashboard.server.config_file() == dashboard.server.CONFIG_FILE and dashboard.server.v2_plugins()


def test_allowed_models_come_from_the_config_and_unknown_entries_are_dropped(monkeypatch, tmp_path):
    server_config(monkeypatch, tmp_path,
                  '[models]\nallowed = ["DEMO-150m", "esm2_t6_8M_UR50D", "gpt-4", "/etc/passwd", 3]\n'
                  '[links]\nautorun = true\n[limits]\nmax_sequences = 0\n')
    assert dashboard.server.allowed_models() == ["demo-150M", "esm2_t6_8M_UR50D"]
    assert dashboard.server.links_autorun() is True
    assert dashboard.server.max_sequences() is None
    assert dashboard.server.checked_model_spec("demo-150m") == "demo-150M"
    with pytest.raises(ModelNotAllowed, match=r"allowed: demo-150M, esm2_t6_8M_UR50D"):
        dashboard.server.checked_model_spec("demo-15B")


def test_a_reopened_runs_model_that_left_the_list_is_not_loaded(monkeypatch, tmp_path):
    """The residue and checks views load the run's model again: only while the server still offers it."""
    server_config(monkeypatch, tmp_path, '[models]\nallowed = ["demo-tiny"]\n')
    loads = []
    unchanged = SimpleNamespace(changed=lambda: [])  # a loaded model nothing has changed since
    monkeypatch.setattr(dashboard.state, "get_model", lambda *args: loads.append(args) or unchanged)
    gone = dataclasses.replace(SETTINGS, model="demo-35M")
    assert "demo-35M" in dashboard.state.model_refusal(gone) and dashboard.state.model_refusal(SETTINGS) is None
    with pytest.raises(ModelNotAllowed):
        dashboard.state.loaded_for(gone)
    assert loads == []
    dashboard.state.loaded_for(SETTINGS)
    assert len(loads) == 1


def test_the_sequence_limit_message_names_the_count_and_the_limit():
    message = dashboard.server.sequence_limit_message(50_000, 10_000)
    assert "50,000 sequences" in message and "10,000 per run" in message and "nothing was queued" in message
    assert dashboard.server.sequence_limit_message(10_000, 10_000) is None
    assert dashboard.server.sequence_limit_message(10**6, None) is None


# ---------------------------------------------------------------- the queue (dashboard.jobs)


@pytest.fixture
def blocked_queue():
    """A fresh queue whose worker is busy until the test sets the gate (set again on the way out)."""
    queue, gate = JobQueue(), threading.Event()
    queue.submit("blocker", 1, lambda progress: gate.wait(60))
    yield queue, gate
    gate.set()


def test_identical_jobs_are_one_job(blocked_queue):
    queue, gate = blocked_queue
    ran = []
    first = queue.submit("a", 3, lambda progress: ran.append("a"), key="same", owner="me")
    assert queue.submit("b", 3, lambda progress: ran.append("b"), key="same", owner="you") is first
    assert queue.get("b") is None
    queue.submit("c", 3, lambda progress: ran.append("c"), key="other")
    gate.set()
    queue.wait("a", 10), queue.wait("c", 10)
    assert ran == ["a", "c"]
    assert queue.submit("d", 3, lambda progress: ran.append("d"), key="same").id == "d", "a finished job is not reused"


def test_the_owner_cancels_a_queued_job_and_it_never_runs(blocked_queue):
    queue, gate = blocked_queue
    ran = []
    job = queue.submit("a", 3, lambda progress: ran.append("a"), key="same", owner="me")
    assert queue.cancel("a", "someone else") is CancelOutcome.NOT_OWNER and job.state == "queued"
    assert queue.cancel("a", "me") is CancelOutcome.REMOVED
    assert job.state == "cancelled" and job.finished.is_set() and isinstance(job.error, Cancelled)
    assert queue.estimate("a") is None
    assert queue.submit("b", 3, lambda progress: ran.append("b"), key="same").id == "b", "not attached to a cancelled job"
    gate.set()
    queue.wait("b", 10)
    assert ran == ["b"]
    assert queue.cancel("a", "me") is CancelOutcome.NOT_ACTIVE


def test_a_running_job_stops_at_its_next_batch(tiny_fp32):
    model, alphabet = tiny_fp32
    sequences = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLI"] * 12  # 32 tokens each: one per batch below
    queue, reported = JobQueue(), []
    first_batch, go_on = threading.Event(), threading.Event()

    def work(progress):
        def watching(stage, done, total):
            reported.append(done)
            if len(reported) == 1:
                first_batch.set()
                go_on.wait(60)
            progress(stage, done, total)

        return embed_v1(model, alphabet, sequences, [0], max_tokens=40, progress=watching)

    job = queue.submit("run", len(sequences), work, owner="me")
    assert first_batch.wait(60)
    assert queue.cancel("run", "me") is CancelOutcome.STOPPING
    assert queue.submit("copy", 12, lambda progress: None, key=None).id == "copy"
    go_on.set()
    queue.wait("run", 60)
    assert job.state == "cancelled" and isinstance(job.error, Cancelled)
    assert reported == [1], "no batch ran after the cancel"


# ---------------------------------------------------------------- runs (dashboard.state, no page)


@pytest.fixture
def state_queue(monkeypatch, tmp_path):
    """dashboard.state with a fresh queue, runs in a temporary directory: (queue, runs directory)."""
    queue = JobQueue()
    monkeypatch.setattr(dashboard.state, "job_queue", lambda: queue)
    monkeypatch.setenv(dashboard.server.RUNS_DIR_ENV, str(tmp_path / "runs"))
    return queue, tmp_path / "runs"


def test_an_identical_submission_attaches_to_the_queued_run(state_queue):
    queue, runs = state_queue
    gate = threading.Event()
    queue.submit("blocker", 1, lambda progress: gate.wait(60))
    try:
        parsed = parse_sequences(FASTA)
        first = dashboard.state.submit_run(SETTINGS, parsed, "me")
        assert dashboard.state.submit_run(SETTINGS, parse_sequences(FASTA), "you") == Submission(first.run_id, True)
        presented = dashboard.state.submit_run(dataclasses.replace(SETTINGS, present=True), parsed, "you")
        assert presented == Submission(first.run_id, True), "presentation mode changes only the view"
        other_seed = dashboard.state.submit_run(dataclasses.replace(SETTINGS, seed=3), parsed, "me")
        other_input = dashboard.state.submit_run(SETTINGS, parse_sequences(FASTA + ">gamma\nMQIFVK\n"), "me")
        assert not other_seed.attached and not other_input.attached
        assert sorted(p.name for p in runs.iterdir()) == sorted({first.run_id, other_seed.run_id, other_input.run_id})
        assert dashboard.state.cancel_run(first.run_id, "you") is CancelOutcome.NOT_OWNER, "attaching is not owning"
        for submission in (first, other_seed, other_input):
            assert dashboard.state.cancel_run(submission.run_id, "me") is CancelOutcome.REMOVED
            assert RunStore(runs).status(submission.run_id)["state"] == "cancelled"
            assert dashboard.state.run_status(submission.run_id).state == "cancelled"
    finally:
        gate.set()


def test_a_running_run_cancelled_is_marked_cancelled_on_disk(state_queue, monkeypatch):
    queue, runs = state_queue
    started, go_on = threading.Event(), threading.Event()

    def comparison(request, ids, sequences, progress, loaded=None):
        started.set()
        go_on.wait(60)
        progress("v1.0", 1, len(ids))
        raise AssertionError("the cancel did not land at the progress report")

    monkeypatch.setattr(dashboard.state, "run_comparison", comparison)
    monkeypatch.setattr(dashboard.state, "loaded_for", lambda settings: None)
    run_id = dashboard.state.submit_run(SETTINGS, parse_sequences(FASTA), "me").run_id
    assert started.wait(30)
    assert dashboard.state.cancel_run(run_id, "you") is CancelOutcome.NOT_OWNER
    assert dashboard.state.cancel_run(run_id, "me") is CancelOutcome.STOPPING
    assert dashboard.state.run_status(run_id).cancelling
    go_on.set()
    queue.wait(run_id, 30)
    status = RunStore(runs).status(run_id)
    assert status["state"] == "cancelled" and "Cancelled" in status["error"]
    assert dashboard.state.run_status(run_id).state == "cancelled"


def test_a_failure_after_the_comparison_still_records_a_status(state_queue, monkeypatch):
    queue, runs = state_queue

    def analysis_fails(*args, **kwargs):
        raise ValueError("threshold min_cosine=nan must lie in [0, 1]")

    monkeypatch.setattr(dashboard.state, "analyse_as_submitted", analysis_fails)
    run_id = dashboard.state.submit_run(SETTINGS, parse_sequences(FASTA), "me").run_id
    queue.wait(run_id, 120)
    status = RunStore(runs).status(run_id)
    assert status["state"] == "failed" and "min_cosine=nan" in status["error"]


# ---------------------------------------------------------------- the page (AppTest)


@pytest.fixture
def page(monkeypatch, tmp_path):
    """Runs in a temporary directory; counts the page's embedding passes (fresh caches)."""
    monkeypatch.setenv(dashboard.server.RUNS_DIR_ENV, str(tmp_path / "runs"))
    st.cache_data.clear()
    calls = []
    original = core.embed.run.run_both_paths

    def counting(*args, **kwargs):
        calls.append(len(args[3]))
        return original(*args, **kwargs)

    monkeypatch.setattr(core.pipeline, "run_both_paths", counting)
    return calls




def current_run(app: AppTest) -> str | None:
    run_id = app.query_params.get("run")
    return run_id[0] if isinstance(run_id, list) else run_id


def markdown_sources(app: AppTest) -> list[str]:
    """The source of every element that renders Markdown (sidebar included), and every button label."""
    elements = [*app.markdown, *app.caption, *app.error, *app.warning, *app.success, *app.info, *app.title,
                *app.subheader, *app.header]
    return [str(element.value) for element in elements] + [str(button.label) for button in app.button]


def test_a_link_cannot_choose_an_unoffered_model_or_start_a_run(page):
    app = new_app(model="demo-15B", example="patterns")
    assert not app.exception
    ignored = [unescaped(w.value) for w in app.warning if "demo-15B" in unescaped(w.value)]
    assert len(ignored) == 1 and "model='demo-15B' ignored" in ignored[0] and "demo-8M, demo-35M" in ignored[0]
    assert any("This link filled the input; press Run" in i.value for i in app.info)
    assert app.text_area(key="sequences_text").value.startswith(">pattern_01")
    assert app.selectbox(key="model_choice").value == "demo-tiny"  # the default (tiny_page_model)
    assert len(app.selectbox(key="model_choice").options) == 4, "the default, demo-8M, demo-35M and a checkpoint file"
    assert current_run(app) is None and page == [], "nothing ran"
    app.button(key="run").click().run()
    assert current_run(app) and page == [18]
    assert not any("press Run" in i.value for i in app.info), "the note goes once Run is pressed"


def test_a_server_that_allows_it_runs_a_link_on_open(page, monkeypatch, tmp_path):
    server_config(monkeypatch, tmp_path, "[links]\nautorun = true\n")
    app = new_app(example="patterns", seeds="0")
    assert not app.exception and page == [18]
    assert any("border-left: 14px" in m.value for m in app.markdown)


def test_invalid_link_values_are_named_and_the_boxes_show_what_runs(page):
    app = new_app(min_cosine="2", seed="12345678901234567890123", min_agreement="nan")
    warnings = [unescaped(w.value) for w in app.warning]
    for name, value in (("min_cosine", "2"), ("seed", "12345678901234567890123"), ("min_agreement", "nan")):
        assert any(f"{name}={value!r} ignored" in w for w in warnings), name
    assert app.number_input(key="seed").value == 0 and app.number_input(key="min_cosine").value == 0.99
    assert app.session_state["settings"].seed == 0

    app = new_app(seed=str(MAX_SEED), min_cosine="0.999999", seeds="0")
    assert not app.warning
    assert app.number_input(key="seed").value == MAX_SEED and app.number_input(key="min_cosine").value == 0.999999
    app.button(key="example_patterns").click().run()
    app.button(key="run").click().run()
    assert not app.exception
    card = next(m.value for m in app.markdown if "border-left: 14px" in m.value)
    assert f"seed {MAX_SEED}" in card
    summary = json.loads((RunStore(dashboard.server.runs_dir()).run_dir(current_run(app)) / "summary.json").read_text())
    assert summary["seed"] == MAX_SEED and summary["thresholds"]["min_cosine"] == 0.999999


def assert_literal(app: AppTest) -> None:
    """No Markdown element of the page carries an image, emphasis or HTML tag from user text."""
    for source in markdown_sources(app):
        active = re.sub(r"\\.", "", source)  # what Markdown would interpret: escaped characters are literal
        assert "![" not in active and "**bold**" not in active and "<img" not in active, source


def test_markdown_in_user_text_is_shown_literally(page):
    app = new_app(model=EVIL_MODEL)
    assert any(plain(f"model={EVIL_MODEL!r} ignored") in w.value for w in app.warning), "the value, escaped"
    assert any(f"model={EVIL_MODEL!r} ignored" in unescaped(w.value) for w in app.warning)
    assert_literal(app)
    app.text_area(key="sequences_text").input(f">{EVIL_ID}\nMKTAYIAKQR\n>{EVIL_MODEL}\nMKT1AYIAK\n").run()
    app.selectbox(key="model_choice").set_value(CHECKPOINT).run()
    app.text_input(key="checkpoint_path").input(EVIL_ID).run()
    assert any(EVIL_ID in unescaped(e.value) for e in app.sidebar.error)
    assert_literal(app)
    app.button(key="run").click().run()
    assert any(e.value.startswith("Cannot run") and EVIL_ID in unescaped(e.value) for e in app.error)
    assert_literal(app)
    app.selectbox(key="model_choice").set_value("demo-tiny").run()
    app.button(key="run").click().run()
    assert not app.exception and page == [1]
    assert_literal(app)


def test_an_input_over_the_page_limit_is_refused_before_queueing(page, monkeypatch, tmp_path):
    server_config(monkeypatch, tmp_path, "[limits]\nmax_sequences = 5\n")
    app = new_app()
    app.text_area(key="sequences_text").input("".join(f">s{k}\nMKTAYIAKQR\n" for k in range(6))).run()
    app.button(key="run").click().run()
    refusals = [e.value for e in app.error if "nothing was queued" in e.value]
    assert len(refusals) == 1 and "6 sequences" in refusals[0] and "5 per run" in refusals[0]
    assert current_run(app) is None and page == []
    assert not dashboard.server.runs_dir().exists() or not any(dashboard.server.runs_dir().iterdir())


@pytest.fixture
def busy_gpu(monkeypatch):
    """The page's queue busy until the test releases it; the waiting page looked at one poll at a time."""
    queue, gate = dashboard.state.job_queue(), threading.Event()
    blocker = f"blocker-{RunStore.new_id()}"
    queue.submit(blocker, 40, lambda progress: gate.wait(120))
    monkeypatch.setattr(st, "rerun", lambda *args, **kwargs: None)
    yield gate
    gate.set()
    queue.wait(blocker, 10)


def test_the_owner_cancels_a_queued_run_from_the_waiting_page(page, busy_gpu):
    app = new_app()
    app.button(key="example_patterns").click().run()
    app.button(key="run").click().run()
    run_id = current_run(app)
    assert any(b.key == "cancel_run" for b in app.button)
    stranger = new_app(run=run_id)
    assert not any(b.key == "cancel_run" for b in stranger.button), "only the session that started it"
    app.button(key="cancel_run").click().run()
    assert not app.exception
    assert any("cancelled" in unescaped(w.value).lower() for w in app.warning)
    assert RunStore(dashboard.server.runs_dir()).status(run_id)["state"] == "cancelled"
    busy_gpu.set()
    assert page == [], "a cancelled run never reaches the GPU"


def test_run_pressed_again_while_queued_shows_the_same_run(page, busy_gpu):
    app = new_app(seeds="0")
    app.button(key="example_patterns").click().run()
    app.button(key="run").click().run()
    run_id = current_run(app)
    app.button(key="run").click().run()
    assert current_run(app) == run_id
    assert any("An identical run is already queued or running; showing it." == i.value for i in app.info)
    other = new_app(seeds="0")
    other.button(key="example_patterns").click().run()
    other.button(key="run").click().run()
    assert current_run(other) == run_id, "identical input and settings from another session: the same run"
    assert [p.name for p in dashboard.server.runs_dir().iterdir()] == [run_id]
    busy_gpu.set()
    dashboard.state.job_queue().wait(run_id, 120)
    assert page == [18], "one pass for three presses"
