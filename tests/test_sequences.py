"""Tests for core.sequences: parsing, validation, byte input and example sets."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.input.examples import example_sequences
from core.input.fasta import parse_sequences, read_sequences
from core.input.records import ALLOWED_RESIDUES, InputProblem, MAX_RESIDUES, ParsedInput, ProteinRecord, printable_id
from core.input.validation import STANDARD_RESIDUES

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"


def ids(parsed: ParsedInput) -> list[str]:
    """Ids of the accepted records, in order."""
    return [r.id for r in parsed.records]


def only_error(parsed: ParsedInput) -> InputProblem:
    """The single error in `parsed` (fails the test if there is not exactly one)."""
    assert len(parsed.errors) == 1, parsed.problems
    return parsed.errors[0]


# --------------------------------------------------------------------------- #
# Constants and data classes
# --------------------------------------------------------------------------- #


def test_constants_match_esm2_alphabet() -> None:
    assert MAX_RESIDUES == 1022
    assert ALLOWED_RESIDUES == frozenset("ACDEFGHIKLMNPQRSTVWYXBUZO")
    assert "J" not in ALLOWED_RESIDUES and "*" not in ALLOWED_RESIDUES


def test_parsed_input_properties_split_errors_and_warnings() -> None:
    err = InputProblem("a", "a: bad", "error")
    warn = InputProblem("b", "b: note", "warning")
    parsed = ParsedInput([ProteinRecord("b", "MK")], [err, warn])
    assert parsed.errors == [err]
    assert parsed.warnings == [warn]
    assert not parsed.ok
    assert ParsedInput([ProteinRecord("b", "MK")], [warn]).ok


# --------------------------------------------------------------------------- #
# Formats and normalisation
# --------------------------------------------------------------------------- #


@given(st.text(max_size=12))
def test_an_id_is_escaped_exactly_where_it_holds_an_other_character(raw_id: str) -> None:
    """Control, format, private-use, surrogate and unassigned characters (Unicode's "Other") are escaped,
    and only those: separators (a no-break space, a line separator) stay as typed."""
    import unicodedata

    others = [char for char in raw_id if unicodedata.category(char)[0] == "C"]
    shown, escaped = printable_id(raw_id)
    assert escaped == bool(others)
    assert shown == "".join(char.encode("unicode_escape").decode("ascii") if char in others else char
                            for char in raw_id)
    assert printable_id("a\u00a0b\u2028c") == ("a\u00a0b\u2028c", False)
    assert printable_id("a\x1b[31m\u200b\ue000") == ("a\\x1b[31m\\u200b\\ue000", True)


def test_fasta_records_use_first_word_of_header_as_id() -> None:
    parsed = parse_sequences(">sp|P1|ONE first protein\nMKTAYIAK\nQRQISFVK\n>two\nGSGS\n")
    assert parsed.ok and parsed.problems == []
    assert ids(parsed) == ["sp|P1|ONE", "two"]
    assert [r.sequence for r in parsed.records] == ["MKTAYIAKQRQISFVK", "GSGS"]
    assert all(r.warnings == () for r in parsed.records)


def test_fasta_with_leading_blank_lines_is_detected() -> None:
    parsed = parse_sequences("\n\n   \n>a\nMKT\n")
    assert ids(parsed) == ["a"] and parsed.ok


def test_bare_lines_are_numbered_by_non_blank_line() -> None:
    parsed = parse_sequences("MKTAY\n\n\nGSGSG\n   \nLLKKL\n")
    assert parsed.ok
    assert ids(parsed) == ["seq_1", "seq_2", "seq_3"]
    assert [r.sequence for r in parsed.records] == ["MKTAY", "GSGSG", "LLKKL"]


def test_semicolon_comment_lines_are_skipped_and_line_numbers_kept() -> None:
    parsed = parse_sequences(";a comment, not a sequence\n>a\nMKT\n; another\nAYI\n>b\nGS1\n")
    assert ids(parsed) == ["a"]
    assert parsed.records[0].sequence == "MKTAYI"
    err = only_error(parsed)
    assert err.record_id == "b"


def test_semicolon_comments_in_bare_lines_are_not_sequences() -> None:
    parsed = parse_sequences("; header comment\nMKTAY\n;GSGSG\nGS1\n")
    assert ids(parsed) == ["seq_1"]
    err = only_error(parsed)
    assert err.record_id == "seq_2" and "line 4" in err.message


def test_record_without_a_standard_amino_acid_is_kept_with_warning() -> None:
    parsed = parse_sequences(">unknown\nXXXXXXXX\n>real\nMKTAYXXK\n")
    assert ids(parsed) == ["unknown", "real"]
    (warning,) = [p for p in parsed.problems if p.severity == "warning"]
    assert warning.record_id == "unknown" and "no standard amino acid" in warning.message
    assert parsed.records[1].warnings == ()


def test_a_record_in_both_cases_is_kept_with_a_warning_and_one_case_is_not() -> None:
    """A name pasted without its '>' ("Ubiquitin") is a valid string of residue letters: it is compared,
    and warned about; a sequence in one case, upper or lower, is not."""
    parsed = parse_sequences("Ubiquitin\nmqifvktltgk\nMQIFVKTLTGK\n")
    assert [record.sequence for record in parsed.records] == ["UBIQUITIN", "MQIFVKTLTGK", "MQIFVKTLTGK"]
    (warning,) = parsed.warnings
    assert warning.record_id == "seq_1" and "upper and lower case" in warning.message
    assert "read as UBIQUITIN" in warning.message and "put '>' before it" in warning.message
    assert all(record.warnings == () for record in parsed.records[1:])
    assert parse_sequences(">a\nMKTayiakQR\n").records[0].warnings != ()  # in FASTA too


def test_bare_line_error_mentions_id_and_line_number() -> None:
    parsed = parse_sequences("MKTAY\n\nGS1GS\n")
    err = only_error(parsed)
    assert err.record_id == "seq_2"
    assert "seq_2" in err.message and "line 3" in err.message
    assert ids(parsed) == ["seq_1"]


def test_lower_case_is_uppercased() -> None:
    parsed = parse_sequences(">a\nmktAyi\n")
    assert parsed.records[0].sequence == "MKTAYI"
    assert parse_sequences("gsgs").records[0].sequence == "GSGS"


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_lone_cr_line_endings(newline: str) -> None:
    text = newline.join([">a desc", "MKT", "AYI", ">b", "GSG", ""])
    parsed = parse_sequences(text)
    assert parsed.ok
    assert [(r.id, r.sequence) for r in parsed.records] == [("a", "MKTAYI"), ("b", "GSG")]


def test_lone_cr_in_bare_lines_splits_records() -> None:
    parsed = parse_sequences("MKT\rGSG\r")
    assert [r.sequence for r in parsed.records] == ["MKT", "GSG"]


@pytest.mark.parametrize("text", ["\ufeff>a\nMKT\n", "\ufeffMKT\n"])
def test_leading_bom_is_stripped(text: str) -> None:
    parsed = parse_sequences(text)
    assert parsed.ok and parsed.records[0].sequence == "MKT"
    assert parsed.records[0].id in ("a", "seq_1")


def test_whitespace_inside_sequences_is_removed() -> None:
    parsed = parse_sequences(">a\n  MKT AYI\tAKQ \u00a0R\n  GS GS  \n")
    assert parsed.ok
    assert parsed.records[0].sequence == "MKTAYIAKQRGSGS"
    bare = parse_sequences("  MK TA\tYI  \n")
    assert bare.records[0].sequence == "MKTAYI"


# --------------------------------------------------------------------------- #
# Stop codons and invalid characters
# --------------------------------------------------------------------------- #


def test_one_trailing_stop_is_stripped_with_warning() -> None:
    parsed = parse_sequences(">a\nMKTAYI*\n")
    assert parsed.ok
    record = parsed.records[0]
    assert record.sequence == "MKTAYI"
    assert len(record.warnings) == 1 and "'*'" in record.warnings[0]
    assert [w.record_id for w in parsed.warnings] == ["a"]
    assert parsed.warnings[0].message == record.warnings[0]


def test_internal_stop_is_refused_with_position() -> None:
    parsed = parse_sequences(">a\nMKT*AYI\n>b\nGSG\n")
    err = only_error(parsed)
    assert err.record_id == "a"
    assert "'*'" in err.message and "position 4" in err.message
    assert ids(parsed) == ["b"]


def test_double_trailing_stop_is_refused() -> None:
    parsed = parse_sequences(">a\nMKT**\n")
    err = only_error(parsed)
    assert "position 4" in err.message
    assert parsed.records == []


@pytest.mark.parametrize(
    ("sequence", "char", "position", "hint"),
    [
        ("MKT1AYI", "1", 4, "digits"),
        ("MK-TAYI", "-", 3, "gap"),
        ("MKTAY.I", ".", 6, "gap"),
        ("MKTÄYI", "Ä", 4, "non-ASCII"),
        ("MKTéYI", "é", 4, "non-ASCII"),
        ("MKJT", "J", 3, "not an amino-acid"),
    ],
)
def test_invalid_characters_are_refused_naming_record_and_position(
    sequence: str, char: str, position: int, hint: str
) -> None:
    parsed = parse_sequences(f">good\nMKT\n>bad_one\n{sequence}\n>after\nGSG\n")
    err = only_error(parsed)
    assert err.record_id == "bad_one"
    assert err.message.startswith("bad_one:")
    assert repr(char) in err.message
    assert f"position {position}" in err.message
    assert hint in err.message
    assert ids(parsed) == ["good", "after"]


def test_position_counts_residues_not_whitespace() -> None:
    err = only_error(parse_sequences(">a\nMK TA\nY-I\n"))
    assert "position 6" in err.message


def test_many_bad_characters_report_only_a_few() -> None:
    sequence = "MK" + "0123456789" * 100 + "-.!?@#"
    err = only_error(parse_sequences(f">a\n{sequence}\n"))
    assert err.message.count("position") == 3
    assert "'0' at position 3" in err.message
    assert "more distinct" in err.message
    assert len(err.message) < 400


def test_non_ascii_letter_in_bare_line() -> None:
    err = only_error(parse_sequences("MKTAY\nMKßT\n"))
    assert err.record_id == "seq_2" and "'ß'" in err.message and "position 3" in err.message


# --------------------------------------------------------------------------- #
# Empty records, empty input, ids
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("body", ["", "*", "   \n"])
def test_empty_record_is_refused(body: str) -> None:
    parsed = parse_sequences(f">empty\n{body}\n>full\nMKT\n")
    err = only_error(parsed)
    assert err.record_id == "empty" and "empty" in err.message
    assert ids(parsed) == ["full"]


def test_bare_star_line_is_empty_record() -> None:
    parsed = parse_sequences("MKT\n*\n")
    err = only_error(parsed)
    assert err.record_id == "seq_2" and "line 2" in err.message
    assert ids(parsed) == ["seq_1"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\r\n", "\ufeff  \n"])
def test_empty_input_gives_single_input_error(text: str) -> None:
    parsed = parse_sequences(text)
    assert parsed.records == []
    assert parsed.problems == [InputProblem("input", "no sequences found", "error")]


def test_duplicate_ids_first_kept_later_refused() -> None:
    parsed = parse_sequences(">x\nMKT\n>y\nGSG\n>x\nLLK\n>x\nPEV\n")
    assert [(r.id, r.sequence) for r in parsed.records] == [("x", "MKT"), ("y", "GSG")]
    assert [e.record_id for e in parsed.errors] == ["x", "x"]
    assert "record 3" in parsed.errors[0].message
    assert "record 4" in parsed.errors[1].message
    assert all("duplicate" in e.message for e in parsed.errors)


def test_empty_fasta_id_is_refused() -> None:
    parsed = parse_sequences(">a\nMKT\n>\nGSG\n>   \nLLK\n>b\nPEV\n")
    assert ids(parsed) == ["a", "b"]
    assert [e.record_id for e in parsed.errors] == ["line 3", "line 5"]
    assert all("no id" in e.message for e in parsed.errors)


# --------------------------------------------------------------------------- #
# Nucleotide detection
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("sequence", ["ACGTACGTACGT", "acguacguaa", "ACGTNNNNACGT", "AAAAAAAAAA"])
def test_nucleotide_like_sequences_are_refused(sequence: str) -> None:
    parsed = parse_sequences(f">nuc\n{sequence}\n")
    err = only_error(parsed)
    assert err.record_id == "nuc"
    assert "nucleotide" in err.message and "translated protein" in err.message
    assert parsed.records == []


def test_short_nucleotide_letters_are_allowed() -> None:
    parsed = parse_sequences(">p\nACGTA\n>q\nACGTACGTA\n")
    assert parsed.ok and ids(parsed) == ["p", "q"]


def test_protein_with_one_non_nucleotide_letter_is_allowed() -> None:
    parsed = parse_sequences(">p\nACGTACGTACGTK\n")
    assert parsed.ok and parsed.records[0].sequence == "ACGTACGTACGTK"


# --------------------------------------------------------------------------- #
# Length limit
# --------------------------------------------------------------------------- #


def test_too_long_is_truncated_with_warning_by_default() -> None:
    long_seq = ("MKTAYIAKQR" * 150)[:1500]
    parsed = parse_sequences(f">long\n{long_seq}\n>short\nGSG\n")
    assert parsed.ok
    record = parsed.records[0]
    assert len(record.sequence) == MAX_RESIDUES == 1022
    assert record.sequence == long_seq[:1022]
    assert len(record.warnings) == 1
    assert "1500" in record.warnings[0] and "1022" in record.warnings[0]
    assert [(w.record_id, w.message) for w in parsed.warnings] == [("long", record.warnings[0])]
    assert ids(parsed) == ["long", "short"]


def test_exactly_max_length_is_untouched() -> None:
    seq = ("MKTAYIAKQR" * 200)[:MAX_RESIDUES]
    parsed = parse_sequences(seq)
    assert parsed.problems == [] and parsed.records[0].sequence == seq


def test_custom_max_length_truncates() -> None:
    parsed = parse_sequences("MKTAYIAKQR", max_length=4)
    assert parsed.records[0].sequence == "MKTA"
    assert "10" in parsed.warnings[0].message and "4" in parsed.warnings[0].message


def test_reject_mode_refuses_too_long() -> None:
    long_seq = "MKTAYIAKQR" * 103
    parsed = parse_sequences(f"{long_seq}\nGSG\n", on_too_long="reject")
    err = only_error(parsed)
    assert err.record_id == "seq_1" and "1030" in err.message and "1022" in err.message
    assert ids(parsed) == ["seq_2"]


def test_trailing_stop_and_truncation_warnings_both_kept() -> None:
    parsed = parse_sequences(">a\n" + "MKTAYIAKQR" * 2 + "*\n", max_length=5)
    assert parsed.records[0].sequence == "MKTAY"
    assert len(parsed.records[0].warnings) == 2
    assert len(parsed.warnings) == 2


def test_invalid_options_raise() -> None:
    with pytest.raises(ValueError):
        parse_sequences("MKT", max_length=0)
    with pytest.raises(ValueError):
        parse_sequences("MKT", on_too_long="drop")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Mixed input keeps order
# --------------------------------------------------------------------------- #


def test_valid_records_processed_when_others_refused_in_order() -> None:
    text = (
        ">ok1\nMKT\n"
        ">bad_digit\nMK1\n"
        ">ok2\nGSG*\n"
        ">dna\nACGTACGTACGT\n"
        ">ok1\nLLK\n"
        ">empty\n"
        ">ok3\nPEV\n"
    )
    parsed = parse_sequences(text)
    assert ids(parsed) == ["ok1", "ok2", "ok3"]
    assert [(p.record_id, p.severity) for p in parsed.problems] == [
        ("bad_digit", "error"),
        ("ok2", "warning"),
        ("dna", "error"),
        ("ok1", "error"),
        ("empty", "error"),
    ]
    assert not parsed.ok


# --------------------------------------------------------------------------- #
# Byte and file input
# --------------------------------------------------------------------------- #


def test_read_plain_bytes_and_bom() -> None:
    parsed = read_sequences(b"\xef\xbb\xbf>a\r\nMKT\r\n")
    assert [(r.id, r.sequence) for r in parsed.records] == [("a", "MKT")]


def test_read_gzip_bytes_by_magic_not_extension(tmp_path: Path) -> None:
    payload = gzip.compress(">a\nMKT\n>b\ngsg*\n".encode())
    parsed = read_sequences(payload)
    assert [(r.id, r.sequence) for r in parsed.records] == [("a", "MKT"), ("b", "GSG")]
    path = tmp_path / "no_gz_suffix.txt"
    path.write_bytes(payload)
    assert ids(read_sequences(path)) == ["a", "b"]
    assert ids(read_sequences(str(path))) == ["a", "b"]


def test_read_plain_file_named_gz_is_not_gunzipped(tmp_path: Path) -> None:
    path = tmp_path / "plain.fasta.gz"
    path.write_text(">a\nMKT\n")
    assert ids(read_sequences(path)) == ["a"]


def test_truncated_gzip_is_a_problem_not_an_exception() -> None:
    payload = gzip.compress((">a\n" + "MKTAYIAKQR" * 500 + "\n").encode())
    parsed = read_sequences(payload[: len(payload) // 2])
    err = only_error(parsed)
    assert err.record_id == "input" and "gzip" in err.message
    assert parsed.records == []


def test_corrupt_gzip_is_a_problem_not_an_exception() -> None:
    payload = bytearray(gzip.compress(b">a\nMKTAYIAKQR\n"))
    payload[-8] ^= 0xFF  # break the CRC
    err = only_error(read_sequences(bytes(payload)))
    assert err.record_id == "input" and "gzip" in err.message


def test_gzip_magic_only_is_a_problem() -> None:
    err = only_error(read_sequences(b"\x1f\x8b"))
    assert err.record_id == "input"


def test_binary_garbage_is_a_problem_not_an_exception() -> None:
    garbage = bytes((i * 37 + 11) % 256 for i in range(2048))
    parsed = read_sequences(garbage)
    assert only_error(parsed).record_id == "input"
    assert parsed.records == []


def test_nul_bytes_are_reported_as_binary() -> None:
    err = only_error(read_sequences(b">a\nMK\x00\x00T\n"))
    assert err.record_id == "input" and "binary" in err.message


def test_bytes_that_are_not_utf8_are_read_as_windows_1252_with_a_warning() -> None:
    parsed = read_sequences(">a\nMKT\n>b\u2019s\nGSG\n".encode("cp1252"))  # a curly apostrophe, 0x92
    assert ids(parsed) == ["a", "b\u2019s"]
    (warning,) = parsed.warnings
    assert warning.record_id == "input" and "not UTF-8 (byte 0x92 on line 3)" in warning.message


def test_bytes_that_are_neither_utf8_nor_text_are_a_problem() -> None:
    err = only_error(read_sequences(b">a\nMKT\x81\n"))  # 0x81: undefined in Windows-1252
    assert err.record_id == "input" and "not UTF-8 text (byte 0x81 at offset 6)" in err.message
    err = only_error(read_sequences(b">a\nMKT\xe9\x07\n"))  # a bell: a control character, not text
    assert "not UTF-8 text (byte 0xe9" in err.message


def test_utf8_non_ascii_letter_is_reported_per_record() -> None:
    parsed = read_sequences(">a\nMKTÄ\n>b\nGSG\n".encode())
    err = only_error(parsed)
    assert err.record_id == "a" and "'Ä'" in err.message and "position 4" in err.message
    assert ids(parsed) == ["b"]


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    err = only_error(read_sequences(tmp_path / "does_not_exist.fasta"))
    assert err.record_id == "input" and "could not read" in err.message


def test_read_passes_options_through() -> None:
    parsed = read_sequences(b"MKTAYIAKQR\n", max_length=3, on_too_long="reject")
    assert only_error(parsed).record_id == "seq_1"


# --------------------------------------------------------------------------- #
# Example sets
# --------------------------------------------------------------------------- #


def test_pattern_examples_shape() -> None:
    patterns = example_sequences("patterns")
    assert len(patterns) == 18
    assert [r.id for r in patterns] == [f"pattern_{i:02d}" for i in range(1, 19)]
    lengths = [len(r.sequence) for r in patterns]
    assert all(10 <= n <= 400 for n in lengths)
    assert min(lengths) == 10 and max(lengths) == 400
    assert len(set(lengths)) == 18  # spread, not clustered
    assert len({r.sequence for r in patterns}) == 18


def test_pattern_examples_are_repeated_motifs_of_standard_residues() -> None:
    for record in example_sequences("patterns"):
        assert set(record.sequence) <= set(STANDARD_AA)
        seq = record.sequence
        period = next(p for p in range(1, len(seq) + 1) if seq == (seq[:p] * len(seq))[: len(seq)])
        assert period <= 20, record.id


def test_examples_are_deterministic() -> None:
    assert example_sequences("all") == example_sequences("all")
    first = example_sequences("patterns")
    first.clear()  # mutating the returned list must not affect later calls
    assert len(example_sequences("patterns")) == 18


def test_pattern_examples_pass_validation() -> None:
    patterns = example_sequences("patterns")
    fasta = "".join(f">{r.id}\n{r.sequence}\n" for r in patterns)
    parsed = parse_sequences(fasta)
    assert parsed.problems == []
    assert parsed.records == patterns


def test_real_examples_parse_cleanly() -> None:
    real = example_sequences("real")
    assert len(real) == 9
    assert [r.id for r in real] == [
        "UBIQ_HUMAN",
        "GFP_AEQVI",
        "HBA_HUMAN",
        "HBB_HUMAN",
        "MYG_PHYMC",
        "LYSC_CHICK",
        "INS_HUMAN",
        "BPT1_BOVIN",
        "HP35",
    ]
    assert [len(r.sequence) for r in real] == [76, 238, 142, 147, 154, 129, 110, 58, 35]
    assert real[0].sequence.startswith("MQIFVKTLTG") and real[0].sequence.endswith("LRLRGG")


def test_real_fasta_file_has_no_problems_and_is_wrapped() -> None:
    import core.input.examples as module

    path = Path(module.__file__).parent / "data" / "real_proteins.fasta"
    text = path.read_text(encoding="utf-8")
    parsed = parse_sequences(text)
    assert parsed.problems == [] and len(parsed.records) == 9
    assert all(len(line) <= 60 for line in text.splitlines() if not line.startswith(">"))
    headers = [line for line in text.splitlines() if line.startswith(">")]
    assert all("(" in h and h.endswith(")") for h in headers)


def test_all_is_patterns_then_real_with_unique_ids() -> None:
    everything = example_sequences("all")
    assert everything == example_sequences("patterns") + example_sequences("real")
    assert example_sequences() == everything
    assert len({r.id for r in everything}) == len(everything) == 27


def test_every_example_residue_is_allowed() -> None:
    for record in example_sequences("all"):
        assert record.sequence and set(record.sequence) <= ALLOWED_RESIDUES, record.id
        assert len(record.sequence) <= MAX_RESIDUES


def test_unknown_example_set_raises() -> None:
    with pytest.raises(ValueError):
        example_sequences("nope")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #


def _not_nucleotide_like(seq: str) -> bool:
    return len(seq) < 10 or not set(seq) <= set("ACGTUN")


protein_strings = st.text(alphabet=sorted(ALLOWED_RESIDUES), min_size=1, max_size=300).filter(
    _not_nucleotide_like
)


@settings(max_examples=150, deadline=None)
@given(
    sequences=st.lists(protein_strings, min_size=1, max_size=8),
    width=st.integers(min_value=1, max_value=80),
    lower=st.booleans(),
)
def test_fasta_round_trip(sequences: list[str], width: int, lower: bool) -> None:
    chunks = []
    for i, seq in enumerate(sequences):
        body = seq.lower() if lower else seq
        wrapped = "\n".join(body[j : j + width] for j in range(0, len(body), width))
        chunks.append(f">prot_{i} some description\n{wrapped}\n")
    parsed = parse_sequences("".join(chunks))
    assert parsed.errors == []
    assert [p.record_id for p in parsed.warnings] == [
        f"prot_{i}" for i, seq in enumerate(sequences) if not STANDARD_RESIDUES.intersection(seq)
    ]
    assert [(r.id, r.sequence) for r in parsed.records] == [
        (f"prot_{i}", seq) for i, seq in enumerate(sequences)
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_parse_never_raises_on_arbitrary_text(text: str) -> None:
    parsed = parse_sequences(text)
    assert parsed.records or parsed.errors
    for record in parsed.records:
        assert 1 <= len(record.sequence) <= MAX_RESIDUES
        assert set(record.sequence) <= ALLOWED_RESIDUES
    assert len({r.id for r in parsed.records}) == len(parsed.records)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_read_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    parsed = read_sequences(data)
    assert parsed.records or parsed.errors
    assume(not data.startswith(b"\x1f\x8b"))  # only one gzip layer is unwrapped
    assert read_sequences(gzip.compress(data)).problems == parsed.problems


def test_control_characters_in_ids_are_escaped_with_a_warning():
    parsed = parse_sequences(">evil\x1b[2J\x07name\nMKTAYIAKQR\n>plain\nGSWQGSWQ\n")
    assert [r.id for r in parsed.records] == ["evil\\x1b[2J\\x07name", "plain"]
    assert [(p.severity, p.record_id) for p in parsed.problems] == [("warning", "evil\\x1b[2J\\x07name")]
    assert not any(ord(c) < 32 for p in parsed.problems for c in p.message)


# --------------------------------------------------------------------------- #
# Tables and flat files (more cases in test_hostile_inputs.py's catalogue)
# --------------------------------------------------------------------------- #


def test_a_table_takes_the_sequence_column_by_name_and_the_id_column_by_name() -> None:
    parsed = parse_sequences("seq_id,sequence_length,Sequence,label\na,3,MKT,1\nb,5,gsgsg,0\n")
    assert [(r.id, r.sequence) for r in parsed.records] == [("a", "MKT"), ("b", "GSGSG")]
    (note,) = parsed.warnings
    assert "sequences from column 'Sequence', ids from column 'seq_id'; 2 other column(s) set aside" in note.message


def test_a_table_quotes_cells_as_csv_does() -> None:
    parsed = parse_sequences('name,sequence\n"kinase, fragment","MKT AYI"\n')
    assert [(r.id, r.sequence) for r in parsed.records] == [("kinase, fragment", "MKTAYI")]


def test_a_table_with_two_sequence_columns_is_one_error_naming_them() -> None:
    parsed = parse_sequences("id,sequence,seq\na,MKT,GSG\n")
    assert ids(parsed) == []
    assert "several columns are named as sequences ('sequence', 'seq'); keep one" in only_error(parsed).message


def test_a_table_without_ids_names_its_rows() -> None:
    parsed = parse_sequences("sequence,label\nMKT,1\n\nGSG,0\n")
    assert [(r.id, r.sequence) for r in parsed.records] == [("seq_1", "MKT"), ("seq_2", "GSG")]


def test_a_table_row_csv_cannot_read_stops_the_reading_and_keeps_the_rows_before() -> None:
    parsed = parse_sequences("id,sequence\na,MKT\nb," + "A" * 200_000 + "\nc,GSG\n")
    assert ids(parsed) == ["a"]
    assert "could not be read from its row 2 on (field larger than field limit" in only_error(parsed).message


def test_a_genbank_file_without_a_sequence_is_an_empty_record_not_a_traceback() -> None:
    parsed = parse_sequences("LOCUS       XP_2                      10 aa            linear   PRI 01-JAN-2020\n"
                             "ACCESSION   XP_2\nVERSION     XP_2.1\nCONTIG      join(A:1..10)\n//\n")
    assert ids(parsed) == []
    assert only_error(parsed).message.startswith("XP_2.1: empty sequence")


def test_a_broken_flat_file_keeps_the_records_before_and_names_where_it_stopped() -> None:
    locus = "LOCUS       {}                      3 aa            linear   PRI 01-JAN-2020\nORIGIN\n"
    parsed = parse_sequences(locus.format("XP_1") + "        1 mkt\n//\n" + locus.format("XP_2") + "   x 1 gs1g\n//\n")
    assert ids(parsed) == ["XP_1"]
    assert "GenBank record 2 could not be read (Sequence line mal-formed" in only_error(parsed).message


def test_a_flat_file_cut_short_is_read_with_the_parsers_warning_on_its_record() -> None:
    parsed = parse_sequences("LOCUS       XP_2\nORIGIN\n        1 gsg\n")
    assert [(r.id, r.sequence) for r in parsed.records] == [("XP_2", "GSG")]
    assert parsed.records[0].warnings == ("XP_2: read with a warning from Biopython (Premature end of file in sequence "
                                          "data); check that the record is complete",)


def test_page_sessions_reading_flat_files_at_once_each_keep_their_own_parser_warnings() -> None:
    """Python's warnings capture is process-wide: two sessions reading flat files at the same moment could
    take each other's Biopython warning, or lose it to stderr. Each read keeps exactly its own."""
    import sys
    import threading

    def cut_short(name: str) -> str:
        return f"LOCUS       {name}\nORIGIN\n" + "        1 gsgsgsgsgs gsgsgsgsgs\n" * 40

    notes: dict[str, list[tuple[str, ...]]] = {f"XP_{i}": [] for i in range(8)}

    def read(name: str) -> None:
        for _ in range(15):
            notes[name].append(parse_sequences(cut_short(name)).records[0].warnings)

    threads = [threading.Thread(target=read, args=(name,)) for name in notes]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, as under a busy server: the overlap is certain
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    for name, seen in notes.items():
        expected = (f"{name}: read with a warning from Biopython (Premature end of file in sequence data); check "
                    "that the record is complete",)
        assert seen == [expected] * 15, name


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["", " ", "\t", "MKT", " GSG", ";c", "\u00a0"]), max_size=30))
def test_lines_are_counted_and_numbered_without_splitting_the_text(lines: list[str]) -> None:
    """The regular-expression readers (no list of every line) agree with splitting the text into lines."""
    from core.input.fasta import _line_raw_records, _non_blank_lines, _without_comments

    text = "\n".join(lines)
    assert _non_blank_lines(text) == sum(1 for line in lines if line.strip())
    assert _without_comments(text) == "\n".join("" if line.lstrip().startswith(";") else line for line in lines)
    if any(line.strip() for line in lines):  # one record per non-blank line, named by its line
        records, total = _line_raw_records(text, 10**6)
        expected = [(f"seq_{n}", f"seq_{n} (line {i})", line) for n, (i, line) in
                    enumerate(((i, line) for i, line in enumerate(lines, start=1) if line.strip()), start=1)]
        assert [(r.record_id, r.label, r.raw_sequence) for r in records] == expected and total == len(expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a,MKT", "b,GSG", "", ",,", " , ", 'c,"MK\nT"', "d,M;K"]), max_size=25),
       st.integers(min_value=1, max_value=5))
def test_rows_past_the_limit_are_counted_as_reading_them_would(rows: list[str], limit: int) -> None:
    """Past the limit a table's rows are only counted (in C, when no quote is left): the same count as
    reading every row."""
    from core.input.tables import table_raw_records

    text = "id,sequence\n" + "\n".join(rows)
    counted, read = table_raw_records(text, limit, ","), table_raw_records(text, 10**9, ",")
    assert counted[1] == read[1]
    assert counted[0] == read[0][:len(counted[0])]


def test_an_excel_97_sheet_reads_as_the_sheet_shows_it() -> None:
    """xlrd gives numbers as floats and booleans as 0/1: the table holds them as Excel shows them."""
    from core.input.workbooks import OLD_EXCEL

    sheets, text = OLD_EXCEL.read((Path(__file__).resolve().parent / "data" / "sequences.xls").read_bytes())
    assert sheets == ["proteins", "notes"]
    assert text.splitlines()[0] == "id,sequence,length,score,reviewed"
    assert text.splitlines()[2] == "trp_cage,NLYIQWLKDGGPSSGRPPPS,20,1.5,FALSE"
    assert text.splitlines()[1].endswith(",76,0.25,TRUE") and text.splitlines()[3] == "empty,,0,0,FALSE"


def test_a_sheet_is_measured_by_its_references_before_pandas_pads_it() -> None:
    """The row and cell references bound what pandas would pad a sheet to; a row or cell without one
    follows the one before; a namespace prefix changes nothing."""
    from core.input.workbooks import _sheet_shape, SheetTooLarge

    assert _sheet_shape(b'<sheetData><row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1"/></row>'
                        b'<row><c/><c/><c/></row><row r="9"/></sheetData>') == (9, 3)
    assert _sheet_shape(b'<x:sheetData><x:row r="3"><x:c r="XFD3"><x:v>1</x:v></x:c></x:row><x:rowBreaks/>'
                        b'</x:sheetData>') == (3, 16384)
    assert _sheet_shape(b'<sheetData><row><c><v>1</v></c></row><row><c/><c/></row></sheetData>'
                        b'<cols><col min="1" max="5"/></cols>') == (2, 2)
    # what else openpyxl reads as a reference: single quotes, lower case, spaces around the value
    assert _sheet_shape(b"<row r='1000000'><c r='gjh1000000'/></row>") == (1_000_000, 5_000)
    assert _sheet_shape(b'<row r = " 7 "><c r="b7"/></row>') == (7, 2)
    # what this scan cannot read as openpyxl would is not measured but refused
    for unmeasurable in (b'<row r="&#49;000000"><c r="A1"/></row>', b'<row r="9"><c r="&#69;9"/></row>',
                         b'<row r="1_000_000"/>', b'<!DOCTYPE worksheet [<!ENTITY rows "">]><sheetData>&rows;</sheetData>'):
        with pytest.raises(SheetTooLarge):
            _sheet_shape(unmeasurable)


def test_a_table_whose_first_column_is_called_like_a_pdb_record_stays_a_table() -> None:
    parsed = parse_sequences("HEADER\tsequence\nx\tMKT\n")  # PDB's HEADER is followed by spaces, not a tab
    assert [(r.id, r.sequence) for r in parsed.records] == [("x", "MKT")]
    assert "ids from column 'HEADER'" in parsed.warnings[0].message


def test_a_wide_table_without_names_is_not_searched_for_its_sequences() -> None:
    wide = ",".join(["1"] * 64 + ["MKT"])  # 65 columns: past the width a headerless table is searched to
    parsed = parse_sequences(f"{wide}\n")
    assert ids(parsed) == [] and only_error(parsed).message.startswith("seq_1 (line 1): contains '1'")
    narrow = ",".join(["1"] * 63 + ["MKT"])
    assert [r.sequence for r in parse_sequences(f"{narrow}\n").records] == ["MKT"]


def test_a_table_without_a_header_is_read_only_when_its_rows_are_as_wide() -> None:
    assert ids(parse_sequences("P1,MKT\nP2,GSG\n")) == ["P1", "P2"]
    ragged = parse_sequences("P1,MKT\nP2,GSG,1\n")
    assert ids(ragged) == [] and [e.record_id for e in ragged.errors] == ["seq_1", "seq_2"]


def test_a_record_with_many_distinct_invalid_characters_names_the_first_three_and_counts_the_rest() -> None:
    junk = "".join(chr(c) for c in range(0x3b1, 0x3b1 + 40))  # 40 Greek letters: past the str.index path
    parsed = parse_sequences(f">g\nMKT{junk}{junk}\n")
    message = only_error(parsed).message
    assert message.startswith("g: contains 'α' at position 4 (non-ASCII character; use one-letter amino-acid codes A-Z), "
                              "'β' at position 5")
    assert message.endswith(", and 37 more distinct invalid character(s) (80 invalid characters in total)")
    few = only_error(parse_sequences(">f\nMK#T1#1\n")).message  # the str.index path: positions in order
    assert few == ("f: contains '#' at position 3 (not an amino-acid letter), '1' at position 5 (digits are not "
                   "amino acids) (4 invalid characters in total)")
