"""Spreadsheets: the first sheet of an Excel workbook (.xlsx, read by pandas with openpyxl; Excel 97–2003's
.xls, by xlrd) becomes comma-separated text that core.input.tables reads as any table, its line numbers the
sheet's row numbers. OpenDocument, Word and PowerPoint files, and old Office files that are not
workbooks, are refused, named.

A small crafted file must not expand without bound. An .xlsx file is a ZIP archive of XML parts: one that
would unpack to more than MAX_INPUT_BYTES is refused before any part is read. pandas then pads every row of
a sheet to its widest, down to its last row, so one cell far down and far right makes billions of cells
from a few kilobytes (the .xls text is padded alike): a sheet whose rows × columns exceed MAX_SHEET_CELLS is
refused before its cells are read out (.xlsx: from its XML's row and cell references; .xls: from xlrd's
rows as stored). OpenDocument spreadsheets are refused rather than read: pandas' reader also materialises
each cell's declared repeat count.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from core.input.records import INPUT_LIMIT_TEXT, MAX_INPUT_BYTES, InputProblem, input_problem

OLD_OFFICE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an OLE2 compound file: .xls, .doc, .ppt
MAX_SHEET_CELLS = 5_000_000  # rows × columns of a sheet, as pandas pads it: 100,000 rows of 50 columns
_SHEET_PART = re.compile(r"xl/worksheets/[^/]+\.xml")
_ROW_TAG = re.compile(rb"<(?:[\w.-]+:)?row\b([^>]*)>")
_CELL_TAG = re.compile(rb"<(?:[\w.-]+:)?c\b([^>]*)>")
_REFERENCE = re.compile(rb"""(?:^|\s)r\s*=\s*(?:"([^"]*)"|'([^']*)')""")  # either quote, as XML allows
_ROW_NUMBER, _CELL_NAME = re.compile(r"[0-9]+"), re.compile(r"([A-Za-z]{1,3})([0-9]+)")


class SheetTooLarge(Exception):
    """A sheet spans more than MAX_SHEET_CELLS as read, or cannot be measured; the message says which."""


@dataclass(frozen=True)
class Spreadsheet:
    """A kind of spreadsheet file: what it is called; its reader: bytes -> (the sheets' names, the first
    sheet as CSV text, each cell as text, every row as wide as the widest), raising SheetTooLarge; and what
    to say when the reader fails, ``{reason}`` its error."""

    name: str
    read: Callable[[bytes], tuple[list[str], str]]
    unreadable: str


# Other office documents, also ZIP archives, named in their refusal: (a part only they hold, what it is,
# what to give instead).
_OTHER_DOCUMENTS = (
    ("content.xml", "an OpenDocument file (.ods, .odt)", "save the sheet as .xlsx or CSV"),
    ("word/document.xml", "a Word document", "give the sequences as FASTA text"),
    ("ppt/presentation.xml", "a PowerPoint file", "give the sequences as FASTA text"),
)


def office_document(data: bytes) -> tuple[str, InputProblem] | InputProblem | None:
    """What an office document gives: a spreadsheet's first sheet as CSV text, each cell as text and the
    header row kept, with the warning that says which sheet was read, or the problem that stops it being
    read (it unpacks past the limit, or pandas cannot read it); the refusal naming another office document
    (OpenDocument, Word, PowerPoint, an old Office file that is no workbook); None for anything else (not
    an office document)."""
    if data.startswith(OLD_OFFICE_MAGIC):
        return _first_sheet(data, OLD_EXCEL)
    sizes = _unpacked_sizes(data)
    if "xl/workbook.xml" in sizes:
        unpacked = sum(sizes.values())
        if unpacked > MAX_INPUT_BYTES:
            return input_problem(f"the {EXCEL.name} unpacks to {unpacked:,} bytes, more than the limit of "
                                 f"{INPUT_LIMIT_TEXT}; nothing was read: save the sheet as CSV")
        return _first_sheet(data, EXCEL)
    for part, what, fix in _OTHER_DOCUMENTS:
        if part in sizes:
            return input_problem(f"the input is {what}, not text; nothing was read: {fix}")
    return None


def _unpacked_sizes(data: bytes) -> dict[str, int]:
    """Each part's size unpacked when ``data`` is a ZIP archive, as its directory declares it (reading stops
    there, so the sum bounds what pandas can be handed); empty for anything else."""
    if not data.startswith(b"PK\x03\x04"):
        return {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {info.filename: info.file_size for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError):
        return {}


def _first_sheet(data: bytes, kind: Spreadsheet) -> tuple[str, InputProblem] | InputProblem:
    """The first sheet of a ``kind`` file as CSV text with its warning, or the problem (see office_document)."""
    try:
        sheets, text = kind.read(data)
    except SheetTooLarge as large:
        return input_problem(f"a sheet of the {kind.name} {large}; nothing was read: save the columns you need as CSV")
    except Exception as error:  # noqa: BLE001 - each reader raises many kinds for a damaged file; never a traceback
        return input_problem(kind.unreadable.format(reason=str(error).rstrip(". ") or type(error).__name__))
    others = f"; {len(sheets) - 1} other sheet(s) not read" if len(sheets) > 1 else ""
    note = input_problem(f"read the {kind.name}'s first sheet ({sheets[0]!r}){others}: its line numbers below "
                         "are the sheet's rows", "warning")
    return text, note


def _within_cells(rows: int, columns: int) -> None:
    if rows * columns > MAX_SHEET_CELLS:
        raise SheetTooLarge(f"spans {rows:,} rows × {columns:,} columns, more than the {MAX_SHEET_CELLS:,} cells read")


def _read_xlsx(data: bytes) -> tuple[list[str], str]:
    """An .xlsx workbook through pandas (openpyxl), once its sheets' XML shows what pandas would pad them to
    (the most over every sheet: an upper bound for the first)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        shapes = [_sheet_shape(archive.read(name)) for name in archive.namelist() if _SHEET_PART.fullmatch(name)]
    _within_cells(max((rows for rows, _ in shapes), default=0), max((columns for _, columns in shapes), default=0))
    with pd.ExcelFile(io.BytesIO(data), engine="openpyxl") as workbook:
        sheets = list(workbook.sheet_names)
        frame = pd.read_excel(workbook, sheet_name=sheets[0], header=None, dtype=str, keep_default_na=False)
    return sheets, frame.to_csv(index=False, header=False, lineterminator="\n")


def _read_xls(data: bytes) -> tuple[list[str], str]:
    """An Excel 97–2003 workbook through xlrd (pandas' own reader of it is deprecated), its rows ragged: opening
    costs the cells the file stores, not the rectangle they span."""
    import xlrd  # here, not at the top: only an .xls needs it

    book = xlrd.open_workbook(file_contents=data, on_demand=True, ragged_rows=True)
    sheet = book.sheet_by_index(0)
    width = max((sheet.row_len(row) for row in range(sheet.nrows)), default=0)
    _within_cells(sheet.nrows, width)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in range(sheet.nrows):
        cells = [_cell_text(cell) for cell in sheet.row(row)]
        writer.writerow(cells + [""] * (width - len(cells)))
    return book.sheet_names(), buffer.getvalue()


def _cell_text(cell) -> str:
    """An xlrd cell as the sheet shows it: text as it is, a whole number without '.0', TRUE / FALSE."""
    import xlrd

    if cell.ctype == xlrd.XL_CELL_NUMBER:
        return str(int(cell.value)) if float(cell.value).is_integer() else repr(cell.value)
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return "TRUE" if cell.value else "FALSE"
    if cell.ctype == xlrd.XL_CELL_ERROR:
        return xlrd.error_text_from_code.get(cell.value, "#ERROR")
    return str(cell.value)


def _sheet_shape(xml: bytes) -> tuple[int, int]:
    """(rows, columns) a worksheet's XML spans as openpyxl reads it: its last row, from the rows' and cells'
    references (a row or cell without one follows the one before), and its widest row, likewise. A part that
    declares a DTD (entities could add rows this scan does not see) or a reference openpyxl would read
    otherwise than plainly (a character reference, a sign, an underscore) cannot be measured: SheetTooLarge."""
    if re.search(rb"<!(?:DOCTYPE|ENTITY)", xml):
        raise SheetTooLarge("declares a DTD, which Excel never writes, so its size cannot be told")
    rows = columns = 0
    tags = list(_ROW_TAG.finditer(xml))
    for tag, following in zip(tags, [*tags[1:], None]):
        reference = _reference(tag.group(1), _ROW_NUMBER)
        rows = int(reference.group(0)) if reference else rows + 1
        column = 0
        for cell in _CELL_TAG.finditer(xml, tag.end(), following.start() if following else len(xml)):
            reference = _reference(cell.group(1), _CELL_NAME)
            column = _column_number(reference.group(1)) if reference else column + 1
            columns = max(columns, column)
    return rows, columns


def _reference(attributes: bytes, form: re.Pattern) -> re.Match | None:
    """The tag's ``r`` attribute in ``form`` (None without one); SheetTooLarge when it has another form."""
    found = _REFERENCE.search(attributes)
    if found is None:
        return None
    value = (found.group(1) if found.group(1) is not None else found.group(2)).decode("utf-8", "replace")
    reference = form.fullmatch(value.strip())
    if reference is None:
        raise SheetTooLarge(f"has a row or cell reference {value[:20]!r} that cannot be measured")
    return reference


def _column_number(letters: str) -> int:
    """Excel's column letters as a number, either case: A = 1, Z = 26, AA = 27."""
    number = 0
    for letter in letters.upper():
        number = number * 26 + ord(letter) - 64
    return number


EXCEL = Spreadsheet("Excel workbook", _read_xlsx, "the Excel workbook could not be read ({reason}); save the sheet as CSV")
# The magic bytes say only "OLE2 compound file": a Word or PowerPoint file fails here too, so its message says so.
OLD_EXCEL = Spreadsheet("Excel 97–2003 workbook", _read_xls,
                        "the input is an old Office document (.xls, .doc, .ppt) that could not be read as an Excel "
                        "workbook ({reason}); nothing was read: save the sheet as .xlsx or CSV, or give the sequences "
                        "as FASTA text")
