"""User-supplied heads: loading, agreement with torch, refusals, and extra-feature alignment."""

from __future__ import annotations

import io

import pickle
import random
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from core.analysis.heads import ClassificationHead, head_inputs, HeadError
from core.input.head_files import load_extra_features, load_head


def _double(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for parameter in module.parameters():
        nn.init.normal_(parameter, std=0.5)
    return module.double().eval()


def _torch_probs(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()


def _save(state: dict, path, metadata: dict | None = None) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    else:
        torch.save(state, path)


def _x(n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=(n, width))


@pytest.mark.parametrize("name", ["head.safetensors", "head.pt", "head.pth"])
def test_linear_head_matches_torch_linear_softmax(tmp_path, name):
    linear = _double(nn.Linear(480, 3), seed=1)
    path = tmp_path / name
    _save(linear.state_dict(), path)
    head = load_head(path)
    x = _x(7, 480)
    np.testing.assert_allclose(head.probabilities(x), _torch_probs(linear, x), rtol=0, atol=1e-12)
    assert (head.in_features, head.n_classes, len(head.layers)) == (480, 3, 1)
    assert head.layers[0][0].dtype == np.float64 and head.layers[0][0].shape == (3, 480)
    assert head.describe() == f"linear 480→3 from {name}"


def test_wrapped_state_dict_with_metadata_entries_loads(tmp_path):
    linear = _double(nn.Linear(8, 2), seed=2)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": linear.state_dict(), "epoch": 12, "note": "trained on v1.0"}, path)
    x = _x(5, 8)
    np.testing.assert_allclose(load_head(path).probabilities(x), _torch_probs(linear, x), rtol=0, atol=1e-12)


def test_missing_bias_means_zeros_and_low_precision_weights_widen_exactly(tmp_path):
    weight = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.bfloat16)
    save_file({"weight": weight}, str(tmp_path / "h.safetensors"))
    head = load_head(tmp_path / "h.safetensors")
    np.testing.assert_array_equal(head.layers[0][0], weight.double().numpy())
    np.testing.assert_array_equal(head.layers[0][1], [0.0, 0.0])


def _mlp(activation: nn.Module, seed: int) -> nn.Sequential:
    return _double(nn.Sequential(nn.Linear(16, 32), activation, nn.Linear(32, 8), activation, nn.Linear(8, 2)), seed)


@pytest.mark.parametrize(
    "activation, module, name, how",
    [
        ("relu", nn.ReLU(), "mlp.pt", "default"),
        ("gelu", nn.GELU(), "mlp.safetensors", "metadata"),
        ("tanh", nn.Tanh(), "mlp.pt", "top-level entry"),
        ("gelu", nn.GELU(), "mlp.pt", "top-level entry"),
    ],
)
def test_mlp_matches_torch_sequential(tmp_path, activation, module, name, how):
    mlp = _mlp(module, seed=3)
    path = tmp_path / name
    if how == "default":
        torch.save(mlp.state_dict(), path)
    elif how == "metadata":
        _save(mlp.state_dict(), path, metadata={"activation": activation.upper()})
    else:
        torch.save({"state_dict": mlp.state_dict(), "activation": activation}, path)
    head = load_head(path)
    x = _x(11, 16)
    np.testing.assert_allclose(head.probabilities(x), _torch_probs(mlp, x), rtol=0, atol=1e-12)
    assert head.activation == activation
    assert head.describe() == f"MLP 16→32→8→2 ({activation}) from {name}"


def test_activation_is_read_not_assumed(tmp_path):
    # The same GELU weights read as ReLU (no metadata) must predict differently, else the gelu test proves nothing.
    mlp = _mlp(nn.GELU(), seed=3)
    _save(mlp.state_dict(), tmp_path / "plain.safetensors")
    x = _x(11, 16)
    assert np.abs(load_head(tmp_path / "plain.safetensors").probabilities(x) - _torch_probs(mlp, x)).max() > 1e-3


def _deep(n_linear: int, seed: int) -> nn.Sequential:
    # Widths all differ, so any wrong layer order fails to chain instead of passing by accident.
    widths = [5 + 2 * k for k in range(n_linear)] + [2]
    parts: list[nn.Module] = []
    for k in range(n_linear):
        parts += [nn.Linear(widths[k], widths[k + 1]), nn.ReLU()]
    return _double(nn.Sequential(*parts[:-1]), seed)


@pytest.mark.parametrize("style", ["sequential", "net.", "fc", "layers."])
def test_layer_names_sort_naturally(tmp_path, style):
    deep = _deep(11, seed=4)  # Sequential indices 0, 2, ..., 20: '10' and '20' sort before '2' as text
    renamed = {}
    for key, value in deep.state_dict().items():
        index, leaf = key.split(".")
        k = int(index) // 2
        prefix = {"sequential": index, "net.": f"net.{index}", "fc": f"fc{k + 1}", "layers.": f"layers.{k}"}[style]
        renamed[f"{prefix}.{leaf}"] = value
    items = list(renamed.items())
    random.Random(0).shuffle(items)  # the file's key order must not matter
    torch.save(dict(items), tmp_path / "deep.pt")
    head = load_head(tmp_path / "deep.pt")
    x = _x(4, 5)
    assert len(head.layers) == 11
    np.testing.assert_allclose(head.probabilities(x), _torch_probs(deep, x), rtol=0, atol=1e-12)


def test_probabilities_are_a_stable_softmax():
    head = ClassificationHead(layers=((np.array([[1.0], [-1.0]]), np.zeros(2)),), source="h")
    probs = head.probabilities(np.array([[0.0], [1.0], [1000.0], [-1000.0]]))
    np.testing.assert_allclose(probs[0], [0.5, 0.5])
    np.testing.assert_allclose(probs[1], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    np.testing.assert_array_equal(probs[2:], [[1.0, 0.0], [0.0, 1.0]])  # no overflow, no NaN
    with pytest.raises(HeadError, match=r"\(n, 1\)"):
        head.probabilities(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        head.layers[0][0][0, 0] = 5.0  # the head's arrays are read-only


def test_head_inputs_checks_width_and_hints_the_missing_columns():
    head = ClassificationHead(layers=((np.ones((2, 480)), np.zeros(2)),), source="h.pt")
    embeddings = _x(3, 320)
    with pytest.raises(HeadError) as caught:
        head_inputs(embeddings, None, head)
    message = str(caught.value)
    assert "480" in message and "320" in message and "--extra-features with 160 columns" in message
    extra = _x(3, 160, seed=1)
    inputs = head_inputs(embeddings, extra, head)
    np.testing.assert_array_equal(inputs, np.hstack([embeddings, extra]))
    assert head.probabilities(inputs).shape == (3, 2)
    with pytest.raises(HeadError, match="need 160 columns, not 100"):
        head_inputs(embeddings, _x(3, 100), head)
    with pytest.raises(HeadError, match="need 3 rows"):
        head_inputs(embeddings, _x(2, 160), head)
    with pytest.raises(HeadError, match="narrower than the embedding"):
        head_inputs(_x(3, 640), None, head)
    with pytest.raises(HeadError, match="drop --extra-features"):
        head_inputs(_x(3, 480), _x(3, 4), head)


class _WritesMarker:
    """Unpickling this opens (creates) a file: stands in for any code a hostile checkpoint runs."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plain_pickle_load(path) -> None:
    if zipfile.is_zipfile(path):  # torch.save's format: the pickle is the archive's data.pkl
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            with archive.open(name) as handle:
                unpickler = pickle.Unpickler(handle)
                # Tensors point at storages outside the pickle: hand back blank ones of the right size.
                unpickler.persistent_load = lambda pid: torch.storage.TypedStorage(pid[4], dtype=pid[1].dtype)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated
                    unpickler.load()
    else:
        with open(path, "rb") as handle:
            pickle.load(handle)


@pytest.mark.parametrize("how", ["torch.save", "torch.save beside real tensors", "raw pickle"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, how):
    marker = tmp_path / "MARKER"
    path = tmp_path / "head.pt"
    payload = _WritesMarker(str(marker))
    if how == "torch.save":
        torch.save({"weight": payload}, path)
    elif how == "torch.save beside real tensors":
        torch.save({"weight": torch.ones(2, 4, dtype=torch.float64), "bias": torch.zeros(2), "x": payload}, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    _plain_pickle_load(path)  # control: an unrestricted load does run it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(HeadError, match="refused: not a plain tensor file \\(weights_only load failed: "):
        load_head(path)
    assert not marker.exists()


def _state(*shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> dict[str, torch.Tensor]:
    state = {}
    for k, (w, b) in enumerate(shapes):
        state[f"{2 * k}.weight"] = torch.ones(w, dtype=torch.float64)
        state[f"{2 * k}.bias"] = torch.zeros(b, dtype=torch.float64)
    return state


def _write_case(tmp_path, case: str):
    path = tmp_path / ("head.safetensors" if case.endswith("safetensors") else "head.pt")
    if case == "missing file":
        return tmp_path / "absent.safetensors"
    if case.startswith("garbage"):
        path.write_bytes(b"\x00\x17not a model at all\xff" * 20)
        return path
    state, metadata = {}, None
    if case == "1-D weight":
        state = {"weight": torch.ones(4), "bias": torch.zeros(4)}
    elif case == "bias shape":
        state = _state(((3, 4), (2,)))
    elif case == "not chaining":
        state = _state(((8, 4), (8,)), ((2, 6), (2,)))
    elif case == "single class":
        state = _state(((8, 4), (8,)), ((1, 8), (1,)))
    elif case == "NaN weight":
        state = _state(((8, 4), (8,)), ((2, 8), (2,)))
        state["2.weight"][1, 3] = float("nan")
    elif case == "infinite bias":
        state = _state(((2, 4), (2,)))
        state["0.bias"][0] = float("inf")
    elif case == "no weights":
        state = {"scale": torch.ones(3)}
    elif case == "LayerNorm stats":
        state = _state(((8, 4), (8,)), ((2, 8), (2,)))
        state["1.running_mean"] = torch.zeros(8)
    elif case == "unknown activation safetensors":
        state, metadata = _state(((2, 4), (2,))), {"activation": "swish"}
    elif case == "single tensor":
        torch.save(torch.ones(2, 4), path)
        return path
    _save(state, path, metadata)
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing file", r"head file not found: .*absent\.safetensors"),
        ("garbage .pt", r"head\.pt .*not a (plain tensor|readable torch)"),
        ("garbage safetensors", r"head\.safetensors is not a readable safetensors file"),
        ("1-D weight", r"layer '\(top level\)' has shape \(4,\); .*2-D"),
        ("bias shape", r"bias of layer '0' has shape \(2,\) .* needs a bias of shape \(3,\)"),
        ("not chaining", r"layer '0' outputs 8 features but the next layer '2' takes 6"),
        ("single class", r"last layer '2' has 1 output; .*at least 2 classes"),
        ("NaN weight", r"weight of layer '2' has 1 non-finite value"),
        ("infinite bias", r"bias of layer '0' has 1 non-finite value"),
        ("no weights", r"no weight tensors found .*scale"),
        ("LayerNorm stats", r"not a linear layer's weight or bias: 1\.running_mean"),
        ("unknown activation safetensors", r"unknown activation 'swish'; use one of relu, gelu, tanh"),
        ("single tensor", r"holds a single tensor; save the head's state_dict"),
    ],
)
def test_unusable_heads_raise_head_error_saying_why(tmp_path, case, expected):
    with pytest.raises(HeadError, match=expected):
        load_head(_write_case(tmp_path, case))


def test_a_head_archive_that_unpacks_past_the_limit_is_refused_unread(tmp_path, monkeypatch):
    """torch.save writes its parts stored; a crafted archive can deflate them (half a gigabyte of zeros into
    0.5 MB): what the parts declare unpacked is checked before torch reads any."""
    import core.input.head_files as head_files

    torch.save({"weight": torch.zeros(2, 40_000)}, tmp_path / "plain.pt")  # 320 kB of float32
    with zipfile.ZipFile(tmp_path / "plain.pt") as plain, \
            zipfile.ZipFile(tmp_path / "deflated.pt", "w", compression=zipfile.ZIP_DEFLATED) as deflated:
        for info in plain.infolist():
            deflated.writestr(info.filename, plain.read(info.filename))
    assert (tmp_path / "deflated.pt").stat().st_size < 10_000
    assert load_head(tmp_path / "deflated.pt").layers[0][0].shape == (2, 40_000)  # under the limit: read
    monkeypatch.setattr(head_files, "MAX_HEAD_UNPACKED_BYTES", 300_000)
    with pytest.raises(HeadError, match=r"deflated.pt unpacks to 320,\d{3} bytes, more than the 300,000 a head is read "
                                        r"up to; nothing in it was read"):
        load_head(tmp_path / "deflated.pt")


def test_head_error_is_a_value_error():
    assert issubclass(HeadError, ValueError)
    with pytest.raises(HeadError, match="unknown activation 'elu'"):
        ClassificationHead(layers=((np.ones((2, 3)), np.zeros(2)),), activation="elu", source="x")


IDS = ["seq_b", "007", "seq_a"]


def test_csv_rows_align_to_ids_by_id(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text("id,f1,f2\nseq_a,1.5,2\nunused,9,9\n007,-3,4e-2\nseq_b,5,6\n")
    np.testing.assert_array_equal(load_extra_features(path, IDS), [[5.0, 6.0], [-3.0, 0.04], [1.5, 2.0]])
    assert load_extra_features(path, IDS).dtype == np.float64


def test_tsv_and_parquet_align_too(tmp_path):
    frame = pd.DataFrame({"f1": [1.0, 2.0, 3.0], "id": ["seq_a", "seq_b", "007"]})
    frame.to_csv(tmp_path / "extra.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "extra.parquet")
    for name in ("extra.tsv", "extra.parquet"):
        np.testing.assert_array_equal(load_extra_features(tmp_path / name, IDS), [[2.0], [3.0], [1.0]])


def test_missing_ids_are_named_and_counted(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text("id,f1\nseq_a,1\n")
    with pytest.raises(HeadError, match=r"no row for 2 sequence id\(s\): seq_b, 007"):
        load_extra_features(path, IDS)
    many = [f"m{k}" for k in range(15)]
    with pytest.raises(HeadError, match=r"no row for 15 sequence id\(s\): m0, .*m9 …") as caught:
        load_extra_features(path, many)
    assert "m10" not in str(caught.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("id,f1\nseq_a,1\nseq_b,2\n007,3\nseq_a,4\n", r"lists 1 id\(s\) more than once: seq_a"),
        ("id,f1,label\nseq_a,1,x\nseq_b,2,y\n007,3,z\n", r"column 'label' .* for id seq_b \('y'\)"),
        ("id,f1\nseq_a,1\nseq_b,\n007,3\n", r"column 'f1' .* for id seq_b \(''\)"),
        ("id,f1\nseq_a,1\nseq_b,nan\n007,3\n", r"column 'f1' .* for id seq_b \('nan'\)"),
        ("name,f1\nseq_a,1\n", r"has no 'id' column \(columns: name, f1\)"),
        ("id\nseq_a\nseq_b\n007\n", r"no feature columns"),
    ],
)
def test_bad_feature_tables_raise_head_error(tmp_path, text, expected):
    path = tmp_path / "extra.csv"
    path.write_text(text)
    with pytest.raises(HeadError, match=expected):
        load_extra_features(path, IDS)


def test_npy_is_taken_in_input_order_and_must_have_one_row_per_id(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "ok.npy", array)
    loaded = load_extra_features(tmp_path / "ok.npy", IDS)
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, array)
    np.save(tmp_path / "short.npy", array[:2])
    with pytest.raises(HeadError, match=r"shape \(2, 2\); .*3 rows"):
        load_extra_features(tmp_path / "short.npy", IDS)
    np.save(tmp_path / "flat.npy", np.arange(3.0))
    with pytest.raises(HeadError, match="must be 2-D"):
        load_extra_features(tmp_path / "flat.npy", IDS)
    np.save(tmp_path / "objects.npy", np.array([[{}], [{}], [{}]], dtype=object), allow_pickle=True)
    with pytest.raises(HeadError, match="not a readable plain .npy"):
        load_extra_features(tmp_path / "objects.npy", IDS)
    with pytest.raises(HeadError, match="not found"):
        load_extra_features(tmp_path / "absent.npy", IDS)
    # a header alone may declare any shape: it is checked before any data is read (or memory asked for)
    for name, shape in (("tall.npy", (20_000_000, 100)), ("wide.npy", (3, 10**12))):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
        (tmp_path / name).write_bytes(header.getvalue() + bytes(64))
    with pytest.raises(HeadError, match=r"shape \(20000000, 100\); .*3 rows"):
        load_extra_features(tmp_path / "tall.npy", IDS)
    with pytest.raises(HeadError, match=r"declares a 3 × 1000000000000 float64 array, more than its 64 bytes"):
        load_extra_features(tmp_path / "wide.npy", IDS)
    (tmp_path / "extra.json").write_text("{}")
    with pytest.raises(HeadError, match="unsupported extra-features file"):
        load_extra_features(tmp_path / "extra.json", IDS)
