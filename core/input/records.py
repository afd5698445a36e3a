"""What input becomes: validated protein records and the problems found on the way, in plain words."""

from __future__ import annotations

import io
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from Bio.Seq import Seq
from Bio.SeqIO.FastaIO import FastaWriter
from Bio.SeqRecord import SeqRecord


MAX_RESIDUES = 1022  # ESM-2 limit (1024 positions incl. BOS/EOS)

ALLOWED_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY" + "XBUZO")  # fair-esm residue letters

# Largest input accepted: 100 MB in decimal units (1 MB = 1,000,000 bytes), stated and enforced in
# that one unit. Decimal, because Streamlit's browser uploader counts 1 MB as 1000 * 1000 bytes on
# most systems while its server counts 1024 * 1024; .streamlit/config.toml sets server.maxUploadSize
# well above this, so that an oversized upload reaches the page and gets this refusal in words, not
# Streamlit's icon. It applies to the bytes as given and again after gunzip (so a small .gz cannot
# expand without bound), and to text passed to parse_sequences (counted as UTF-8). Larger input is
# refused as a whole with one InputProblem(record_id="input"); nothing of it is parsed.
MAX_INPUT_BYTES = 100_000_000
BYTES_PER_MB = 1000 * 1000


def size_text(n_bytes: int) -> str:
    """Bytes as decimal MB, the unit of MAX_INPUT_BYTES: '100 MB', '100.5 MB'."""
    mb = n_bytes / BYTES_PER_MB
    return f"{mb:,.0f} MB" if mb == int(mb) else f"{mb:,.1f} MB"


INPUT_LIMIT_TEXT = f"{size_text(MAX_INPUT_BYTES)} ({MAX_INPUT_BYTES:,} bytes)"  # "100 MB (100,000,000 bytes)"

# Most records read from one input (counting refused records too). The first MAX_RECORDS
# are processed; the rest are dropped and ONE error problem (record_id "input") says how
# many, so records are never lost silently.
MAX_RECORDS = 100_000

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


INPUT_ID = "input"  # the record id of a problem of the input as a whole


def input_problem(message: str, severity: Severity = "error") -> InputProblem:
    """A problem of the input as a whole rather than of one record (an error unless ``severity`` says)."""
    return InputProblem(INPUT_ID, message, severity)


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
    # isprintable() is False for every "Other" (C*) character, so a printable id needs no look at each
    # one (100,000 ids: 0.4 s less); a non-printable one may still hold only separators (Z*), kept as typed.
    if raw_id.isprintable() or all(unicodedata.category(char)[0] != "C" for char in raw_id):
        return raw_id, False
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char)[0] == "C" else char for char in raw_id
    ), True


def format_fasta(records: list[ProteinRecord], width: int = 60) -> str:
    """Records as FASTA text (Biopython's writer, lines of ``width`` residues)."""
    buffer = io.StringIO()
    FastaWriter(buffer, wrap=width, record2title=lambda r: r.id).write_file(
        SeqRecord(Seq(r.sequence), id=r.id, description="") for r in records
    )
    return buffer.getvalue()
