"""Sequence databases' flat files (GenBank/GenPept, UniProt text, EMBL), read with Biopython, and the
formats that hold no plain sequences to read (alignments, structures, JSON, XML), named so that they are
refused in one sentence instead of line by line."""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Iterator

from Bio import BiopythonParserWarning, SeqIO
from Bio.GenBank.Scanner import EmblScanner, GenBankScanner
from Bio.Seq import UndefinedSequenceError

from core.input.records import InputProblem, input_problem
from core.input.validation import RawRecord, named_record

# Biopython format -> what the file is, in words; recognised by its first line (flat_file_format).
FLAT_FILES = {"genbank": "GenBank", "swiss": "UniProt text", "embl": "EMBL"}

# Python's warnings capture swaps process-wide state: page sessions reading flat files at once would take
# each other's Biopython warnings, or lose them to stderr. One read at a time holds it.
_CAPTURING_WARNINGS = threading.Lock()

# (first line, what the input is, what to do) for formats refused whole. Record names are followed by spaces,
# as in the format, so that a tab-separated table with a column called HEADER stays a table.
_FOREIGN = (
    (re.compile(r"# STOCKHOLM\b"), "a Stockholm alignment", "export its sequences without gaps as FASTA"),
    (re.compile(r"(CLUSTAL|MUSCLE)\b"), "a Clustal alignment", "export its sequences without gaps as FASTA"),
    (re.compile(r"#NEXUS\b", re.IGNORECASE), "a NEXUS file", "export its sequences without gaps as FASTA"),
    (re.compile(r"(HEADER|TITLE|COMPND|REMARK|CRYST1|EXPDTA|SEQRES) +\S|(ATOM|HETATM|MODEL) +\d"),
     "a PDB structure", "give the chains' sequences as FASTA (e.g. the entry's FASTA download)"),
    (re.compile(r"data_\S"), "an mmCIF structure", "give the chains' sequences as FASTA (e.g. the entry's FASTA download)"),
    (re.compile(r"##gff-version\b"), "a GFF annotation file", "give the protein sequences as FASTA"),
    (re.compile(r"[\[{]"), "JSON", "give the sequences as FASTA, or as a table with a 'sequence' column"),
    (re.compile(r"<"), "XML or HTML", "give the sequences as FASTA (UniProt: download format FASTA)"),
)


def flat_file_format(first_line: str) -> str | None:
    """The Biopython format of a flat file starting with ``first_line`` ('genbank', 'swiss' or 'embl'), or None.
    UniProt text and EMBL share the 'ID' line; UniProt's counts amino acids ('AA.'), EMBL's bases ('BP.')."""
    if re.match(r"LOCUS +\S", first_line):
        return "genbank"
    if re.match(r"ID   \S", first_line):
        return "swiss" if re.search(r"\bAA\.\s*$", first_line) else "embl"
    return None


def foreign_format(first_line: str) -> InputProblem | None:
    """The one error for input that starts with ``first_line`` of a format with no plain sequences to read
    (an alignment, a structure, JSON, XML), or None."""
    for pattern, what, fix in _FOREIGN:
        if pattern.match(first_line):
            return input_problem(f"the input looks like {what}, not sequences; nothing was read: {fix}")
    return None


def flat_file_raw_records(text: str, limit: int, format_name: str) -> tuple[list[RawRecord | InputProblem], int]:
    """The records of a ``format_name`` flat file (see FLAT_FILES) as raw records named by their accession,
    after one warning saying how the file was read. Only the first ``limit`` are returned, with the number
    read; a record Biopython cannot read ends the reading, and one error names where it stopped."""
    what = FLAT_FILES[format_name]
    items: list[RawRecord | InputProblem] = [
        input_problem(f"read as {what}: each record's sequence is used, named by its accession", "warning")]
    first_seen: dict[str, int] = {}
    total = 0
    records = _parsed(io.StringIO(text.lstrip()), format_name)
    try:
        while True:
            with _CAPTURING_WARNINGS, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", BiopythonParserWarning)
                record = next(records, None)
            if record is None:
                break
            total += 1
            if total <= limit:
                notes = tuple(f"read with a warning from Biopython ({str(w.message).rstrip('. ')}); check that the "
                              "record is complete" for w in caught if issubclass(w.category, BiopythonParserWarning))
                items += named_record(record.id if record.id != "<unknown id>" else record.name, _residues(record),
                                      total, f"record {total}", first_seen,
                                      missing_id=f"record {total}: has no accession or name; give it one", notes=notes)
    except Exception as error:  # noqa: BLE001 - Biopython's parsers raise several kinds; never a traceback
        reason = str(error).rstrip(". ") or type(error).__name__
        items.append(input_problem(f"{what} record {total + 1} could not be read ({reason}): it and the records "
                                   "after it were not read; fix that record, or convert the file to FASTA"))
    return items, total


def _parsed(handle: io.StringIO, format_name: str) -> Iterator:
    """Biopython's records of a flat file. GenBank's and EMBL's scanners skip the feature tables, which the
    sequences do not need (a GenBank file with a million features: 0.7 s instead of 19 s, and less memory);
    UniProt's parser has no such switch."""
    scanner = {"genbank": GenBankScanner, "embl": EmblScanner}.get(format_name)
    if scanner is None:
        return SeqIO.parse(handle, format_name)
    return scanner(debug=0).parse_records(handle, do_features=False)


def _residues(record) -> str:
    """A record's sequence as text; empty when the file gives none (a GenBank CONTIG record), so that it is
    refused as empty."""
    try:
        return str(record.seq)
    except UndefinedSequenceError:
        return ""

