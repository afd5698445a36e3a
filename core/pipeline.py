"""One comparison, whoever asks: the CLI, every torchrun rank and the page all call ``run_comparison``.

    request ──► prepare (model, layers, v2.0 path, numerics plan)
            ──► cache lookup (rank 0) ──► executor.embed (v1.0 + v2.0 over what is missing: here, or sharded)
            ──► merge with the cached rows, store the new ones ──► numerics sample ──► ComparisonResult

The executor is the only difference between one process and torchrun (core.embed.distributed): it
embeds its share, exchanges errors so every rank stops together, and hands the whole run to rank 0.
Analysis (core.analysis.analyse) and reporting (core.report) come after, and touch no model.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, TypeVar

import esm

from core.analysis.checks import CheckResult, v2_checks
from core.embed.cache import CacheStats, merge_run, plan_lookup, store_computed
from core.embed.cache_store import EmbeddingCache, open_cache
from core.embed.model_state import ModelState, changes, described, model_state
from core.embed.passes import Progress
from core.embed.paths import ForwardPath, fallback_path, packed_path
from core.embed.plugins import make_plugin_path
from core.embed.run import EmbeddingRun, require_one_id_per_sequence, run_both_paths
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE, YardstickPlan, measure_yardstick, plan_yardstick
from core.numerics.attention import BackendUnavailable
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.loading import WeightsUnavailable, layer_indices, load_esm2_model

SETUP_ERRORS = (ValueError, WeightsUnavailable, BackendUnavailable)  # a plug-in's PluginError is a ValueError
CACHE_ERRORS = (sqlite3.Error, OSError)  # an unusable cache is a warning, never a failed comparison
T = TypeVar("T")


class SetupFailed(RuntimeError):
    """The comparison cannot run (model, backend, plug-in, memory); the message says why, per rank."""


@dataclass(frozen=True)
class ComparisonRequest:
    """Everything that decides a comparison's embeddings.

    model: a pretrained name, ``demo-<size>`` or a checkpoint path; dtype: fp16 | bf16 | fp32 | fp64;
    device: cpu | cuda | cuda:N. candidate: the v2.0 — 'packed' (the built-in path with ``backend``),
    'fallback' (v1.0's attention behind the packed API) or a plug-in ``module:factory``. reference and
    reference_sample: the numerics sample (core.embed.yardstick.plan_yardstick). layer: the analysed
    layer (None: the last; negative counts from the end); only_layer: pool that layer alone instead of
    every layer. checks: also run packing invariance and determinism on v2.0 at that layer.
    """

    model: str
    dtype: str
    device: str
    candidate: str = "packed"
    backend: str = "auto"
    reference: str = "auto"
    reference_sample: int | None = DEFAULT_REFERENCE_SAMPLE
    layer: int | None = None
    only_layer: bool = False
    max_tokens: int | None = None
    cache_dir: str | None = None
    checks: bool = False


@dataclass(frozen=True)
class LoadedModel:
    """A model and its alphabet; ``state``: the model as loaded (core.embed.model_state), for a holder that
    keeps it across runs (the page) to see whether anything has changed it since."""

    model: ESM2WithFlashAttention
    alphabet: esm.data.Alphabet
    state: ModelState | None = None

    @classmethod
    def of(cls, model: ESM2WithFlashAttention, alphabet: esm.data.Alphabet) -> LoadedModel:
        """``model`` and ``alphabet`` as just loaded, their state recorded."""
        return cls(model, alphabet, model_state(model.esm2))

    def changed(self) -> list[str]:
        """What differs from the model as loaded (empty without a recorded ``state``)."""
        return [] if self.state is None else changes(self.state, model_state(self.model.esm2))


@dataclass(frozen=True)
class Prepared:
    """A request resolved against its loaded model."""

    loaded: LoadedModel
    layer: int  # the analysed layer, 0 … num_layers
    layers: list[int]  # the pooled layers
    candidate: ForwardPath
    yardstick: YardstickPlan
    request: ComparisonRequest


@dataclass
class ComparisonResult:
    """What a comparison produced: the run, what the cache did (None when it was off), the v2.0 checks."""

    run: EmbeddingRun
    layer: int
    cache: CacheStats | None
    checks: list[CheckResult]
    world_size: int = 1


def load_model(request: ComparisonRequest) -> LoadedModel:
    model, alphabet = load_esm2_model(request.model, dtype=request.dtype, device=request.device, backend=request.backend)
    return LoadedModel.of(model, alphabet)


def candidate_path(request: ComparisonRequest, model: ESM2WithFlashAttention) -> ForwardPath:
    """The v2.0 the request names (a PluginError, a ValueError, for a plug-in that cannot be built)."""
    if request.candidate == "packed":
        return packed_path(model, request.backend)
    if request.candidate == "fallback":
        return fallback_path(model)
    return make_plugin_path(request.candidate, model)


def prepare(request: ComparisonRequest, loaded: LoadedModel | None = None) -> Prepared:
    """Load (unless ``loaded``) and resolve layers, the v2.0 path and the numerics plan; raises SETUP_ERRORS."""
    loaded = loaded or load_model(request)
    changed = loaded.changed()
    if changed:
        raise ValueError(f"the loaded model has changed since it was loaded ({described(changed)}); load it again")
    model = loaded.model
    layer = layer_indices(model, [request.layer if request.layer is not None else model.num_layers])[0]
    return Prepared(
        loaded, layer, [layer] if request.only_layer else layer_indices(model, None), candidate_path(request, model),
        plan_yardstick(request.reference, request.reference_sample, model.dtype, model.device), request,
    )


class Executor(Protocol):
    """Where the two passes run: this process (LocalExecutor) or every torchrun rank (core.embed.distributed)."""

    is_root: bool
    world_size: int

    def agree(self, error: str | None) -> None:
        """Raise SetupFailed on every rank when any rank has an ``error``; return when none has."""

    def share(self, value):
        """The root's ``value``, on every rank."""

    def embed(self, prepared: Prepared, ids: Sequence[str], sequences: Sequence[str], missing: Sequence[int],
              progress: Progress | None) -> tuple[EmbeddingRun | None, list[CheckResult]]:
        """Both passes over ``missing`` (positions in ``sequences``), and the checks; the run on the root only."""


def embed_and_check(prepared: Prepared, ids: Sequence[str], sequences: Sequence[str], positions: Sequence[int],
                    check_positions: Sequence[int], progress: Progress | None, check_limit: int = 32,
                    ) -> tuple[EmbeddingRun | None, list[CheckResult]]:
    """Both passes over ``positions`` and, with ``checks`` on, v2.0's checks over ``check_positions``: one
    executor's share of the work (every position, for a single process)."""
    model, alphabet, request = prepared.loaded.model, prepared.loaded.alphabet, prepared.request
    run = run_both_paths(
        model, alphabet, [ids[i] for i in positions], [sequences[i] for i in positions], layers=prepared.layers,
        max_tokens=request.max_tokens, progress=progress, v2_path=prepared.candidate,
    ) if len(positions) else None
    if not request.checks or not len(check_positions):
        return run, []
    fresh = run is not None and list(positions) == list(check_positions)  # else: compare like batches afresh
    baseline = run.v2.layers[prepared.layer] if fresh else None
    return run, v2_checks(model, alphabet, [sequences[i] for i in check_positions], prepared.layer, baseline,
                          request.backend, request.max_tokens, prepared.candidate, check_limit)


class LocalExecutor:
    """This process does everything."""

    is_root = True
    world_size = 1

    def agree(self, error: str | None) -> None:
        if error is not None:
            raise SetupFailed(error)

    def share(self, value):
        return value

    def embed(self, prepared, ids, sequences, missing, progress):
        try:
            return embed_and_check(prepared, ids, sequences, missing, range(len(sequences)), progress)
        except SETUP_ERRORS as error:
            raise SetupFailed(str(error)) from error


def run_comparison(request: ComparisonRequest, ids: Sequence[str], sequences: Sequence[str],
                   progress: Progress | None = None, *, loaded: LoadedModel | None = None,
                   executor: Executor | None = None,
                   preflight: Callable[[LoadedModel], None] | None = None,
                   meanwhile: Callable[[EmbeddingRun], None] | None = None) -> ComparisonResult | None:
    """Both paths over ``sequences`` (one id each) through the cache, and the numerics sample.

    ``loaded``: a model already loaded for this request (the page keeps one per server); ``preflight``:
    a check of the loaded model before any embedding (e.g. a user head's width), its ValueError a setup
    error; ``meanwhile``: host work on the run that needs no numerics sample (the CLI's metrics), done
    while the sample runs on a GPU (see alongside). Returns the result on the root (the only process
    without torchrun), None on the other ranks. Raises SetupFailed, naming what to fix, when the model,
    backend or plug-in cannot be set up or a sequence does not fit; every rank raises it together.
    """
    executor = executor or LocalExecutor()
    require_one_id_per_sequence(ids, sequences)
    prepared, error = None, None
    try:
        prepared = prepare(request, loaded)
        if preflight is not None:
            preflight(prepared.loaded)
    except SETUP_ERRORS as caught:
        error = str(caught)
    executor.agree(error)
    cache, warning, plan = None, None, None
    if executor.is_root:
        cache, warning = open_cache(request.cache_dir)
        plan, cache, warning = lookup(cache, prepared, sequences, warning)
    missing = executor.share(plan.missing if plan is not None else None)
    computed, checks = executor.embed(prepared, ids, sequences, missing, progress)
    if not executor.is_root:
        return None
    run = computed if len(missing) == len(sequences) else merge_run(plan, prepared.loaded.model, ids, sequences, computed)
    stats = finish_cache(cache, plan, computed, request.cache_dir, len(sequences), warning)
    run.yardstick = alongside(lambda: sample(prepared, sequences, run, progress),
                              None if meanwhile is None else lambda: meanwhile(run),
                              concurrently=prepared.loaded.model.device.type == "cuda")
    return ComparisonResult(run, prepared.layer, stats, checks, executor.world_size)


def alongside(work: Callable[[], T], meanwhile: Callable[[], None] | None, concurrently: bool) -> T:
    """``work()``'s result, with ``meanwhile()`` done too: at the same time on two threads when
    ``concurrently`` (the numerics sample keeps a GPU busy while the host computes what needs no sample),
    else first. An exception from either is raised once both have finished."""
    if meanwhile is None:
        return work()
    if not concurrently:
        meanwhile()
        return work()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="numerics-sample") as pool:
        future = pool.submit(work)
        try:
            meanwhile()
        except BaseException:
            wait([future])
            raise
        return future.result()


def lookup(cache: EmbeddingCache | None, prepared: Prepared, sequences: Sequence[str], warning: str | None):
    """The cache plan (every sequence missing when the cache is off or unreadable), the cache still usable
    (or None), and the first warning."""
    model = prepared.loaded.model
    try:
        return plan_lookup(cache, model, sequences, prepared.layers, None, prepared.candidate), cache, warning
    except CACHE_ERRORS as error:
        plan = plan_lookup(None, model, sequences, prepared.layers, None, prepared.candidate)
        return plan, None, warning or f"embedding cache unreadable ({error}); computing without it"


def finish_cache(cache: EmbeddingCache | None, plan, computed: EmbeddingRun | None, directory: str | None, n: int,
                 warning: str | None) -> CacheStats | None:
    """Store the computed rows; summary.json's cache statistics (None when the cache was off). A failure to
    store is a warning, not an error: the results are unaffected."""
    try:
        store_computed(cache, plan, computed)
    except CACHE_ERRORS as error:
        warning = warning or f"could not write to the embedding cache ({error}); results are unaffected"
    finally:
        if cache is not None:
            cache.close()
    if directory is None:
        return None
    return CacheStats(dir=str(directory), hits=n - len(plan.missing), computed=len(plan.missing), warning=warning)


def sample(prepared: Prepared, sequences: Sequence[str], run: EmbeddingRun, progress: Progress | None):
    """The numerics sample of the whole set, on the ``run``'s own rows (a SetupFailed when it does not fit)."""
    loaded, request = prepared.loaded, prepared.request
    try:
        return measure_yardstick(loaded.model, loaded.alphabet, sequences, prepared.layers, prepared.yardstick,
                                 prepared.candidate, run.v1, run.v2, request.max_tokens, progress)
    except SETUP_ERRORS as error:
        raise SetupFailed(str(error)) from error

