"""Excel workbooks (.xlsx): the first sheet, read with pandas (openpyxl), becomes comma-separated text that
core.input.tables reads as any table, its line numbers the sheet's row numbers.

A workbook is a ZIP archive of XML parts; one that would unpack to more than MAX_INPUT_BYTES is refused
before any part is read, so a small crafted file cannot expand without bound.
"""

from __future__ import annotations

import io
import zipfile

import pandas as pd

from core.input.records import INPUT_LIMIT_TEXT, MAX_INPUT_BYTES, InputProblem

_WORKBOOK_PART = "xl/workbook.xml"

# Other office documents, also ZIP archives, named in their refusal: (a part only they hold, what it is,
# what to give instead).
_OTHER_DOCUMENTS = (
    ("content.xml", "an OpenDocument file (.ods, .odt)", "save the sheet as .xlsx or CSV"),
    ("word/document.xml", "a Word document", "give the sequences as FASTA text"),
    ("ppt/presentation.xml", "a PowerPoint file", "give the sequences as FASTA text"),
)


def is_workbook(data: bytes) -> bool:
    """Whether ``data`` is an Excel workbook: a ZIP archive holding xl/workbook.xml."""
    return _WORKBOOK_PART in _zip_parts(data)


def other_document(data: bytes) -> InputProblem | None:
    """The refusal naming an office document other than an Excel workbook (an OpenDocument file, a Word or
    PowerPoint file), or None."""
    parts = _zip_parts(data)
    for part, what, fix in _OTHER_DOCUMENTS:
        if part in parts:
            return _problem(f"the input is {what}, not text; nothing was read: {fix}")
    return None


def _zip_parts(data: bytes) -> frozenset[str]:
    """The names in ``data`` when it is a ZIP archive, else none."""
    if not data.startswith(b"PK\x03\x04"):
        return frozenset()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return frozenset(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return frozenset()


def workbook_text(data: bytes) -> tuple[str, InputProblem] | InputProblem:
    """The first sheet of the workbook ``data`` as CSV text (each cell as text, the header row kept), with the
    warning that says which sheet was read; or the problem that stops it being read (it unpacks past the
    limit, or pandas cannot read it)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > MAX_INPUT_BYTES:
        return _problem(f"the Excel workbook unpacks to {unpacked:,} bytes, more than the limit of {INPUT_LIMIT_TEXT}; "
                        "nothing was read: save the sheet as CSV")
    try:
        with pd.ExcelFile(io.BytesIO(data), engine="openpyxl") as workbook:
            sheets = list(workbook.sheet_names)
            frame = pd.read_excel(workbook, sheet_name=sheets[0], header=None, dtype=str, keep_default_na=False)
    except Exception as error:  # noqa: BLE001 - openpyxl raises many kinds for a damaged file; never a traceback
        reason = str(error).rstrip(". ") or type(error).__name__
        return _problem(f"the Excel workbook could not be read ({reason}); save the sheet as CSV")
    others = f"; {len(sheets) - 1} other sheet(s) not read" if len(sheets) > 1 else ""
    note = InputProblem("input", f"read the Excel workbook's first sheet ({sheets[0]!r}){others}: its line numbers "
                                 "below are the sheet's rows", "warning")
    return frame.to_csv(index=False, header=False, lineterminator="\n"), note


def _problem(message: str) -> InputProblem:
    """A problem of the input as a whole."""
    return InputProblem("input", message, "error")
