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


def is_workbook(data: bytes) -> bool:
    """Whether ``data`` is an Excel workbook: a ZIP archive holding xl/workbook.xml."""
    if not data.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return _WORKBOOK_PART in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


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
    return InputProblem("input", message, "error")
