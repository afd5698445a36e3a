"""Reading a user's classification head (.safetensors or a state_dict, weights only) and per-sequence
extra features (CSV/TSV/Parquet with an id column, or .npy in input order). Anything unusable is a
HeadError that says why; a pickle that would run code is refused without running it."""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from core.analysis.heads import DEFAULT_ACTIVATION, MAX_LISTED, ClassificationHead, HeadError, Layer, check_activation, check_layers


SAFETENSORS_SUFFIXES: tuple[str, ...] = (".safetensors",)

TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".parquet")

MAX_HEAD_UNPACKED_BYTES = 200_000_000  # a torch.save head's parts unpacked: a 5120 × 4096 float32 MLP is 84 MB


def _natural_key(prefix: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key putting 'fc2' before 'fc10' and '2' before '10'; ints and text never compared to each other."""
    return tuple(
        (0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk)
        for chunk in re.split(r"(\d+)", prefix)
        if chunk
    )


def _to_float64(value: torch.Tensor) -> np.ndarray:
    """A tensor of any floating or integer dtype (bf16 included) as a float64 numpy array."""
    return value.detach().to(device="cpu", dtype=torch.float64).numpy()


def _discover_layers(tensors: Mapping[str, np.ndarray]) -> tuple[list[Layer], list[str]]:
    """Pair '<prefix>.weight'/'<prefix>.bias' tensors (or bare 'weight'/'bias') into layers, naturally sorted.

    Returns (layers, prefixes); a missing bias is zeros. Tensors that are neither a weight nor a
    bias are refused rather than ignored: a head with e.g. a LayerNorm or BatchNorm would give
    wrong probabilities if we silently dropped it.
    """
    weights: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "weight":
            weights[prefix] = value
        elif leaf == "bias":
            biases[prefix] = value
        else:
            unknown.append(key)
    if not weights:
        found = ", ".join(sorted(tensors)[:MAX_LISTED]) or "none"
        raise HeadError(f"no weight tensors found (expected 'weight' or '<layer>.weight' keys; found: {found})")
    if unknown:
        raise HeadError(
            f"tensors that are not a linear layer's weight or bias: {', '.join(sorted(unknown)[:MAX_LISTED])}; "
            "only Linear layers with one activation between them are supported"
        )
    orphans = sorted(set(biases) - set(weights))
    if orphans:
        raise HeadError(f"bias without a weight for layer(s): {', '.join(p or '(top level)' for p in orphans)}")
    prefixes = sorted(weights, key=_natural_key)
    layers = []
    for prefix in prefixes:
        weight = weights[prefix]
        bias = biases.get(prefix)
        if bias is None:
            bias = np.zeros(weight.shape[0] if weight.ndim == 2 else 0, dtype=np.float64)
        layers.append((weight, bias))
    return layers, [p or "(top level)" for p in prefixes]


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """(tensors as float64 numpy, the metadata's 'activation' or None)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: _to_float64(handle.get_tensor(key)) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError and others for bad bytes
        raise HeadError(f"{path.name} is not a readable safetensors file ({type(error).__name__}: {error})") from error
    return tensors, metadata.get("activation")


def _torch_load_reason(text: str) -> str:
    """The one line of a torch.load error that says what was wrong, without torch's boilerplate."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|Check the documentation|$)", text, re.S)
    reason = (found.group(1) if found else text).strip()
    # Drop torch's advice to allowlist the global: that is exactly what must not be done here.
    reason = reason.split(". Please")[0]
    return reason.splitlines()[0].strip() if reason else ""


def _zip_unpacked_bytes(path: Path) -> int:
    """What a torch.save file (a ZIP archive) declares its parts unpack to; 0 for another file. torch writes
    them stored, not compressed, but a crafted archive may deflate half a gigabyte of zeros into 0.5 MB."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0


def _read_torch(path: Path) -> tuple[dict[str, np.ndarray], Any]:
    """(tensor entries as float64 numpy, the top-level 'activation' entry or None) of a plain state_dict file."""
    unpacked = _zip_unpacked_bytes(path)
    if unpacked > MAX_HEAD_UNPACKED_BYTES:
        raise HeadError(f"{path.name} unpacks to {unpacked:,} bytes, more than the {MAX_HEAD_UNPACKED_BYTES:,} a head "
                        "is read up to; nothing in it was read")
    try:
        # weights_only=True passed explicitly: the restricted unpickler refuses any global that
        # could run code, before running it, and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot override it.
        with warnings.catch_warnings():
            # Raw pickles of protocol > 2 warn before being refused; the refusal says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error)
        detail = _torch_load_reason(text) or type(error).__name__
        if "Weights only load failed" in text:
            raise HeadError(
                f"{path.name} refused: not a plain tensor file (weights_only load failed: {detail}); only a "
                "state_dict of tensors is read, and nothing in the file was executed. If it is a pickled model, "
                "save model.state_dict() with torch.save or export to .safetensors"
            ) from error
        raise HeadError(
            f"{path.name} is not a readable torch state_dict file ({type(error).__name__}: {detail})"
        ) from error
    if isinstance(obj, torch.Tensor):
        raise HeadError(f"{path.name} holds a single tensor; save the head's state_dict() (a dict of named tensors)")
    if not isinstance(obj, Mapping):
        raise HeadError(f"{path.name} holds a {type(obj).__name__}; expected a state_dict (a dict of named tensors)")
    activation = obj.get("activation")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping):
        raise HeadError(f"{path.name}: 'state_dict' is a {type(state).__name__}, not a dict of named tensors")
    tensors = {str(k): _to_float64(v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, activation


def load_head(path: str | Path) -> ClassificationHead:
    """Read a linear or MLP head from .safetensors (metadata key 'activation') or a torch state_dict file.

    Weights are converted to float64. Raises HeadError, saying why, for anything unusable,
    including a pickle that would run code (refused without running it).
    """
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"head file not found: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        tensors, activation = _read_safetensors(path)
    else:
        tensors, activation = _read_torch(path)
    layers, names = _discover_layers(tensors)
    check_layers(layers, names)
    activation = check_activation(DEFAULT_ACTIVATION if activation is None else activation)
    return ClassificationHead(layers=tuple(layers), activation=activation, source=path.name)


def _frame_to_features(frame: pd.DataFrame, ids: Sequence[str], source: str) -> np.ndarray:
    """Rows of a table with an 'id' column, in the order of ids, as (n, k) float64."""
    if "id" not in frame.columns:
        raise HeadError(f"{source} has no 'id' column (columns: {', '.join(map(str, frame.columns[:MAX_LISTED]))})")
    feature_columns = [c for c in frame.columns if c != "id"]
    if not feature_columns:
        raise HeadError(f"{source} has an 'id' column but no feature columns")
    file_ids = frame["id"].astype(str).str.strip()
    duplicated = file_ids[file_ids.duplicated()].unique().tolist()
    if duplicated:
        raise HeadError(
            f"{source} lists {len(duplicated)} id(s) more than once: {', '.join(duplicated[:MAX_LISTED])}"
            + (" …" if len(duplicated) > MAX_LISTED else "")
        )
    wanted = [str(i) for i in ids]
    present = set(file_ids)
    missing = [i for i in dict.fromkeys(wanted) if i not in present]
    if missing:
        raise HeadError(
            f"{source} has no row for {len(missing)} sequence id(s): {', '.join(missing[:MAX_LISTED])}"
            + (" …" if len(missing) > MAX_LISTED else "")
        )
    rows = frame.drop(columns="id").set_axis(file_ids.to_numpy(), axis=0).loc[wanted]
    out = np.empty((len(wanted), len(feature_columns)), dtype=np.float64)
    for j, column in enumerate(feature_columns):
        raw = rows[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise HeadError(
                f"{source}: column '{column}' has a value that is not a finite number for id {wanted[k]} "
                f"({raw.iloc[k]!r}); {int(bad.sum())} such value(s) in that column"
            )
        out[:, j] = values
    return out


def _check_npy_shape(path: Path, rows: int) -> None:
    """An .npy array's shape from its header, before any data is read: 2-D with ``rows`` rows, and no more
    data than the file holds (a header alone could ask for terabytes)."""
    with path.open("rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(file)
        data_bytes = path.stat().st_size - file.tell()
    if len(shape) != 2 or shape[0] != rows:
        raise HeadError(f"{path.name} has shape {shape}; it must be 2-D with one row per sequence ({rows} rows, in "
                        "input order)")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize > data_bytes and not dtype.hasobject:
        raise HeadError(f"{path.name} declares a {shape[0]} × {shape[1]} {dtype} array, more than its "
                        f"{data_bytes:,} bytes of data hold")


def load_extra_features(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """Per-sequence extra features, (len(ids), k) float64, rows in the order of ids.

    .csv/.tsv/.parquet: an 'id' column plus numeric feature columns, matched to ids by id
    (extra ids in the file are ignored). .npy: a 2-D array already in the order of ids.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"extra-features file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            _check_npy_shape(path, len(ids))
            array = np.load(path, allow_pickle=False)
        except HeadError:
            raise
        except Exception as error:
            raise HeadError(f"{path.name} is not a readable plain .npy array ({type(error).__name__}: {error})") from error
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise HeadError(f"{path.name} holds {array.dtype} values, not numbers")
        array = array.astype(np.float64)
        bad = np.argwhere(~np.isfinite(array))
        if bad.size:
            row, col = bad[0]
            raise HeadError(f"{path.name}: row {row} (id {ids[row]}) column {col} is not a finite number")
        return array
    if suffix not in TABLE_SUFFIXES:
        raise HeadError(f"unsupported extra-features file {path.name}; use .csv, .tsv, .parquet or .npy")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            # Read as text so ids like '007' survive and a bad cell can be quoted back to the user.
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except Exception as error:
        raise HeadError(f"{path.name} is not a readable {suffix[1:]} table ({type(error).__name__}: {error})") from error
    frame.columns = [str(c).strip() for c in frame.columns]
    return _frame_to_features(frame, ids, path.name)
