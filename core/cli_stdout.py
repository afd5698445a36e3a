"""Standard output for a command whose reader may leave early (``python -m core compare … | head``)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, TextIO


class StdoutWhileReaderStays:
    """``stream`` that falls silent once its reader has gone, instead of raising BrokenPipeError out of
    the next print: the comparison still writes its files and returns its exit code."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self.reader_gone = True
        with contextlib.suppress(OSError, ValueError):  # the interpreter's own last flush then goes nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Within the block, sys.stdout is a StdoutWhileReaderStays over the current one."""
    saved = sys.stdout
    sys.stdout = StdoutWhileReaderStays(saved)
    try:
        yield
    finally:
        sys.stdout = saved
