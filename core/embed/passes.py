"""One path over a sequence set: batches under a token budget, the forward, the mean pool of every layer.

Pooling averages each sequence's residue positions only (BOS, EOS and padding excluded) and
returns float32 (float64 for a float64 model). The sums are accumulated in float64 so the two
paths' different reduction orders (a padded batch vs a packed one) add no error of their own.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import esm
import numpy as np
import torch

from core.embed.batching import PackedBatch, default_max_tokens, pack_tokens, padded_tokens, plan_batches
from core.embed.paths import ForwardPath, packed_path, standard_path
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.loading import layer_indices
from core.numerics.precision import accumulation_dtype

Progress = Callable[[str, int, int], None]
"""progress(stage, sequences_done, sequences_total); stage is 'v1.0', 'v2.0' or 'reference' (the numerics sample)."""


def residue_mean(is_residue: torch.Tensor, representation: torch.Tensor, residues: torch.Tensor,
                 isolate_non_finite: bool = False) -> torch.Tensor:
    """Each sequence's mean over its residue rows, (batch, embed_dim) float64: one 0/1 float64 matrix
    product (no host-device synchronisation, no atomics). is_residue: (batch, T) bool; representation:
    (batch, T, embed_dim) padded or (T, embed_dim) packed; residues: (batch,) counts.

    The product multiplies every row, so one NaN or infinity anywhere makes every mean of the batch NaN
    (0 × NaN), one in BOS, EOS or padding included. ``isolate_non_finite`` zeroes such rows and makes NaN
    only the means whose residues held one — three more passes over the activations (a third of v2.0's
    time on a 3B model with every layer pooled), so embed_path asks for it only for a batch whose fast
    pooling came out non-finite."""
    values = representation.to(torch.float64, copy=isolate_non_finite)
    if isolate_non_finite:
        finite = torch.isfinite(values).all(dim=-1)  # per token row: (batch, T) or (T,)
        values.masked_fill_(~finite[..., None], 0.0)
    weights = is_residue.to(torch.float64)
    summed = (weights[:, None, :] @ values)[:, 0] if values.dim() == 3 else weights @ values
    pooled = summed / residues[:, None]
    if isolate_non_finite:
        pooled = pooled.masked_fill((is_residue & ~finite).any(dim=1)[:, None], float("nan"))
    return pooled


def pool_padded(representation: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype = torch.float32,
                isolate_non_finite: bool = False) -> torch.Tensor:
    """Mean over residues of padded activations (see residue_mean).

    representation: (batch, T, embed_dim); lengths: (batch,) residue counts (on the same device,
    or copied there). Positions 1 … length are residues; 0 is BOS, length + 1 is EOS, the rest
    padding. Returns (batch, embed_dim) in ``dtype``.
    """
    positions = torch.arange(representation.shape[1], device=representation.device)
    lengths = lengths.to(representation.device, non_blocking=True)
    is_residue = (positions[None, :] >= 1) & (positions[None, :] <= lengths[:, None])  # (batch, T)
    return residue_mean(is_residue, representation, lengths, isolate_non_finite).to(dtype)


def pool_packed(representation: torch.Tensor, cu_seqlens: torch.Tensor, dtype: torch.dtype = torch.float32,
                isolate_non_finite: bool = False) -> torch.Tensor:
    """Mean over residues of packed activations (see residue_mean).

    representation: (total_tokens, embed_dim); cu_seqlens: (batch + 1,) boundaries of
    BOS + residues + EOS per sequence. Returns (batch, embed_dim) in ``dtype``.
    """
    total_tokens = representation.shape[0]
    cu_seqlens = cu_seqlens.to(representation.device, non_blocking=True).long()
    token_counts = cu_seqlens[1:] - cu_seqlens[:-1]
    token = torch.arange(total_tokens, device=representation.device)
    is_residue = (token[None, :] > cu_seqlens[:-1, None]) & (token[None, :] < cu_seqlens[1:, None] - 1)
    return residue_mean(is_residue, representation, token_counts - 2, isolate_non_finite).to(dtype)


@dataclass
class PathEmbeddings:
    """Pooled embeddings of one path: layer -> (n_sequences, embed_dim), in input order."""

    layers: dict[int, np.ndarray]
    backend: str  # the attention that ran (for v2.0 with a plug-in: the plug-in's name)
    seconds: float
    implementation: str = ""  # what produced them, for reports (impl_v1 / impl_v2)
    oom_splits: int = 0  # batches split in two after running out of GPU memory
    host_wait_seconds: float = 0.0  # time the loop waited for tokenisation (the GPU may have idled)


class SequenceTooLarge(ValueError):
    """One sequence alone does not fit in GPU memory on this path; the message says which."""


@dataclass(frozen=True)
class HostBatch:
    """One batch tokenised on the host, ready to copy to the device.

    indices: (b,) positions in the input; lengths: (b,) int64 residue counts; tokens: (b, T)
    int64 fair-esm tokens (padded paths) or None; pack: the same sequences packed (packed paths)
    or None. Tensors are in pinned memory when the model is on a GPU, so copies are asynchronous.
    """

    indices: np.ndarray
    lengths: torch.Tensor
    tokens: torch.Tensor | None
    pack: PackedBatch | None

    @property
    def cost(self) -> int:
        """Tokens the batch occupies: padded width × batch size, or packed total."""
        if self.pack is not None:
            return int(self.pack.input_ids.numel())
        return int(self.tokens.numel())


def host_batch(alphabet: esm.data.Alphabet, sequences: Sequence[str], indices: np.ndarray, packed: bool, pin: bool) -> HostBatch:
    """Tokenise ``sequences[indices]`` with fair-esm's batch converter (and pack them for a packed path)."""
    tokens = padded_tokens(alphabet, [sequences[i] for i in indices])
    lengths = torch.tensor([len(sequences[i]) for i in indices], dtype=torch.int64)
    pack = pack_tokens(tokens, lengths.tolist()) if packed else None
    if pin:
        lengths = lengths.pin_memory()
        if pack is not None:
            pack = PackedBatch(pack.input_ids.pin_memory(), pack.cu_seqlens.pin_memory(), pack.max_seqlen)
        else:
            tokens = tokens.pin_memory()
    return HostBatch(np.asarray(indices), lengths, None if packed else tokens, pack)


def prefetched(make: Callable[[np.ndarray], HostBatch], batches: Sequence[np.ndarray], waited: list[float],
               depth: int = 2) -> Iterator[HostBatch]:
    """``make(batch)`` for each batch, computed ``depth`` batches ahead in a worker thread,
    so the GPU does not wait on tokenisation. Seconds spent waiting for a batch are appended to ``waited``."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenise") as pool:
        pending = deque(pool.submit(make, batch) for batch in batches[:depth])
        upcoming = iter(batches[depth:])
        while pending:
            start = time.perf_counter()
            ready = pending.popleft().result()
            waited.append(time.perf_counter() - start)
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(make, following))
            yield ready


def forward_pooled(path: ForwardPath, batch: HostBatch, layers: Sequence[int], device: torch.device, dtype: torch.dtype,
                   isolate_non_finite: bool = False) -> torch.Tensor:
    """Run ``path`` on one batch and mean-pool ``layers``: (n_layers, b, embed_dim) in ``dtype``, on ``device``."""
    if path.packed:
        pack = batch.pack.to(device)
        reps = path.run(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, layers)["representations"]
        return torch.stack([pool_packed(reps[layer], pack.cu_seqlens, dtype, isolate_non_finite) for layer in layers])
    reps = path.run(batch.tokens.to(device, non_blocking=True), layers)["representations"]
    lengths = batch.lengths.to(device, non_blocking=True)
    return torch.stack([pool_padded(reps[layer], lengths, dtype, isolate_non_finite) for layer in layers])


def to_host(pooled: torch.Tensor, pin: bool) -> torch.Tensor:
    """Start copying ``pooled`` to (pinned) host memory without waiting for it."""
    if pooled.device.type == "cpu":
        return pooled
    host = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=pin)
    return host.copy_(pooled, non_blocking=pin)


@torch.inference_mode()
def embed_path(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layers: Sequence[int],
    path: ForwardPath,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    stage: str = "v2.0",
) -> PathEmbeddings:
    """Run ``path`` over ``sequences`` in batches under a token budget and mean-pool ``layers``.

    The loop never waits for the GPU: tokenisation runs ahead in a thread, inputs and pooled
    outputs move through pinned memory asynchronously, and the one synchronisation is at the end.
    A batch that runs out of GPU memory is split in two and retried, and the budget for the
    remaining batches is lowered to what fitted; only a single sequence that does not fit alone
    is an error (SequenceTooLarge).
    """
    layers = layer_indices(model, layers)
    budget = Budget(max_tokens or default_max_tokens(model.device))
    lengths = [len(seq) for seq in sequences]
    out_dtype = accumulation_dtype(model.dtype)
    pin = model.device.type == "cuda"
    make = functools.partial(host_batch, alphabet, sequences, packed=path.packed, pin=pin)
    results: list[tuple[np.ndarray, torch.Tensor]] = []
    done, waited = 0, []
    start = time.perf_counter()
    for planned in prefetched(make, plan_batches(lengths, budget.tokens, padded=path.padded_batches), waited):
        for indices, pooled in forward_within_budget(planned, make, path, layers, model.device, out_dtype, budget, stage):
            results.append((indices, to_host(pooled, pin)))
            done += len(indices)
            if progress is not None:
                progress(stage, done, len(sequences))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    path.verify()
    pooled_all = torch.empty(len(layers), len(sequences), model.embed_dim, dtype=out_dtype)
    for indices, values in results:
        pooled_all[:, torch.from_numpy(indices)] = values
    if not torch.isfinite(pooled_all).all():
        # Rare (a path returned NaN or infinity): pool those batches again keeping each to its own sequence.
        for indices, values in results:
            if torch.isfinite(values).all():
                continue
            for part, pooled in forward_within_budget(make(indices), make, path, layers, model.device, out_dtype,
                                                      budget, stage, isolate_non_finite=True):
                pooled_all[:, torch.from_numpy(part)] = pooled.cpu()
    return PathEmbeddings(
        layers={layer: pooled_all[i].numpy() for i, layer in enumerate(layers)},
        backend=path.backend,
        seconds=time.perf_counter() - start,
        implementation=path.implementation,
        oom_splits=budget.splits,
        host_wait_seconds=sum(waited[1:]),  # the first batch is always waited for
    )


@dataclass
class Budget:
    """The token budget of a pass, lowered for the rest of the pass each time a batch runs out of memory."""

    tokens: int
    splits: int = 0


def forward_within_budget(planned: HostBatch, make: Callable[[np.ndarray], HostBatch], path: ForwardPath,
                          layers: Sequence[int], device: torch.device, dtype: torch.dtype, budget: Budget,
                          stage: str, isolate_non_finite: bool = False) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(indices, pooled (n_layers, b, embed_dim)) for the planned batch: re-planned under a budget lowered
    since it was planned, and halved and retried when it runs out of memory; SequenceTooLarge when one
    sequence does not fit alone."""
    todo = [planned]
    while todo:
        batch = todo.pop(0)
        if batch.cost > budget.tokens and len(batch.indices) > 1:
            todo[:0] = [make(part) for part in split_under_budget(batch.indices, batch.lengths.tolist(), budget.tokens,
                                                                  path.padded_batches)]
            continue
        pooled = try_forward_pooled(path, batch, layers, device, dtype, isolate_non_finite)
        if pooled is not None:
            yield batch.indices, pooled
            continue
        if len(batch.indices) == 1:
            raise SequenceTooLarge(
                f"sequence #{batch.indices[0] + 1} ({int(batch.lengths[0])} residues) does not fit in GPU "
                f"memory even alone on the {stage} path; use a smaller model or dtype, or a larger GPU"
            )
        budget.splits += 1
        budget.tokens = max(1, batch.cost // 2)
        half = len(batch.indices) // 2
        todo[:0] = [make(batch.indices[:half]), make(batch.indices[half:])]


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU or the host running out of memory (PyTorch's CPU allocator raises a
    RuntimeError saying it "can't allocate memory")."""
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def try_forward_pooled(path: ForwardPath, batch: HostBatch, layers: Sequence[int], device: torch.device,
                       dtype: torch.dtype, isolate_non_finite: bool = False) -> torch.Tensor | None:
    """forward_pooled, or None when the GPU (or the host) ran out of memory (the GPU cache emptied for
    the retry).

    The retry happens outside the ``except`` block so the failed attempt's tensors, held by the
    traceback, are freed first.
    """
    try:
        return forward_pooled(path, batch, layers, device, dtype, isolate_non_finite)
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


def split_under_budget(indices: np.ndarray, lengths: Sequence[int], budget: int, padded: bool) -> list[np.ndarray]:
    """``indices`` re-planned into batches under ``budget`` tokens (see plan_batches); ``lengths``: the
    residue count of each of ``indices``, in the same order."""
    parts = plan_batches(list(lengths), budget, padded=padded)
    return [indices[part] for part in parts]


def embed_v1(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layers: Sequence[int],
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> PathEmbeddings:
    """v1.0: fair-esm's padded forward over length-sorted batches under a token budget."""
    return embed_path(model, alphabet, sequences, layers, standard_path(model), max_tokens, progress, "v1.0")


def embed_v2(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layers: Sequence[int],
    backend: str | None = None,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    path: ForwardPath | None = None,
) -> PathEmbeddings:
    """v2.0: by default the packed forward with ``backend``; or any other ``path`` (fallback, plug-in)."""
    path = path or packed_path(model, backend)
    return embed_path(model, alphabet, sequences, layers, path, max_tokens, progress, "v2.0")
