"""Built-in sequence sets: the example sets of the page and the CLI, random proteins of realistic
lengths for benchmarks, and the fixed probe proteins that top up a small numerics sample."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from core.input.fasta import parse_sequences
from core.input.records import MAX_RESIDUES, ProteinRecord


_FASTA_DATA_PATH = Path(__file__).resolve().parent / "data" / "real_proteins.fasta"


def example_sequences(
    name: Literal["patterns", "real", "all"] = "all",
) -> list[ProteinRecord]:
    """Return a built-in example set: synthetic repeat patterns, real proteins, or both."""
    if name == "patterns":
        return list(_pattern_records())
    if name == "real":
        return list(_real_records())
    if name == "all":
        return list(_pattern_records()) + list(_real_records())
    raise ValueError(f"unknown example set {name!r}; use 'patterns', 'real' or 'all'")


# Motifs from the 20 standard amino acids; each is repeated and cut to length.
_PATTERN_MOTIFS: tuple[str, ...] = (
    "MKTAYIAKQR",
    "GSGSGS",
    "LLKKLLEE",
    "PEVKVNGQ",
    "WYFHC",
    "EAAAK",
    "GGGGS",
    "GPP",
    "Q",
    "KE",
    "VT",
    "RGD",
    "YGGFL",
    "CGHC",
    "ILVFM",
    "STNQ",
    "ACDEFGHIKLMNPQRSTVWY",
    "YWDKTNER",
)

_PATTERN_MIN_LENGTH = 10

_PATTERN_MAX_LENGTH = 400


def _pattern_lengths(count: int, low: int, high: int) -> list[int]:
    """Evenly spread integer lengths from low to high inclusive."""
    if count == 1:
        return [low]
    step = (high - low) / (count - 1)
    return [round(low + i * step) for i in range(count)]


def _repeat_to_length(motif: str, length: int) -> str:
    """Repeat the motif and cut it to exactly `length` residues."""
    repeats = -(-length // len(motif))
    return (motif * repeats)[:length]


@lru_cache(maxsize=1)
def _pattern_records() -> tuple[ProteinRecord, ...]:
    """The 18 synthetic repeat-pattern examples, shortest first."""
    lengths = _pattern_lengths(len(_PATTERN_MOTIFS), _PATTERN_MIN_LENGTH, _PATTERN_MAX_LENGTH)
    return tuple(
        ProteinRecord(f"pattern_{i:02d}", _repeat_to_length(motif, length))
        for i, (motif, length) in enumerate(zip(_PATTERN_MOTIFS, lengths), start=1)
    )


@lru_cache(maxsize=1)
def _real_records() -> tuple[ProteinRecord, ...]:
    """The real proteins shipped in data/real_proteins.fasta."""
    parsed = parse_sequences(_FASTA_DATA_PATH.read_text(encoding="utf-8"))
    if parsed.problems:
        # A broken bundled file is a packaging bug, not a user-input problem.
        raise RuntimeError(f"bundled {_FASTA_DATA_PATH.name} is invalid: {parsed.problems}")
    return tuple(parsed.records)


# Amino-acid background frequencies (UniProtKB/Swiss-Prot release statistics), in percent.
AMINO_ACID_PERCENT = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27, "I": 5.96,
    "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}

REALISTIC_MEDIAN, REALISTIC_SIGMA, REALISTIC_MIN = 300, 0.6, 20

PROBE_MEDIAN, PROBE_SIGMA, PROBE_MAX, PROBE_SEED = 60, 0.5, 200, 20261126


def random_proteins(n: int, seed: int, median: float, sigma: float, shortest: int, longest: int) -> list[str]:
    """``n`` random proteins with log-normal lengths (``median``, ``sigma``, clipped to shortest … longest)
    and Swiss-Prot residue frequencies; the same arguments give the same set on any machine."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), shortest, longest)
    letters = np.array(list(AMINO_ACID_PERCENT))
    weights = np.array(list(AMINO_ACID_PERCENT.values()))
    return ["".join(rng.choice(letters, int(length), p=weights / weights.sum())) for length in lengths]


def realistic_sequences(n: int, seed: int = 0) -> list[str]:
    """``n`` random proteins of realistic lengths (median 300, 20 … 1022 residues)."""
    return random_proteins(n, seed, REALISTIC_MEDIAN, REALISTIC_SIGMA, REALISTIC_MIN, MAX_RESIDUES)


def probe_sequences(n: int) -> list[str]:
    """``n`` short random proteins (median 60, 20 … 200 residues), always the same: they top up a numerics
    sample drawn from a small set, so its tests have the power to see a systematic departure."""
    return random_proteins(n, PROBE_SEED, PROBE_MEDIAN, PROBE_SIGMA, REALISTIC_MIN, PROBE_MAX)
