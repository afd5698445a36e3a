"""Input bytes to text: a file (read at most one byte past the size limit) or bytes, gunzipped when they
are gzip, decoded (UTF-8; UTF-16/32 by their byte-order mark; other 8-bit text as Windows-1252, warned)
or, for an Excel workbook (.xlsx, .xls), its first sheet as CSV (core.input.workbooks); refused in one
message when they are too large, binary, or a known binary format (another office document or ZIP
archive, bzip2, xz, zstd, a PDF), named so that the user knows what to give instead."""

from __future__ import annotations

import codecs
import gzip
import io
import os
import re
import zlib
from pathlib import Path

from core.input.records import INPUT_LIMIT_TEXT, MAX_INPUT_BYTES, InputProblem, input_problem, size_text
from core.input.workbooks import office_document

_GZIP_MAGIC = b"\x1f\x8b"

# (magic bytes at the start, what the input is, what to give instead) for binary formats named in the refusal.
_BINARY_FORMATS = (
    (re.compile(rb"PK\x03\x04"), "a ZIP archive", "unzip it and give the FASTA file inside"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2-compressed", "decompress it, or compress it with gzip instead"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz-compressed", "decompress it, or compress it with gzip instead"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd-compressed", "decompress it, or compress it with gzip instead"),
    (re.compile(rb"%PDF-"), "a PDF document", "give the sequences as FASTA text"),
)


def text_of(source: str | os.PathLike[str] | bytes) -> tuple[str, InputProblem | None] | InputProblem:
    """The text of a file path (a ``str`` is a path) or of raw bytes, with a warning when it was not UTF-8
    text (a workbook's sheet, or 8-bit text read as Windows-1252); or the one problem that stops it being
    read (unreadable, too large before or after gunzip, corrupt gzip, binary, a named binary format)."""
    data = _load_bytes(source)
    if isinstance(data, InputProblem):
        return data
    document = office_document(data)
    if document is not None:
        return document
    named = _binary_format(data)
    if named is not None:
        return named
    return _decode(data)


def text_too_large(text: str) -> InputProblem | None:
    """The size problem for text over MAX_INPUT_BYTES as UTF-8, or None (cheap for small text)."""
    if len(text) * 4 <= MAX_INPUT_BYTES:  # a character is at most 4 UTF-8 bytes
        return None
    n_bytes = len(text.encode("utf-8", errors="surrogatepass"))
    return _bytes_too_large(n_bytes, "bytes of text as UTF-8")


def _binary_format(data: bytes) -> InputProblem | None:
    """The refusal naming a known binary format ``data`` starts with, or None."""
    for magic, what, fix in _BINARY_FORMATS:
        if magic.match(data):
            return input_problem(f"the input is {what}, not text; nothing was read: {fix}")
    return None


def _size_error(what: str) -> InputProblem:
    """The input is over MAX_INPUT_BYTES; ``what`` says what is how big, in words."""
    return input_problem(
        f"{what}, more than the limit of {INPUT_LIMIT_TEXT}; "
        "nothing was read. Split it into smaller files"
    )


def _bytes_too_large(n_bytes: int, unit: str = "bytes") -> InputProblem | None:
    """The size problem for ``n_bytes`` of input, or None when within MAX_INPUT_BYTES."""
    if n_bytes <= MAX_INPUT_BYTES:
        return None
    return _size_error(f"the input is too large: {n_bytes:,} {unit} ({size_text(n_bytes)})")


def _load_bytes(source: str | os.PathLike[str] | bytes) -> bytes | InputProblem:
    """Read the source into bytes, gunzipping when it starts with the gzip magic.

    Input over MAX_INPUT_BYTES, before or after gunzip, is a problem. A file is
    read at most one byte past the limit, so a huge file (or an endless one
    such as a device) is never loaded whole.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        too_large = _bytes_too_large(len(data))
    else:
        path = Path(source)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_INPUT_BYTES + 1)
                size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            return input_problem(f"could not read file '{path}': {exc.strerror or exc}")
        too_large = None
        if len(data) > MAX_INPUT_BYTES:
            # A regular file's size is known; a pipe or device only "more than the limit".
            too_large = _bytes_too_large(size) or _size_error(
                f"the input is too large: at least {MAX_INPUT_BYTES + 1:,} bytes"
            )
    if too_large is not None:
        return too_large
    if data.startswith(_GZIP_MAGIC):
        return _gunzip(data)
    return data


def _gunzip(data: bytes) -> bytes | InputProblem:
    """Decompress gzip data, reporting truncated/corrupt/oversized data as a problem."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            out = handle.read(MAX_INPUT_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        return input_problem(
            f"the gzip data is truncated or corrupt ({exc}); "
            "re-create the .gz file or upload the plain FASTA text"
        )
    if len(out) > MAX_INPUT_BYTES:
        # Decompression stops one byte past the limit: the full size stays unknown.
        return _size_error(
            f"the gzip data is too large once decompressed: its {len(data):,} bytes expand "
            f"to at least {MAX_INPUT_BYTES + 1:,} bytes"
        )
    return out


def _decode(data: bytes) -> tuple[str, InputProblem | None] | InputProblem:
    """The text of ``data`` and a warning when it was not UTF-8, or the problem that it is not text.

    UTF-8 (a BOM dropped) is the rule; UTF-16 and UTF-32 are read when a byte-order mark says so (Windows
    Notepad's "Unicode"). Other 8-bit text — no NUL, no control characters — is read as Windows-1252, a
    superset of Latin-1, with a warning naming the first byte that is not UTF-8, so a file with one
    accented name is still compared. Anything else is refused as not text.
    """
    warning = None
    codec = next((codec for bom, codec in _UNICODE_BOMS if data.startswith(bom)), None)
    try:
        text = data.decode(codec or "utf-8-sig")
    except UnicodeDecodeError as exc:
        if codec is not None:
            return input_problem(f"the input starts with a {codec.upper()} byte-order mark but is not {codec.upper()} "
                               "text; save it as UTF-8")
        text = _as_windows_1252(data)
        if text is None:
            return input_problem(f"the input is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                               "upload a plain-text FASTA file")
        line = data.count(b"\n", 0, exc.start) + 1
        warning = input_problem((
            f"the input is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); it "
            "was read as Windows-1252 (Latin-1): check the names with accented letters, or save the file as UTF-8"),
            "warning")
    if "\x00" in text:
        return input_problem("the input looks like binary data, not text; upload a plain-text FASTA file")
    return text, warning


# Byte-order marks that name an encoding; UTF-32's little-endian mark starts with UTF-16's, so it comes first.
_UNICODE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                 (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))

# Control characters text may hold (tab, line feed, vertical tab, form feed, carriage return).
_TEXT_CONTROLS = frozenset("\t\n\v\f\r")


def _as_windows_1252(data: bytes) -> str | None:
    """``data`` as Windows-1252 text, or None when it is not text in it (an undefined byte, NUL or another
    control character: binary data)."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in _TEXT_CONTROLS for c in text):
        return None
    return text
