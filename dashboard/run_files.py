"""Reading a stored run's files defensively: anything empty, truncated, not JSON, of the wrong shape or
missing an array becomes a DamagedRun that names the file and what is wrong, in words a user can read
("damaged: status.json is not valid JSON"), never a traceback. The readers return typed values."""

from __future__ import annotations

import json
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from core.input.records import InputProblem, ParsedInput, ProteinRecord

class DamagedRun(ValueError):
    """A run file that cannot be used; ``str()`` is 'damaged: <file> <what is wrong>'."""

    def __init__(self, file: str, problem: str):
        self.file, self.problem = file, problem
        super().__init__(f"damaged: {file} {problem}")


@dataclass(frozen=True)
class Status:
    """status.json, checked: the state, the recorded error, when it was created, how many sequences and
    which model; ``pruned``: how many older runs were removed to make room for this one."""

    state: str
    error: str | None
    created_at: str
    n_sequences: int
    model: str
    pruned: int = 0


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A missing or unreadable ``path`` as a DamagedRun naming it."""
    try:
        yield
    except FileNotFoundError:
        raise DamagedRun(path.name, "is missing") from None
    except OSError as error:
        raise DamagedRun(path.name, f"cannot be read ({error.strerror or error})") from None


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; DamagedRun when it is missing, unreadable, empty or not JSON."""
    with _reading(path):
        text = path.read_bytes()
    if not text.strip():
        raise DamagedRun(path.name, "is empty")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise DamagedRun(path.name, "is not valid JSON (truncated or corrupt)") from None


FULL_CHECK_BYTES = 4_000_000  # larger JSON files are only checked at both ends when a run is listed


def looks_whole(path: Path) -> None:
    """A cheap check of a large JSON object file for the run history: present, and beginning and ending
    as a JSON object does (a truncated write does not); DamagedRun otherwise. Opening the run parses it."""
    with _reading(path):
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(64)
            handle.seek(max(size - 64, 0))
            tail = handle.read()
    if not head.strip():
        raise DamagedRun(path.name, "is empty")
    if not (head.lstrip().startswith(b"{") and tail.rstrip().endswith(b"}")):
        raise DamagedRun(path.name, "is not valid JSON (truncated or corrupt)")


def read_object(path: Path) -> dict[str, Any]:
    """read_json, which must give a JSON object."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise DamagedRun(path.name, f"holds a JSON {type(document).__name__}, not an object")
    return document


def field(document: dict[str, Any], key: str, types: type | tuple[type, ...], file: str, default: Any = ...) -> Any:
    """``document[key]`` when it is one of ``types`` (a bool counts only where bool is named); else
    ``default`` when the key is absent and one is given; DamagedRun otherwise."""
    if key not in document:
        if default is ...:
            raise DamagedRun(file, f"has no '{key}'")
        return default
    value = document[key]
    named = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, named) or (isinstance(value, bool) and bool not in named):
        raise DamagedRun(file, f"has a '{key}' of the wrong type ({type(value).__name__})")
    return value


def parse_status(document: dict[str, Any], states: tuple[str, ...]) -> Status:
    """status.json's document as a Status (its state one of ``states``)."""
    file = "status.json"
    state = field(document, "state", str, file)
    if state not in states:
        raise DamagedRun(file, f"has an unknown state {state!r}")
    n_sequences = field(document, "n_sequences", int, file, 0)
    error = field(document, "error", (str, type(None)), file, None)
    return Status(state, error, field(document, "created_at", str, file, ""), max(int(n_sequences), 0),
                  field(document, "model", str, file, ""), len(field(document, "pruned_runs", list, file, [])))


def parse_input(document: dict[str, Any]) -> ParsedInput:
    """input.json's document: the compared records with their warnings, and the refused ones."""
    file = "input.json"
    records, problems = field(document, "records", list, file), field(document, "problems", list, file)
    try:
        return ParsedInput(
            records=[ProteinRecord(_text(r["id"]), _text(r["sequence"]), tuple(_text(w) for w in r["warnings"]))
                     for r in records],
            problems=[InputProblem(_text(p["record_id"]), _text(p["message"]), _text(p["severity"])) for p in problems],
        )
    except (KeyError, TypeError, ValueError):
        raise DamagedRun(file, "has a record or problem of the wrong shape") from None


def check_settings(document: dict[str, Any]) -> dict[str, Any]:
    """settings.json's document, each known setting of the type dashboard.settings.Settings gives it."""
    from dashboard.settings import Settings  # the page's settings; imported late, they import the pipeline

    types = {"str": (str,), "int": (int,), "int | None": (int, type(None)), "float": (int, float), "bool": (bool,)}
    for setting in fields(Settings):
        if setting.name in document and str(setting.type) in types:
            field(document, setting.name, types[str(setting.type)], "settings.json")
    return document


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def read_npz(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an .npz file, read whole (so a corrupt member fails its CRC here)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in names if name not in arrays.files]
            if missing:
                raise DamagedRun(path.name, f"lacks the array {missing[0]}")
            return {name: arrays[name] for name in names}
    except FileNotFoundError:
        raise DamagedRun(path.name, "is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        if isinstance(error, DamagedRun):
            raise
        raise DamagedRun(path.name, "is truncated or corrupt (it cannot be read as .npz)") from None


def npz_problem(path: Path, names: list[str]) -> str | None:
    """What is wrong with an .npz file judged from its zip directory alone (cheap: no array is read), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            present = set(archive.namelist())
    except FileNotFoundError:
        return str(DamagedRun(path.name, "is missing"))
    except (zipfile.BadZipFile, OSError, ValueError):
        return str(DamagedRun(path.name, "is truncated or corrupt (it cannot be read as .npz)"))
    missing = [name for name in names if f"{name}.npy" not in present]
    return str(DamagedRun(path.name, f"lacks the array {missing[0]}")) if missing else None
