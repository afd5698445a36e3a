"""A catalogue of hostile or malformed inputs, each with its exact expected outcome.

``CATALOGUE`` is ONE table. Each case gives the input bytes (as uploaded or read from a
file) and states exactly what must happen:

* ``processed``: the ids of the records that are compared, in input order (nothing else);
* ``warned``: (record id, substring of the warning), in order, for records kept with a note;
* ``refused``: (record id, substring of the message), in order, for refused records or for the
  whole input (record id ``"input"``); a record's message always starts with its name.

Every case is checked through both surfaces' input stage: ``python -m core check`` (what its
``core.input.fasta.read_sequences`` returns, to the exact outcome; the exit code and the problems on
stderr) and the page given the same bytes as an upload (valid count, problems table, Run enabled). Cases marked with a ``surface``
(at least 8) are also run end to end through a comparison in the CLI (exit code and sequences.csv)
and in the Streamlit dashboard (problems table and per-sequence table), which must agree with the
table; the CLI and dashboard use demo-tiny on the CPU.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import zipfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import openpyxl
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core.cli
from core.cli import main as cli_main
from core.input.fasta import parse_sequences, read_sequences
from core.input.records import ALLOWED_RESIDUES, MAX_INPUT_BYTES, MAX_RECORDS, MAX_RESIDUES, ParsedInput

pytestmark = pytest.mark.usefixtures("light_numerics", "tiny_page_model")  # what the run is used for, not the gate's power

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 180

PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues, not nucleotide-like
SHORT = "GSGSGSLLKKLLEEPEVKVNGQ"
FIRST_R_IDS = tuple(f"r{i}" for i in range(MAX_RECORDS))  # the ids read of the ten-million-record inputs
TEN_MILLION_DROPPED = ("input", f"has 10,000,000 records, more than the limit of {MAX_RECORDS:,} records per input")
DATA = Path(__file__).resolve().parent / "data"  # binary inputs pandas cannot write (see its README)
LONG_5000 = (PROTEIN * 200)[:5000]

Surface = Literal["paste", "upload"]


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes | Callable[[], bytes]  # a callable builds large inputs only when needed
    processed: tuple[str, ...] = ()
    warned: tuple[tuple[str, str], ...] = ()
    refused: tuple[tuple[str, str], ...] = ()
    sequences: dict[str, str] = field(default_factory=dict)  # exact cleaned sequence of some ids
    on_too_long: Literal["truncate", "reject"] = "truncate"
    max_seconds: float | None = None  # the parse must finish within this
    surface: Surface | None = None  # also run through the CLI and the dashboard, fed this way

    def bytes(self) -> bytes:
        return self.data() if callable(self.data) else self.data


def _text(s: str) -> bytes:
    return s.encode("utf-8")


def _xlsx() -> bytes:
    """A workbook as Excel writes one (a ZIP archive of XML parts): a sheet of proteins, then another."""
    buffer = io.BytesIO()
    with pd.ExcelWriter(buffer, engine="openpyxl") as workbook:
        pd.DataFrame({"id": ["P1", "P2", None], "sequence": [PROTEIN, SHORT.lower(), SHORT], "label": [1, 0, 1]}
                     ).to_excel(workbook, sheet_name="proteins", index=False)
        pd.DataFrame({"note": ["not read"]}).to_excel(workbook, sheet_name="notes", index=False)
    return buffer.getvalue()


def _sparse_xlsx() -> bytes:
    """5 kB of workbook with a cell a million rows down and 5,000 columns across: pandas would pad it to
    five billion cells."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet["A1"], sheet["A2"] = "sequence", SHORT
    sheet.cell(row=1_000_000, column=5_000, value=SHORT)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _xlsx_with_a_row(row: bytes) -> bytes:
    """_xlsx() with ``row`` added to its first sheet's XML as written, past what openpyxl would write."""
    with zipfile.ZipFile(io.BytesIO(_xlsx())) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    sheet = "xl/worksheets/sheet1.xml"
    parts[sheet] = parts[sheet].replace(b"</sheetData>", row + b"</sheetData>")
    return _zip_of(parts)


def _genpept_with_many_features() -> bytes:
    """15 GenPept records of 20,000 features each (20 MB): the feature tables are not what is read."""
    features = "".join(f"     misc_feature    {i}..{i + 1}\n                     /note=\"n{i}\"\n" for i in range(1, 20_001))
    return _text("".join(f"LOCUS       XP_{n}                    10 aa            linear   PRI 01-JAN-2020\n"
                         f"ACCESSION   XP_{n}\nVERSION     XP_{n}.1\nFEATURES             Location/Qualifiers\n"
                         f"{features}ORIGIN\n        1 mktayiakqr\n//\n" for n in range(15)))


def _zip_of(parts: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _zip_of_fasta() -> bytes:
    return _zip_of({"proteins.fasta": _text(f">a\n{PROTEIN}\n")})


def _workbook_bomb() -> bytes:
    """A few hundred kilobytes that claim to be a workbook and unpack past the input limit."""
    return _zip_of({"xl/workbook.xml": b"<workbook/>", "xl/worksheets/sheet1.xml": b" " * (MAX_INPUT_BYTES + 90)})


def _damaged_workbook() -> bytes:
    return _zip_of({"xl/workbook.xml": b"this is not XML", "[Content_Types].xml": b"<Types/>"})


def _random_bytes() -> bytes:
    data = random.Random(1234).randbytes(4096)
    assert not data.startswith(b"\x1f\x8b")
    return data


PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"
FASTA_GZ = gzip.compress(_text(f">gz_one\n{PROTEIN}\n>gz_two\n{SHORT.lower()}*\n"))
_GZ_SOURCE = gzip.compress(_text(f">a\n{PROTEIN * 300}\n"))
TRUNCATED_GZ = _GZ_SOURCE[: len(_GZ_SOURCE) // 2]
TEN_THOUSAND = tuple(f"rec_{i:05d}" for i in range(10_000))
OVER_LIMIT_IDS = tuple(f"r{i}" for i in range(MAX_RECORDS + 3))
LONG_HEADER_ID = "h" * 100_000


def _ten_thousand() -> bytes:
    return "".join(f">{seq_id}\n{PROTEIN}\n" for seq_id in TEN_THOUSAND).encode()


def _over_max_records() -> bytes:
    return "".join(f">{seq_id}\nMKTAY\n" for seq_id in OVER_LIMIT_IDS).encode()


def _over_100_mb() -> bytes:
    head = f">big_upload\n{PROTEIN}\n".encode()
    return head + b"A" * (MAX_INPUT_BYTES + 1 - len(head))


def _exactly_100_mb() -> bytes:
    head = f">at_limit\n{PROTEIN}\n".encode()
    return head + b" " * (MAX_INPUT_BYTES - len(head))  # trailing blanks: still one small record


def _gzip_bomb() -> bytes:
    return gzip.compress(b">bomb\n" + b"A" * MAX_INPUT_BYTES, compresslevel=1)


CATALOGUE: list[Case] = [
    # ------------------------------------------------------------ nothing there
    Case("empty_input", b"", refused=(("input", "no sequences found"),), surface="upload"),
    Case("whitespace_only", b"  \n\t\r\n   \n", refused=(("input", "no sequences found"),)),
    Case("header_without_sequence", b">lonely\n", refused=(("lonely", "empty sequence"),)),
    Case(
        "header_without_sequence_between_records",
        _text(f">a\n{PROTEIN}\n>b\n>c\n{SHORT}\n"),
        processed=("a", "c"),
        refused=(("b", "empty sequence"),),
    ),
    Case("only_a_stop", b">stop_only\n*\n", refused=(("stop_only", "empty sequence"),)),
    # ------------------------------------------------------------ wrong alphabet
    Case(
        "dna_pasted_as_protein",
        b">dna\nATGGCCATTGTAATGGGCCGCTGAAAGGGTGCCCGATAG\n",
        refused=(("dna", "looks like a nucleotide sequence"),),
        surface="paste",
    ),
    Case(
        "rna",
        b">rna\nAUGGCCAUUGUAAUGGGCCGCUGAAAGGGUGCCCGAUAG\n",
        refused=(("rna", "looks like a nucleotide sequence"),),
    ),
    Case(
        "digits_and_punctuation",
        b">num\nMKT1A2Y,IA;K\n",
        refused=(("num", "'1' at position 4 (digits are not amino acids)"),),
    ),
    Case(
        "internal_stop",
        b">stop\nMKT*AYIAK\n",
        refused=(("stop", "'*' at position 4 (internal stop codon"),),
    ),
    Case(
        "trailing_stop",
        b">stop\nMKTAYIAK*\n",
        processed=("stop",),
        warned=(("stop", "trailing '*' (stop codon) removed"),),
        sequences={"stop": "MKTAYIAK"},
    ),
    Case("alignment_gap_dash", b">gap\nMKT--AYIAK\n", refused=(("gap", "'-' at position 4 (alignment gap"),)),
    Case("alignment_gap_dot", b">dot\nMKT..AYIAK\n", refused=(("dot", "'.' at position 4 (alignment gap"),)),
    Case("lower_case", b">low\nmktayiakqr\n", processed=("low",), sequences={"low": "MKTAYIAKQR"}),
    Case(
        "name_pasted_without_its_header",
        b"Ubiquitin\nMQIFVKTLTGKTITLEVEPSDTIENVKAKI\n",
        processed=("seq_1", "seq_2"),
        warned=(("seq_1", "written in upper and lower case, as a name or a word is"),),
        surface="paste",
    ),
    # ------------------------------------------------------------ tables, flat files, other formats
    Case(
        "csv_table_with_a_label_column",
        _text(f"id,sequence,label\nP1,{PROTEIN},1\nP2,{SHORT.lower()},0\n"),
        processed=("P1", "P2"),
        warned=(("input", "read as a comma-separated table: sequences from column 'sequence', ids from column 'id'; "
                          "1 other column(s) set aside"),),
        sequences={"P2": SHORT},
        surface="upload",
    ),
    Case(  # the header row "id<TAB>sequence" is made of residue letters: it is not a protein called seq_1
        "tsv_header_is_not_read_as_a_protein",
        _text(f"id\tsequence\nP1\t{PROTEIN}\n"),
        processed=("P1",),
        warned=(("input", "read as a tab-separated table"),),
        surface="paste",
    ),
    Case(  # a row starting with ';' is a row with an empty first cell, not a FASTA comment
        "semicolon_table_row_with_an_empty_first_cell",
        _text(f"Name;Protein Sequence (AA)\na;{PROTEIN}\n;{SHORT}\nb;\n"),
        processed=("a",),
        warned=(("input", "sequences from column 'Protein Sequence (AA)', ids from column 'Name'"),),
        refused=(("row 2 (line 3)", "no id in 'Name'; give every row a name"), ("b", "empty sequence")),
    ),
    Case(
        "headerless_two_column_table",
        _text(f"P1,{PROTEIN}\nP2,{SHORT}\n"),
        processed=("P1", "P2"),
        warned=(("input", "sequences from column 2, ids from column 1 (no header row)"),),
    ),
    Case(  # no column to tell: read one sequence per line, each line refused with a hint to name the column
        "table_without_a_sequence_column",
        b"name,description\nubiquitin,small protein\n",
        refused=(("seq_1", "',' at position 5 (a table's separator; a table is read when a header row names its "
                           "'sequence' column)"),
                 ("seq_2", "',' at position 10 (a table's separator")),
    ),
    Case(  # a comma typed into one bare sequence line: that line refused, as before tables were read
        "comma_in_a_bare_sequence_line",
        _text(f"MKT,AYI\n{SHORT}\n"),
        processed=("seq_2",),
        refused=(("seq_1", "',' at position 4 (a table's separator"),),
    ),
    Case(  # a one-column table: its header 'sequence' is made of residue letters, and is not a protein
        "one_column_table_with_its_header",
        _text(f"sequence\n{PROTEIN}\n{SHORT}\n"),
        processed=("seq_1", "seq_2"),
        warned=(("input", "line 1 ('sequence') read as the header of a column of sequences and skipped"),),
        sequences={"seq_1": PROTEIN},
    ),
    Case(  # a tab may be whitespace inside a bare sequence line: with no sequence column to tell, it stays one
        "tab_inside_a_bare_sequence_line",
        b"MKTAY\tIAKQR\n",
        processed=("seq_1",),
        sequences={"seq_1": "MKTAYIAKQR"},
    ),
    Case(  # commas and semicolons in a FASTA header do not make a table
        "fasta_header_with_commas",
        _text(f">sp|P1|X1, kinase; fragment\n{PROTEIN}\n"),
        processed=("sp|P1|X1,",),
    ),
    Case(
        "genpept_record",
        b"LOCUS       XP_000001                 10 aa            linear   PRI 01-JAN-2020\n"
        b"ACCESSION   XP_000001\nVERSION     XP_000001.1\nORIGIN\n        1 mktayiakqr\n//\n",
        processed=("XP_000001.1",),
        warned=(("input", "read as GenBank: each record's sequence is used, named by its accession"),),
        sequences={"XP_000001.1": "MKTAYIAKQR"},
    ),
    Case("genpept_with_300_000_features", _genpept_with_many_features,
         processed=tuple(f"XP_{n}.1" for n in range(15)),
         warned=(("input", "read as GenBank: each record's sequence is used, named by its accession"),),
         sequences={"XP_14.1": "MKTAYIAKQR"}, max_seconds=2.0),
    Case(
        "uniprot_text_record",
        b"ID   TEST_HUMAN              Reviewed;          10 AA.\nAC   P12345;\n"
        b"SQ   SEQUENCE   10 AA;  1170 MW;  0000000000000000 CRC64;\n     MKTAYIAKQR\n//\n",
        processed=("P12345",),
        warned=(("input", "read as UniProt text"),),
    ),
    Case(
        "embl_nucleotide_record",
        b"ID   X56734; SV 1; linear; mRNA; STD; PLN; 12 BP.\nAC   X56734;\n"
        b"SQ   Sequence 12 BP; 3 A; 3 C; 3 G; 3 T; 0 other;\n     acgtacgtac gt                                                      12\n//\n",
        warned=(("input", "read as EMBL"),),
        refused=(("X56734.1", "looks like a nucleotide sequence"),),
    ),
    Case(
        "stockholm_alignment",
        _text(f"# STOCKHOLM 1.0\nseq1 {PROTEIN}\nseq2 {SHORT}\n//\n"),
        refused=(("input", "looks like a Stockholm alignment, not sequences; nothing was read"),),
    ),
    Case(
        "pdb_structure",
        b"HEADER    HYDROLASE                               01-JAN-20   1ABC\n"
        b"ATOM      1  N   MET A   1      11.104  13.207   2.100  1.00 20.00           N\n",
        refused=(("input", "looks like a PDB structure, not sequences; nothing was read"),),
    ),
    Case(
        "json_records",
        _text(f'[{{"id": "P1", "sequence": "{PROTEIN}"}}]'),
        refused=(("input", "looks like JSON, not sequences; nothing was read"),),
    ),
    # ------------------------------------------------------------ line endings, encodings
    Case(
        "windows_crlf",
        b">crlf_a\r\nMKTAY\r\nIAKQR\r\n>crlf_b\r\nGSGSG\r\n",
        processed=("crlf_a", "crlf_b"),
        sequences={"crlf_a": "MKTAYIAKQR", "crlf_b": "GSGSG"},
        surface="upload",
    ),
    Case(
        "old_mac_cr_only",
        b">cr_a\rMKTAY\rIAKQR\r>cr_b\rGSGSG\r",
        processed=("cr_a", "cr_b"),
        sequences={"cr_a": "MKTAYIAKQR", "cr_b": "GSGSG"},
    ),
    Case(
        "utf8_bom",
        b"\xef\xbb\xbf>bom\n" + _text(PROTEIN) + b"\n",
        processed=("bom",),  # not "\ufeffbom"
        surface="upload",
    ),
    Case("utf16_file_with_its_byte_order_mark", ">a\nMKT\n".encode("utf-16"), processed=("a",)),
    Case("utf32_file_with_its_byte_order_mark", ">a\nMKT\n".encode("utf-32"), processed=("a",)),
    Case("utf16_without_a_byte_order_mark", ">a\nMKT\n".encode("utf-16-le"), refused=(("input", "looks like binary data"),)),
    Case("utf16_mark_on_bytes_that_are_not", b"\xff\xfe>\x00a", refused=(("input", "UTF-16 byte-order mark but is not"),)),
    Case(
        "latin1_file",
        ">a\nMKTÄ\n".encode("latin-1"),
        warned=(("input", "not UTF-8 (byte 0xc4 on line 2); it was read as Windows-1252 (Latin-1)"),),
        refused=(("a", "'Ä' at position 4 (non-ASCII"),),
    ),
    Case(
        "latin1_accented_name",
        f">protéine\n{PROTEIN}\n>b\n{SHORT}\n".encode("latin-1"),
        processed=("protéine", "b"),
        warned=(("input", "not UTF-8 (byte 0xe9 on line 1); it was read as Windows-1252"),),
    ),
    Case("non_ascii_e_acute", _text(">e\nMKTéAY\n"), refused=(("e", "'é' at position 4 (non-ASCII"),)),
    Case("non_ascii_greek", _text(">greek\nMKTαβAY\n"), refused=(("greek", "'α' at position 4"),)),
    Case("non_ascii_cjk", _text(">cjk\nMKT蛋白AY\n"), refused=(("cjk", "'蛋' at position 4"),)),
    Case("zero_width_space", _text(">zw\nMKT\u200bAY\n"), refused=(("zw", r"'\u200b' at position 4"),)),
    Case("no_break_space_is_whitespace", _text(">nbsp\nMKT\u00a0AY\n"), processed=("nbsp",), sequences={"nbsp": "MKTAY"}),
    Case("non_ascii_id", _text(">protéine_α\nMKTAY\n"), processed=("protéine_α",)),
    # ------------------------------------------------------------ binary and compressed
    Case("binary_random_bytes", _random_bytes(), refused=(("input", "not UTF-8 text"),), surface="upload"),
    Case("png_header", PNG_HEADER, refused=(("input", "not UTF-8 text (byte 0x89 at offset 0)"),)),
    Case(
        "excel_workbook",
        _xlsx,
        processed=("P1", "P2"),
        warned=(("input", "read the Excel workbook's first sheet ('proteins'); 1 other sheet(s) not read"),
                ("input", "read as a comma-separated table: sequences from column 'sequence', ids from column 'id'")),
        refused=(("row 3 (line 4)", "no id in 'id'"),),
        sequences={"P2": SHORT},
        surface="upload",
    ),
    Case(
        "excel_97_workbook",
        lambda: (DATA / "sequences.xls").read_bytes(),
        processed=("ubiquitin", "trp_cage"),
        warned=(("input", "read the Excel 97–2003 workbook's first sheet ('proteins'); 1 other sheet(s) not read"),
                ("input", "read as a comma-separated table: sequences from column 'sequence', ids from column 'id'; "
                          "3 other column(s) set aside")),
        refused=(("empty", "empty sequence"),),
        surface="upload",
    ),
    Case("workbook_with_one_cell_a_million_rows_down", _sparse_xlsx,
         refused=(("input", "a sheet of the Excel workbook spans 1,000,000 rows × 5,000 columns, more than the "
                            "5,000,000 cells read; nothing was read"),), max_seconds=5.0),
    Case("workbook_far_cell_in_single_quotes", lambda: _xlsx_with_a_row(b"<row r='900000'><c r='zz900000' "
                                                                        b"t='inlineStr'><is><t>MKT</t></is></c></row>"),
         refused=(("input", "a sheet of the Excel workbook spans 900,000 rows × 702 columns"),), max_seconds=5.0),
    Case("workbook_far_cell_behind_a_character_reference",
         lambda: _xlsx_with_a_row(b'<row r="&#57;00000"><c r="A1" t="inlineStr"><is><t>MKT</t></is></c></row>'),
         refused=(("input", "a sheet of the Excel workbook has a row or cell reference '&#57;00000' that cannot be "
                            "measured; nothing was read"),), max_seconds=5.0),
    Case("excel_97_workbook_with_its_last_cell_filled", lambda: (DATA / "sparse.xls").read_bytes(),
         refused=(("input", "a sheet of the Excel 97–2003 workbook spans 65,536 rows × 256 columns"),), max_seconds=5.0),
    Case("old_office_document_that_is_no_workbook", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(2048),
         refused=(("input", "is an old Office document (.xls, .doc, .ppt) that could not be read as an Excel workbook ("),)),
    Case("zip_archive_of_a_fasta_file", _zip_of_fasta, refused=(("input", "is a ZIP archive, not text; nothing was "
                                                                          "read: unzip it and give the FASTA file inside"),)),
    Case("opendocument_spreadsheet", lambda: _zip_of({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet",
                                                       "content.xml": b"<office:document-content/>"}),
         refused=(("input", "is an OpenDocument file (.ods, .odt), not text; nothing was read: save the sheet as .xlsx "
                            "or CSV"),)),
    Case("word_document", lambda: _zip_of({"word/document.xml": _text(f"<w:document>{PROTEIN}</w:document>")}),
         refused=(("input", "is a Word document, not text"),)),
    Case("workbook_unpacking_past_the_limit", _workbook_bomb,
         refused=(("input", "the Excel workbook unpacks to 100,000,101 bytes, more than the limit"),), max_seconds=5.0),
    Case("damaged_workbook", _damaged_workbook, refused=(("input", "the Excel workbook could not be read ("),)),
    Case("bzip2_fasta", bz2.compress(_text(f">a\n{PROTEIN}\n")), refused=(("input", "is bzip2-compressed, not text"),)),
    Case("xz_fasta", lzma.compress(_text(f">a\n{PROTEIN}\n")), refused=(("input", "is xz-compressed, not text"),)),
    Case("pdf_that_decodes_as_windows_1252", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
         refused=(("input", "is a PDF document, not text"),)),
    Case("gzipped_zip_archive", lambda: gzip.compress(_zip_of_fasta()), refused=(("input", "is a ZIP archive"),)),
    Case("nul_bytes", b">a\nMKT\x00\x00AY\n", refused=(("input", "looks like binary data"),)),
    Case("truncated_gzip", TRUNCATED_GZ, refused=(("input", "gzip data is truncated or corrupt"),)),
    Case(
        "valid_gzip",
        FASTA_GZ,
        processed=("gz_one", "gz_two"),
        warned=(("gz_two", "trailing '*'"),),
        sequences={"gz_two": SHORT},
        surface="upload",
    ),
    # ------------------------------------------------------------ size limits
    Case(
        "record_of_5000_residues_truncated",
        _text(f">big\n{LONG_5000}\n"),
        processed=("big",),
        warned=(("big", "5000 residues is longer than the limit of 1022; truncated to the first 1022"),),
        sequences={"big": LONG_5000[:MAX_RESIDUES]},
        surface="upload",
    ),
    Case(
        "record_of_5000_residues_rejected",
        _text(f">big\n{LONG_5000}\n>small\n{SHORT}\n"),
        processed=("small",),
        refused=(("big", "5000 residues is longer than the limit of 1022"),),
        on_too_long="reject",
    ),
    Case("ten_thousand_records", _ten_thousand, processed=TEN_THOUSAND, max_seconds=5.0),
    Case(
        "ten_million_one_residue_records",  # read without a list of every line (7 s before, 2 s now)
        lambda: _text("".join(f">r{i}\nM\n" for i in range(MAX_RECORDS)) + ">x\nM\n" * (10_000_000 - MAX_RECORDS)),
        processed=FIRST_R_IDS,
        refused=(TEN_MILLION_DROPPED,),
        max_seconds=4.0,
    ),
    Case(
        "table_of_ten_million_rows",  # the rows past the limit counted, not read (5.4 s before, 2.2 s now)
        lambda: _text("id,sequence\n" + "".join(f"r{i},M\n" for i in range(MAX_RECORDS))
                      + "x,M\n" * (10_000_000 - MAX_RECORDS)),
        processed=FIRST_R_IDS,
        warned=(("input", "read as a comma-separated table: sequences from column 'sequence', ids from column 'id'"),),
        refused=(TEN_MILLION_DROPPED,),
        max_seconds=4.5,
    ),
    Case(
        "more_than_max_records",
        _over_max_records,
        processed=OVER_LIMIT_IDS[:MAX_RECORDS],
        refused=((
            "input",
            f"has {MAX_RECORDS + 3:,} records, more than the limit of {MAX_RECORDS:,} records per input "
            f"(MAX_RECORDS); only the first {MAX_RECORDS:,} were read and the remaining 3 record(s) were dropped",
        ),),
        max_seconds=20.0,
    ),
    Case(
        "upload_over_100_mb",
        _over_100_mb,
        refused=(("input", "the input is too large: 100,000,001 bytes (100.0 MB), "
                           "more than the limit of 100 MB (100,000,000 bytes); nothing was read"),),
        max_seconds=5.0,
    ),
    Case(  # a record of 20 million refused characters: counted and placed without a loop over them
        "record_of_twenty_million_commas",
        lambda: b">commas\n" + b"A," * 20_000_000,
        refused=(("commas", "',' at position 2 (a table's separator; a table is read when a header row names its "
                            "'sequence' column) (20000000 invalid characters in total)"),),
        max_seconds=2.0,
    ),
    Case("upload_of_exactly_100_mb", _exactly_100_mb, processed=("at_limit",), sequences={"at_limit": PROTEIN}),
    Case(
        "gzip_expanding_over_100_mb",
        _gzip_bomb,
        refused=(("input", "bytes expand to at least 100,000,001 bytes, more than the limit of 100 MB (100,000,000 bytes)"),),
        max_seconds=10.0,
    ),
    # ------------------------------------------------------------ ids
    Case(
        "duplicate_ids",
        _text(f">dup\n{PROTEIN}\n>other\n{SHORT}\n>dup\nMKTAY\n"),
        processed=("dup", "other"),
        refused=(("dup", "duplicate id (record 3 reuses the id of record 1)"),),
        sequences={"dup": PROTEIN},
    ),
    Case(
        "empty_id_bare_gt",
        _text(f">\n{PROTEIN}\n>named\n{SHORT}\n"),
        processed=("named",),
        refused=(("line 1", "FASTA header '>' has no id"),),
    ),
    Case(
        "header_with_only_spaces",
        _text(f">named\n{PROTEIN}\n>    \n{SHORT}\n"),
        processed=("named",),
        refused=(("line 3", "FASTA header '>' has no id"),),
    ),
    Case(
        "html_and_script_in_ids",
        _text(f"><script>alert(1)</script>\n{PROTEIN}\n><img/src=x/onerror=alert(document.cookie)>\n{SHORT}\n"),
        processed=("<script>alert(1)</script>", "<img/src=x/onerror=alert(document.cookie)>"),
        surface="paste",
    ),
    Case(
        "html_img_id_with_spaces",  # the FASTA id ends at the first whitespace; the rest is description
        _text(f"><img src=x onerror=alert(1)>\n{PROTEIN}\n"),
        processed=("<img",),
    ),
    Case("spreadsheet_formula_id", _text(f">=HYPERLINK(\"http://x\")\n{PROTEIN}\n"), processed=('=HYPERLINK("http://x")',)),
    Case("very_long_header_100kb_id", _text(f">{LONG_HEADER_ID}\n{PROTEIN}\n"), processed=(LONG_HEADER_ID,)),
    Case(
        "very_long_header_100kb_description",
        _text(f">short_id {'description ' * 9_000}\n{PROTEIN}\n"),
        processed=("short_id",),
    ),
    # ------------------------------------------------------------ structure
    Case(
        "first_record_fine_second_garbage",
        _text(f">fine\n{PROTEIN}\n>garbage\n") + b"\x01\x02\x7f~~@@##\n",
        processed=("fine",),
        refused=(("garbage", "'\\x01' at position 1 (control character"),),
        surface="upload",
    ),
    Case(
        "mixed_valid_and_invalid",
        _text(
            f">ok_one\n{PROTEIN}\n"
            ">bad_digit\nMKTA1YIAK\n"
            f">ok_two\n{SHORT}*\n"
            ">dna\nACGTACGTACGTACGT\n"
            ">ok_one\nMKTAY\n"
            ">empty\n"
            ">ok_three\nmktayiakqr\n"
        ),
        processed=("ok_one", "ok_two", "ok_three"),
        warned=(("ok_two", "trailing '*'"),),
        refused=(
            ("bad_digit", "'1' at position 5"),
            ("dna", "nucleotide"),
            ("ok_one", "duplicate id"),
            ("empty", "empty sequence"),
        ),
        surface="paste",
    ),
    Case(
        "tabs_and_spaces_inside_sequence",
        b">ws\n  MK\tTA Y \n\t IAK QR\t\n",
        processed=("ws",),
        sequences={"ws": "MKTAYIAKQR"},
    ),
    Case(
        "sequence_lines_before_first_header",  # not FASTA: one sequence per line, "> later" is a bad line
        _text(f"{PROTEIN}\n{SHORT}\n> later\nLLKKLLEE\n"),
        processed=("seq_1", "seq_2", "seq_4"),
        refused=(("seq_3", "seq_3 (line 3): contains '>' at position 1"),),
    ),
    Case(
        "indented_second_header_is_part_of_the_sequence",
        _text(f">a\n{PROTEIN}\n >b\n{SHORT}\n"),
        refused=(("a", "'>' at position 34"),),
    ),
    Case(
        "leading_blank_lines_and_indented_first_header",
        _text(f"\n\n   >first\n{PROTEIN}\n"),
        processed=("first",),
    ),
    # ------------------------------------------------------------ FASTQ (quality lines are not residues)
    Case(
        "fastq_protein_reads_one_malformed",  # ';' and '@' start quality lines: not a comment, not a header
        b"@p1 first read\nMKTAYIAKQR\n+\n;IIIIIIIII\n@p2\nGSGSG\nSLLKK\n+p2\n@IIIIIIIII\n"
        b"@p3\nMKT\n+\nII\n@p4\nMKT\n+\nIII\n",
        processed=("p1", "p2"),
        warned=(("input", "read as FASTQ: each read's sequence is used and its quality line set aside"),),
        refused=(("input", "FASTQ read 3 could not be read (Lengths of sequence and quality values differs for p3"),),
        sequences={"p1": "MKTAYIAKQR", "p2": "GSGSGSLLKK"},
        surface="upload",
    ),
    Case(
        "first_line_starts_with_at_but_no_quality_follows",  # not FASTQ: one sequence per line, as before
        b"@notes\nMKTAYIAK\nGSGSGS\n",
        processed=("seq_2", "seq_3"),
        refused=(("seq_1", "contains '@' at position 1"),),
    ),
    Case(
        "fastq_dna_reads",
        b"@r1\nACGTACGTACGT\n+\nIIIIIIIIIIII\n@r2\nGGGCCCAAATTT\n+\nIIIIIIIIIIII\n",
        warned=(("input", "read as FASTQ"),),
        refused=(("r1", "looks like a nucleotide sequence"), ("r2", "looks like a nucleotide sequence")),
    ),
    Case(
        "fastq_read_without_id_and_a_duplicate",
        b"@\nMKT\n+\nIII\n@a\nMKT\n+\nIII\n@a\nGSG\n+\nIII\n",
        processed=("a",),
        warned=(("input", "read as FASTQ"),),
        refused=(("read 1", "FASTQ header '@' has no id (record 1)"),
                 ("a", "duplicate id (record 3 reuses the id of record 2)")),
    ),
]

SURFACE_CASES = [case for case in CATALOGUE if case.surface]


def by_name(cases: list[Case]):
    return pytest.mark.parametrize("case", cases, ids=[case.name for case in cases])


def assert_outcome(parsed: ParsedInput, case: Case, max_length: int = MAX_RESIDUES) -> None:
    """``parsed`` is exactly what ``case`` states."""
    assert [r.id for r in parsed.records] == list(case.processed)
    warnings, errors = parsed.warnings, parsed.errors
    assert [w.record_id for w in warnings] == [seq_id for seq_id, _ in case.warned], warnings
    assert [e.record_id for e in errors] == [seq_id for seq_id, _ in case.refused], errors
    for problem, (_, text) in zip([*warnings, *errors], [*case.warned, *case.refused]):
        assert text in problem.message, problem
        if problem.record_id != "input":
            assert problem.message.startswith(problem.record_id), "the message names the record"
        assert "Traceback" not in problem.message
    for record in parsed.records:
        assert 1 <= len(record.sequence) <= max_length
        assert set(record.sequence) <= ALLOWED_RESIDUES
        assert list(record.warnings) == [w.message for w in warnings if w.record_id == record.id]
    records = {r.id: r.sequence for r in parsed.records}
    for seq_id, sequence in case.sequences.items():
        assert records[seq_id] == sequence


# ---------------------------------------------------------------- the catalogue


def test_catalogue_is_large_and_names_are_unique():
    assert len(CATALOGUE) >= 25
    assert len({case.name for case in CATALOGUE}) == len(CATALOGUE)
    assert len(SURFACE_CASES) >= 8


def _pastable(case: Case) -> bool:
    """Small inputs that are UTF-8 text (not gzip, no NUL): what a user could paste."""
    if callable(case.data) or case.data.startswith(b"\x1f\x8b") or b"\x00" in case.data:
        return False
    try:
        case.data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@by_name([case for case in CATALOGUE if _pastable(case)])
def test_pasting_the_text_gives_the_same_outcome(case: Case):
    """Whatever decodes as text gives the same records and problems pasted as uploaded."""
    data = case.bytes()
    pasted = parse_sequences(data.decode("utf-8"), on_too_long=case.on_too_long)
    assert pasted == read_sequences(data, on_too_long=case.on_too_long)


def test_max_records_counts_lines_without_fasta_too():
    parsed = parse_sequences("MKTAY\n" * (MAX_RECORDS + 1))
    assert len(parsed.records) == MAX_RECORDS and parsed.records[-1].id == f"seq_{MAX_RECORDS}"
    (error,) = parsed.errors
    assert "the remaining 1 record(s) were dropped" in error.message


def test_max_records_counts_table_rows_too():
    parsed = parse_sequences("id,sequence\n" + "".join(f"r{i},MKTAY\n" for i in range(MAX_RECORDS + 2)))
    assert len(parsed.records) == MAX_RECORDS and parsed.records[-1].id == f"r{MAX_RECORDS - 1}"
    (error,) = parsed.errors
    assert "the remaining 2 record(s) were dropped" in error.message


def test_size_limit_applies_to_text_and_files(tmp_path):
    data = _over_100_mb()
    (error,) = parse_sequences(data.decode("ascii")).problems
    assert error.record_id == "input" and "too large" in error.message and "100 MB" in error.message
    path = tmp_path / "huge.fasta"
    path.write_bytes(data)
    (error,) = read_sequences(path).problems
    assert error.record_id == "input" and f"{len(data):,} bytes" in error.message and "100 MB" in error.message


# ---------------------------------------------------------------- CLI and dashboard agree


@by_name(SURFACE_CASES)
def test_cli_outcome(case: Case, tmp_path, capsys):
    path = tmp_path / f"{case.name}.fasta"
    path.write_bytes(case.bytes())
    out_dir = tmp_path / "out"
    capsys.readouterr()
    code = cli_main(["compare", str(path), "--model", "demo-tiny", "--device", "cpu", "--out", str(out_dir)])
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code == (0 if case.processed and not case.refused else 2), err
    for seq_id, text in [*case.refused, *case.warned]:
        assert text in err and (seq_id == "input" or f"{seq_id}:" in err or f"{seq_id} (line " in err)
    csv = out_dir / "sequences.csv"
    if not case.processed:
        assert not csv.exists()
        return
    table = pd.read_csv(csv, dtype={"id": str}, keep_default_na=False)
    assert list(table["id"]) == list(case.processed)
    for seq_id, sequence in case.sequences.items():
        assert int(table.loc[table["id"] == seq_id, "length"].iloc[0]) == len(sequence)


def _table_with(app: AppTest, column: str) -> pd.DataFrame | None:
    frames = [frame.value for frame in app.dataframe if column in frame.value.columns]
    assert len(frames) <= 1, f"more than one table with column {column!r}"
    return frames[0] if frames else None


def _page_text(app: AppTest) -> list[str]:
    """Everything the page renders as markdown (where HTML could be injected)."""
    elements = [*app.markdown, *app.caption, *app.error, *app.warning, *app.success, *app.info,
                *app.title, *app.subheader, *app.header]
    return [str(element.value) for element in elements]


def _assert_no_user_markup(app: AppTest, case: Case) -> None:
    markup_ids = [seq_id for seq_id in case.processed if "<" in seq_id]
    for text in _page_text(app):
        assert "<script" not in text and "onerror" not in text
        for seq_id in markup_ids:
            assert seq_id not in text


def _assert_page_problems(app: AppTest, case: Case) -> None:
    """The page's input banner counts the processed records, and its problems table lists the case's
    warnings and refusals (record and message)."""
    banners = [element.value for element in (*app.error, *app.warning, *app.success)]
    assert any(line.startswith(f"{len(case.processed)} valid sequence(s) from the ") for line in banners), banners
    problems = _table_with(app, "record")
    expected = sorted([("warning", i) for i, _ in case.warned] + [("refused", i) for i, _ in case.refused])
    if not expected:
        assert problems is None
    else:
        assert problems is not None
        assert sorted(zip(problems[""], problems["record"])) == expected
        for kind, rows in (("warning", case.warned), ("refused", case.refused)):
            for seq_id, text in rows:
                mine = problems[(problems[""] == kind) & (problems["record"] == seq_id)]
                assert any(text in message for message in mine["problem"]), (seq_id, text)
    if case.refused:
        assert any("record(s) refused" in e.value for e in app.error)
    _assert_no_user_markup(app, case)


@by_name(SURFACE_CASES)
def test_dashboard_outcome(case: Case):
    st.cache_data.clear()
    data = case.bytes()
    app = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if case.surface == "upload":
        app.file_uploader(key="upload").upload(f"{case.name}.fasta", data).run()
    else:
        app.text_area(key="sequences_text").input(data.decode("utf-8")).run()
    assert not app.exception
    _assert_page_problems(app, case)
    if not case.processed:  # nothing to compare: Run cannot be pressed and no results appear
        assert app.button(key="run").disabled
        assert _table_with(app, "label_flip") is None
        return

    app.button(key="run").click().run()
    assert not app.exception
    sequences = _table_with(app, "label_flip")
    assert sequences is not None and list(sequences["id"]) == list(case.processed)
    for seq_id, sequence in case.sequences.items():
        assert int(sequences.loc[sequences["id"] == seq_id, "length"].iloc[0]) == len(sequence)
    _assert_no_user_markup(app, case)


# ---------------------------------------------------------------- every case: the input stage on both surfaces


@pytest.fixture(scope="module")
def page() -> AppTest:
    """One page for the module's input-stage checks: each upload replaces the last (nothing is run)."""
    return AppTest.from_file(APP, default_timeout=TIMEOUT).run()


def timed(read: Callable[..., ParsedInput], log: list[tuple[ParsedInput, float]]) -> Callable[..., ParsedInput]:
    """``read`` logging what it returned and how long it took."""
    def reading(*args, **kwargs):
        start = time.perf_counter()
        parsed = read(*args, **kwargs)
        log.append((parsed, time.perf_counter() - start))
        return parsed
    return reading


@by_name(CATALOGUE)
def test_every_case_reads_the_same_in_the_cli_and_on_the_page(case: Case, tmp_path, capsys, page: AppTest,
                                                              monkeypatch):
    """Each case to its exact outcome (records, problems, and time for the large ones), as the CLI reads it:
    compare's input stage, with no model: ``python -m core check FILE`` names every problem as compare
    does and exits 0 or 2; the page, given the same bytes as an upload, counts the same valid records,
    lists the same problems and enables Run only when something can be compared. (The page truncates
    records over 1022 residues; rejecting them is the CLI's --too-long reject.) One read per surface:
    the largest cases take seconds each."""
    data = case.bytes()
    path = tmp_path / f"{case.name}.fasta"
    path.write_bytes(data)
    read = []
    monkeypatch.setattr(core.cli, "read_sequences", timed(core.cli.read_sequences, read))
    capsys.readouterr()
    code = cli_main(["check", str(path), "--too-long", case.on_too_long])
    out, err = capsys.readouterr()
    ((parsed, seconds),) = read
    assert_outcome(parsed, case)
    if case.max_seconds is not None:
        assert seconds < case.max_seconds, f"parse took {seconds:.1f} s"
    assert "Traceback" not in err
    assert code == (0 if case.processed and not case.refused else 2), err
    messages = [line.split(": ", 1)[1] for line in err.splitlines() if line.startswith(("warning: ", "error: "))]
    for seq_id, text in [*case.warned, *case.refused]:  # each problem on its own line, naming its record first
        assert any(text in message and (seq_id == "input" or message.startswith(seq_id)) for message in messages), \
            (seq_id, text, messages)
    if case.processed:
        assert out.startswith(f"{len(case.processed)} sequence(s) to compare: ")
    if case.on_too_long == "reject":
        return
    page.file_uploader(key="upload").upload(f"{case.name}.fasta", data).run()
    assert not page.exception
    _assert_page_problems(page, case)
    assert page.button(key="run").disabled == (not case.processed)
