"""One record's checks: cleaning, refused characters (with a hint what they are), nucleotides, length."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.input.records import ALLOWED_RESIDUES, InputProblem, ProteinRecord, TooLongPolicy, printable_id

STANDARD_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY")


# One character outside ALLOWED_RESIDUES (a regex, so that validation runs at C speed).
_BAD_RESIDUE = re.compile("[^" + "".join(sorted(ALLOWED_RESIDUES)) + "]")

# A record this long made only of these letters is almost certainly DNA/RNA.
_NUCLEOTIDE_LETTERS = frozenset("ACGTUN")

_NUCLEOTIDE_MIN_LENGTH = 10

# How many distinct offending characters one error message lists.
_MAX_BAD_CHARS_REPORTED = 3

# Up to this many distinct offending characters, each one's first position is found by str.index.
_MANY_DISTINCT = 32


@dataclass(frozen=True)
class RawRecord:
    """A record as found in the input, before validation."""

    record_id: str
    label: str  # how messages name the record, e.g. "seq_3 (line 7)"
    raw_sequence: str
    notes: tuple[str, ...] = ()  # what reading it found (a parser's warning), kept as the record's warnings


def named_record(raw_id: str, sequence: str, number: int, where: str, first_seen: dict[str, int],
                 header: str = ">", missing_id: str | None = None, notes: tuple[str, ...] = ()
                 ) -> list[RawRecord | InputProblem]:
    """Record ``number`` (found at ``where``) as a raw record, or its problems: an escaped id warns; a missing
    or duplicate id refuses it. ``header``: what starts the record's header line ('>' FASTA, '@' FASTQ), for
    the missing-id message, or ``missing_id``: that message whole (a format without header lines).
    ``notes``: what reading the record found, its warnings once kept. ``first_seen`` (id -> record number)
    is updated."""
    record_id, had_controls = printable_id(raw_id)
    found: list[RawRecord | InputProblem] = []
    if had_controls:
        found.append(InputProblem(
            record_id, f"{record_id}: the id held control characters (terminal escapes, tabs, …); they are shown escaped",
            "warning",
        ))
    if not record_id:
        return found + [InputProblem(where, missing_id or (
            f"{where}: {'FASTA' if header == '>' else 'FASTQ'} header '{header}' has no id (record {number}); "
            f"put a name right after '{header}'"), "error")]
    if record_id in first_seen:
        return found + [InputProblem(
            record_id,
            f"{record_id}: duplicate id (record {number} reuses the id of record {first_seen[record_id]}); only the "
            "first one is used, give each record a unique id",
            "error",
        )]
    first_seen[record_id] = number
    return found + [RawRecord(record_id, record_id, sequence, notes)]


def validate_record(
    raw: RawRecord, max_length: int, on_too_long: TooLongPolicy
) -> tuple[ProteinRecord | None, list[InputProblem]]:
    """Clean and check one record; return it (or None if refused) plus its problems."""
    label = raw.label

    def refuse(message: str) -> tuple[None, list[InputProblem]]:
        return None, [InputProblem(raw.record_id, f"{label}: {message}", "error")]

    sequence = _clean(raw.raw_sequence)
    notes = [f"{label}: {note}" for note in raw.notes]
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
    if _mixed_case(raw.raw_sequence):
        notes.append(f"{label}: written in upper and lower case, as a name or a word is, not a sequence; read as "
                     f"{sequence[:12]}{'…' if len(sequence) > 12 else ''} — if it names the next sequence, put '>' "
                     "before it")
    if not STANDARD_RESIDUES.intersection(sequence):
        notes.append(f"{label}: no standard amino acid, only {', '.join(sorted(set(sequence)))}; its embedding "
                     "says little about any protein")
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
    if _BAD_RESIDUE.search(sequence) is None:
        return None
    # String methods, not a Python loop over the matches: a hostile record may hold 100 MB of them.
    distinct = set(sequence) - ALLOWED_RESIDUES
    if len(distinct) <= _MANY_DISTINCT:
        first_position = dict(sorted(((char, sequence.index(char) + 1) for char in distinct), key=lambda item: item[1]))
        total = sum(sequence.count(char) for char in distinct)
    else:  # many distinct characters: the first few come soon
        first_position = {}
        for match in _BAD_RESIDUE.finditer(sequence):
            first_position.setdefault(match.group(), match.start() + 1)
            if len(first_position) == _MAX_BAD_CHARS_REPORTED:
                break
        total = len(sequence) - len(_BAD_RESIDUE.sub("", sequence))

    shown = list(first_position.items())[:_MAX_BAD_CHARS_REPORTED]
    parts = [f"{char!r} at position {position} ({_hint(char)})" for char, position in shown]
    message = "contains " + ", ".join(parts)
    hidden = len(distinct) - len(shown)
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
    if char in ",;":
        return "a table's separator; a table is read when a header row names its 'sequence' column"
    if char == ">":
        return "'>' starts a FASTA header; FASTA input must begin with a '>' line"
    if not char.isascii():
        return "non-ASCII character; use one-letter amino-acid codes A-Z"
    if not char.isprintable():
        return "control character; the input may be binary or corrupted"
    if char.isalpha():
        return f"'{char}' is not an amino-acid code"
    return "not an amino-acid letter"


def _mixed_case(raw_sequence: str) -> bool:
    """Both upper- and lower-case letters: sequences come in one case (lower case is read as upper), while
    a name pasted without its '>' ("Ubiquitin") comes in both."""
    ascii_text = raw_sequence.encode("ascii", "ignore").decode("ascii")  # string methods: a record may be 100 MB
    return ascii_text != ascii_text.lower() and ascii_text != ascii_text.upper()


def _is_nucleotide_like(sequence: str) -> bool:
    """True for long-enough sequences made only of nucleotide letters."""
    return len(sequence) >= _NUCLEOTIDE_MIN_LENGTH and set(sequence) <= _NUCLEOTIDE_LETTERS
