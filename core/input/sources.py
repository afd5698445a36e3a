"""Where the command line's input comes from: a path (a file, a FIFO, ``/dev/fd/N`` of a process
substitution, a device) or stdin. Anything readable that is not a folder is accepted; what it holds is
checked by core.input.fasta."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, TextIO

from core.input.records import MAX_INPUT_BYTES


class InputUnavailable(Exception):
    """The input cannot be opened at all (missing, a folder, stdin closed); the message says which."""


def input_path(text: str) -> Path:
    """``text`` as a path to read: anything that exists and is not a folder (FIFOs and pipes included,
    which ``Path.is_file`` would refuse). Raises InputUnavailable naming the path otherwise."""
    path = Path(text)
    try:
        is_folder = path.is_dir()
        exists = is_folder or os.path.exists(path)
    except OSError as error:  # e.g. a name too long for the file system
        raise InputUnavailable(f"cannot open input {text}: {error.strerror or error}") from None
    if is_folder:
        raise InputUnavailable(f"{text} is a folder, not a FASTA file; give a file inside it")
    if not exists:
        raise InputUnavailable(f"input file not found: {text}")
    return path


def read_stdin(stream: TextIO | None, limit: int = MAX_INPUT_BYTES) -> bytes:
    """Up to ``limit`` + 1 bytes of ``stream`` (sys.stdin), so that input over the limit is seen as such.
    A closed or missing stdin raises InputUnavailable instead of a traceback."""
    if stream is None:  # Python sets sys.stdin to None when file descriptor 0 is closed
        raise InputUnavailable("stdin is closed; pipe FASTA into '-' or pass a file")
    binary: BinaryIO | None = getattr(stream, "buffer", None)
    try:
        return binary.read(limit + 1) if binary is not None else stream.read(limit + 1).encode("utf-8")
    except (OSError, ValueError) as error:  # ValueError: I/O operation on a closed file
        raise InputUnavailable(f"cannot read stdin ({error}); pipe FASTA into '-' or pass a file") from None
