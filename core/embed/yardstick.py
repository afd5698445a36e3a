"""The numerics sample: v1.0, v2.0 and a wider-precision reference (or v1.0's rounding floor) on a
few sequences spanning the set's lengths and residues, for the numerics gate (core.analysis.numerics_gate)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import esm
import numpy as np
import torch

from core.embed.batching import DEFAULT_MAX_TOKENS
from core.embed.passes import PathEmbeddings, Progress, embed_path, host_batch, try_forward_pooled
from core.embed.paths import ForwardPath, standard_path
from core.input.examples import probe_sequences
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.loading import layer_indices, reference_copy
from core.numerics.precision import accumulation_dtype, dtype_name, parse_dtype

DEFAULT_REFERENCE_SAMPLE = 64
MIN_NUMERICS_SAMPLE = 32  # smaller sets are topped up with probe proteins
DEEP_PACK_OFFSET = DEFAULT_MAX_TOKENS  # on the numerics sample, a packed v2.0 sees each sequence this deep in its pack
# v2.0 this many times farther than v1.0 from the yardstick at the deep pack's layer, in its own batches,
# departs there whatever the pack shows (the gate's bound is 2), so the pack is not built: a path that
# attends across the whole pack would need tokens² scores per head (72 GB for demo-8M on a 128 GB CPU host).
DEEP_PACK_NEEDLESS_RATIO = 100.0


YardstickKind = Literal["reference", "floor"]


@dataclass(frozen=True)
class DeepPackSkipped:
    """Why a packed v2.0 has no deep pack: 'needless' — v2.0 was already ``ratio`` times v1.0's error at
    that layer in its own batches (above DEEP_PACK_NEEDLESS_RATIO) — or 'out of memory'."""

    reason: Literal["needless", "out of memory"]
    ratio: float | None = None


@dataclass
class Yardstick:
    """The numerics sample: what v2.0's departure from v1.0 is measured on, and against.

    Sequences: the run's rows ``indices`` ((m,) int64, chosen to span the lengths and cover the residues: see
    covering_sample), then ``probes`` — fixed short proteins that top a small set up to MIN_NUMERICS_SAMPLE,
    so the tests have the power to decide.
    On them, each layer -> (m + len(probes), embed_dim):
    baseline: v1.0 (fair-esm's padded forward) and candidate: v2.0, each on the run's rows the run's own
    embeddings (the very rows the report judges) and on the probes embedded in batches of their own;
    reference: kind 'reference', the standard path on a copy of the same weights in a wider ``dtype``
    (fp32 with TF32 off, or fp64), so each path's distance from it is its own arithmetic error; kind
    'floor', the standard path again in the model's dtype, each sequence alone (another batch
    composition), so v1.0's distance from it is the rounding floor;
    deep: v2.0 at the first attention layer only (``deep.layers`` has one key) with every sequence deep in
    one pack (see deep_pack_embeddings); None for a padded path, when no pooled layer follows an attention,
    or when ``deep_skipped`` says why a packed path has none.
    """

    kind: YardstickKind
    dtype: str
    indices: np.ndarray
    probes: tuple[str, ...]
    baseline: PathEmbeddings
    candidate: PathEmbeddings
    reference: PathEmbeddings
    deep: PathEmbeddings | None = None
    deep_skipped: DeepPackSkipped | None = None

    @property
    def deep_tested(self) -> bool:
        """Whether the deep pack counts as one of the gate's tests: run, or skipped because v2.0 already departs."""
        return self.deep is not None or (self.deep_skipped is not None and self.deep_skipped.reason == "needless")

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


def covering_sample(sequences: Sequence[str], size: int | None) -> np.ndarray:
    """spanning_sample of the sequences' lengths, plus, for each residue letter of the set that none of those
    holds, the shortest sequence that does: a path wrong only on a rare residue (X, U, B, Z, O, a gap) is
    measured too. (m,) int64, ascending; m is at most ``size`` plus the number of letters."""
    indices = spanning_sample([len(seq) for seq in sequences], size)
    if indices.size == len(sequences):
        return indices
    missing = set("".join(sequences)).difference(*(sequences[i] for i in indices))
    extra = []
    for i in sorted(range(len(sequences)), key=lambda row: len(sequences[row])):
        if not missing:
            break
        held = {letter for letter in missing if letter in sequences[i]}  # a few letters, each found by memchr
        if held:
            extra.append(i)
            missing -= held
    return np.union1d(indices, np.asarray(extra, dtype=np.int64))


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
    (the first attention is where such bugs start). ``path`` is packed (with_deep_pack asks only such
    paths); None when the pack does not fit in memory."""
    filler, tokens = [], 0
    while tokens < DEEP_PACK_OFFSET:
        filler.append(sequences[len(filler) % len(sequences)])
        tokens += len(filler[-1]) + 2
    packed = [*filler, *sequences]
    start = time.perf_counter()
    batch = host_batch(alphabet, packed, np.arange(len(packed)), packed=True, pin=model.device.type == "cuda")
    pooled = try_forward_pooled(path, batch, [layer], model.device, accumulation_dtype(model.dtype), isolate_non_finite=True)
    path.verify()
    if pooled is None:
        return None
    return PathEmbeddings(layers={layer: pooled[0, len(filler):].cpu().numpy()}, backend=path.backend,
                          seconds=time.perf_counter() - start, implementation=path.implementation)


def reference_budget(model: ESM2WithFlashAttention, max_tokens: int | None) -> int | None:
    """The reference pass's token budget: the run's on a GPU; on the CPU one (each sequence alone), where
    fair-esm's padded batches cost more than they save (the masked softmax over the padding: 4.9 s
    against 2.0 s for a float64 demo-8M sample of 32 on this project's 2-core CI machine). A wider
    reference does not depend on its batch-mates beyond its own rounding, so the choice changes no result."""
    return max_tokens if model.device.type == "cuda" else 1


def sample_rows(
    whole: PathEmbeddings,
    indices: np.ndarray,
    probes: Sequence[str],
    model: ESM2WithFlashAttention,
    alphabet: esm.data.Alphabet,
    layers: Sequence[int],
    path: ForwardPath,
    max_tokens: int | None,
) -> PathEmbeddings:
    """One path on the sample: layer -> (indices.size + len(probes), embed_dim), the ``indices`` rows of
    ``whole`` (the path's embeddings of the whole set: the very rows the report judges), then the
    ``probes`` embedded on ``path`` in batches of their own."""
    rows = {layer: whole.layers[layer][indices] for layer in layers}
    if not probes:
        return dataclasses.replace(whole, layers=rows, seconds=0.0, oom_splits=0, host_wait_seconds=0.0)
    fresh = embed_path(model, alphabet, probes, layers, path, max_tokens)
    both = {layer: np.concatenate([rows[layer], fresh.layers[layer]]) for layer in layers}
    return dataclasses.replace(fresh, layers=both)


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
    v1_whole: PathEmbeddings,
    v2_whole: PathEmbeddings,
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> Yardstick:
    """The numerics sample that ``plan`` asks for, at ``layers`` (see Yardstick): v1.0, the ``v2_path`` (and
    in a deep pack), and the reference (or v1.0 again, each sequence alone). ``v1_whole`` and ``v2_whole``:
    the run's embeddings of all of ``sequences`` on the two paths, whose sampled rows the sample takes
    (see sample_rows)."""
    layers = layer_indices(model, layers)
    indices = covering_sample(sequences, plan.sample)
    probes = tuple(probe_sequences(max(0, MIN_NUMERICS_SAMPLE - indices.size)))
    chosen = [*(sequences[i] for i in indices), *probes]
    if progress is not None:
        progress("reference", 0, len(chosen))
    baseline = sample_rows(v1_whole, indices, probes, model, alphabet, layers, standard_path(model), max_tokens)
    # v2_whole *is* v1_whole only for v1_baseline, whose v2.0 is the standard path: its probes are v1.0's.
    candidate = baseline if v2_whole is v1_whole else sample_rows(v2_whole, indices, probes, model, alphabet, layers,
                                                                  v2_path, max_tokens)
    if plan.kind == "floor":
        # A budget of one token gives every sequence a batch of its own: no padding, no batch-mates.
        reference = embed_path(model, alphabet, chosen, layers, standard_path(model), 1, progress, "reference")
    else:
        wide = reference_copy(model, parse_dtype(plan.dtype))
        with exact_float32_matmul():
            reference = embed_path(wide, alphabet, chosen, layers, standard_path(wide), reference_budget(model, max_tokens),
                                   progress, "reference")
        del wide
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    sample = Yardstick(plan.kind, plan.dtype, indices, probes, baseline, candidate, reference)
    return with_deep_pack(sample, model, alphabet, chosen, layers, v2_path)


def largest_errors(v1: np.ndarray, v2: np.ndarray, yardstick: np.ndarray, kind: YardstickKind) -> tuple[float, float]:
    """(v1.0's, v2.0's) largest distance from the yardstick over (m, embed_dim) float64 rows: against the
    reference, |v1 − ref| and |v2 − ref|; against the floor, v1.0's rounding floor — |v1 alone − v1|, at
    least one float32 rounding of v1 (identical re-batching gives 0) — and |v2 − v1|."""
    if kind == "floor":
        least = np.finfo(np.float32).eps * np.abs(v1).max()
        return float(max(np.abs(yardstick - v1).max(), least)), float(np.abs(v2 - v1).max())
    return float(np.abs(v1 - yardstick).max()), float(np.abs(v2 - yardstick).max())


def error_ratio_at(sample: Yardstick, layer: int) -> float:
    """v2.0's largest error over v1.0's at ``layer`` on the sample (see largest_errors); inf when v2.0's is
    not finite, or positive over a v1.0 error of 0."""
    rows = (np.asarray(part.layers[layer], np.float64) for part in (sample.baseline, sample.candidate, sample.reference))
    baseline, candidate = largest_errors(*rows, sample.kind)
    if not math.isfinite(candidate):
        return math.inf
    return candidate / baseline if baseline > 0 else (math.inf if candidate > 0 else 1.0)


def with_deep_pack(sample: Yardstick, model: ESM2WithFlashAttention, alphabet: esm.data.Alphabet,
                   chosen: Sequence[str], layers: Sequence[int], path: ForwardPath) -> Yardstick:
    """``sample`` with its deep pack (see deep_pack_embeddings) on ``path`` over ``chosen`` — unless v2.0
    already departs at that layer by DEEP_PACK_NEEDLESS_RATIO, when the pack could not change the gate, or
    the pack does not fit in memory (``deep_skipped`` says which)."""
    layer = first_attention_layer(layers)
    if layer is None or not path.packed or path.padded_batches:
        return dataclasses.replace(sample, deep=None, deep_skipped=None)
    ratio = error_ratio_at(sample, layer)
    if ratio > DEEP_PACK_NEEDLESS_RATIO:
        return dataclasses.replace(sample, deep=None, deep_skipped=DeepPackSkipped("needless", ratio))
    deep = deep_pack_embeddings(model, alphabet, chosen, layer, path)
    return dataclasses.replace(sample, deep=deep, deep_skipped=None if deep is not None else DeepPackSkipped("out of memory"))
