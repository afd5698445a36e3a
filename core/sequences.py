"""Protein sequence input: parsing, validation and example sets for ESM-2.

User input (pasted text or uploaded files) is turned into a :class:`ParsedInput`
holding the valid :class:`ProteinRecord` objects plus a list of
:class:`InputProblem` entries in plain words. Nothing in here raises for bad
user input: every refused record is reported, and the valid ones are kept.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
from Bio import SeqIO
from Bio.SeqRecord import SeqRecord

__all__ = [
    "MAX_RESIDUES",
    "MAX_INPUT_BYTES",
    "MAX_RECORDS",
    "ALLOWED_RESIDUES",
    "ProteinRecord",
    "InputProblem",
    "ParsedInput",
    "parse_sequences",
    "read_sequences",
    "example_sequences",
    "format_fasta",
]

MAX_RESIDUES = 1022  # ESM-2 limit (1024 positions incl. BOS/EOS)
ALLOWED_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY" + "XBUZO")  # fair-esm residue letters
# One character outside ALLOWED_RESIDUES (a regex, so that validation runs at C speed).
_BAD_RESIDUE = re.compile("[^" + "".join(sorted(ALLOWED_RESIDUES)) + "]")

# A record this long made only of these letters is almost certainly DNA/RNA.
_NUCLEOTIDE_LETTERS = frozenset("ACGTUN")
_NUCLEOTIDE_MIN_LENGTH = 10

# How many distinct offending characters one error message lists.
_MAX_BAD_CHARS_REPORTED = 3

# Largest input accepted, in bytes: the dashboard's upload limit (server.maxUploadSize
# = 100 in .streamlit/config.toml; Streamlit counts 1 MB as 1024 * 1024 bytes). It applies
# to the bytes as given and again after gunzip (so a small .gz cannot expand without bound),
# and to text passed to parse_sequences (counted as UTF-8). Larger input is refused as a
# whole with one InputProblem(record_id="input"); nothing of it is parsed.
MAX_INPUT_BYTES = 100 * 1024 * 1024

# Most records read from one input (counting refused records too). The first MAX_RECORDS
# are processed; the rest are dropped and ONE error problem (record_id "input") says how
# many, so records are never lost silently.
MAX_RECORDS = 100_000

_BYTES_PER_MB = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_INPUT_ID = "input"
_FASTA_DATA_PATH = Path(__file__).resolve().parent / "data" / "real_proteins.fasta"

Severity = Literal["error", "warning"]
TooLongPolicy = Literal["truncate", "reject"]


@dataclass(frozen=True)
class ProteinRecord:
    """A validated protein: cleaned, uppercase, only ALLOWED_RESIDUES, 1..max_length."""

    id: str
    sequence: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class InputProblem:
    """One refused record (severity "error") or one warning about a kept record."""

    record_id: str
    message: str
    severity: Severity


@dataclass
class ParsedInput:
    """Result of parsing user input: valid records plus every problem, in input order."""

    records: list[ProteinRecord] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)

    @property
    def errors(self) -> list[InputProblem]:
        """Problems that caused a record (or the whole input) to be refused."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[InputProblem]:
        """Problems about records that were still processed."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing was refused."""
        return not self.errors


def printable_id(raw_id: str) -> tuple[str, bool]:
    """``raw_id`` with control and format characters written as escapes (``\\x1b``), and whether any were.

    An id is printed to terminals and logs; an escape sequence in it must not act there.
    """
    if all(unicodedata.category(char)[0] != "C" for char in raw_id):
        return raw_id, False
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char)[0] == "C" else char for char in raw_id
    ), True


@dataclass(frozen=True)
class _RawRecord:
    """A record as found in the input, before validation."""

    record_id: str
    label: str  # how messages name the record, e.g. "seq_3 (line 7)"
    raw_sequence: str


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def parse_sequences(
    text: str,
    *,
    max_length: int = MAX_RESIDUES,
    on_too_long: TooLongPolicy = "truncate",
) -> ParsedInput:
    """Parse FASTA or one-sequence-per-line text into validated protein records.

    FASTA is assumed when the first non-blank line starts with '>'; otherwise
    every non-blank line is one sequence named ``seq_1``, ``seq_2``, ...
    Text over MAX_INPUT_BYTES (as UTF-8) is refused whole; only the first
    MAX_RECORDS records are read, and one error says how many were dropped.
    Never raises for bad input; see the module docstring.
    """
    _check_options(max_length, on_too_long)
    too_large = _text_too_large(text)
    if too_large is not None:
        return ParsedInput([], [too_large])
    return _parse_text(text, max_length, on_too_long)


def _parse_text(text: str, max_length: int, on_too_long: TooLongPolicy) -> ParsedInput:
    """parse_sequences without the size check (the caller has done it)."""
    text = _normalise_text(text)
    if not text.strip():
        return ParsedInput([], [_input_error("no sequences found")])

    if _is_fasta(text):
        items, total = _fasta_raw_records(text, MAX_RECORDS)
    else:
        items, total = _line_raw_records(text, MAX_RECORDS)
    result = ParsedInput()
    for raw in items:
        if isinstance(raw, InputProblem):
            result.problems.append(raw)
            continue
        record, record_problems = _validate_record(raw, max_length, on_too_long)
        result.problems.extend(record_problems)
        if record is not None:
            result.records.append(record)
    if total > MAX_RECORDS:
        result.problems.append(_records_dropped(total, MAX_RECORDS))
    return result


def read_sequences(
    source: str | os.PathLike[str] | bytes,
    *,
    max_length: int = MAX_RESIDUES,
    on_too_long: TooLongPolicy = "truncate",
) -> ParsedInput:
    """Read a file path or raw bytes (optionally gzipped) and parse its sequences.

    A ``str`` is treated as a path. Gzip is detected from the magic bytes, not
    the file name. Unreadable files, corrupt gzip data, non-UTF-8 or binary
    content and input over MAX_INPUT_BYTES (before or after gunzip) are reported
    as one :class:`InputProblem` with record_id "input", and nothing is parsed.
    """
    _check_options(max_length, on_too_long)
    data = _load_bytes(source)
    if isinstance(data, InputProblem):
        return ParsedInput([], [data])
    text = _decode(data)
    if isinstance(text, InputProblem):
        return ParsedInput([], [text])
    return _parse_text(text, max_length, on_too_long)  # size already checked on the bytes


def example_sequences(
    name: Literal["patterns", "real", "all"] = "all",
) -> list[ProteinRecord]:
    """Return a built-in example set: synthetic repeat patterns, real proteins, or both."""
    if name == "patterns":
        return list(_pattern_records())
    if name == "real":
        return list(_real_records())
    if name == "all":
        return list(_pattern_records()) + list(_real_records())
    raise ValueError(f"unknown example set {name!r}; use 'patterns', 'real' or 'all'")


def format_fasta(records: list[ProteinRecord], width: int = 60) -> str:
    """Records as FASTA text (Biopython's writer, lines of ``width`` residues)."""
    from Bio.Seq import Seq
    from Bio.SeqIO.FastaIO import FastaWriter

    buffer = io.StringIO()
    FastaWriter(buffer, wrap=width, record2title=lambda r: r.id).write_file(
        SeqRecord(Seq(r.sequence), id=r.id, description="") for r in records
    )
    return buffer.getvalue()


# --------------------------------------------------------------------------- #
# Text-level helpers
# --------------------------------------------------------------------------- #


def _check_options(max_length: int, on_too_long: str) -> None:
    """Reject programming errors in the options (these are not user input)."""
    if not 1 <= max_length <= MAX_RESIDUES:
        raise ValueError(f"max_length must be between 1 and {MAX_RESIDUES}, got {max_length}")
    if on_too_long not in ("truncate", "reject"):
        raise ValueError(f"on_too_long must be 'truncate' or 'reject', got {on_too_long!r}")


def _input_error(message: str) -> InputProblem:
    """An error about the input as a whole rather than one record."""
    return InputProblem(_INPUT_ID, message, "error")


def _size_error(what: str) -> InputProblem:
    """The input is over MAX_INPUT_BYTES; ``what`` says what is how big, in words."""
    return _input_error(
        f"{what}, more than the limit of {_megabytes(MAX_INPUT_BYTES)} ({MAX_INPUT_BYTES:,} bytes); "
        "nothing was read. Split it into smaller files"
    )


def _megabytes(n_bytes: int) -> str:
    """Bytes as MB the way the dashboard's upload limit counts them (1 MB = 1024 * 1024 bytes)."""
    mb = n_bytes / _BYTES_PER_MB
    return f"{mb:,.0f} MB" if mb == int(mb) else f"{mb:,.1f} MB"


def _bytes_too_large(n_bytes: int, unit: str = "bytes") -> InputProblem | None:
    """The size problem for ``n_bytes`` of input, or None when within MAX_INPUT_BYTES."""
    if n_bytes <= MAX_INPUT_BYTES:
        return None
    return _size_error(f"the input is too large: {n_bytes:,} {unit} ({_megabytes(n_bytes)})")


def _text_too_large(text: str) -> InputProblem | None:
    """The size problem for text over MAX_INPUT_BYTES as UTF-8, or None (cheap for small text)."""
    if len(text) * 4 <= MAX_INPUT_BYTES:  # a character is at most 4 UTF-8 bytes
        return None
    n_bytes = len(text.encode("utf-8", errors="surrogatepass"))
    return _bytes_too_large(n_bytes, "bytes of text as UTF-8")


def _records_dropped(total: int, kept: int) -> InputProblem:
    """One error for the records beyond MAX_RECORDS (never a silent loss)."""
    dropped = total - kept
    return _input_error(
        f"the input has {total:,} records, more than the limit of {kept:,} records per input "
        f"(MAX_RECORDS); only the first {kept:,} were read and the remaining {dropped:,} "
        "record(s) were dropped. Split the input into several files"
    )


def _normalise_text(text: str) -> str:
    """Strip a leading BOM and turn CRLF / lone CR line endings into LF."""
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _is_fasta(text: str) -> bool:
    """True when the first non-blank line starts with '>'."""
    for line in text.split("\n"):
        if line.strip():
            return line.lstrip().startswith(">")
    return False


def _fasta_raw_records(text: str, limit: int) -> tuple[list[_RawRecord | InputProblem], int]:
    """Split FASTA text into raw records with Biopython, in input order.

    Only the first ``limit`` records are returned, with the total number of
    records in the text. Records with an empty or duplicate id are replaced by
    their error so that problems stay in input order.
    """
    lines = text.split("\n")
    first = next(i for i, line in enumerate(lines) if line.strip())
    # Biopython's "fasta" format refuses anything before the first header,
    # so drop the leading blank lines (and indentation of that header line).
    body = "\n".join([lines[first].lstrip(), *lines[first + 1 :]])
    header_lines = [first + 1] + [
        i + 1 for i, line in enumerate(lines) if i > first and line.startswith(">")
    ]

    try:
        parsed = list(islice(SeqIO.parse(io.StringIO(body), "fasta"), limit))
    except Exception as exc:  # noqa: BLE001 - never let a parser bug reach the user as a traceback
        return [_input_error(f"could not read the input as FASTA: {exc}")], 0
    # Every record starts at a '>' line, so the headers count the records not parsed.
    total = max(len(header_lines), len(parsed))

    items: list[_RawRecord | InputProblem] = []
    first_seen: dict[str, int] = {}
    for number, seq_record in enumerate(parsed, start=1):
        line_no = header_lines[number - 1] if number <= len(header_lines) else None
        where = f"line {line_no}" if line_no is not None else f"record {number}"
        record_id, had_controls = printable_id(seq_record.id)
        if had_controls:
            items.append(InputProblem(
                record_id,
                f"{record_id}: the id held control characters (terminal escapes, tabs, …); they are shown escaped",
                "warning",
            ))
        if not record_id:
            items.append(
                InputProblem(
                    where,
                    f"{where}: FASTA header '>' has no id (record {number}); "
                    "put a name right after '>'",
                    "error",
                )
            )
            continue
        if record_id in first_seen:
            items.append(
                InputProblem(
                    record_id,
                    f"{record_id}: duplicate id (record {number} reuses the id of "
                    f"record {first_seen[record_id]}); only the first one is used, "
                    "give each record a unique id",
                    "error",
                )
            )
            continue
        first_seen[record_id] = number
        items.append(_RawRecord(record_id, record_id, _sequence_text(seq_record)))
    return items, total


def _sequence_text(seq_record: SeqRecord) -> str:
    """The record's sequence as str, keeping any non-ASCII characters for reporting.

    Biopython stores FASTA sequences as UTF-8 bytes and only decodes them as
    ASCII, so go through bytes to be able to name e.g. an 'é' in the message.
    """
    return bytes(seq_record.seq).decode("utf-8", errors="replace")


def _line_raw_records(text: str, limit: int) -> tuple[list[_RawRecord | InputProblem], int]:
    """One record per non-blank line, named seq_1, seq_2, ... in order.

    Only the first ``limit`` are returned, with the total number of records.
    """
    records: list[_RawRecord | InputProblem] = []
    total = 0
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        total += 1
        if total > limit:
            continue
        record_id = f"seq_{total}"
        records.append(_RawRecord(record_id, f"{record_id} (line {line_no})", line))
    return records, total


# --------------------------------------------------------------------------- #
# Record-level validation
# --------------------------------------------------------------------------- #


def _validate_record(
    raw: _RawRecord, max_length: int, on_too_long: TooLongPolicy
) -> tuple[ProteinRecord | None, list[InputProblem]]:
    """Clean and check one record; return it (or None if refused) plus its problems."""
    label = raw.label

    def refuse(message: str) -> tuple[None, list[InputProblem]]:
        return None, [InputProblem(raw.record_id, f"{label}: {message}", "error")]

    sequence = _clean(raw.raw_sequence)
    notes: list[str] = []
    if sequence.endswith("*"):
        sequence = sequence[:-1]
        notes.append(f"{label}: trailing '*' (stop codon) removed")

    if not sequence:
        return refuse("empty sequence (no residues)")
    bad = _describe_bad_characters(sequence)
    if bad is not None:
        return refuse(bad)
    if _is_nucleotide_like(sequence):
        return refuse(
            "looks like a nucleotide sequence (only A/C/G/T/U/N); paste the translated protein"
        )
    if len(sequence) > max_length:
        if on_too_long == "reject":
            return refuse(
                f"{len(sequence)} residues is longer than the limit of {max_length}; "
                "shorten it or split it into domains"
            )
        notes.append(
            f"{label}: {len(sequence)} residues is longer than the limit of {max_length}; "
            f"truncated to the first {max_length} residues"
        )
        sequence = sequence[:max_length]

    record = ProteinRecord(raw.record_id, sequence, tuple(notes))
    return record, [InputProblem(raw.record_id, note, "warning") for note in notes]


def _clean(raw_sequence: str) -> str:
    """Remove all whitespace and uppercase ASCII letters.

    Only ASCII is uppercased so that a non-ASCII character keeps its position
    and is reported as typed ('ß'.upper() would even become two letters).
    """
    # str.split() splits on exactly the characters for which str.isspace() is true.
    joined = "".join(raw_sequence.split())
    if joined.isascii():
        return joined.upper()
    return "".join(c.upper() if c.isascii() else c for c in joined)


def _describe_bad_characters(sequence: str) -> str | None:
    """Describe the first few distinct characters outside ALLOWED_RESIDUES, or None."""
    first_position: dict[str, int] = {}
    total = 0
    for match in _BAD_RESIDUE.finditer(sequence):
        total += 1
        first_position.setdefault(match.group(), match.start() + 1)
    if not first_position:
        return None

    shown = list(first_position.items())[:_MAX_BAD_CHARS_REPORTED]
    parts = [f"{char!r} at position {position} ({_hint(char)})" for char, position in shown]
    message = "contains " + ", ".join(parts)
    hidden = len(first_position) - len(shown)
    if hidden:
        message += f", and {hidden} more distinct invalid character(s)"
    if total > len(shown):
        message += f" ({total} invalid characters in total)"
    return message


def _hint(char: str) -> str:
    """A short plain-words reason why this character is not accepted."""
    if char.isdigit():
        return "digits are not amino acids"
    if char in "-.":
        return "alignment gap; remove alignment gaps"
    if char == "*":
        return "internal stop codon; only one trailing '*' is allowed"
    if char == ">":
        return "'>' starts a FASTA header; FASTA input must begin with a '>' line"
    if not char.isascii():
        return "non-ASCII character; use one-letter amino-acid codes A-Z"
    if not char.isprintable():
        return "control character; the input may be binary or corrupted"
    if char.isalpha():
        return f"'{char}' is not an amino-acid code"
    return "not an amino-acid letter"


def _is_nucleotide_like(sequence: str) -> bool:
    """True for long-enough sequences made only of nucleotide letters."""
    return len(sequence) >= _NUCLEOTIDE_MIN_LENGTH and set(sequence) <= _NUCLEOTIDE_LETTERS


# --------------------------------------------------------------------------- #
# Byte-level input
# --------------------------------------------------------------------------- #


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
            return _input_error(f"could not read file '{path}': {exc.strerror or exc}")
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
        return _input_error(
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


def _decode(data: bytes) -> str | InputProblem:
    """Decode UTF-8 (dropping a BOM); refuse undecodable or binary content."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _input_error(
            f"the input is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "upload a plain-text FASTA file"
        )
    if "\x00" in text:
        return _input_error("the input looks like binary data, not text; upload a plain-text FASTA file")
    return text


# --------------------------------------------------------------------------- #
# Example sets
# --------------------------------------------------------------------------- #

# Motifs from the 20 standard amino acids; each is repeated and cut to length.
_PATTERN_MOTIFS: tuple[str, ...] = (
    "MKTAYIAKQR",
    "GSGSGS",
    "LLKKLLEE",
    "PEVKVNGQ",
    "WYFHC",
    "EAAAK",
    "GGGGS",
    "GPP",
    "Q",
    "KE",
    "VT",
    "RGD",
    "YGGFL",
    "CGHC",
    "ILVFM",
    "STNQ",
    "ACDEFGHIKLMNPQRSTVWY",
    "YWDKTNER",
)
_PATTERN_MIN_LENGTH = 10
_PATTERN_MAX_LENGTH = 400


def _pattern_lengths(count: int, low: int, high: int) -> list[int]:
    """Evenly spread integer lengths from low to high inclusive."""
    if count == 1:
        return [low]
    step = (high - low) / (count - 1)
    return [round(low + i * step) for i in range(count)]


def _repeat_to_length(motif: str, length: int) -> str:
    """Repeat the motif and cut it to exactly `length` residues."""
    repeats = -(-length // len(motif))
    return (motif * repeats)[:length]


@lru_cache(maxsize=1)
def _pattern_records() -> tuple[ProteinRecord, ...]:
    """The 18 synthetic repeat-pattern examples, shortest first."""
    lengths = _pattern_lengths(len(_PATTERN_MOTIFS), _PATTERN_MIN_LENGTH, _PATTERN_MAX_LENGTH)
    return tuple(
        ProteinRecord(f"pattern_{i:02d}", _repeat_to_length(motif, length))
        for i, (motif, length) in enumerate(zip(_PATTERN_MOTIFS, lengths), start=1)
    )


@lru_cache(maxsize=1)
def _real_records() -> tuple[ProteinRecord, ...]:
    """The real proteins shipped in data/real_proteins.fasta."""
    parsed = parse_sequences(_FASTA_DATA_PATH.read_text(encoding="utf-8"))
    if parsed.problems:
        # A broken bundled file is a packaging bug, not a user-input problem.
        raise RuntimeError(f"bundled {_FASTA_DATA_PATH.name} is invalid: {parsed.problems}")
    return tuple(parsed.records)


# Amino-acid background frequencies (UniProtKB/Swiss-Prot release statistics), in percent.
AMINO_ACID_PERCENT = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27, "I": 5.96,
    "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}
REALISTIC_MEDIAN, REALISTIC_SIGMA, REALISTIC_MIN = 300, 0.6, 20
PROBE_MEDIAN, PROBE_SIGMA, PROBE_MAX, PROBE_SEED = 60, 0.5, 200, 20261126


def random_proteins(n: int, seed: int, median: float, sigma: float, shortest: int, longest: int) -> list[str]:
    """``n`` random proteins with log-normal lengths (``median``, ``sigma``, clipped to shortest … longest)
    and Swiss-Prot residue frequencies; the same arguments give the same set on any machine."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), shortest, longest)
    letters = np.array(list(AMINO_ACID_PERCENT))
    weights = np.array(list(AMINO_ACID_PERCENT.values()))
    return ["".join(rng.choice(letters, int(length), p=weights / weights.sum())) for length in lengths]


def realistic_sequences(n: int, seed: int = 0) -> list[str]:
    """``n`` random proteins of realistic lengths (median 300, 20 … 1022 residues)."""
    return random_proteins(n, seed, REALISTIC_MEDIAN, REALISTIC_SIGMA, REALISTIC_MIN, MAX_RESIDUES)


def probe_sequences(n: int) -> list[str]:
    """``n`` short random proteins (median 60, 20 … 200 residues), always the same: they top up a numerics
    sample drawn from a small set, so its tests have the power to see a systematic departure."""
    return random_proteins(n, PROBE_SEED, PROBE_MEDIAN, PROBE_SIGMA, REALISTIC_MIN, PROBE_MAX)
