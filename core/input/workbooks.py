"""Office documents, ZIP archives of XML parts. An Excel workbook's (.xlsx) first sheet, read with pandas
(openpyxl), becomes comma-separated text that core.input.tables reads as any table, its line numbers the
sheet's row numbers; an OpenDocument, Word or PowerPoint file is refused, named.

A workbook is a ZIP archive of XML parts; one that would unpack to more than MAX_INPUT_BYTES is refused
before any part is read, so a small crafted file cannot expand without bound.
"""

from __future__ import annotations

import io
import zipfile

import pandas as pd

from core.input.records import INPUT_LIMIT_TEXT, MAX_INPUT_BYTES, InputProblem, input_problem

_WORKBOOK_PART = "xl/workbook.xml"

# Other office documents, also ZIP archives, named in their refusal: (a part only they hold, what it is,
# what to give instead).
_OTHER_DOCUMENTS = (
    ("content.xml", "an OpenDocument file (.ods, .odt)", "save the sheet as .xlsx or CSV"),
    ("word/document.xml", "a Word document", "give the sequences as FASTA text"),
    ("ppt/presentation.xml", "a PowerPoint file", "give the sequences as FASTA text"),
)


def office_document(data: bytes) -> tuple[str, InputProblem] | InputProblem | None:
    """What an office document (a ZIP archive of XML parts) gives: an Excel workbook's first sheet as CSV
    text, each cell as text and the header row kept, with the warning that says which sheet was read, or
    the problem that stops it being read (it unpacks past the limit, or pandas cannot read it); the refusal
    naming another office document (OpenDocument, Word, PowerPoint); None for anything else (not a ZIP
    archive, or another one)."""
    sizes = _unpacked_sizes(data)
    if _WORKBOOK_PART in sizes:
        return _first_sheet(data, sum(sizes.values()))
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


def _first_sheet(data: bytes, unpacked: int) -> tuple[str, InputProblem] | InputProblem:
    """The workbook's first sheet as CSV text with its warning, or the problem (see office_document)."""
    if unpacked > MAX_INPUT_BYTES:
        return input_problem(f"the Excel workbook unpacks to {unpacked:,} bytes, more than the limit of "
                             f"{INPUT_LIMIT_TEXT}; nothing was read: save the sheet as CSV")
    try:
        with pd.ExcelFile(io.BytesIO(data), engine="openpyxl") as workbook:
            sheets = list(workbook.sheet_names)
            frame = pd.read_excel(workbook, sheet_name=sheets[0], header=None, dtype=str, keep_default_na=False)
    except Exception as error:  # noqa: BLE001 - openpyxl raises many kinds for a damaged file; never a traceback
        reason = str(error).rstrip(". ") or type(error).__name__
        return input_problem(f"the Excel workbook could not be read ({reason}); save the sheet as CSV")
    others = f"; {len(sheets) - 1} other sheet(s) not read" if len(sheets) > 1 else ""
    note = input_problem(f"read the Excel workbook's first sheet ({sheets[0]!r}){others}: its line numbers below "
                         "are the sheet's rows", "warning")
    return frame.to_csv(index=False, header=False, lineterminator="\n"), note
