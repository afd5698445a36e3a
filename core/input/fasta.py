"""Protein sequence input from text, bytes or a file: FASTA or FASTQ (Biopython), a table with a sequence
column (core.input.tables), a GenBank, UniProt or EMBL flat file (core.input.flatfiles), or one sequence
per line; alignments, structures, JSON and XML are refused in one message.

User input (pasted text or uploaded files) is turned into a :class:`ParsedInput`
holding the valid :class:`ProteinRecord` objects plus a list of
:class:`InputProblem` entries in plain words. Nothing in here raises for bad
user input: every refused record is reported, and the valid ones are kept.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from itertools import chain, islice

from Bio import SeqIO
from Bio.SeqIO.QualityIO import FastqGeneralIterator
from Bio.SeqRecord import SeqRecord

from core.input.decoding import text_of, text_too_large
from core.input.flatfiles import flat_file_format, flat_file_raw_records, foreign_format
from core.input.records import MAX_RECORDS, MAX_RESIDUES, InputProblem, ParsedInput, TooLongPolicy, input_problem
from core.input.tables import names_sequence_column, table_delimiter, table_raw_records
from core.input.validation import RawRecord, named_record, validate_record



def parse_sequences(
    text: str,
    *,
    max_length: int = MAX_RESIDUES,
    on_too_long: TooLongPolicy = "truncate",
) -> ParsedInput:
    """Parse FASTA, FASTQ, a table, a flat file or one-sequence-per-line text into validated protein records.

    FASTQ is assumed when the first non-blank line starts with '@' and a '+' line follows before the
    next '@' line (each read's sequence is used, its quality line set aside). Otherwise lines starting
    with ';' are comments, as in the classic FASTA format, and are skipped, and the first other non-blank
    line decides: FASTA after '>'; a format with no plain sequences (an alignment, a structure, JSON, XML)
    is refused whole; GenBank's LOCUS or UniProt's / EMBL's ID line starts a flat file; a tab, comma or
    semicolon starts a table (a tab-separated one whose sequence column cannot be told is read as one
    sequence per line, tabs as whitespace); else every non-blank line is one sequence named ``seq_1``,
    ``seq_2``, ...
    Text over MAX_INPUT_BYTES (as UTF-8) is refused whole; only the first
    MAX_RECORDS records are read, and one error says how many were dropped.
    Never raises for bad input; see the module docstring.
    """
    _check_options(max_length, on_too_long)
    too_large = text_too_large(text)
    if too_large is not None:
        return ParsedInput([], [too_large])
    return _parse_text(text, max_length, on_too_long)


def _parse_text(text: str, max_length: int, on_too_long: TooLongPolicy) -> ParsedInput:
    """parse_sequences without the size check (the caller has done it)."""
    text = _normalise_text(text)
    if _is_fastq(text):  # no comment lines in FASTQ: a quality line may start with ';'
        items, total = _fastq_raw_records(text, MAX_RECORDS)
    else:
        uncommented = _without_comments(text)
        first = _NON_BLANK_LINE.search(uncommented)
        if first is None:
            return ParsedInput([], [input_problem("no sequences found")])
        first_line = first.group().strip()
        if (foreign := foreign_format(first_line)) is not None:
            return ParsedInput([], [foreign])
        items, total = _read_records(text, uncommented, first_line)
    result = ParsedInput()
    for raw in items:
        if isinstance(raw, InputProblem):
            result.problems.append(raw)
            continue
        record, record_problems = validate_record(raw, max_length, on_too_long)
        result.problems.extend(record_problems)
        if record is not None:
            result.records.append(record)
    if total > MAX_RECORDS:
        result.problems.append(_records_dropped(total, MAX_RECORDS))
    return result


def _read_records(text: str, uncommented: str, first_line: str) -> tuple[list[RawRecord | InputProblem], int]:
    """Raw records of ``text`` (not FASTQ; ``uncommented``: its comment lines blanked), read as its first
    non-comment line ``first_line`` says: FASTA after a '>'; a flat file after its first line (GenBank's
    LOCUS, UniProt's or EMBL's ID); a table when that line holds a tab, comma or semicolon (see
    core.input.tables.table_raw_records); else one sequence per line. Up to MAX_RECORDS, with the number
    found."""
    if first_line.startswith(">"):
        return _fasta_raw_records(uncommented, MAX_RECORDS)
    if (flat := flat_file_format(first_line)) is not None:
        return flat_file_raw_records(uncommented, MAX_RECORDS, flat)
    if (delimiter := table_delimiter(first_line)) is not None:
        # In a table a row may start with ';' (an empty first cell of a semicolon-separated one): only the
        # comment lines above the table are comments.
        table = table_raw_records(_without_comments(text, leading_only=True), MAX_RECORDS, delimiter)
        if table is not None:
            return table
    return _line_raw_records(uncommented, MAX_RECORDS)


def read_sequences(
    source: str | os.PathLike[str] | bytes,
    *,
    max_length: int = MAX_RESIDUES,
    on_too_long: TooLongPolicy = "truncate",
) -> ParsedInput:
    """Read a file path or raw bytes (optionally gzipped) and parse its sequences.

    A ``str`` is treated as a path; core.input.decoding turns the bytes into text. Unreadable files,
    corrupt gzip data, binary content (named when its format is known) and input over MAX_INPUT_BYTES
    (before or after gunzip) are reported as one :class:`InputProblem` with record_id "input", and
    nothing is parsed; text that was not UTF-8 is parsed after a warning saying how it was read.
    """
    _check_options(max_length, on_too_long)
    decoded = text_of(source)
    if isinstance(decoded, InputProblem):
        return ParsedInput([], [decoded])
    text, warning = decoded
    parsed = _parse_text(text, max_length, on_too_long)  # size already checked on the bytes
    if warning is not None:
        parsed.problems.insert(0, warning)
    return parsed


def _check_options(max_length: int, on_too_long: str) -> None:
    """Reject programming errors in the options (these are not user input)."""
    if not 1 <= max_length <= MAX_RESIDUES:
        raise ValueError(f"max_length must be between 1 and {MAX_RESIDUES}, got {max_length}")
    if on_too_long not in ("truncate", "reject"):
        raise ValueError(f"on_too_long must be 'truncate' or 'reject', got {on_too_long!r}")


def _records_dropped(total: int, kept: int) -> InputProblem:
    """One error for the records beyond MAX_RECORDS (never a silent loss)."""
    dropped = total - kept
    return input_problem(
        f"the input has {total:,} records, more than the limit of {kept:,} records per input "
        f"(MAX_RECORDS); only the first {kept:,} were read and the remaining {dropped:,} "
        "record(s) were dropped. Split the input into several files"
    )


_COMMENT_LINE = re.compile(r"^[^\S\n]*;[^\n]*", re.MULTILINE)  # a line whose first non-space is ';'
_FIRST_OTHER_LINE = re.compile(r"^[^\S\n]*[^;\s]", re.MULTILINE)  # the first line neither blank nor a comment
_LINE_START = re.compile(r"^[^\S\n]*(\S)", re.MULTILINE)  # each non-blank line's first character
_NON_BLANK_LINE = re.compile(r"^[^\S\n]*\S[^\n]*", re.MULTILINE)  # a line holding a non-space, whole
_BLANK_LINE = re.compile(r"^[^\S\n]*$", re.MULTILINE)  # an empty or whitespace-only line
_HEADER_LINE = re.compile(r"^>", re.MULTILINE)  # a FASTA header's start


def _normalise_text(text: str) -> str:
    """Strip a leading BOM and turn CRLF / lone CR line endings into LF."""
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _without_comments(text: str, leading_only: bool = False) -> str:
    """Comment lines (';' first, the classic FASTA convention) blanked, so line numbers stay right; with
    ``leading_only``, only those above the first other non-blank line. (By regular expression, not line by
    line: 40 million lines would be 40 million strings.)"""
    if not leading_only:
        return _COMMENT_LINE.sub("", text)
    other = _FIRST_OTHER_LINE.search(text)
    end = other.start() if other else len(text)
    return _COMMENT_LINE.sub("", text[:end]) + text[end:]


def _is_fastq(text: str) -> bool:
    """True when the first non-blank line starts with '@' and a '+' line follows it before any other '@'
    line: a read's header, its sequence line(s), its quality separator. (Text whose first line merely
    starts with '@' stays one sequence per line, where that line is refused and the rest still read.)"""
    starts = (line.group(1) for line in _LINE_START.finditer(text))
    if next(starts, "") != "@":
        return False
    return next((start for start in starts if start in "@+"), "") == "+"


def _from_first_line(text: str) -> tuple[int, str]:
    """The index of the text's first non-blank line, and the text from that line on with its indentation
    removed: Biopython's parsers refuse anything before the first header."""
    body = text.lstrip()
    return text.count("\n", 0, len(text) - len(body)), body


def _header_lines(body: str, first: int, limit: int) -> tuple[list[int], int]:
    """The line numbers (1-based) of the first ``limit`` headers of FASTA ``body`` (its first line, a header,
    is the text's line first + 1), and how many headers it has in all: counted, not listed, so that 20
    million one-residue records cost no list of 20 million lines."""
    numbered = _numbered(body, _HEADER_LINE.finditer(body), first + 1, 0)
    return [line for line, _ in islice(numbered, limit)], 1 + body.count("\n>")


def _numbered(text: str, lines: Iterator[re.Match], line: int, position: int) -> Iterator[tuple[int, re.Match]]:
    """Each match of ``lines`` (in order, each at a line's start) with its line number, counted from
    ``position`` in ``text``, which is on line ``line``: newlines counted between matches, not listed."""
    for match in lines:
        line += text.count("\n", position, match.start())
        position = match.start()
        yield line, match


def _fasta_raw_records(text: str, limit: int) -> tuple[list[RawRecord | InputProblem], int]:
    """Split FASTA text into raw records with Biopython, in input order.

    Only the first ``limit`` records are returned, with the total number of
    records in the text. Records with an empty or duplicate id are replaced by
    their error so that problems stay in input order.
    """
    first, body = _from_first_line(text)
    header_lines, headers = _header_lines(body, first, limit)

    try:
        parsed = list(islice(SeqIO.parse(io.StringIO(body), "fasta"), limit))
    except Exception as exc:  # noqa: BLE001 - never let a parser bug reach the user as a traceback
        return [input_problem(f"could not read the input as FASTA: {exc}")], 0
    # Every record starts at a '>' line, so the headers count the records not parsed.
    total = max(headers, len(parsed))

    items: list[RawRecord | InputProblem] = []
    first_seen: dict[str, int] = {}
    for number, seq_record in enumerate(parsed, start=1):
        line_no = header_lines[number - 1] if number <= len(header_lines) else None
        items += named_record(seq_record.id, _sequence_text(seq_record), number,
                              f"line {line_no}" if line_no is not None else f"record {number}", first_seen)
    return items, total


def _fastq_raw_records(text: str, limit: int) -> tuple[list[RawRecord | InputProblem], int]:
    """Split FASTQ text (reads, each with a quality line) into raw records with Biopython, in input order:
    each read's sequence, its qualities set aside (the model reads residues only), as one warning says.
    A malformed read ends the reading: the reads before it are kept and one error names where it stopped.
    Only the first ``limit`` reads are returned, with the number of reads read."""
    _, body = _from_first_line(text)
    items: list[RawRecord | InputProblem] = [input_problem(
        "read as FASTQ: each read's sequence is used and its quality line set aside", "warning")]
    first_seen: dict[str, int] = {}
    total = 0
    try:
        for title, sequence, _ in FastqGeneralIterator(io.StringIO(body)):
            total += 1
            if total <= limit:
                items += named_record(title.split(maxsplit=1)[0] if title.strip() else "", sequence, total,
                                      f"read {total}", first_seen, header="@")
    except ValueError as exc:  # Biopython's word for a malformed read
        reason = str(exc).rstrip(". ")
        items.append(input_problem(f"FASTQ read {total + 1} could not be read ({reason}): it and the reads after it "
                                 "were not read; fix that read, or convert the file to FASTA"))
    return items, total


def _sequence_text(seq_record: SeqRecord) -> str:
    """The record's sequence as str, keeping any non-ASCII characters for reporting.

    Biopython stores FASTA sequences as UTF-8 bytes and only decodes them as
    ASCII, so go through bytes to be able to name e.g. an 'é' in the message.
    """
    return bytes(seq_record.seq).decode("utf-8", errors="replace")


def _line_raw_records(text: str, limit: int) -> tuple[list[RawRecord | InputProblem], int]:
    """One record per non-blank line, named seq_1, seq_2, ... in order; a first line that names a sequence
    column ('sequence', 'Sequence (AA)': a one-column table's header, made of residue letters) above other
    lines is skipped with a warning instead of compared as a protein.

    Only the first ``limit`` are returned, with the total number of records (counted, not listed).
    """
    lines = _NON_BLANK_LINE.finditer(text)
    first = next(lines)  # the caller has seen one
    first_no = text.count("\n", 0, first.start()) + 1
    second = next(lines, None)
    header = second is not None and names_sequence_column(first.group())
    records: list[RawRecord | InputProblem] = [input_problem(
        f"line {first_no} ({first.group().strip()!r}) read as the header of a column of sequences and skipped, not "
        "compared as a protein", "warning")] if header else []
    after_first = chain([] if second is None else [second], lines)
    numbered = _numbered(text, after_first if header else chain([first], after_first), first_no, first.start())
    for number, (line_no, line) in enumerate(islice(numbered, limit), start=1):
        record_id = f"seq_{number}"
        records.append(RawRecord(record_id, f"{record_id} (line {line_no})", line.group()))
    return records, _non_blank_lines(text) - header


def _non_blank_lines(text: str) -> int:
    """How many lines of ``text`` hold a non-space, counted in C without a list: the blank lines counted
    and taken away, unless newlines are three quarters of the text (then the others are fewer to count)."""
    lines = text.count("\n") + 1
    if 4 * lines > 3 * len(text):
        return _NON_BLANK_LINE.subn("", text)[1]
    return lines - _BLANK_LINE.subn("", text)[1]
