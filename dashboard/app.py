"""ESM-2 attention divergence dashboard.  Run: streamlit run dashboard/app.py

Layout and widgets only: every number comes from ``core``, every text and label from
``dashboard.views``, every run from ``dashboard.state`` (the same pipeline as the CLI).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` puts dashboard/ first

import streamlit as st  # noqa: E402

from core.input.fasta import parse_sequences, read_sequences  # noqa: E402
from core.input.records import INPUT_LIMIT_TEXT, ParsedInput  # noqa: E402
from dashboard import views  # noqa: E402
from dashboard.markup import plain  # noqa: E402
from dashboard.results import results  # noqa: E402
from dashboard.server import NOT_ALLOWED, checked_model_spec, max_sequences, sequence_limit_message  # noqa: E402
from dashboard.session import (forget_link_notes, init_session, load_example, remember_run,  # noqa: E402
                               show_link_notes)
from dashboard.settings import Settings  # noqa: E402
from dashboard.sidebar import sidebar  # noqa: E402
from dashboard.state import RunStatus, cancel_run, run_contents, run_status, submit_run, wait_for_run  # noqa: E402
from dashboard.views import EXAMPLES  # noqa: E402

UPLOAD_TYPES = ["fasta", "fa", "faa", "fastq", "fq", "csv", "tsv", "xlsx", "xls", "gb", "gbk", "gp", "dat", "embl", "txt", "gz"]
POLL_SECONDS = 1.0  # how often a waiting page refreshes its progress (it redraws at once when the run ends)


# ---------------------------------------------------------------- input


def input_section() -> ParsedInput | None:
    st.subheader("Sequences")
    left, right = st.columns([3, 1])
    with right:
        st.caption("Load a built-in example set")
        for name, label in EXAMPLES.items():
            st.button(label, key=f"example_{name}", on_click=load_example, args=(name,), width="stretch")
        upload = st.file_uploader("…or upload a file", type=UPLOAD_TYPES, key="upload",
                                  help="FASTA, FASTQ (quality lines set aside), a CSV/TSV table or Excel sheet (.xlsx, .xls) with a 'sequence' column, "
                                       "GenBank, UniProt text or EMBL, or one sequence per line; gzip "
                                       f"accepted. Up to {INPUT_LIMIT_TEXT}.")
        # Streamlit's own "200MB per file" line states its transport cap, not ours: hide it, state ours.
        st.markdown("<style>.st-key-upload [data-testid='stFileUploaderDropzoneInstructions'] {display: none;}</style>",
                    unsafe_allow_html=True)
        st.caption(f"{', '.join(t.upper() for t in UPLOAD_TYPES)}; up to {INPUT_LIMIT_TEXT} per file "
                   "(a larger one is refused with a message)")
    with left:
        st.text_area("Paste FASTA, a table with a 'sequence' column, or one sequence per line", key="sequences_text", height=220,
                     placeholder=">my_protein\nMKTAYIAKQRQISFVKSHFSRQ…")
    if upload is not None:
        parsed = read_upload(upload.getvalue())
        source = f"uploaded file ({len(upload.getvalue()):,} bytes)"
    elif st.session_state.get("sequences_text", "").strip():
        parsed = parse_sequences(st.session_state.sequences_text)
        source = "pasted text"
    else:
        return None
    show_problems(parsed, source)
    return parsed


@st.cache_data(max_entries=2, show_spinner="Reading the upload…")
def read_upload(data: bytes) -> ParsedInput:
    """Parse an upload once, not on every rerun (a 100 MB file takes seconds)."""
    return read_sequences(data)


def show_problems(parsed: ParsedInput, source: str) -> None:
    """Per-record problems in a table: user text shown as plain text, never as markup."""
    kind, line = views.input_banner(parsed, source)
    getattr(st, kind)(line)
    if parsed.problems:
        st.dataframe(views.problems_table(parsed), hide_index=True, width="stretch")


def present_mode_css() -> None:
    st.markdown(
        """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], header {display: none !important;}
html, body, [class*="st-"] {font-size: 22px;}
[data-testid="stMetricValue"] {font-size: 2.6rem !important;}
</style>""",
        unsafe_allow_html=True,
    )


# ---------------------------------------------------------------- page


def submit(settings: Settings, parsed: ParsedInput) -> None:
    """Queue a run of ``parsed`` with ``settings`` (an allowed model, at most the page's sequence limit), or
    show the identical run already queued or running."""
    forget_link_notes()
    too_many = sequence_limit_message(len(parsed.records), max_sequences())
    if too_many:
        st.error(f"Cannot run: {too_many}")
        return
    try:
        model = checked_model_spec(settings.model)
    except NOT_ALLOWED as error:
        st.error(plain(f"Cannot run: {error}"))
        return
    submission = submit_run(dataclasses.replace(settings, model=model), parsed, st.session_state.owner)
    if submission.attached:
        st.info("An identical run is already queued or running; showing it.")
    remember_run(submission.run_id)


def show_waiting(status: RunStatus) -> None:
    """Place in the queue and expected wait, or the running job's progress."""
    estimate = status.estimate
    if estimate is not None:
        basis = ("measured on this server" if estimate.measured
                 else "a rough default until a run has finished here")
        speed = f"{estimate.seconds_per_sequence:.2f} s per sequence, {basis}"
    if status.state == "queued" and estimate is not None:
        st.info(f"Waiting for the GPU: place {estimate.place} in the queue, {estimate.jobs_ahead} job(s) ahead. "
                f"Starts in about {estimate.wait_seconds:.0f} s, done in about {estimate.total_seconds:.0f} s ({speed}).")
    elif status.progress is not None:
        stage, done, total = status.progress
        live = views.live_throughput(stage, done, total, status.stages, status.elapsed or 0.0)
        left = live or (f" · about {estimate.total_seconds:.0f} s left ({speed})" if estimate is not None else "")
        st.progress(views.progress_fraction(stage, done, total, status.stages),
                    text=views.progress_text(stage, done, total) + left)
    else:
        st.progress(0.0, text="Starting: loading the model…")
    st.caption("This page follows the run by itself. The run goes on if you close the tab: this page's link reopens it.")
    cancel_control(status)


def cancel_control(status: RunStatus) -> None:
    """Cancel, for the session that started the run; a running run stops after its current batch."""
    if status.cancelling:
        st.warning("Cancelling: the run stops after its current batch.")
    elif status.owner is not None and status.owner == st.session_state.get("owner"):
        st.button("Cancel this run", key="cancel_run", on_click=cancel_run,
                  args=(st.session_state.current_run, status.owner))


def show_run(run_id: str, settings: Settings) -> None:
    """The current run: waiting, failed, or its results at the sidebar's layer, seed and thresholds."""
    status = run_status(run_id)
    if status.state in ("queued", "running"):
        show_waiting(status)
        wait_for_run(run_id, POLL_SECONDS)
        st.rerun()
        return
    if status.state != "done":
        show_unfinished(status)
        return
    try:
        run, parsed, used, cache = run_contents(run_id, status)
    except (KeyError, OSError, ValueError) as error:
        st.error(plain(f"This run's saved files cannot be read: {error}"))
        return
    if status.outcome is not None and status.outcome.save_error:
        st.error(plain(status.outcome.save_error))
    if status.pruned:
        st.info(f"To stay within the runs folder's storage quota, the server removed the {status.pruned} oldest "
                "finished run(s) when saving this one; their links now say so.")
    st.session_state.run_layers = run.layers
    view = dataclasses.replace(used, layer=settings.layer, seed=settings.seed, proxy=settings.proxy, seeds=settings.seeds,
                               min_cosine=settings.min_cosine, min_agreement=settings.min_agreement,
                               accept_agreement=settings.accept_agreement, present=settings.present)
    if views.changed_since(used, settings, typed_model(settings.model)):
        st.caption("Showing the last run; model, dtype, device, backend or numerics sample changed since — press Run "
                   "to use them.")
    results(run, view, parsed, used, cache)


def show_unfinished(status: RunStatus) -> None:
    """A run that failed, is unknown, or was interrupted by a server restart."""
    if status.state == "failed":
        st.error(plain(status.error or "The run failed (no message was recorded)."))
    elif status.state == "cancelled":
        st.warning(plain(status.error or "This run was cancelled.") + " Press **Run comparison** to run it again.")
    elif status.state == "missing":
        st.error("No run with this id on this server. The link may be incomplete, or the run was deleted.")
    elif status.state == "damaged":
        st.error(plain(f"This run cannot be shown: {status.error}. No other run is affected; run it again for a "
                       "whole copy."))
    elif status.state == "pruned":
        st.warning(plain(status.error or "This run was removed to stay within the storage quota."))
    else:
        st.warning("This run did not finish: the server stopped while it was queued or running. "
                   "Press **Run comparison** to run it again.")


def typed_model(spec: str) -> str:
    """A typed model as a run would record it (checkpoint paths resolved), for comparing with a run's."""
    try:
        return checked_model_spec(spec)
    except NOT_ALLOWED:
        return spec


def header(settings: Settings) -> None:
    if settings.present:
        present_mode_css()
        st.button("Exit presentation mode", key="exit_present", on_click=lambda: st.session_state.update(present=False))
    else:
        st.title("ESM-2 attention divergence")
        st.caption("Does the packed FlashAttention path (v2.0) change ESM-2 predictions compared with the "
                   "standard path (v1.0)? Paste sequences, choose a model, run.")
    if st.session_state.get("device_notice"):
        st.warning(plain(st.session_state.device_notice), icon="⚠️")
    show_link_notes()


def main() -> None:
    st.set_page_config(page_title="ESM-2 attention divergence", page_icon="🧬", layout="wide")
    init_session()
    if "sequences_text" in st.session_state:
        # Streamlit drops the state of a widget that a run does not draw; presentation mode hides
        # the text area, and the pasted input must survive it.
        st.session_state.sequences_text = st.session_state.sequences_text
    settings = sidebar(st.session_state.get("run_layers"))
    current = st.session_state.get("current_run")
    header(settings)
    parsed = None if settings.present and current else input_section()
    run_clicked = False
    if not settings.present:
        run_clicked = st.button("Run comparison", type="primary", key="run", disabled=not (parsed and parsed.records))
    if (run_clicked or st.session_state.pop("autorun", False)) and parsed and parsed.records:
        submit(settings, parsed)
        current = st.session_state.get("current_run")
    query = settings.to_query() | ({"example": st.session_state.example} if st.session_state.get("example") else {})
    st.query_params.from_dict(query | ({"run": current} if current else {}))
    if not current:
        st.info("Paste or upload sequences, or load an example set, then press **Run comparison**.")
        return
    show_run(current, settings)


if __name__ == "__main__":
    main()
