"""The sidebar: model, v2.0, layer, the verdict's evidence and thresholds, presentation mode, run history."""

from __future__ import annotations

import streamlit as st
import torch

from core.analysis.proxies import MAX_SEED
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE
from core.numerics.attention import available_backends
from core.numerics.precision import DTYPES, parse_dtype
from dashboard import views
from dashboard.markup import plain
from dashboard.query import MAX_HEADS
from dashboard.server import BUILTIN_V2, NOT_ALLOWED, allowed_models, checked_model_spec, v2_plugins
from dashboard.session import SETTING_WIDGETS, open_run
from dashboard.settings import THRESHOLD_DECIMALS, Settings, parse_sample
from dashboard.state import history
from dashboard.views import CHECKPOINT, PROXIES, REFERENCES

HISTORY_SHOWN = 30


def model_controls() -> tuple[str, str]:
    """(the sidebar's model choice, the model spec it stands for): only the models the server allows."""
    choices = [*allowed_models(), CHECKPOINT]
    if st.session_state.get("model_choice") not in choices:
        st.session_state.model_choice = choices[0]
    choice = st.sidebar.selectbox("Model", choices, key="model_choice", format_func=views.model_label,
                                  help="The models this server offers (set in its config file: dashboard/config.toml, "
                                       "or the one ESM2_DASHBOARD_CONFIG names), or a checkpoint file in a directory "
                                       "it allows.")
    spec = st.sidebar.text_input("Checkpoint file (fair-esm format)", key="checkpoint_path") if choice == CHECKPOINT else choice
    if choice == CHECKPOINT and spec:
        try:
            checked_model_spec(spec)
        except NOT_ALLOWED as error:
            st.sidebar.error(plain(error))
    st.sidebar.selectbox("dtype", list(DTYPES), key="dtype", help="FP16 is the seed's setting")
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    if st.session_state.device not in devices:
        st.session_state.device = devices[0]
    st.sidebar.selectbox("Device", devices, key="device")
    return choice, spec or ""


def v2_controls() -> None:
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


def layer_control(choice: str, spec: str, run_layers: list[int] | None) -> int | None:
    """The layer slider (None: the last layer, when the model's depth is not known yet)."""
    last = (None if choice == CHECKPOINT else views.num_layers_of(spec)) or (max(run_layers) if run_layers else None)
    if last is None:
        st.sidebar.caption("Layer choice appears once the checkpoint is loaded (default: last layer).")
        return None
    wanted = st.session_state.settings.layer
    if "layer" not in st.session_state or st.session_state.get("layer_model") != spec:
        st.session_state.layer = last if wanted is None or not 0 <= wanted <= last else wanted
        st.session_state.layer_model = spec
    return st.sidebar.slider("Layer (0 = embeddings, last = after final layer norm)", 0, last, key="layer")


def evidence_controls() -> None:
    """The numerics gate's yardstick and sample, the proxy heads, the thresholds."""
    st.sidebar.selectbox("Numerics gate: reference", REFERENCES, key="reference", format_func=REFERENCES.get,
                         help="The yardstick the numerics gate measures both paths against, on a sample of the "
                              "sequences at every layer. Recomputes on Run.")
    st.sidebar.text_input("Numerics sample (sequences, or all)", key="reference_sample",
                          help=f"Sequences chosen to span the lengths, and one more for each residue letter they miss "
                               f"(default {DEFAULT_REFERENCE_SAMPLE}; 0: the rounding floor instead of a reference). "
                               "Small sets are topped up with probe proteins.")
    try:
        parse_sample(st.session_state.reference_sample)
    except ValueError:
        st.sidebar.error(plain(f"Numerics sample {st.session_state.reference_sample!r} is not a count or 'all': "
                               f"using {DEFAULT_REFERENCE_SAMPLE}."))
        st.session_state.reference_sample = str(DEFAULT_REFERENCE_SAMPLE)
    st.sidebar.number_input("Proxy classifier seed (the view drawn)", min_value=0, max_value=MAX_SEED, step=1, key="seed")
    st.sidebar.selectbox("Proxy heads", PROXIES, key="proxy", format_func=PROXIES.get,
                         help="Balanced heads put half the sequences on each side of every boundary, so agreement "
                              "can fall; the seed's uncentred head often puts every sequence in one class.")
    st.sidebar.number_input("Proxy heads that decide", min_value=0, max_value=MAX_HEADS, step=10, key="seeds",
                            help="Label agreement over this many heads decides the prediction verdict, judged on its "
                                 "lower 2.5% (0: the chosen seed's head alone).")
    with st.sidebar.expander("Advanced: thresholds"):
        shown = {name: f"%.{decimals}f" for name, decimals in THRESHOLD_DECIMALS.items()}
        st.number_input("Cosine must exceed", 0.0, 1.0, step=0.001, format=shown["min_cosine"], key="min_cosine")
        st.number_input("Agreement at least (else FALLBACK)", 0.0, 1.0, step=0.01, format=shown["min_agreement"],
                        key="min_agreement")
        st.number_input("Agreement above (ACCEPT)", 0.0, 1.0, step=0.01, format=shown["accept_agreement"],
                        key="accept_agreement")


def sidebar(run_layers: list[int] | None) -> Settings:
    st.sidebar.header("Settings")
    choice, spec = model_controls()
    v2_controls()
    layer = layer_control(choice, spec, run_layers)
    evidence_controls()
    st.sidebar.toggle("Presentation mode", key="present", help="Large type, controls hidden, for a shared screen.")
    history_sidebar()
    ss = st.session_state
    values = {name: ss[name] for name in SETTING_WIDGETS}
    settings = Settings(**values | {"model": spec, "layer": layer, "seed": int(ss.seed), "seeds": int(ss.seeds)})
    if settings.min_agreement > settings.accept_agreement:
        defaults = Settings()
        st.sidebar.error(f"Agreement at least ({settings.min_agreement:g}) exceeds Agreement above "
                         f"({settings.accept_agreement:g}): using {defaults.min_agreement:g} and "
                         f"{defaults.accept_agreement:g}.")
        settings.min_agreement, settings.accept_agreement = defaults.min_agreement, defaults.accept_agreement
    ss.settings = settings
    return settings


def history_sidebar() -> None:
    """Past runs: this session's (or every run, when the server shares history); a click reopens one."""
    runs = history(st.session_state.my_runs)
    with st.sidebar.expander(f"Run history ({len(runs)})"):
        if not runs:
            st.caption("Runs you start or open in this browser session are listed here; each one's link reopens it.")
        for info in runs[:HISTORY_SHOWN]:
            st.button(views.history_label(info), key=f"history_{info.id}", on_click=open_run,
                      args=(info.id,), help=f"run {info.id}", width="stretch",
                      type="primary" if info.id == st.session_state.get("current_run") else "secondary")
