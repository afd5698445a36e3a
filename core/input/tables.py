"""Sequences in a table: comma-, tab- or semicolon-separated text with a column of sequences (a data
frame saved as CSV, a spreadsheet export), read with Python's csv module, which gives each row's line for
the messages (pandas' reader drops or refuses a bad line without saying where).

The sequence column is the one whose header names it (``sequence``, ``seq``, ``aa_seq`` …); the ids come
from a column named ``id``, ``name``, ``accession`` … and else from the first column when the sequences
are not in it. A table without a header row is read only when its rows are all as wide and exactly one
column holds letters alone in every row. Anything else is not read as a table but one sequence per line,
where each line's separators are refused with a hint to name the sequence column: never a guess.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from itertools import chain, islice
from typing import Iterable, Iterator

from core.input.records import InputProblem, input_problem
from core.input.validation import RawRecord, named_record

DELIMITERS = {"\t": "tab", ",": "comma", ";": "semicolon"}  # in the order they are looked for

SEQUENCE_COLUMNS = frozenset({"sequence", "sequences", "seq", "seqs", "aa_sequence", "sequence_aa", "aa_seq",
                              "aaseq", "protein_sequence", "amino_acid_sequence", "amino_acids", "residues"})

ID_COLUMNS = ("id", "name", "identifier", "accession", "entry", "protein_id", "seq_id", "sequence_id",
              "uniprot_id", "uniprot", "entry_name", "protein_name", "protein", "gene", "header", "title")

_LETTERS_ONLY = re.compile(r"[A-Za-z]+\*?")

# Words that make a column *about* the sequences rather than the sequences ('sequence_length', 'seq_id').
_ABOUT_A_SEQUENCE = frozenset({"id", "ids", "name", "names", "length", "len", "count", "number", "no", "type",
                               "identity", "source", "version", "accession", "start", "end", "md5", "hash", "file"})

# A table without a header row is searched for its one letters-only column only up to this width (wider
# ones are feature tables: they must name their sequence column), so a hostile one costs no search.
_MAX_UNNAMED_COLUMNS = 64

_SAMPLE_ROWS = 200  # rows after the first that decide, with it, which column holds the sequences


@dataclass(frozen=True)
class Columns:
    """Where a table's sequences and ids are: column indices (``id_column`` None: rows are named seq_1,
    seq_2, …), their header names (or None without a header row), and whether the first row is a header."""

    sequence: int
    id_column: int | None
    names: tuple[str, ...] | None
    has_header: bool


def table_delimiter(first_line: str) -> str | None:
    """The delimiter of a table whose first line is ``first_line`` (tab, comma, then semicolon), or None.
    No sequence line holds one, so its presence is the table's mark (the caller tells FASTA, FASTQ and flat
    files apart first: their headers may hold one)."""
    return next((delimiter for delimiter in DELIMITERS if delimiter in first_line), None)


def table_raw_records(text: str, limit: int, delimiter: str) -> tuple[list[RawRecord | InputProblem], int] | None:
    """The rows of a ``delimiter``-separated table as raw records, in input order, after one warning saying
    which columns were read; one error when the header names several sequence columns; None when no column
    can be told to hold the sequences (the text is then read one sequence per line: a tab may be whitespace
    inside a sequence, a comma a typo). Only the first ``limit`` rows are returned, with the number of data
    rows. A row that cannot be read ends the reading: the rows before it are kept and one error names where
    it stopped."""
    unreadable: list[str] = []
    buffer = io.StringIO(text)
    rows = _rows(buffer, delimiter, unreadable)
    first = next(rows, None)
    kind = DELIMITERS[delimiter]
    if first is None:
        return [input_problem(f"the table could not be read ({unreadable[0]})" if unreadable else "no sequences found",
                               "error")], 0
    line, header = first
    columns = _named_columns(header)
    if isinstance(columns, str):
        return [input_problem(f"read as a {kind}-separated table (line {line}), but {columns}", "error")], 0
    data: Iterable[tuple[int, list[str]]] = rows
    if columns is None:
        sample = list(islice(rows, _SAMPLE_ROWS)) if len(header) <= _MAX_UNNAMED_COLUMNS else []
        columns = _unnamed_columns(header, [cells for _, cells in sample])
        if columns is None:
            return None
        data = chain([first], sample, rows)
    items: list[RawRecord | InputProblem] = [input_problem(_columns_note(kind, columns, len(header)), "warning")]
    first_seen: dict[str, int] = {}
    total = 0
    for line, cells in data:
        total += 1
        items += _row_record(cells, columns, total, line, first_seen)
        if total == limit:  # the rest only counted (a headerless table's sampled rows are in ``data`` still)
            total += _rows_after(buffer, rows, delimiter) if data is rows else sum(1 for _ in data)
            break
    if unreadable:
        items.append(input_problem(f"the table could not be read from its row {total + 1} on ({unreadable[0]}): "
                                    "that row and the rows after it were not read; fix that row, or convert the "
                                    "file to FASTA", "error"))
    return items, total


def _rows(buffer: io.StringIO, delimiter: str, unreadable: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number where the row ends, cells) for each non-blank row of the text in ``buffer``, up to the
    first the csv module cannot read; why it could not is appended to ``unreadable``."""
    reader = csv.reader(buffer, delimiter=delimiter)
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield reader.line_num, cells
    except csv.Error as error:
        unreadable.append(str(error))


def _rows_after(buffer: io.StringIO, rows: Iterator[tuple[int, list[str]]], delimiter: str) -> int:
    """How many more non-blank rows ``rows`` (reading ``buffer``) would give. Without a quote in the rest, each
    line is one row: the lines holding more than spaces and delimiters are counted in C (a table of ten
    million rows parses in 2.2 s, not 5.4). Otherwise the rows are read on, one by one."""
    rest = buffer.read()
    if '"' in rest:
        buffer.seek(buffer.tell() - len(rest))
        return sum(1 for _ in rows)
    return re.subn(rf"(?m)^[^\n]*?[^\s{re.escape(delimiter)}]", "", rest)[1]


def _column_name(cell: str) -> str:
    """A header cell as compared with SEQUENCE_COLUMNS and ID_COLUMNS: lower case, spaces and dashes as '_'."""
    return re.sub(r"[\s\-]+", "_", cell.strip().lower())


def names_sequence_column(cell: str) -> bool:
    """Whether ``cell`` is a header naming a column of sequences ('sequence', 'Sequence (AA)', 'aa_seq' …)."""
    name = _column_name(cell)
    return name in SEQUENCE_COLUMNS or _names_sequences(name)


def _names_sequences(name: str) -> bool:
    """A header such as 'Sequence (AA)' or 'protein seq': a word for sequences and none for something about
    them ('sequence_length', 'seq_id')."""
    words = set(re.split(r"[^a-z0-9]+", name))
    return bool(words & {"sequence", "seq"}) and not words & _ABOUT_A_SEQUENCE


def _named_columns(header: list[str]) -> Columns | str | None:
    """Where the sequences and ids are by the names in ``header``; what is wrong when several columns are
    named as sequences; None when none is. Without an id column by name, ids come from the first column
    when the sequences are not in it (columns after the sequences hold labels or features, not names),
    else rows are numbered."""
    names = [_column_name(cell) for cell in header]
    by_name = ([i for i, name in enumerate(names) if name in SEQUENCE_COLUMNS]
               or [i for i, name in enumerate(names) if _names_sequences(name)])
    if len(by_name) > 1:
        listed = ", ".join(repr(header[i].strip()) for i in by_name)
        return f"several columns are named as sequences ({listed}); keep one"
    if not by_name:
        return None
    sequence = by_name[0]
    ids = [i for name in ID_COLUMNS for i, cell in enumerate(names) if cell == name and i != sequence]
    id_column = ids[0] if ids else (0 if sequence > 0 else None)
    return Columns(sequence, id_column, tuple(cell.strip() for cell in header), has_header=True)


def _unnamed_columns(first: list[str], sample: list[list[str]]) -> Columns | None:
    """Where the sequences and ids are in a table without a header row, whose first row is ``first``: the one
    column holding letters alone in it and the ``sample`` of rows after it, all as wide (at most
    _MAX_UNNAMED_COLUMNS), the ids in the first column when it is another; None when there is no such one."""
    if not 1 < len(first) <= _MAX_UNNAMED_COLUMNS or any(len(cells) != len(first) for cells in sample):
        return None
    letter_columns = [i for i in range(len(first))
                      if all(_LETTERS_ONLY.fullmatch("".join(cells[i].split())) for cells in [first, *sample])]
    if len(letter_columns) != 1:
        return None
    sequence = letter_columns[0]
    return Columns(sequence, 0 if sequence > 0 else None, None, has_header=False)


def _columns_note(kind: str, columns: Columns, width: int) -> str:
    """The warning that says how the table was read."""
    def named(i: int | None) -> str:
        if i is None:
            return "none (rows named seq_1, seq_2, …)"
        return f"column '{columns.names[i]}'" if columns.names is not None else f"column {i + 1}"

    set_aside = width - 1 - (columns.id_column is not None)
    note = (f"read as a {kind}-separated table: sequences from {named(columns.sequence)}, ids from "
            f"{named(columns.id_column)}")
    if not columns.has_header:
        note += " (no header row)"
    return note + (f"; {set_aside} other column(s) set aside" if set_aside > 0 else "")


def _row_record(cells: list[str], columns: Columns, number: int, line: int,
                first_seen: dict[str, int]) -> list[RawRecord | InputProblem]:
    """Data row ``number`` (ending on ``line``) as a raw record, or its problem."""
    where = f"row {number} (line {line})"
    if columns.sequence >= len(cells):
        return [InputProblem(where, f"{where}: has {len(cells)} cell(s), none in the sequence column; "
                                    "the row was not read", "error")]
    sequence = cells[columns.sequence]
    if columns.id_column is None:
        record_id = f"seq_{number}"
        return [RawRecord(record_id, f"{record_id} ({where})", sequence)]
    raw_id = cells[columns.id_column].strip() if columns.id_column < len(cells) else ""
    id_column = columns.names[columns.id_column] if columns.names is not None else f"column {columns.id_column + 1}"
    return named_record(raw_id, sequence, number, where, first_seen,
                        missing_id=f"{where}: no id in {id_column!r}; give every row a name")
