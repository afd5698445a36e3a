"""Loading ESM-2 weights: demo, local checkpoint, pretrained (offline), and their failures.

Also the helpers around a loaded model: layer numbers, the float64 reference copy and
which attention backends can run on a CPU. Everything here runs on the CPU with demo-8M
(6 layers, 320 wide) or a checkpoint saved from it.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import re
import urllib.error
from pathlib import Path

import esm
import esm.pretrained
import pytest
import torch

from core.numerics.attention import BACKENDS, BackendUnavailable, resolve_backend
from esm.model.esm2 import ESM2

from core.embed.batching import pack_sequences, padded_tokens
from core.numerics.esm2_packed import ESM2WithFlashAttention, rotary_inv_freq
from core.numerics.loading import layer_indices, load_esm2_model, reference_copy, save_checkpoint, WeightsUnavailable
from core.numerics.specs import DEMO_SIZES, PRETRAINED, TINY_ARCHITECTURE, ModelSpec, demo_specs, pretrained_available

CPU = torch.device("cpu")
SMALL_BATCH = ["MKTAYIAKQRQISFVKSHFSRQ", "GSGSGSLLKKLLEE", "ACDEFGHIKLMNPQRSTVWYXBUZO"]
PRETRAINED_8M = "esm2_t6_8M_UR50D"


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype, key
        assert torch.equal(state_a[key], state_b[key]), f"{key} differs"


def load_cpu(spec: str, dtype: str = "fp32", **kwargs):
    return load_esm2_model(spec, dtype=dtype, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory, demo_fp32) -> Path:
    """demo-8M saved in fair-esm's checkpoint format."""
    model, _ = demo_fp32
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m.pt")


@pytest.fixture(scope="module")
def checkpoint_data(checkpoint_file) -> dict:
    """The checkpoint as a dict (read fully, we wrote it), to derive broken variants from."""
    return torch.load(checkpoint_file, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------- demo weights


def test_demo_weights_are_deterministic():
    first, _ = load_cpu("demo-8M")
    second, _ = load_cpu("demo-8M")
    assert_same_state(first, second)
    assert first.weights == "demo"
    assert first.name == "demo-8M"
    assert first.dtype == torch.float32 and first.device == CPU


def test_demo_weights_built_on_the_meta_device_equal_those_built_on_the_host(monkeypatch):
    """Small demo models skip the meta device (its ops import torch._dynamo); both routes give the same model."""
    import core.numerics.loading as loading
    from core.numerics.specs import Architecture

    arch = Architecture(3, 64, 4)
    on_host = loading.build_demo_model(arch, 5, torch.float32, torch.device("cpu"))
    monkeypatch.setattr(loading, "META_FROM_LAYERS_TIMES_WIDTH_SQUARED", 0)
    via_meta = loading.build_demo_model(arch, 5, torch.float32, torch.device("cpu"))
    host_state, meta_state = on_host.state_dict(), via_meta.state_dict()
    assert host_state.keys() == meta_state.keys()
    assert all(torch.equal(host_state[name], meta_state[name]) for name in host_state)
    for model in (on_host, via_meta):
        assert model.lm_head.weight is model.embed_tokens.weight


def test_demo_fixture_matches_a_fresh_load_cast(demo_fp32, demo_fp64):
    model32, _ = demo_fp32
    model64, _ = demo_fp64
    assert model64.dtype == torch.float64
    fresh, _ = load_cpu("demo-8M")
    assert_same_state(model32, fresh)
    # The float64 demo holds the same parameters (drawn in float32, then widened).
    params32 = dict(model32.named_parameters())
    for key, value in model64.named_parameters():
        assert torch.equal(value, params32[key].double()), key


def test_demo_seed_changes_weights(demo_fp32):
    default, _ = demo_fp32
    other, _ = load_cpu("demo-8M", demo_seed=1)
    state_default, state_other = default.state_dict(), other.state_dict()
    differing = [
        key for key in state_default
        if state_default[key].is_floating_point() and not torch.equal(state_default[key], state_other[key])
    ]
    assert "esm2.embed_tokens.weight" in differing
    assert any(".self_attn.q_proj.weight" in key for key in differing)
    # Deterministic initial values (LayerNorm ones/zeros, rotary frequencies) do not depend on the seed.
    assert torch.equal(state_default["esm2.emb_layer_norm_after.weight"], state_other["esm2.emb_layer_norm_after.weight"])
    assert torch.equal(
        state_default["esm2.layers.0.self_attn.rot_emb.inv_freq"], state_other["esm2.layers.0.self_attn.rot_emb.inv_freq"]
    )


def test_demo_spec_is_case_insensitive():
    model, _ = load_cpu("demo-8m")
    assert model.name == "demo-8M"
    assert model.num_layers == 6


def test_demo_35m_architecture():
    model, alphabet = load_cpu("demo-35M")
    assert model.name == "demo-35M"
    assert model.num_layers == 12
    assert model.embed_dim == 480
    assert model.esm2.attention_heads == 20
    assert len(model.esm2.layers) == 12
    assert model.esm2.embed_tokens.weight.shape == (len(alphabet.all_toks), 480)


def test_demo_8m_architecture(demo_fp32):
    model, _ = demo_fp32
    assert (model.num_layers, model.embed_dim, model.esm2.attention_heads) == (6, 320, 20)


def test_demo_tiny_is_a_labelled_demo_with_esm2_head_width(tiny_fp32):
    """The suite's model: ESM-2's layout and head width (16, as demo-8M's), listed among the demo
    specs first, and demo weights like any demo size (so never a real verdict)."""
    model, alphabet = tiny_fp32
    assert (model.num_layers, model.embed_dim, model.esm2.attention_heads) == (3, 64, 4) == (
        TINY_ARCHITECTURE.num_layers, TINY_ARCHITECTURE.embed_dim, TINY_ARCHITECTURE.attention_heads)
    assert model.embed_dim // model.esm2.attention_heads == 320 // 20
    assert model.name == "demo-tiny" and model.weights == "demo" and ModelSpec.parse("DEMO-Tiny").name == "demo-tiny"
    assert demo_specs()[0] == "demo-tiny" and "demo-tiny" not in (f"demo-{size}" for size in DEMO_SIZES)
    assert model.esm2.embed_tokens.weight.shape == (len(alphabet.all_toks), 64)
    with pytest.raises(ValueError, match=r"choose one of demo-tiny, demo-8M, .*demo-15B"):
        ModelSpec.parse("demo-7M")


@pytest.mark.parametrize("size", list(DEMO_SIZES))
def test_every_demo_size_maps_to_the_pretrained_shape_of_that_name(size):
    name = DEMO_SIZES[size]
    match = re.fullmatch(r"esm2_t(\d+)_(\d+[MB])_UR50D", name)
    assert match, name
    assert match.group(2) == size
    assert PRETRAINED[name].num_layers == int(match.group(1))
    assert PRETRAINED[name].embed_dim % PRETRAINED[name].attention_heads == 0


def test_demo_init_padding_row_zero_and_layernorm_ones(demo_fp32):
    model, alphabet = demo_fp32
    esm2 = model.esm2
    embedding = esm2.embed_tokens.weight
    assert esm2.embed_tokens.padding_idx == alphabet.padding_idx
    assert torch.count_nonzero(embedding[alphabet.padding_idx]) == 0
    assert torch.count_nonzero(embedding[alphabet.cls_idx]) > 0  # the other rows are random
    layer_norms = [module for module in esm2.modules() if isinstance(module, torch.nn.LayerNorm)]
    assert len(layer_norms) == 2 * 6 + 2  # two per layer, one before and one after the stack
    for norm in layer_norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    assert torch.count_nonzero(esm2.lm_head.bias) == 0  # the LM head's output bias starts at zero
    # Linear weights follow PyTorch's default bound 1/sqrt(in_features).
    q_proj = esm2.layers[0].self_attn.q_proj.weight
    assert q_proj.abs().max() <= 1 / 320**0.5
    assert q_proj.std() > 0.5 / 320**0.5


def test_demo_lm_head_is_tied_to_embedding(demo_fp32):
    model, alphabet = demo_fp32
    esm2 = model.esm2
    assert torch.equal(esm2.lm_head.weight, esm2.embed_tokens.weight)
    with torch.inference_mode():
        logits = model(padded_tokens(alphabet, SMALL_BATCH[:1]))["logits"]
    assert torch.count_nonzero(logits) > 0


def test_demo_model_is_eval_and_frozen(demo_fp32):
    model, _ = demo_fp32
    assert not model.training and not model.esm2.training
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("demo-7B", ["demo-8M", "demo-35M", "demo-150M", "demo-650M", "demo-3B", "demo-15B"]),
        ("esm2_bogus", [*PRETRAINED, "demo-<size>", "8M", "15B"]),
        ("/nonexistent/dir/weights.pt", [*PRETRAINED, "demo-<size>", "no file at that path"]),
    ],
)
def test_unknown_model_spec_names_valid_choices(spec, expected):
    with pytest.raises(ValueError) as error:
        load_cpu(spec)
    message = str(error.value)
    assert repr(spec) in message
    for choice in expected:
        assert choice in message


def test_unknown_dtype_names_valid_choices():
    with pytest.raises(ValueError, match="fp16, bf16, fp32, fp64"):
        load_cpu("demo-8M", dtype="fp8")


# ---------------------------------------------------------------- checkpoint round trip


def test_checkpoint_round_trip(demo_fp32, checkpoint_file):
    model, alphabet = demo_fp32
    loaded, loaded_alphabet = load_cpu(str(checkpoint_file))
    assert loaded.weights == "checkpoint"
    assert loaded.name == str(checkpoint_file)
    assert loaded.dtype == torch.float32
    assert loaded_alphabet.all_toks == alphabet.all_toks
    assert_same_state(model, loaded)

    tokens = padded_tokens(alphabet, SMALL_BATCH)
    with torch.inference_mode():
        expected = model(tokens, repr_layers=[0, 3, 6])
        actual = loaded(tokens, repr_layers=[0, 3, 6])
    assert torch.equal(actual["logits"], expected["logits"])
    for layer in (0, 3, 6):
        assert torch.equal(actual["representations"][layer], expected["representations"][layer])

    pack = pack_sequences(alphabet, SMALL_BATCH)
    with torch.inference_mode():
        packed_expected = model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [6])
        packed_actual = loaded.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [6])
    assert torch.equal(packed_actual["representations"][6], packed_expected["representations"][6])


def test_checkpoint_is_plain_tensors_and_argparse_config(checkpoint_data, demo_fp32):
    model, _ = demo_fp32
    cfg = checkpoint_data["cfg"]["model"]
    assert isinstance(cfg, argparse.Namespace)
    assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_attention_heads) == (6, 320, 20)
    assert set(checkpoint_data["model"]) == {f"encoder.{key}" for key in model.esm2.state_dict()}
    assert all(isinstance(value, torch.Tensor) for value in checkpoint_data["model"].values())


def test_checkpoint_round_trip_of_a_fair_esm_model(tmp_path):
    """The same round trip from fair-esm's own ESM2 (LM head tied), isolating the loader."""
    torch.manual_seed(0)
    source = ESM2(num_layers=2, embed_dim=64, attention_heads=4, alphabet=esm.data.Alphabet.from_architecture("ESM-1b"))
    path = save_checkpoint(source.eval(), tmp_path / "fair.pt")
    loaded, alphabet = load_cpu(str(path))
    assert loaded.weights == "checkpoint"
    assert (loaded.num_layers, loaded.embed_dim) == (2, 64)
    assert_same_state(source, loaded.esm2)
    tokens = padded_tokens(alphabet, SMALL_BATCH)
    with torch.inference_mode():
        assert torch.equal(loaded(tokens)["logits"], source(tokens)["logits"])


def test_checkpoint_loads_in_another_dtype(demo_fp32, checkpoint_file):
    model, _ = demo_fp32
    loaded, _ = load_cpu(str(checkpoint_file), dtype="fp64")
    assert loaded.dtype == torch.float64
    assert torch.equal(loaded.esm2.embed_tokens.weight, model.esm2.embed_tokens.weight.double())


# ---------------------------------------------------------------- bad checkpoints


def test_garbage_checkpoint_is_refused(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint \x00\x01\x02\xff" * 8)
    with pytest.raises(WeightsUnavailable) as error:
        load_cpu(str(path))
    message = str(error.value)
    assert f"cannot read checkpoint {path}" in message
    assert "fair-esm ESM-2 checkpoints" in message


def test_empty_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(WeightsUnavailable, match=re.escape(f"cannot read checkpoint {path}")):
        load_cpu(str(path))


def test_truncated_checkpoint_is_refused(tmp_path, checkpoint_file):
    data = checkpoint_file.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsUnavailable, match="cannot read checkpoint"):
        load_cpu(str(path))


class _OpensFile:
    """Unpickling this calls open(marker, 'w'): it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    # Control: an ordinary unpickler would create the file, so its absence below means something.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_OpensFile(control))).close()
    assert control.exists()

    marker = tmp_path / "marker"
    raw = tmp_path / "raw-pickle.pt"
    raw.write_bytes(pickle.dumps(_OpensFile(marker), protocol=2))
    with pytest.raises(WeightsUnavailable) as error:
        load_cpu(str(raw))
    assert "pickled code is refused" in str(error.value)
    assert str(raw) in str(error.value)
    assert not marker.exists()


def test_torch_zip_checkpoint_with_code_is_refused(tmp_path, checkpoint_data):
    marker = tmp_path / "marker"
    path = tmp_path / "zip-with-code.pt"
    data = {"cfg": checkpoint_data["cfg"], "model": dict(checkpoint_data["model"]), "extra": _OpensFile(marker)}
    torch.save(data, path)
    with pytest.raises(WeightsUnavailable, match="pickled code is refused"):
        load_cpu(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, expected",
    [
        ("no-cfg", "expected keys 'cfg' and 'model'"),
        ("no-model", "expected keys 'cfg' and 'model'"),
        ("list", "expected keys 'cfg' and 'model'"),
        ("cfg-without-architecture", "no ESM-2 architecture"),
    ],
)
def test_checkpoint_without_esm2_structure_is_refused(tmp_path, checkpoint_data, payload, expected):
    if payload == "no-cfg":
        data = {"model": checkpoint_data["model"]}
    elif payload == "no-model":
        data = {"cfg": checkpoint_data["cfg"]}
    elif payload == "list":
        data = [1, 2, 3]
    else:
        data = {"cfg": {"model": argparse.Namespace(layers=6)}, "model": checkpoint_data["model"]}
    path = tmp_path / f"{payload}.pt"
    torch.save(data, path)
    with pytest.raises(WeightsUnavailable) as error:
        load_cpu(str(path))
    assert expected in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "change",
    [
        {"encoder_layers": 12},  # cfg says 12 layers, weights are from 6
        {"encoder_layers": 3},  # more weights than layers
        {"encoder_embed_dim": 480},  # every matrix has the wrong shape
    ],
)
def test_checkpoint_with_mismatched_shapes_is_refused(tmp_path, checkpoint_data, change):
    data = {"cfg": copy.deepcopy(checkpoint_data["cfg"]), "model": checkpoint_data["model"]}
    for field, value in change.items():
        setattr(data["cfg"]["model"], field, value)
    path = tmp_path / "mismatch.pt"
    torch.save(data, path)
    with pytest.raises(WeightsUnavailable) as error:
        load_cpu(str(path))
    message = str(error.value)
    assert f"{path} does not match ESM-2's layout" in message
    assert "state_dict" in message


@pytest.mark.parametrize(
    "change, detail",
    [({"encoder_layers": 12}, "Missing key"), ({"encoder_layers": 3}, "Unexpected key"), ({"encoder_embed_dim": 480}, "size mismatch")],
)
def test_checkpoint_mismatch_message_says_what_does_not_match(tmp_path, checkpoint_data, change, detail):
    data = {"cfg": copy.deepcopy(checkpoint_data["cfg"]), "model": checkpoint_data["model"]}
    for field, value in change.items():
        setattr(data["cfg"]["model"], field, value)
    path = tmp_path / "mismatch.pt"
    torch.save(data, path)
    with pytest.raises(WeightsUnavailable, match=detail):
        load_cpu(str(path))


# ---------------------------------------------------------------- pretrained, offline


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub directory; the previous one is restored afterwards."""
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored at teardown
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    assert Path(torch.hub.get_dir()) == hub
    return hub


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """fair-esm's downloader raises URLError; returns the names it was asked for."""
    calls: list[str] = []

    def offline(name, *args, **kwargs):
        calls.append(name)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(esm.pretrained, "load_model_and_alphabet_hub", offline)
    return calls


def test_pretrained_offline_without_cache_explains_what_to_do(empty_hub, no_network):
    assert not pretrained_available(PRETRAINED_8M)
    with pytest.raises(WeightsUnavailable) as error:
        load_cpu(PRETRAINED_8M)
    assert no_network == [PRETRAINED_8M]
    message = str(error.value)
    expected_file = empty_hub / "checkpoints" / f"{PRETRAINED_8M}.pt"
    assert str(expected_file) in message
    assert "URLError" in message and "no network" in message
    assert "local checkpoint" in message
    assert "demo-8M" in message


def test_pretrained_offline_names_matching_demo_size(empty_hub, no_network):
    with pytest.raises(WeightsUnavailable, match=r"\(demo-35M\)"):
        load_cpu("esm2_t12_35M_UR50D")


def test_checkpoint_in_hub_cache_makes_pretrained_available(empty_hub, demo_fp32):
    demo, _ = demo_fp32
    assert not pretrained_available(PRETRAINED_8M)
    target = empty_hub / "checkpoints" / f"{PRETRAINED_8M}.pt"
    target.parent.mkdir(parents=True)
    save_checkpoint(demo, target)
    assert pretrained_available(PRETRAINED_8M)
    assert not pretrained_available("esm2_t12_35M_UR50D")


def test_pretrained_from_hub_cache(empty_hub, no_network, demo_fp32):
    demo, alphabet = demo_fp32
    target = empty_hub / "checkpoints" / f"{PRETRAINED_8M}.pt"
    target.parent.mkdir(parents=True)
    save_checkpoint(demo, target)
    assert pretrained_available(PRETRAINED_8M)

    model, _ = load_cpu(PRETRAINED_8M)
    assert no_network == []  # read from the cache, no download attempted
    assert model.weights == "pretrained"
    assert model.name == PRETRAINED_8M
    assert_same_state(model, demo)

    tokens = padded_tokens(alphabet, SMALL_BATCH[:2])
    with torch.inference_mode():
        assert torch.equal(model(tokens)["logits"], demo(tokens)["logits"])


def test_corrupt_file_in_hub_cache_is_refused(empty_hub, no_network):
    target = empty_hub / "checkpoints" / f"{PRETRAINED_8M}.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"partial download \x00\x01")
    with pytest.raises(WeightsUnavailable, match=re.escape(f"cannot read checkpoint {target}")):
        load_cpu(PRETRAINED_8M)
    assert no_network == []


# ---------------------------------------------------------------- layer numbers


def test_layer_indices_all_by_default(demo_fp32):
    model, _ = demo_fp32
    assert layer_indices(model) == [0, 1, 2, 3, 4, 5, 6]


def test_layer_indices_negative_and_deduplicated(demo_fp32):
    model, _ = demo_fp32
    assert layer_indices(model, [-1]) == [6]
    assert layer_indices(model, [-7]) == [0]
    assert layer_indices(model, [6, -1, 2, 2, 0]) == [0, 2, 6]


@pytest.mark.parametrize("layer", [7, 9, -8, 100])
def test_layer_indices_out_of_range(demo_fp32, layer):
    model, _ = demo_fp32
    with pytest.raises(ValueError) as error:
        layer_indices(model, [layer])
    message = str(error.value)
    assert f"layer {layer} is out of range" in message
    assert "0 … 6" in message
    assert "demo-8M" in message


# ---------------------------------------------------------------- float64 reference copy


def test_reference_copy_is_float64_with_same_weights(demo_fp32):
    model, alphabet = demo_fp32
    before = {key: value.clone() for key, value in model.state_dict().items()}

    wide = reference_copy(model, torch.float64)

    assert isinstance(wide, ESM2WithFlashAttention)
    assert wide.dtype == torch.float64
    assert wide.esm2 is not model.esm2
    assert (wide.name, wide.weights, wide.backend) == ("demo-8M", "demo", "reference")
    assert not wide.training and not any(p.requires_grad for p in wide.parameters())
    for key, value in wide.named_parameters():
        assert value.dtype == torch.float64
        assert torch.equal(value, before[key].double()), key

    # The original is untouched.
    assert model.dtype == torch.float32
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    assert model.esm2.layers[0].self_attn.rot_emb.inv_freq.dtype == torch.float32

    # Rotary frequencies are recomputed in float64, not the float32 values widened.
    head_dim = model.embed_dim // model.esm2.attention_heads
    exact = rotary_inv_freq(head_dim, torch.float64)
    widened = rotary_inv_freq(head_dim, torch.float32).double()
    assert not torch.equal(exact, widened)  # so the check below can tell them apart
    for layer in wide.esm2.layers:
        inv_freq = layer.self_attn.rot_emb.inv_freq
        assert inv_freq.dtype == torch.float64
        assert torch.equal(inv_freq, exact)

    tokens = padded_tokens(alphabet, SMALL_BATCH[:2])
    with torch.inference_mode():
        out = wide(tokens, repr_layers=[6])["representations"][6]
        narrow = model(tokens, repr_layers=[6])["representations"][6]
    assert out.dtype == torch.float64
    assert torch.allclose(out, narrow.double(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- attention backends on a CPU


def test_auto_backend_on_cpu_is_reference(demo_fp32):
    model, _ = demo_fp32
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert resolve_backend("auto", CPU, dtype) == "reference"
    assert resolve_backend("reference", CPU, torch.float32) == "reference"
    assert model.resolved_backend() == "reference"


@pytest.mark.parametrize("backend", ["torch-flash", "flash-attn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_flash_backends_need_cuda(backend, dtype):
    with pytest.raises(BackendUnavailable) as error:
        resolve_backend(backend, CPU, dtype)
    message = str(error.value)
    assert repr(backend) in message
    assert "CUDA" in message
    assert "Available here: reference" in message


def test_unknown_backend_is_refused():
    with pytest.raises(BackendUnavailable) as error:
        resolve_backend("xformers", CPU, torch.float32)
    message = str(error.value)
    assert "unknown attention backend 'xformers'" in message
    for name in BACKENDS:
        assert name in message


def test_forward_packed_with_flash_backend_on_cpu_raises(demo_fp32):
    model, alphabet = demo_fp32
    pack = pack_sequences(alphabet, SMALL_BATCH[:2])
    with pytest.raises(BackendUnavailable, match="CUDA"):
        model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [6], backend="torch-flash")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [6], backend="flash-attn")
    # The reference backend still runs on the same inputs.
    out = model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [6], backend="reference")
    assert out["backend"] == "reference"
    assert out["representations"][6].shape == (pack.input_ids.numel(), 320)


def test_model_constructed_with_flash_backend_fails_on_cpu():
    model, alphabet = load_cpu("demo-8M", backend="torch-flash")
    assert model.backend == "torch-flash"
    pack = pack_sequences(alphabet, SMALL_BATCH[:1])
    with pytest.raises(BackendUnavailable, match="CUDA"):
        model.resolved_backend()
    with pytest.raises(BackendUnavailable, match="CUDA"):
        model.forward_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, [6])
