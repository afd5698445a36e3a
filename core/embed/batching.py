"""Tokens for both paths: padded batches for v1.0, packed batches for v2.0.

Tokenization is fair-esm's own batch converter (BOS + residues + EOS per sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import esm
import numpy as np
import torch

DEFAULT_MAX_TOKENS = 16_384  # per batch on a GPU
CPU_MAX_TOKENS = 2_048  # padded attention is (batch, T, T): small batches are faster on a CPU


def default_max_tokens(device: torch.device) -> int:
    return DEFAULT_MAX_TOKENS if device.type == "cuda" else CPU_MAX_TOKENS


@dataclass(frozen=True)
class PackedBatch:
    """Sequences concatenated without padding.

    input_ids: (total_tokens,) int64, each sequence as BOS, residues, EOS;
    cu_seqlens: (batch + 1,) int32 boundaries, cu_seqlens[0] == 0, cu_seqlens[-1] == total_tokens;
    max_seqlen: the longest sequence in tokens (residues + 2).
    """

    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    def to(self, device: torch.device) -> "PackedBatch":
        return PackedBatch(
            self.input_ids.to(device, non_blocking=True), self.cu_seqlens.to(device, non_blocking=True), self.max_seqlen
        )


def padded_tokens(alphabet: esm.data.Alphabet, sequences: Sequence[str]) -> torch.Tensor:
    """fair-esm's batch converter: (batch, max_len + 2) int64, padded with the padding index."""
    _, _, tokens = alphabet.get_batch_converter()([(str(i), seq) for i, seq in enumerate(sequences)])
    return tokens


def pack_tokens(tokens: torch.Tensor, lengths: Sequence[int]) -> PackedBatch:
    """Strip padding from fair-esm tokens (batch, T) given residue counts; see PackedBatch."""
    token_counts = torch.tensor([length + 2 for length in lengths], dtype=torch.int64)
    keep = torch.arange(tokens.shape[1])[None, :] < token_counts[:, None]
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(token_counts, 0)
    return PackedBatch(tokens[keep], cu_seqlens, int(token_counts.max()))


def pack_sequences(alphabet: esm.data.Alphabet, sequences: Sequence[str]) -> PackedBatch:
    """Tokenize each sequence as fair-esm does and concatenate them without padding."""
    return pack_tokens(padded_tokens(alphabet, sequences), [len(seq) for seq in sequences])


def plan_batches(lengths: Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS, padded: bool = True) -> list[np.ndarray]:
    """Split sequence indices into batches under a token budget, filled longest first.

    A padded batch costs batch_size * (longest + 2) tokens, a packed one sum(length + 2).
    A sequence longer than the budget still gets a batch of its own.
    The batches are returned shortest first, the first holding the shortest sequence alone, so a path's
    first call is one short sequence: a path that sizes its state (rotary tables, buffers) on its first call
    and never grows it meets a longer batch here, as it would in production, instead of being sized for
    everything by a longest batch first; and a path's single-sequence case (a fast path for one sequence,
    as a server embedding one query at a time takes) is part of the comparison. The numerics sample always
    holds the shortest sequence, so that row is also measured against the reference.
    Each batch is handed over with its shortest sequence moved to the front, so that no batch of two or
    more lengths arrives sorted longest first (nor of three or more shortest first), and a longest sequence
    of its own is neither first nor last: a path that sorts its batch by length and does not put the rows
    back returns other sequences' rows, and one that takes an end of the batch for its longest sequence
    misreads it, both in the comparison itself.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    cost = 0
    for index in order:
        tokens = int(lengths[index]) + 2
        # Sorted longest first, so a padded batch's width is fixed by its first member.
        new_cost = (len(current) + 1) * (int(lengths[current[0]]) + 2) if padded and current else cost + tokens
        if current and new_cost > max_tokens:
            batches.append(current)
            current, new_cost = [], tokens
        current.append(int(index))
        cost = new_cost
    if current:
        batches.append(current)
    if batches and len(batches[-1]) > 1:
        batches[-1:] = [batches[-1][:-1], batches[-1][-1:]]
    return [np.asarray(batch[-1:] + batch[:-1], dtype=np.int64) for batch in reversed(batches)]
