"""Run both paths over a sequence set and mean-pool every requested layer.

Pooling averages each sequence's residue positions only (BOS, EOS and padding excluded) and
returns float32 (float64 for a float64 model). The sums are accumulated in float64 so the two
paths' different reduction orders (a padded batch vs a packed one) add no error of their own.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import esm
import numpy as np
import torch

from core.batching import DEFAULT_MAX_TOKENS, PackedBatch, default_max_tokens, pack_tokens, padded_tokens, plan_batches
from core.sequences import probe_sequences
from core.model import (
    V1_COMPATIBLE_BACKEND, ESM2WithFlashAttention, dtype_name, layer_indices, parse_dtype, reference_copy, versions,
)

V1_BACKEND = "fair-esm (torch.bmm)"

Progress = Callable[[str, int, int], None]
"""progress(stage, sequences_done, sequences_total); stage is 'v1.0', 'v2.0' or 'reference' (the numerics sample)."""
DEFAULT_REFERENCE_SAMPLE = 64
MIN_NUMERICS_SAMPLE = 32  # smaller sets are topped up with probe proteins
DEEP_PACK_OFFSET = DEFAULT_MAX_TOKENS  # on the numerics sample, a packed v2.0 sees each sequence this deep in its pack


def pool_dtype(model_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if model_dtype == torch.float64 else torch.float32


def pool_padded(representation: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean over residues of padded activations.

    representation: (batch, T, embed_dim); lengths: (batch,) residue counts (on the same device,
    or copied there). Positions 1 … length are residues; 0 is BOS, length + 1 is EOS, the rest
    padding. Returns (batch, embed_dim) in ``dtype``. No host-device synchronisation.
    """
    positions = torch.arange(representation.shape[1], device=representation.device)
    lengths = lengths.to(representation.device, non_blocking=True)
    is_residue = (positions[None, :] >= 1) & (positions[None, :] <= lengths[:, None])  # (batch, T)
    summed = torch.bmm(is_residue.to(torch.float64)[:, None, :], representation.to(torch.float64))[:, 0]
    return (summed / lengths[:, None]).to(dtype)


def pool_packed(representation: torch.Tensor, cu_seqlens: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean over residues of packed activations.

    representation: (total_tokens, embed_dim); cu_seqlens: (batch + 1,) boundaries of
    BOS + residues + EOS per sequence. Returns (batch, embed_dim) in ``dtype``.

    The sums are one float64 matrix product with a (batch, total_tokens) 0/1 residue matrix:
    no host-device synchronisation, and no atomics (an index_add into a few rows serialises).
    """
    total_tokens = representation.shape[0]
    cu_seqlens = cu_seqlens.to(representation.device, non_blocking=True).long()
    token_counts = cu_seqlens[1:] - cu_seqlens[:-1]
    token = torch.arange(total_tokens, device=representation.device)
    is_residue = (token[None, :] > cu_seqlens[:-1, None]) & (token[None, :] < cu_seqlens[1:, None] - 1)
    summed = is_residue.to(torch.float64) @ representation.to(torch.float64)
    return (summed / (token_counts - 2)[:, None]).to(dtype)


@dataclass
class PathEmbeddings:
    """Pooled embeddings of one path: layer -> (n_sequences, embed_dim), in input order."""

    layers: dict[int, np.ndarray]
    backend: str  # the attention that ran (for v2.0 with a plug-in: the plug-in's name)
    seconds: float
    implementation: str = ""  # what produced them, for reports (impl_v1 / impl_v2)
    oom_splits: int = 0  # batches split in two after running out of GPU memory
    host_wait_seconds: float = 0.0  # time the loop waited for tokenisation (the GPU may have idled)


@dataclass(frozen=True)
class ForwardPath:
    """How one path turns a batch into per-token representations.

    packed: ``run(input_ids, cu_seqlens, max_seqlen, layers)`` on packed batches, else
    ``run(tokens, layers)`` on fair-esm's padded tokens; both return ``{"representations": …}``.
    padded_batches: plan batches as v1.0 does (same batches, same padding), not as packed ones.
    """

    backend: str
    implementation: str
    packed: bool
    run: Callable[..., dict]
    padded_batches: bool


def standard_path(model: ESM2WithFlashAttention) -> ForwardPath:
    """v1.0: fair-esm's own padded forward."""
    return ForwardPath(V1_BACKEND, f"fair-esm {versions().get('fair-esm', '')} ESM2.forward", packed=False,
                       run=lambda tokens, layers: model(tokens, repr_layers=layers), padded_batches=True)


def packed_path(model: ESM2WithFlashAttention, backend: str | None = None) -> ForwardPath:
    """v2.0: this project's forward_packed with a varlen attention backend."""
    resolved = model.resolved_backend(backend)
    return ForwardPath(
        resolved, f"core ESM2WithFlashAttention.forward_packed ({resolved})", packed=True,
        run=lambda ids, cu_seqlens, max_seqlen, layers: model.forward_packed(ids, cu_seqlens, max_seqlen, layers, backend=resolved),
        padded_batches=False,
    )


def fallback_path(model: ESM2WithFlashAttention) -> ForwardPath:
    """The v1-compatible fallback behind the packed API, fed v1.0's own batches (so bit-identical to it)."""
    return ForwardPath(
        V1_COMPATIBLE_BACKEND, "core forward_packed(v1_compatible=True): fair-esm forward behind the packed API",
        packed=True,
        run=lambda ids, cu_seqlens, max_seqlen, layers: model.forward_packed(ids, cu_seqlens, max_seqlen, layers, v1_compatible=True),
        padded_batches=True,
    )


def plugin_path(implementation: object) -> ForwardPath:
    """Any v2.0 implementation with ``forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)``
    or a padded ``forward(tokens, repr_layers)``, and ``name`` / ``version`` attributes."""
    label = f"{implementation.name} {implementation.version}".strip()
    if hasattr(implementation, "forward_packed"):
        return ForwardPath(label, label, packed=True, padded_batches=False,
                           run=lambda ids, cu_seqlens, max_seqlen, layers: implementation.forward_packed(ids, cu_seqlens, max_seqlen, layers))
    return ForwardPath(label, label, packed=False, padded_batches=True,
                       run=lambda tokens, layers: implementation.forward(tokens, layers))


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


def forward_pooled(path: ForwardPath, batch: HostBatch, layers: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Run ``path`` on one batch and mean-pool ``layers``: (n_layers, b, embed_dim) in ``dtype``, on ``device``."""
    if path.packed:
        pack = batch.pack.to(device)
        reps = path.run(pack.input_ids, pack.cu_seqlens, pack.max_seqlen, layers)["representations"]
        return torch.stack([pool_packed(reps[layer], pack.cu_seqlens, dtype) for layer in layers])
    reps = path.run(batch.tokens.to(device, non_blocking=True), layers)["representations"]
    lengths = batch.lengths.to(device, non_blocking=True)
    return torch.stack([pool_padded(reps[layer], lengths, dtype) for layer in layers])


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
    budget = max_tokens or default_max_tokens(model.device)
    lengths = [len(seq) for seq in sequences]
    out_dtype = pool_dtype(model.dtype)
    pin = model.device.type == "cuda"
    make = functools.partial(host_batch, alphabet, sequences, packed=path.packed, pin=pin)
    results: list[tuple[np.ndarray, torch.Tensor]] = []
    done, splits, waited = 0, 0, []
    start = time.perf_counter()
    for planned in prefetched(make, plan_batches(lengths, budget, padded=path.padded_batches), waited):
        todo = [planned]
        while todo:
            batch = todo.pop(0)
            if batch.cost > budget and len(batch.indices) > 1:
                todo[:0] = [make(part) for part in split_under_budget(batch.indices, lengths, budget, path.padded_batches)]
                continue
            pooled = try_forward_pooled(path, batch, layers, model.device, out_dtype)
            if pooled is None:  # out of memory: halve, retry, and keep the lower budget
                if len(batch.indices) == 1:
                    raise SequenceTooLarge(
                        f"sequence #{batch.indices[0] + 1} ({lengths[batch.indices[0]]} residues) does not fit in GPU "
                        f"memory even alone on the {stage} path; use a smaller model or dtype, or a larger GPU"
                    )
                splits += 1
                budget = max(1, batch.cost // 2)
                half = len(batch.indices) // 2
                todo[:0] = [make(batch.indices[:half]), make(batch.indices[half:])]
                continue
            results.append((batch.indices, to_host(pooled, pin)))
            done += len(batch.indices)
            if progress is not None:
                progress(stage, done, len(sequences))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    pooled_all = torch.empty(len(layers), len(sequences), model.embed_dim, dtype=out_dtype)
    for indices, values in results:
        pooled_all[:, torch.from_numpy(indices)] = values
    return PathEmbeddings(
        layers={layer: pooled_all[i].numpy() for i, layer in enumerate(layers)},
        backend=path.backend,
        seconds=time.perf_counter() - start,
        implementation=path.implementation,
        oom_splits=splits,
        host_wait_seconds=sum(waited[1:]),  # the first batch is always waited for
    )


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU or the host running out of memory (PyTorch's CPU allocator raises a
    RuntimeError saying it "can't allocate memory")."""
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def try_forward_pooled(path: ForwardPath, batch: HostBatch, layers: Sequence[int], device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor | None:
    """forward_pooled, or None when the GPU (or the host) ran out of memory (the GPU cache emptied for
    the retry).

    The retry happens outside the ``except`` block so the failed attempt's tensors, held by the
    traceback, are freed first.
    """
    try:
        return forward_pooled(path, batch, layers, device, dtype)
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


def split_under_budget(indices: np.ndarray, lengths: Sequence[int], budget: int, padded: bool) -> list[np.ndarray]:
    """``indices`` re-planned into batches under ``budget`` tokens (see plan_batches)."""
    parts = plan_batches([lengths[i] for i in indices], budget, padded=padded)
    return [indices[part] for part in parts]


YardstickKind = Literal["reference", "floor"]


@dataclass
class Yardstick:
    """The numerics sample: what v2.0's departure from v1.0 is measured on, and against.

    Sequences: the run's rows ``indices`` ((m,) int64, chosen to span the lengths), then ``probes`` — fixed
    short proteins that top a small set up to MIN_NUMERICS_SAMPLE, so the tests have the power to decide.
    On them, each layer -> (m + len(probes), embed_dim):
    baseline: v1.0 (fair-esm's padded forward in its own batches); candidate: v2.0 in its own batches;
    reference: kind 'reference', the standard path on a copy of the same weights in a wider ``dtype``
    (fp32 with TF32 off, or fp64), so each path's distance from it is its own arithmetic error; kind
    'floor', the standard path again in the model's dtype, each sequence alone (another batch
    composition), so v1.0's distance from it is the rounding floor;
    deep: v2.0 at the first attention layer only (``deep.layers`` has one key) with every sequence deep in
    one pack (see deep_pack_embeddings); None for a padded path, or when no pooled layer follows an attention.
    """

    kind: YardstickKind
    dtype: str
    indices: np.ndarray
    probes: tuple[str, ...]
    baseline: PathEmbeddings
    candidate: PathEmbeddings
    reference: PathEmbeddings
    deep: PathEmbeddings | None = None

    @property
    def size(self) -> int:
        return int(self.indices.size) + len(self.probes)

    @property
    def seconds(self) -> float:
        parts = (self.baseline, self.candidate, self.reference, self.deep)
        return sum(part.seconds for part in parts if part is not None)

    def reference_rows(self, layer: int) -> np.ndarray:
        """(m, embed_dim) the reference at ``layer`` on the run's own sampled rows (probes left out)."""
        return self.reference.layers[layer][: self.indices.size]


@dataclass(frozen=True)
class YardstickPlan:
    """Which yardstick a run measures, resolved from the user's --reference and --reference-sample."""

    kind: YardstickKind
    dtype: str  # the reference's dtype, or the model's for the floor
    sample: int | None  # sequences in the sample; None = all


def plan_yardstick(reference: str, sample: int | None, model_dtype: torch.dtype, device: torch.device) -> YardstickPlan:
    """Resolve ``reference`` ('auto', 'none', 'fp32', 'fp64') and ``sample`` (a count, 0, or None = all).

    'auto' is fp32 (TF32 off) for an fp16/bf16 model on a GPU and fp64 otherwise; a float64 model has
    no wider dtype, so it gets the rounding floor, as 'none' and a sample of 0 do. ValueError when an
    explicit reference is not wider than the model.
    """
    model_name = dtype_name(model_dtype)
    if sample is not None and sample < 0:
        raise ValueError(f"the reference sample must be a count >= 0 or 'all', got {sample}")
    if reference == "auto":
        if model_dtype == torch.float64:
            reference = "none"
        else:
            half = model_dtype in (torch.float16, torch.bfloat16)
            reference = "fp32" if device.type == "cuda" and half else "fp64"
    if reference == "none" or sample == 0:
        return YardstickPlan("floor", model_name, DEFAULT_REFERENCE_SAMPLE if sample == 0 else sample)
    wide = parse_dtype(reference)
    if torch.finfo(wide).eps >= torch.finfo(model_dtype).eps:
        raise ValueError(
            f"a {reference} reference is not wider than the {model_name} model, so it would equal v1.0; "
            "choose fp64, or --reference none for the rounding floor"
        )
    return YardstickPlan("reference", reference, sample)


def spanning_sample(lengths: Sequence[int], size: int | None) -> np.ndarray:
    """Up to ``size`` row indices (all when None or when there are fewer) whose lengths span the set:
    evenly spaced ranks of the length order, shortest and longest included. (m,) int64, ascending."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    if size is None or size >= order.size:
        return np.sort(order)
    ranks = np.unique(np.linspace(0, order.size - 1, num=max(size, 1)).round().astype(np.int64))
    return np.sort(order[ranks])


@contextlib.contextmanager
def exact_float32_matmul() -> Iterator[None]:
    """TF32 off for the block (a float32 reference must be float32 arithmetic), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.inference_mode()
def deep_pack_embeddings(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layer: int,
    path: ForwardPath,
) -> PathEmbeddings | None:
    """The packed ``path`` on ``sequences`` at ``layer`` alone, all in one pack behind filler (copies of
    them) so that each sits at least DEEP_PACK_OFFSET tokens deep, as one late in a full default-budget
    GPU pack does. A path whose result depends on where a sequence sits — position ids that run on,
    attention across boundaries — shows it here whatever the run's own budget. One layer keeps it cheap
    (the first attention is where such bugs start). None for a padded path, or when the pack does not
    fit in memory."""
    if not path.packed or path.padded_batches:
        return None
    filler, tokens = [], 0
    while tokens < DEEP_PACK_OFFSET:
        filler.append(sequences[len(filler) % len(sequences)])
        tokens += len(filler[-1]) + 2
    packed = [*filler, *sequences]
    start = time.perf_counter()
    batch = host_batch(alphabet, packed, np.arange(len(packed)), packed=True, pin=model.device.type == "cuda")
    pooled = try_forward_pooled(path, batch, [layer], model.device, pool_dtype(model.dtype))
    if pooled is None:
        return None
    return PathEmbeddings(layers={layer: pooled[0, len(filler):].cpu().numpy()}, backend=path.backend,
                          seconds=time.perf_counter() - start, implementation=path.implementation)


def first_attention_layer(layers: Sequence[int]) -> int | None:
    """The lowest pooled layer that follows an attention (>= 1), or None."""
    return min((layer for layer in layers if layer >= 1), default=None)


def measure_yardstick(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    sequences: Sequence[str],
    layers: Sequence[int],
    plan: YardstickPlan,
    v2_path: ForwardPath,
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> Yardstick:
    """The numerics sample that ``plan`` asks for, at ``layers`` (see Yardstick): v1.0, the ``v2_path`` (and
    in a deep pack), and the reference (or v1.0 again, each sequence alone)."""
    layers = layer_indices(model, layers)
    indices = spanning_sample([len(seq) for seq in sequences], plan.sample)
    probes = tuple(probe_sequences(max(0, MIN_NUMERICS_SAMPLE - indices.size)))
    chosen = [*(sequences[i] for i in indices), *probes]
    if progress is not None:
        progress("reference", 0, len(chosen))
    baseline = embed_path(model, alphabet, chosen, layers, standard_path(model), max_tokens)
    candidate = embed_path(model, alphabet, chosen, layers, v2_path, max_tokens)
    deep_layer = first_attention_layer(layers)
    deep = None if deep_layer is None else deep_pack_embeddings(model, alphabet, chosen, deep_layer, v2_path)
    if plan.kind == "floor":
        # A budget of one token gives every sequence a batch of its own: no padding, no batch-mates.
        reference = embed_path(model, alphabet, chosen, layers, standard_path(model), 1, progress, "reference")
    else:
        wide = reference_copy(model, parse_dtype(plan.dtype))
        with exact_float32_matmul():
            reference = embed_path(wide, alphabet, chosen, layers, standard_path(wide), max_tokens, progress, "reference")
        del wide
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    return Yardstick(plan.kind, plan.dtype, indices, probes, baseline, candidate, reference, deep)


@dataclass
class EmbeddingRun:
    """Both paths' pooled embeddings for one sequence set, with what produced them."""

    ids: list[str]
    lengths: np.ndarray  # (n,) residues
    v1: PathEmbeddings
    v2: PathEmbeddings
    model: str
    weights: str
    dtype: str
    device: str
    layers: list[int] = field(default_factory=list)
    yardstick: Yardstick | None = None  # the numerics sample; None only for runs saved before it existed

    @property
    def is_demo(self) -> bool:
        return self.weights == "demo"

    @property
    def reference_sample(self) -> Yardstick | None:
        """The numerics sample when it has a wider-dtype reference (not the rounding floor), else None."""
        return self.yardstick if self.yardstick is not None and self.yardstick.kind == "reference" else None


def require_one_id_per_sequence(ids: Sequence[str], sequences: Sequence[str]) -> None:
    """ValueError unless there is at least one sequence and exactly one id for each."""
    if len(ids) != len(sequences) or not sequences:
        raise ValueError("need one id per sequence and at least one sequence")


def run_both_paths(
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    ids: Sequence[str],
    sequences: Sequence[str],
    layers: Sequence[int] | None = None,
    backend: str | None = None,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    yardstick: YardstickPlan | None = None,
    v2_path: ForwardPath | None = None,
) -> EmbeddingRun:
    """Embed ``sequences`` with v1.0 and v2.0 and pool ``layers`` (None = every layer).

    ``yardstick`` adds the numerics sample (a wider-dtype reference, or v1.0's rounding floor; see
    measure_yardstick); None leaves it out (torchrun shards: rank 0 adds it to the whole set).
    ``v2_path`` replaces the built-in packed path (the v1-compatible fallback, or a plug-in).
    """
    require_one_id_per_sequence(ids, sequences)
    layers = layer_indices(model, layers)
    v2_path = v2_path or packed_path(model, backend)
    v1 = embed_v1(model, alphabet, sequences, layers, max_tokens, progress)
    v2 = embed_v2(model, alphabet, sequences, layers, backend, max_tokens, progress, path=v2_path)
    run = EmbeddingRun(
        ids=list(ids),
        lengths=np.array([len(seq) for seq in sequences]),
        v1=v1,
        v2=v2,
        model=model.name,
        weights=model.weights,
        dtype=dtype_name(model.dtype),
        device=device_description(model.device),
        layers=layers,
    )
    if yardstick is not None:
        run.yardstick = measure_yardstick(model, alphabet, sequences, layers, yardstick, v2_path, max_tokens, progress)
    return run


def device_description(device: torch.device) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type
