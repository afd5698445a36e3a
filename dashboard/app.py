"""ESM-2 attention divergence dashboard.  Run: streamlit run dashboard/app.py

Layout and widgets only; every number comes from ``core``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` puts dashboard/ first

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402
import torch  # noqa: E402

from core import charts  # noqa: E402
from core.compare import DEFAULT_REFERENCE_SAMPLE  # noqa: E402
from core.metrics import format_percent  # noqa: E402
from core.proxies import UNINFORMATIVE_SHARE  # noqa: E402
from core.attention import available_backends  # noqa: E402
from core.model import (  # noqa: E402
    DEMO_SIZES, DTYPES, PRETRAINED, describe_model_spec, device_or_cpu, parse_dtype,
    pretrained_available, versions,
)
from core.heads import HeadClassifier, HeadError, load_extra_features, load_head  # noqa: E402
from core.report import DEMO_NOTICE, analyse, html_report, spreadsheet_safe  # noqa: E402
from core.sequences import ParsedInput, example_sequences, format_fasta, parse_sequences, read_sequences  # noqa: E402
from core.paths import PathNotAllowed  # noqa: E402
from core.runs import RunStore  # noqa: E402
from dashboard.state import (  # noqa: E402
    BUILTIN_V2, RunStatus, Settings, checked_model_spec, parse_sample, history, live_throughput, progress_fraction, progress_text,
    residue_view, run_contents, run_status, stored_input, submit_run, v2_checks, v2_plugins,
)

CHECKPOINT = "Local checkpoint file…"
REFERENCES = {"auto": "auto (fp32 on a GPU, fp64 on a CPU)", "fp32": "fp32 (TF32 off)", "fp64": "fp64",
              "none": "none: v1.0's rounding floor"}
PROXIES = {"balanced": "balanced (centred on v1.0)", "seed": "the seed's uncentred heads"}
EXAMPLES = {"patterns": "Repeat patterns (18)", "real": "Real proteins (9)", "all": "All examples (27)"}
UPLOAD_TYPES = ["fasta", "fa", "faa", "txt", "gz"]
POLL_SECONDS = 1.0  # how often a waiting page looks at its job again
HISTORY_SHOWN = 30

st.set_page_config(page_title="ESM-2 attention divergence", page_icon="🧬", layout="wide")


# ---------------------------------------------------------------- state


def init_session() -> None:
    """First visit: settings and input from the URL query string."""
    if "settings" in st.session_state:
        return
    settings = Settings.from_query(st.query_params.to_dict())
    st.session_state.settings = settings
    is_named = settings.model in PRETRAINED or settings.model.lower().startswith("demo-")
    st.session_state.model_choice = settings.model if is_named else CHECKPOINT
    st.session_state.checkpoint_path = "" if is_named else settings.model
    for name in ("dtype", "device", "backend", "v2", "reference", "reference_sample", "seed", "proxy", "seeds",
                 "min_cosine", "min_agreement", "accept_agreement", "present"):
        st.session_state[name] = getattr(settings, name)
    st.session_state.my_runs = []
    st.session_state.device_notice = device_notice(st.query_params.get("device", ""))
    run_id = st.query_params.get("run")
    example = st.query_params.get("example")
    if run_id:
        open_run(run_id)
    elif example in EXAMPLES:
        load_example(example)
        st.session_state.autorun = True


def device_notice(requested: str) -> str | None:
    """Why a link's CUDA device became the CPU here (a link made on a GPU host, opened on one without)."""
    if not requested.startswith("cuda"):
        return None
    try:
        return device_or_cpu(torch.device(requested))[1]
    except RuntimeError:
        return None


def remember_run(run_id: str) -> None:
    """Make ``run_id`` this session's current run and list it in its history."""
    st.session_state.current_run = run_id
    for view_state in ("residue_shown", "checks_layer"):  # extra GPU views belong to the previous run
        st.session_state.pop(view_state, None)
    if run_id not in st.session_state.my_runs:
        st.session_state.my_runs.append(run_id)


def open_run(run_id: str) -> None:
    """Reopen a saved run (from ``?run=`` or the history): it becomes current, its input refills the text area."""
    st.session_state.current_run = run_id
    if not RunStore.is_valid_id(run_id):
        return
    parsed = stored_input(run_id)
    if parsed is None:
        return
    remember_run(run_id)
    st.session_state.sequences_text = format_fasta(parsed.records)
    st.session_state.example = None


def load_example(name: str) -> None:
    st.session_state.sequences_text = format_fasta(example_sequences(name))
    st.session_state.example = name


def model_label(choice: str) -> str:
    if choice in PRETRAINED:
        return f"{choice} — {'weights here' if pretrained_available(choice) else 'downloads on first use'}"
    if choice.startswith("demo-"):
        return f"{choice} — DEMO random weights"
    return choice


def num_layers_of(spec: str) -> int | None:
    """Layer count from the model name, or None for a checkpoint (known once loaded)."""
    try:
        kind, name = describe_model_spec(spec)
    except ValueError:
        return None
    if kind == "checkpoint":
        return None
    return PRETRAINED[name if kind == "pretrained" else f"{DEMO_SIZES[name[5:]]}"].num_layers


# ---------------------------------------------------------------- sidebar


def sidebar(run_layers: list[int] | None) -> Settings:
    st.sidebar.header("Settings")
    choices = [*PRETRAINED, *(f"demo-{size}" for size in DEMO_SIZES), CHECKPOINT]
    choice = st.sidebar.selectbox("Model", choices, key="model_choice", format_func=model_label)
    spec = st.sidebar.text_input("Checkpoint file (fair-esm format)", key="checkpoint_path") if choice == CHECKPOINT else choice
    if choice == CHECKPOINT and spec:
        try:
            checked_model_spec(spec)
        except PathNotAllowed as error:
            st.sidebar.error(str(error))
    st.sidebar.selectbox("dtype", list(DTYPES), key="dtype", help="FP16 is the seed's setting")
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    if st.session_state.device not in devices:
        st.session_state.device = devices[0]
    st.sidebar.selectbox("Device", devices, key="device")
    v2_choices = [*BUILTIN_V2, *v2_plugins()]
    if st.session_state.v2 not in v2_choices:
        st.session_state.v2 = "packed"
    st.sidebar.selectbox("v2.0 implementation", v2_choices, key="v2", format_func=lambda c: BUILTIN_V2.get(c, c),
                         help="The fast path to judge: this project's packed path, the v1-compatible fallback, or a "
                              "plug-in named in dashboard/config.toml on the server.")
    backends = ["auto", *available_backends(torch.device(st.session_state.device), parse_dtype(st.session_state.dtype))]
    if st.session_state.backend not in backends:
        st.session_state.backend = "auto"
    st.sidebar.selectbox("v2.0 attention backend", backends, key="backend", disabled=st.session_state.v2 != "packed",
                         help="Only backends that can run on this device and dtype are listed.")

    last = (None if choice == CHECKPOINT else num_layers_of(spec)) or (max(run_layers) if run_layers else None)
    settings = st.session_state.settings
    if last is None:
        st.sidebar.caption("Layer choice appears once the checkpoint is loaded (default: last layer).")
        layer = -1
    else:
        if "layer" not in st.session_state or st.session_state.get("layer_model") != spec:
            st.session_state.layer = last if settings.layer < 0 or settings.layer > last else settings.layer
            st.session_state.layer_model = spec
        layer = st.sidebar.slider("Layer (0 = embeddings, last = after final layer norm)", 0, last, key="layer")
    st.sidebar.selectbox("Numerics gate: reference", REFERENCES, key="reference", format_func=REFERENCES.get,
                         help="The yardstick the numerics gate measures both paths against, on a sample of the "
                              "sequences at every layer. Recomputes on Run.")
    st.sidebar.text_input("Numerics sample (sequences, or all)", key="reference_sample",
                          help=f"Sequences chosen to span the lengths (default {DEFAULT_REFERENCE_SAMPLE}; 0: the "
                               "rounding floor instead of a reference). Small sets are topped up with probe proteins.")
    try:
        parse_sample(st.session_state.reference_sample)
    except ValueError:
        st.sidebar.error(f"Numerics sample {st.session_state.reference_sample!r} is not a count or 'all': "
                         f"using {DEFAULT_REFERENCE_SAMPLE}.")
        st.session_state.reference_sample = str(DEFAULT_REFERENCE_SAMPLE)
    st.sidebar.number_input("Proxy classifier seed (the view drawn)", min_value=0, step=1, key="seed")
    st.sidebar.selectbox("Proxy heads", PROXIES, key="proxy", format_func=PROXIES.get,
                         help="Balanced heads put half the sequences on each side of every boundary, so agreement "
                              "can fall; the seed's uncentred head often puts every sequence in one class.")
    st.sidebar.number_input("Proxy heads that decide", min_value=0, max_value=10_000, step=10, key="seeds",
                            help="Label agreement over this many heads decides the prediction verdict, judged on its "
                                 "lower 2.5% (0: the chosen seed's head alone).")
    with st.sidebar.expander("Advanced: thresholds"):
        st.number_input("Cosine must exceed", 0.0, 1.0, step=0.001, format="%.4f", key="min_cosine")
        st.number_input("Agreement at least (else FALLBACK)", 0.0, 1.0, step=0.01, format="%.3f", key="min_agreement")
        st.number_input("Agreement above (ACCEPT)", 0.0, 1.0, step=0.01, format="%.3f", key="accept_agreement")
    st.sidebar.toggle("Presentation mode", key="present", help="Large type, controls hidden, for a shared screen.")
    history_sidebar()

    ss = st.session_state
    settings = Settings(
        model=spec or "", dtype=ss.dtype, device=ss.device, backend=ss.backend, v2=ss.v2, reference=ss.reference,
        reference_sample=ss.reference_sample, layer=layer, seed=int(ss.seed), proxy=ss.proxy, seeds=int(ss.seeds),
        min_cosine=ss.min_cosine, min_agreement=ss.min_agreement, accept_agreement=ss.accept_agreement,
        present=ss.present,
    )
    ss.settings = settings
    return settings


def history_sidebar() -> None:
    """Past runs: this session's (or every run, when the server shares history); a click reopens one."""
    runs = history(st.session_state.my_runs)
    with st.sidebar.expander(f"Run history ({len(runs)})"):
        if not runs:
            st.caption("Runs you start or open in this browser session are listed here; each one's link reopens it.")
        for info in runs[:HISTORY_SHOWN]:
            when = info.created_at[:16].replace("T", " ")
            st.button(f"{when} · {info.n_sequences} seq · {info.state}", key=f"history_{info.id}", on_click=open_run,
                      args=(info.id,), help=f"run {info.id}", width="stretch",
                      type="primary" if info.id == st.session_state.get("current_run") else "secondary")


# ---------------------------------------------------------------- input


def input_section() -> ParsedInput | None:
    st.subheader("Sequences")
    left, right = st.columns([3, 1])
    with right:
        st.caption("Load a built-in example set")
        for name, label in EXAMPLES.items():
            st.button(label, key=f"example_{name}", on_click=load_example, args=(name,), width="stretch")
        upload = st.file_uploader("…or upload a file", type=UPLOAD_TYPES, key="upload",
                                  help="FASTA or one sequence per line; gzip accepted.")
    with left:
        st.text_area("Paste FASTA or one sequence per line", key="sequences_text", height=220,
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
    counts = f"{len(parsed.records)} valid sequence(s) from the {source}"
    if parsed.errors:
        st.error(f"{counts}; {len(parsed.errors)} record(s) refused — listed below. The valid ones will still run.")
    elif parsed.warnings:
        st.warning(f"{counts}; {len(parsed.warnings)} warning(s) — listed below.")
    else:
        st.success(counts)
    if parsed.problems:
        st.dataframe(
            pd.DataFrame([{"": "refused" if p.severity == "error" else "warning", "record": p.record_id,
                           "problem": p.message} for p in parsed.problems]),
            hide_index=True, width="stretch",
        )


# ---------------------------------------------------------------- results


def verdict_card(summary: dict, font_scale: float) -> None:
    colour = charts.VERDICT_COLOURS[summary["verdict"]]
    compared = (f"{summary['model']} ({summary['weights']} weights) · {summary['dtype']} · layer {summary['layer']} · "
                f"v1.0 {summary['impl_v1']} ({summary['backend_v1']}) vs v2.0 {summary['impl_v2']} · {summary['device']} · "
                f"{summary['n_sequences']} sequences · classifier: {summary['classifier']}")
    headline = summary["headline"]
    lines = "".join(
        f'<div style="font-size: {1.05 * font_scale}rem; margin-top: 0.25rem;"><b>{html.escape(label)}</b> '
        f"{html.escape(text.split(': ', 1)[1])}</div>"
        for label, text in (("Predictions:", headline["predictions"]), ("Numerics:", headline["numerics"]))
    )
    st.markdown(
        f"""<div style="border-left: 14px solid {colour}; background: #f6f7f9; padding: 0.8rem 1.2rem; border-radius: 6px;">
<div style="color: {colour}; font-size: {3.2 * font_scale}rem; font-weight: 800; line-height: 1.1;">{html.escape(summary['verdict'])}</div>
<div style="font-size: {1.25 * font_scale}rem; margin-top: 0.3rem;">{html.escape(summary['recommendation'])}</div>
{lines}
<div style="color: #555; font-size: {0.95 * font_scale}rem; margin-top: 0.3rem;">{html.escape(headline['seed_rule'])}</div>
<div style="color: #555; font-size: {0.9 * font_scale}rem; margin-top: 0.4rem;">{html.escape(compared)}</div></div>""",
        unsafe_allow_html=True,  # every interpolated value is escaped above
    )


def kpi_row(summary: dict) -> None:
    pearson = summary["pearson"]
    columns = st.columns(6)
    flips = summary["n_label_flips"]
    balance = summary["proxy_balance"]["chosen_head"]["majority_share"]
    columns[0].metric("Label agreement", format_percent(summary["label_agreement"]),
                      f"{flips} flip{'s' * (flips != 1)} · {balance:.0%} in the larger class",
                      delta_color="red" if flips or balance > UNINFORMATIVE_SHARE else "green", delta_arrow="off",
                      help="The chosen seed's head. Above 90% in one class its agreement cannot fall (uninformative).")
    heads = summary["predictions"]["heads"]
    if heads:
        columns[1].metric(f"Agreement, {heads['n_heads']} heads", format_percent(heads["agreement_lower"]),
                          f"lower 2.5% · {heads['counted_flips']} flips count", delta_arrow="off",
                          delta_color="red" if heads["counted_flips"] else "green")
    columns[2].metric("Min cosine", f"{summary['cosine']['min']:.6f}")
    columns[3].metric("Confidence Pearson", "n/a" if pearson is None else f"{pearson:.6f}")
    columns[4].metric("Max confidence diff", f"{summary['max_confidence_diff']:.2e}")
    columns[5].metric("Values within 1e-3 / 1e-2", f"{summary['embedding_match']['atol_0.001']:.1%}",
                      f"{summary['embedding_match']['atol_0.01']:.1%} within 1e-2", delta_arrow="off", delta_color="off")
    for warning in summary["proxy_balance"]["warnings"]:
        st.warning(warning, icon="⚠️")


def cache_caption(cache: dict | None) -> str | None:
    """'Embedding cache: 27 of 27 sequences from the cache, 0 computed', or None when the cache was off."""
    if not cache:
        return None
    total = cache["hits"] + cache["computed"]
    return f"Embedding cache: {cache['hits']} of {total} sequences from the cache, {cache['computed']} computed"


def cache_notice(cache: dict | None) -> None:
    """The cache caption under the KPIs, and its warning when the cache could not be used (nothing when off)."""
    caption = cache_caption(cache)
    if caption is None:
        return
    if cache.get("warning"):
        st.warning(f"Embedding cache: {cache['warning']}", icon="⚠️")
    st.caption(caption, help=f"Cache directory: {cache['dir']}")


def head_section(ids: list[str]) -> tuple[HeadClassifier | None, str | None]:
    """The user's own classification head from the sidebar uploads: (classifier, None) or (None, problem)."""
    with st.sidebar.expander("Your classification head (optional)"):
        head_file = st.file_uploader("Head weights", type=["safetensors", "pt", "pth", "bin"], key="head_file",
                                     help="A linear layer or small MLP: safetensors, or a state_dict (loaded weights-only).")
        extra_file = st.file_uploader("Extra per-sequence features", type=["csv", "tsv", "npy"], key="extra_file",
                                      help="Concatenated after the embedding: a CSV with an id column, or .npy rows in input order.")
    if head_file is None:
        return None, "upload head weights first" if extra_file is not None else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            head = dataclasses.replace(load_head(_saved(folder, head_file)), source=head_file.name)
            extra = load_extra_features(_saved(folder, extra_file), ids) if extra_file is not None else None
        return HeadClassifier(head, extra), None
    except HeadError as error:
        return None, str(error)


def _saved(folder: str, upload) -> Path:
    """An upload written to ``folder`` under a safe name with its own suffix (loaders dispatch on it)."""
    path = Path(folder) / f"upload{Path(upload.name).suffix.lower()}"
    path.write_bytes(upload.getvalue())
    return path


def results(run, settings: Settings, parsed: ParsedInput, used: Settings, cache: dict | None = None) -> None:
    """The analysis of ``run`` at the view's layer, seed and thresholds; ``used``: the settings it ran with;
    ``cache``: the embedding cache's summary object for the run (None when the cache was off)."""
    layer = settings.layer if settings.layer >= 0 else max(run.layers)
    head, head_problem = head_section(run.ids) if not settings.present else (None, None)
    if head_problem:
        st.error(f"Your head cannot be used, so the proxy classifier is shown: {head_problem}")
    try:
        analysis = analyse(
            run, layer, settings.seed, settings.thresholds, parsed, versions(), proxy=settings.proxy,
            n_heads=settings.seeds, classifier=head, classifier_name=head.describe() if head is not None else None,
            cache=cache,
        )
    except HeadError as error:
        st.error(f"Your head cannot be used, so the proxy classifier is shown: {error}")
        analysis = analyse(run, layer, settings.seed, settings.thresholds, parsed, versions(), proxy=settings.proxy,
                           n_heads=settings.seeds, cache=cache)
    summary, table = analysis.summary, analysis.table
    font_size = 22 if settings.present else 14
    if run.is_demo:
        st.warning(DEMO_NOTICE, icon="⚠️")
    verdict_card(summary, 1.4 if settings.present else 1.0)
    st.write("")
    kpi_row(summary)
    cache_notice(cache)
    if settings.present:
        overview_tab(table, summary, font_size)
        return
    tabs = st.tabs(["Overview", "Numerics", "Reference", "Layers", "Residues", "Heads", "Checks", "Table & share"])
    with tabs[0]:
        overview_tab(table, summary, font_size)
    with tabs[1]:
        numerics_tab(summary)
    with tabs[2]:
        reference_tab(analysis, table)
    with tabs[3]:
        st.plotly_chart(charts.layer_curve(summary["layers"]), key="chart_layers")
        st.dataframe(pd.DataFrame(summary["layers"]), hide_index=True, width="stretch", key="layer_table")
    with tabs[4]:
        residue_tab(run, parsed, used, layer)
    with tabs[5]:
        heads_tab(analysis, run.ids)
    with tabs[6]:
        checks_tab(run, parsed, used, layer, fresh_baseline=bool(cache and cache["hits"]))
    with tabs[7]:
        share_tab(summary, table)


def overview_tab(table: pd.DataFrame, summary: dict, font_size: int) -> None:
    figures = charts.all_figures(table, summary, font_size)
    st.plotly_chart(figures["agreement"], key="chart_agreement")
    for left_name, right_name in (("histogram", "ecdf"), ("length", "confidence")):
        left, right = st.columns(2)
        left.plotly_chart(figures[left_name], key=f"chart_{left_name}")
        right.plotly_chart(figures[right_name], key=f"chart_{right_name}")


def numerics_tab(summary: dict) -> None:
    """The numerics gate: per-layer error of both paths against the yardstick, the sign test, the first departure."""
    numerics = summary["numerics"]
    if numerics is None:
        st.info("This run has no numerics sample (it was saved before the gate existed): press Run again.")
        return
    (st.success if numerics["passed"] else st.error)(summary["headline"]["numerics"])
    st.plotly_chart(charts.numerics_layers(numerics), key="chart_numerics")
    if numerics["kind"] == "reference":
        st.plotly_chart(charts.sign_test_layers(numerics), key="chart_sign_test")
    st.caption(f"A layer departs when v2.0's max error exceeds {numerics['layers'][0]['bound']:g}× v1.0's "
               "(FlashAttention's rule; without a reference, that many rounding floors) or when one path is closer "
               f"to the reference on too many sequences to be chance (two-sided sign test, family-wise level "
               f"{numerics['alpha']:g} over the layers). v2.0 runs the sample in a deep pack, so a result that depends "
               "on where a sequence sits in its pack shows.")
    st.dataframe(pd.DataFrame(numerics["layers"]), hide_index=True, width="stretch", key="numerics_table")


def reference_tab(analysis, table: pd.DataFrame) -> None:
    attribution = analysis.attribution
    if attribution is None:
        st.info("The numerics gate ran against v1.0's rounding floor, not a reference: choose a reference "
                "(auto, fp32 or fp64) in the sidebar and press Run to measure both paths against the standard path "
                "on the same weights in a wider dtype, to tell which one is wrong.")
        return
    reference = analysis.summary["reference"]
    (st.success if attribution.rule_passed else st.error)(reference["verdict_line"])
    st.dataframe(
        pd.DataFrame([{"path": f"{path}.0", **reference[f"{path}_error"]} for path in ("v1", "v2")]),
        hide_index=True, width="stretch", key="reference_table",
    )
    counts = reference["closer_counts"]
    st.caption(f"On the {sum(counts.values())} sequences of the numerics sample, closer to the reference: "
               f"v1.0 {counts['v1']}, v2.0 {counts['v2']}, tie {counts['tie']}.")
    st.plotly_chart(charts.reference_errors(table, attribution.reference_dtype), key="chart_reference")


def residue_tab(run, parsed: ParsedInput, used: Settings, layer: int) -> None:
    records = {record.id: record.sequence for record in parsed.records}
    chosen = st.selectbox("Sequence", run.ids, key="residue_sequence")
    if not st.button("Show its residue track", key="residue_go"):
        if st.session_state.get("residue_shown") != (chosen, layer):
            st.caption("Runs both paths on this one sequence at the chosen layer (a few forward passes).")
            return
    st.session_state.residue_shown = (chosen, layer)
    residues = residue_view(used.model, used.dtype, used.device, used.backend, records[chosen], layer)
    st.plotly_chart(charts.residue_track(residues, chosen), key="chart_residues")
    worst = residues.sort_values("cosine").head(10)
    st.caption("The ten positions where the paths differ most")
    st.dataframe(worst, hide_index=True, width="stretch", key="residue_worst")


def heads_tab(analysis, ids: list[str]) -> None:
    """The proxy heads that decide the prediction verdict: their agreement and where their flips sit."""
    votes = analysis.votes
    heads = votes.to_summary()
    if analysis.summary["predictions"]["heads"] is None:
        st.caption("Your head decides the prediction verdict; the proxy heads are shown for comparison.")
    st.markdown(f"{heads['n_heads']} {heads['kind']} heads: agreement judged on the lower 2.5% "
                f"**{heads['agreement_lower']:.2%}**, mean **{heads['agreement_mean']:.2%}**; "
                f"{heads['counted_flips']} flip(s) beyond each head's rounding floor count, "
                f"{heads['rounding_flips']} within it do not.")
    left, right = st.columns(2)
    left.plotly_chart(charts.head_agreement_histogram(votes.agreement, heads["agreement_lower"], heads["kind"]),
                      key="chart_heads")
    right.plotly_chart(charts.flips_vs_margin(votes.margin_table(ids)), key="chart_margins")


def checks_tab(run, parsed: ParsedInput, used: Settings, layer: int, fresh_baseline: bool = False) -> None:
    """Packing invariance and determinism on demand; ``fresh_baseline``: some embeddings came from the
    cache (packed with other batch-mates), so the checks compare against a fresh v2.0 run instead."""
    st.caption("Packing invariance: each sequence run alone must match itself packed with others. "
               "Determinism: v2.0 run twice must give bit-identical embeddings. Both cost extra v2.0 passes.")
    if not (st.button("Run the checks", key="checks_go") or st.session_state.get("checks_layer") == layer):
        return
    st.session_state.checks_layer = layer
    records = tuple((record.id, record.sequence) for record in parsed.records)
    packed = None if fresh_baseline else run.v2.layers[layer]
    for check in v2_checks(used.model, used.dtype, used.device, used.backend, records, layer, packed, used.v2):
        badge = st.success if check.passed else st.error
        badge(f"{check.name}: {'PASS' if check.passed else 'FAIL'} — max |difference| {check.max_abs_diff:.3e}, "
              f"min cosine {check.min_cosine:.10f} over {check.n_sequences} sequences. {check.detail}.")


def share_tab(summary: dict, table: pd.DataFrame) -> None:
    st.dataframe(table, hide_index=True, width="stretch", key="sequence_table")
    columns = st.columns(3)
    columns[0].download_button("sequences.csv", spreadsheet_safe(table).to_csv(index=False), "sequences.csv", "text/csv",
                               key="download_csv")
    columns[1].download_button("summary.json", json.dumps(summary, indent=2), "summary.json", "application/json", key="download_json")
    report = html_report(summary, table, charts.all_figures(table, summary))
    columns[2].download_button("report.html", report, "report.html", "text/html", key="download_html")
    st.caption("The page's URL holds these settings: share it to reopen the same view "
               "(with an example set, the same inputs too).")


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
    """Queue a run of ``parsed`` with ``settings`` (a typed checkpoint path must be allowed first)."""
    try:
        model = checked_model_spec(settings.model)
    except PathNotAllowed as error:
        st.error(f"Cannot run: {error}")
        return
    remember_run(submit_run(dataclasses.replace(settings, model=model), parsed))


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
        live = live_throughput(stage, done, total, status.stages, status.elapsed or 0.0)
        left = live or (f" · about {estimate.total_seconds:.0f} s left ({speed})" if estimate is not None else "")
        st.progress(progress_fraction(stage, done, total, status.stages), text=progress_text(stage, done, total) + left)
    else:
        st.progress(0.0, text="Starting: loading the model…")
    st.caption("This page follows the run by itself. The run goes on if you close the tab: this page's link reopens it.")


def show_run(run_id: str, settings: Settings) -> None:
    """The current run: waiting, failed, or its results at the sidebar's layer, seed and thresholds."""
    status = run_status(run_id)
    if status.state in ("queued", "running"):
        show_waiting(status)
        time.sleep(POLL_SECONDS)
        st.rerun()
        return
    if status.state == "failed":
        st.error(status.error or "The run failed (no message was recorded).")
        return
    if status.state == "missing":
        st.error("No run with this id on this server. The link may be incomplete, or the run was deleted.")
        return
    if status.state == "interrupted":
        st.warning("This run did not finish: the server restarted while it was queued or running. "
                   "Press **Run comparison** to run it again.")
        return
    try:
        run, parsed, used, cache = run_contents(run_id, status)
    except (KeyError, OSError, ValueError) as error:
        st.error(f"This run's saved files cannot be read: {error}")
        return
    if status.outcome is not None and status.outcome.save_error:
        st.error(status.outcome.save_error)
    st.session_state.run_layers = run.layers
    view = dataclasses.replace(used, layer=settings.layer, seed=settings.seed, proxy=settings.proxy, seeds=settings.seeds,
                               min_cosine=settings.min_cosine, min_agreement=settings.min_agreement,
                               accept_agreement=settings.accept_agreement, present=settings.present)
    if (used.model, used.dtype, used.device, used.backend, used.v2, used.reference, used.reference_sample) != (
        typed_model(settings.model), settings.dtype, settings.device, settings.backend, settings.v2, settings.reference,
        settings.reference_sample,
    ):
        st.caption("Showing the last run; model, dtype, device, backend or numerics sample changed since — press Run "
                   "to use them.")
    results(run, view, parsed, used, cache)


def typed_model(spec: str) -> str:
    """A typed model as a run would record it (checkpoint paths resolved), for comparing with a run's."""
    try:
        return checked_model_spec(spec)
    except PathNotAllowed:
        return spec


def main() -> None:
    init_session()
    if "sequences_text" in st.session_state:
        # Streamlit drops the state of a widget that a run does not draw; presentation mode hides
        # the text area, and the pasted input must survive it.
        st.session_state.sequences_text = st.session_state.sequences_text
    settings = sidebar(st.session_state.get("run_layers"))
    current = st.session_state.get("current_run")
    if settings.present:
        present_mode_css()
        st.button("Exit presentation mode", key="exit_present", on_click=lambda: st.session_state.update(present=False))
    else:
        st.title("ESM-2 attention divergence")
        st.caption("Does the packed FlashAttention path (v2.0) change ESM-2 predictions compared with the "
                   "standard path (v1.0)? Paste sequences, choose a model, run.")
    if st.session_state.get("device_notice"):
        st.warning(st.session_state.device_notice, icon="⚠️")

    parsed = None if settings.present and current else input_section()
    run_clicked = False
    if not settings.present:
        run_clicked = st.button("Run comparison", type="primary", key="run", disabled=not (parsed and parsed.records))
    if (run_clicked or st.session_state.pop("autorun", False)) and parsed and parsed.records:
        submit(settings, parsed)
        current = st.session_state.get("current_run")

    query = settings.to_query()
    if st.session_state.get("example"):
        query["example"] = st.session_state.example
    if current:
        query["run"] = current
    st.query_params.from_dict(query)

    if not current:
        st.info("Paste or upload sequences, or load an example set, then press **Run comparison**.")
        return
    show_run(current, settings)


main()
