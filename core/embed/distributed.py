"""Several GPUs (or CPU processes) with torchrun: shard the sequences, gather pooled embeddings on rank 0.

``torchrun --nproc-per-node N -m core compare ...`` starts N copies of the CLI. Each reads and
validates the input itself, loads the model on ``cuda:LOCAL_RANK`` (or the CPU, gloo backend),
embeds its shard (balanced by tokens: longest first onto the least-loaded rank) and sends the
pooled embeddings of every layer to rank 0, which reassembles them in input order and alone
prints and writes the report. Errors are exchanged through the process group, so every rank
exits with the same code instead of waiting on a rank that gave up.
"""

from __future__ import annotations

import heapq
import os
import sys
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from core.analysis.checks import CheckResult
from core.pipeline import SETUP_ERRORS, Prepared, SetupFailed, embed_and_check
from core.embed.passes import PathEmbeddings
from core.embed.run import EmbeddingRun
from core.numerics.precision import torch_dtype

TIMEOUT_ENV = "ESM2_DIVERGENCE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0  # how long a rank waits at a collective for the slowest rank (its shard's compute)


class DistributedSetupError(RuntimeError):
    """The process group or this rank's device cannot be set up; the message says why."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def environment(environ: dict[str, str] | None = None) -> DistEnv | None:
    """The torchrun environment when WORLD_SIZE > 1, else None (a plain single process)."""
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        return DistEnv(int(environ["RANK"]), int(environ.get("LOCAL_RANK", "0")), world_size)
    except (KeyError, ValueError) as error:
        raise DistributedSetupError(f"WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not numbers ({error})") from error


def shard_indices(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Split indices 0 … n-1 over ``world_size`` ranks, balanced by tokens (length + 2).

    Longest first, each onto the rank with the fewest tokens so far (ties: the lowest rank).
    Every index appears exactly once; each shard is in ascending (input) order. Rank 0 always
    gets the longest sequence, so it is never empty when there is at least one sequence.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    heap = [(0, rank) for rank in range(world_size)]
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for index in order:
        load, rank = heapq.heappop(heap)
        shards[rank].append(int(index))
        heapq.heappush(heap, (load + int(lengths[index]) + 2, rank))
    return [sorted(shard) for shard in shards]


def rank_device(device_arg: str, env: DistEnv) -> torch.device:
    """``cuda:LOCAL_RANK`` unless ``--device cpu`` or CUDA is absent (then the CPU)."""
    if device_arg == "cpu" or (device_arg == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device_arg not in ("auto", "cuda") and not device_arg.startswith("cuda"):
        raise DistributedSetupError(f"--device {device_arg!r} under torchrun: use auto, cpu or cuda (each rank takes cuda:LOCAL_RANK)")
    if not torch.cuda.is_available():
        raise DistributedSetupError("--device cuda was asked for but CUDA is not available here")
    if env.local_rank >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPU(s) here: "
            "use --nproc-per-node at most the number of GPUs"
        )
    return torch.device("cuda", env.local_rank)


def timeout_seconds(environ: dict[str, str] | None = None) -> float:
    """Collective timeout from ``$ESM2_DIVERGENCE_DIST_TIMEOUT`` (seconds), default 3600."""
    raw = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError as error:
        raise DistributedSetupError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from error
    if value <= 0:
        raise DistributedSetupError(f"{TIMEOUT_ENV} must be positive, got {raw}")
    return value


class Communicator:
    """Object collectives over a gloo group (CPU memory, whatever the compute backend), and tensor
    collectives over the default group (NCCL between GPUs, gloo on the CPU) on ``device``."""

    def __init__(self, env: DistEnv, group: Any, device: torch.device = torch.device("cpu")):
        self.env = env
        self.group = group
        self.device = device

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, on every rank, in rank order."""
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0; None on the others."""
        out: list[Any] | None = [None] * self.env.world_size if self.env.is_root else None
        dist.gather_object(value, out, dst=0, group=self.group)
        return out

    def gather_rows(self, rows: np.ndarray | None, counts: Sequence[int], width: int, dtype: np.dtype,
                    ) -> list[np.ndarray] | None:
        """Every rank's (counts[rank], width) ``rows`` of ``dtype`` (None where a rank has none) on rank 0,
        as tensors over the default group: NCCL device to device on GPUs, no pickling. Each rank pads
        its rows to the largest count. Rank 0 gets one array per rank; the others None."""
        padded = torch.zeros((max(counts), width), dtype=torch_dtype(dtype), device=self.device)
        if rows is not None and len(rows):
            padded[: len(rows)] = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
        received = [torch.empty_like(padded) for _ in counts] if self.env.is_root else None
        dist.gather(padded, received, dst=0)
        if received is None:
            return None
        return [tensor[:count].cpu().numpy() for tensor, count in zip(received, counts)]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the others pass anything)."""
        box = [value if self.env.is_root else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def shutdown(self) -> None:
        """Leave the group together: a barrier first, so no rank tears its connections down under another
        (gloo aborts a process whose peer vanished mid-teardown). Only on a normal return: after an
        exception the ranks are at different collectives, and torchrun stops the job."""
        if dist.is_initialized():
            dist.barrier(group=self.group)
            dist.destroy_process_group()


def init(env: DistEnv, device: torch.device, timeout_s: float | None = None) -> Communicator:
    """Join the torchrun process group: NCCL on GPUs, gloo on the CPU; object exchange always over gloo."""
    timeout = timedelta(seconds=timeout_s if timeout_s is not None else timeout_seconds())
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timeout)
        group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    except Exception as error:  # rendezvous, NCCL or network problems: one line, exit code 3
        raise DistributedSetupError(
            f"cannot join the torchrun process group ({backend}): {type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'}"
        ) from error
    return Communicator(env, group, device)


# ---------------------------------------------------------------- reassembly


def _assemble_path(parts: list[tuple[list[int], PathEmbeddings]], n: int) -> PathEmbeddings:
    """Per-rank path embeddings (rows in each shard's order) into (n, embed_dim) per layer, slowest rank's seconds."""
    first = parts[0][1]
    layers = {}
    for layer, values in first.layers.items():
        merged = np.empty((n, values.shape[1]), dtype=values.dtype)
        for positions, part in parts:
            merged[positions] = part.layers[layer]
        layers[layer] = merged
    return PathEmbeddings(
        layers, first.backend, max(part.seconds for _, part in parts), first.implementation,
        oom_splits=sum(part.oom_splits for _, part in parts),
        host_wait_seconds=max(part.host_wait_seconds for _, part in parts),
    )


def assemble_runs(shards: Sequence[Sequence[int]], runs: Sequence[EmbeddingRun | None], ids: Sequence[str]) -> EmbeddingRun:
    """Ranks' runs into one run over ``ids`` (their order): ``shards[r]`` are the positions rank r embedded.

    Ranks with an empty shard pass None. Each path's layers become (len(ids), embed_dim);
    seconds are the slowest rank's (the wall time of the parallel run). Shards carry no numerics
    sample: rank 0 measures it on the whole set afterwards.
    """
    present = [(list(shard), run) for shard, run in zip(shards, runs) if run is not None and len(shard)]
    if not present or sum(len(shard) for shard, _ in present) != len(ids):
        raise RuntimeError("the ranks' shards do not cover the sequence set")
    base = present[0][1]
    lengths = np.empty(len(ids), dtype=np.asarray(base.lengths).dtype)
    for shard, run in present:
        lengths[shard] = run.lengths
    return replace(
        base, ids=list(ids), lengths=lengths,
        v1=_assemble_path([(shard, run.v1) for shard, run in present], len(ids)),
        v2=_assemble_path([(shard, run.v2) for shard, run in present], len(ids)),
        yardstick=None,
    )


def without_layers(run: EmbeddingRun | None) -> EmbeddingRun | None:
    """``run`` with no pooled arrays (they travel as tensors: gather_layers)."""
    if run is None:
        return None
    return replace(run, v1=replace(run.v1, layers={}), v2=replace(run.v2, layers={}))


def with_layers(run: EmbeddingRun | None, layers: tuple[dict[int, np.ndarray], dict[int, np.ndarray]] | None,
                ) -> EmbeddingRun | None:
    """``run`` (from without_layers) with its paths' ``layers`` back."""
    if run is None or layers is None:
        return None
    return replace(run, v1=replace(run.v1, layers=layers[0]), v2=replace(run.v2, layers=layers[1]))


def gather_layers(comm: Communicator, layers: Sequence[int], part: EmbeddingRun | None, counts: Sequence[int],
                  ) -> list[tuple[dict[int, np.ndarray], dict[int, np.ndarray]] | None]:
    """Every rank's pooled (count, embed_dim) arrays of both paths at every layer, on rank 0: one
    tensor gather per path and layer (NCCL on GPUs). Rank 0 gets, per rank, (v1 layers, v2 layers) or
    None for an empty shard; the other ranks an empty list. Width and dtype are agreed first, since a
    rank with an empty shard has no array to read them from."""
    shape = None if part is None or not counts[comm.env.rank] else (
        part.v1.layers[layers[0]].shape[1], part.v1.layers[layers[0]].dtype.str)
    known = [entry for entry in comm.all_gather(shape) if entry is not None]
    if not known:
        return [None] * len(counts) if comm.env.is_root else []
    width, dtype = known[0][0], np.dtype(known[0][1])
    per_rank: list[tuple[dict[int, np.ndarray], dict[int, np.ndarray]]] = [({}, {}) for _ in counts]
    for layer in layers:
        for side in (0, 1):
            own = None if part is None else (part.v1 if side == 0 else part.v2).layers[layer]
            received = comm.gather_rows(own, counts, width, dtype)
            for rank, rows in enumerate(received or []):
                per_rank[rank][side][layer] = rows
    if not comm.env.is_root:
        return []
    return [entry if count else None for entry, count in zip(per_rank, counts)]


def merge_checks(per_rank: Sequence[Sequence[CheckResult]]) -> list[CheckResult]:
    """Each rank's checks on its shard into one result per check: all must pass; worst numbers; summed counts."""
    by_name: dict[str, list[CheckResult]] = {}
    for results in per_rank:
        for result in results:
            by_name.setdefault(result.name, []).append(result)
    merged = []
    for name, results in by_name.items():
        merged.append(CheckResult(
            name=name,
            passed=all(r.passed for r in results),
            max_abs_diff=max(r.max_abs_diff for r in results),
            min_cosine=min(r.min_cosine for r in results),
            n_sequences=sum(r.n_sequences for r in results),
            detail=results[0].detail + (f" (over {len(results)} ranks' shards)" if len(results) > 1 else ""),
        ))
    return merged


def describe_rank_errors(errors: Sequence[str | None]) -> str:
    """Each distinct error once, with the ranks it came from unless every rank had it."""
    lines = []
    for message in dict.fromkeys(error for error in errors if error):
        ranks = [rank for rank, error in enumerate(errors) if error == message]
        lines.append(message if len(ranks) == len(errors) else f"rank {', '.join(map(str, ranks))}: {message}")
    return "\n".join(lines)


class TorchrunExecutor:
    """core.pipeline's executor for one torchrun rank: a token-balanced shard of what is missing, gathered
    on rank 0; errors travel through the group so every rank stops together. Collectives, in the same
    order on every rank: all_gather (setup), broadcast (what is missing), all_gather (errors), the
    shards' pooled arrays as tensors (all_gather of their shape, then one gather per path and layer:
    NCCL between GPUs), gather (the rest of each shard: small), broadcast (the exit code, ``finish``)."""

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.is_root = comm.env.is_root
        self.world_size = comm.env.world_size

    def agree(self, error: str | None) -> None:
        errors = self.comm.all_gather(error)
        if any(errors):
            raise SetupFailed(describe_rank_errors(errors))

    def share(self, value):
        return self.comm.broadcast(value)

    def embed(self, prepared: Prepared, ids: Sequence[str], sequences: Sequence[str], missing: Sequence[int],
              progress) -> tuple[EmbeddingRun | None, list[CheckResult]]:
        rank = self.comm.env.rank
        shards = shard_indices([len(sequences[i]) for i in missing], self.world_size)
        check_shard = shard_indices([len(s) for s in sequences], self.world_size)[rank]
        part, checks, error = None, [], None
        try:
            part, checks = embed_and_check(prepared, ids, sequences, [missing[p] for p in shards[rank]], check_shard,
                                           None, check_limit=max(1, -(-32 // self.world_size)))
        except SETUP_ERRORS as caught:
            error = str(caught)
        errors = self.comm.all_gather(error)  # every rank learns whether the gathers below happen
        if any(errors):
            if self.is_root:
                raise SetupFailed(describe_rank_errors(errors))
            return None, []
        layers = gather_layers(self.comm, prepared.layers, part, [len(shard) for shard in shards])
        gathered = self.comm.gather((without_layers(part), checks))  # the rest: small
        if not self.is_root:
            return None, []
        parts = [with_layers(entry[0], rank_layers) for entry, rank_layers in zip(gathered, layers)]
        computed = assemble_runs(shards, parts, [ids[i] for i in missing]) if missing else None
        return computed, merge_checks([entry[1] for entry in gathered])

    def finish(self, code: int) -> int:
        """Every rank leaves with rank 0's exit code, once rank 0 has flushed what it printed (torchrun stops
        the other workers as soon as one exits non-zero)."""
        if self.is_root:
            sys.stdout.flush()
            sys.stderr.flush()
        return self.comm.broadcast(code)
