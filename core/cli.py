"""Command line: ``python -m core compare INPUT ...`` and ``python -m core models``.

Exit codes: 0 done; 1 the verdict is at or below ``--fail-on``; 2 input problems (every
refused record is named; valid ones are still compared and written); 3 the model or the
attention backend cannot be set up.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import esm
import numpy as np
import torch

from core import distributed
from core.attention import BACKENDS, BackendUnavailable, available_backends
from core.attribution import DEFAULT_K
from core.cache import (
    CACHE_ENV, CacheStats, CachePlan, EmbeddingCache, cache_dir_from_env, cache_summary, lookup_or_none, merge_run,
    open_cache, run_both_paths_cached, store_or_warn,
)
from core.checks import CheckResult, v2_checks
from core.heads import HeadClassifier, HeadError, load_extra_features, load_head
from core.plugins import PluginError, make_plugin_path
from core.compare import (
    DEFAULT_REFERENCE_SAMPLE, EmbeddingRun, ForwardPath, YardstickPlan, fallback_path, measure_yardstick, packed_path,
    plan_yardstick, run_both_paths,
)
from core.metrics import Thresholds, verdict_at_or_below
from core.proxies import DEFAULT_HEADS, PROXY_KINDS
from core.model import (
    DEMO_SIZES, DTYPES, PRETRAINED, ESM2WithFlashAttention, WeightsUnavailable, default_device, default_dtype, device_or_cpu,
    default_model_spec, layer_indices, load_esm2_model, pretrained_available, versions,
)
from core.report import analyse, format_summary, write_outputs
from core.sequences import MAX_INPUT_BYTES, ParsedInput, example_sequences, read_sequences

EXIT_GATE, EXIT_INPUT, EXIT_SETUP = 1, 2, 3  # 3 also: --out cannot be written


def _read_input(args: argparse.Namespace) -> ParsedInput:
    if args.example:
        return ParsedInput(records=example_sequences(args.example), problems=[])
    if args.input == "-":
        return read_sequences(sys.stdin.buffer.read(MAX_INPUT_BYTES + 1), on_too_long=args.too_long)
    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {args.input}")
    return read_sequences(path, on_too_long=args.too_long)


def _load_head(args: argparse.Namespace, embed_dim: int, ids: list[str]) -> HeadClassifier | None:
    """The user's head (and extra features) as a classifier over pooled embeddings; HeadError is a ValueError."""
    if args.head is None:
        if args.extra_features is not None:
            raise HeadError("--extra-features needs --head: extra features only feed a user-supplied head")
        return None
    head = load_head(args.head)
    extra = load_extra_features(args.extra_features, ids) if args.extra_features is not None else None
    classifier = HeadClassifier(head, extra)
    classifier.check_width(embed_dim)
    return classifier


def v2_path_from_args(args: argparse.Namespace, model) -> ForwardPath | None:
    """--v1-attention (the fallback) or --v2 module:factory (a plug-in); None for the built-in packed path."""
    if args.v1_attention and args.v2:
        raise PluginError("give at most one of --v1-attention and --v2")
    if args.v1_attention:
        return fallback_path(model)
    if args.v2:
        return make_plugin_path(args.v2, model)
    return None


SETUP_ERRORS = (ValueError, WeightsUnavailable, BackendUnavailable)


@dataclass
class Setup:
    """What every run needs once the input is read: the model and the options that depend on it."""

    model: ESM2WithFlashAttention
    alphabet: esm.data.Alphabet
    device: torch.device
    layer: int
    thresholds: Thresholds
    head: HeadClassifier | None
    v2_path: ForwardPath | None
    yardstick: YardstickPlan
    only_layer: bool = False

    @property
    def layers(self) -> list[int] | None:
        """The layers to pool: None (every layer) unless --only-layer."""
        return [self.layer] if self.only_layer else None


def _read_checked(args: argparse.Namespace, quiet: bool = False) -> ParsedInput | int:
    """The parsed input, or an exit code (input problems are printed unless ``quiet``)."""
    try:
        parsed = _read_input(args)
    except FileNotFoundError as error:
        if not quiet:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    if not quiet:
        for problem in parsed.problems:
            print(f"{problem.severity}: {problem.message}", file=sys.stderr)
    if not parsed.records:
        if not quiet:
            print("error: no valid sequences to compare", file=sys.stderr)
        return EXIT_INPUT
    return parsed


def _single_device(args: argparse.Namespace) -> torch.device:
    """The device of a single-process run (the CPU, with a warning, when CUDA is asked for but absent);
    ValueError (one line) for a device name torch does not know."""
    try:
        device = torch.device(args.device) if args.device != "auto" else default_device()
    except RuntimeError:
        raise ValueError(f"unknown device {args.device!r}; use auto, cpu, cuda or cuda:N") from None
    device, notice = device_or_cpu(device)
    if notice:
        print(f"warning: {notice}", file=sys.stderr)
    return device


def _setup(args: argparse.Namespace, device: torch.device, ids: list[str], announce: bool = True) -> Setup:
    """Load the model and resolve layer, thresholds, head and v2.0 path; raises one of SETUP_ERRORS."""
    model_spec = args.model if args.model != "auto" else default_model_spec(device)
    dtype = args.dtype if args.dtype != "auto" else default_dtype(device)
    if args.model == "auto" and announce:
        print(f"note: model 'auto' on {device.type} is {model_spec} in {dtype} (pass --model to choose)", file=sys.stderr)
    thresholds = Thresholds(args.min_cosine, args.min_agreement, args.accept_agreement)
    model, alphabet = load_esm2_model(model_spec, dtype=dtype, device=device, backend=args.backend)
    model.resolved_backend()
    layer = layer_indices(model, [args.layer if args.layer is not None else model.num_layers])[0]
    head = _load_head(args, model.embed_dim, ids)
    v2_path = v2_path_from_args(args, model)
    yardstick = plan_yardstick(args.reference, args.reference_sample, model.dtype, model.device)
    return Setup(model, alphabet, device, layer, thresholds, head, v2_path, yardstick, only_layer=args.only_layer)


def _run_checks(
    args: argparse.Namespace, setup: Setup, sequences: list[str], baseline: np.ndarray | None, limit: int = 32
) -> list[CheckResult]:
    """--checks on ``sequences`` (core.checks.v2_checks; ``baseline`` None runs v2.0 over them afresh)."""
    if not args.checks:
        return []
    return v2_checks(setup.model, setup.alphabet, sequences, setup.layer, baseline, args.backend, args.max_tokens,
                     setup.v2_path, limit)


def _open_cache(args: argparse.Namespace) -> tuple[str | None, EmbeddingCache | None, str | None]:
    """(requested dir or None, cache or None, one-line warning when the dir was asked for but is unusable)."""
    directory = cache_dir_from_env(args.cache)
    cache, warning = open_cache(directory)
    return directory, cache, warning


def _report(
    args: argparse.Namespace, parsed: ParsedInput, setup: Setup, run: EmbeddingRun, checks: list[CheckResult],
    cache: dict | None, world_size: int,
) -> int:
    """Analyse, print the table and verdict, write the files; returns the exit code."""
    analysis = analyse(
        run, setup.layer, args.seed, setup.thresholds, parsed, versions(), proxy=args.proxy, n_heads=args.seeds,
        k=args.rule_k, checks=checks, classifier=setup.head, classifier_name=setup.head.describe() if setup.head is not None else None,
        cache=cache, world_size=world_size,
    )
    summary = analysis.summary
    print(format_summary(summary))
    if args.out:
        try:
            summary_path, csv_path = write_outputs(Path(args.out), summary, analysis.table)
        except OSError as error:
            print(f"error: cannot write results to {args.out}: {error.strerror or error}. The summary above is "
                  "complete; free some space or pass another --out", file=sys.stderr)
            return EXIT_SETUP
        print(f"\n  wrote {summary_path} and {csv_path}")

    if parsed.errors:
        print(f"error: {len(parsed.errors)} record(s) refused (listed above); the rest were compared", file=sys.stderr)
        return EXIT_INPUT
    if args.fail_on and verdict_at_or_below(summary["verdict"], args.fail_on.upper()):
        print(f"failing: verdict {summary['verdict']} is at or below --fail-on {args.fail_on}", file=sys.stderr)
        return EXIT_GATE
    return 0


def _cache_summary(directory: str | None, stats: CacheStats, open_warning: str | None) -> dict | None:
    """summary.json's "cache" object (None when the cache was off); prints its warning once."""
    summary = cache_summary(directory, stats, open_warning)
    if summary and summary.get("warning"):
        print(f"warning: {summary['warning']}", file=sys.stderr)
    return summary


def compare_command(args: argparse.Namespace) -> int:
    try:
        env = distributed.environment()
    except distributed.DistributedSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    if env is not None:
        return _compare_distributed(args, env)
    parsed = _read_checked(args)
    if isinstance(parsed, int):
        return parsed
    ids, sequences = [r.id for r in parsed.records], [r.sequence for r in parsed.records]
    try:
        device = _single_device(args)
        setup = _setup(args, device, ids)
        directory, cache, open_warning = _open_cache(args)
        run, stats = run_both_paths_cached(
            cache, setup.model, setup.alphabet, ids, sequences, layers=setup.layers, max_tokens=args.max_tokens,
            yardstick=setup.yardstick, v2_path=setup.v2_path,
        )
        checks = _run_checks(args, setup, sequences, run.v2.layers[setup.layer] if stats.hits == 0 else None)
    except SETUP_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    return _report(args, parsed, setup, run, checks, _cache_summary(directory, stats, open_warning), 1)


# ---------------------------------------------------------------- torchrun


def _compare_distributed(args: argparse.Namespace, env: distributed.DistEnv) -> int:
    """One rank of ``torchrun -m core compare``: every rank validates the input; rank 0 alone reports."""
    if args.input == "-":
        if env.is_root:
            print("error: stdin cannot be shared by torchrun ranks; pass a file or --example", file=sys.stderr)
        return EXIT_INPUT
    parsed = _read_checked(args, quiet=not env.is_root)
    if isinstance(parsed, int):
        return parsed
    try:
        device = distributed.rank_device(args.device, env)
        comm = distributed.init(env, device)
    except distributed.DistributedSetupError as error:
        print(f"error: rank {env.rank}: {error}", file=sys.stderr)
        return EXIT_SETUP
    code = _compare_ranks(args, parsed, env, device, comm)  # an unexpected exception ends the job via torchrun
    comm.shutdown()
    return code


def _report_rank_errors(errors: list[str | None], env: distributed.DistEnv) -> bool:
    """Rank 0 prints each distinct rank error once; True when there was any."""
    if env.is_root:
        for message in dict.fromkeys(e for e in errors if e):
            ranks = [rank for rank, e in enumerate(errors) if e == message]
            where = "" if len(ranks) == len(errors) else f"rank {', '.join(map(str, ranks))}: "
            print(f"error: {where}{message}", file=sys.stderr)
    return any(errors)


def _compare_ranks(
    args: argparse.Namespace, parsed: ParsedInput, env: distributed.DistEnv, device: torch.device,
    comm: distributed.Communicator,
) -> int:
    """Setup on every rank, cache lookup on rank 0, a token-balanced shard per rank, report on rank 0.

    Collectives, in the same order on every rank: all_gather(setup errors), broadcast(indices to
    compute), gather(shard results), broadcast(exit code). Handled errors travel through them.
    """
    ids, sequences = [r.id for r in parsed.records], [r.sequence for r in parsed.records]
    setup, error = None, None
    try:
        setup = _setup(args, device, ids, announce=env.is_root)
    except SETUP_ERRORS as caught:
        error = str(caught)
    if _report_rank_errors(comm.all_gather(error), env):
        return _leave_together(comm, EXIT_SETUP)

    directory, cache, open_warning, plan = None, None, None, None
    if env.is_root:
        directory, cache, open_warning = _open_cache(args)
        plan, cache, lookup_warning = lookup_or_none(cache, setup.model, sequences, setup.layers, None, setup.v2_path)
        open_warning = open_warning or lookup_warning
    missing: list[int] = comm.broadcast(plan.missing if plan is not None else None)

    shard = distributed.shard_indices([len(sequences[i]) for i in missing], env.world_size)[env.rank]
    check_shard = distributed.shard_indices([len(s) for s in sequences], env.world_size)[env.rank]
    result: tuple = ("error", None)
    try:
        part = run_both_paths(
            setup.model, setup.alphabet, [ids[missing[p]] for p in shard], [sequences[missing[p]] for p in shard],
            layers=setup.layers, max_tokens=args.max_tokens, v2_path=setup.v2_path,
        ) if shard else None
        fresh = part is not None and len(missing) == len(sequences)  # then shard == check_shard
        checks = _run_checks(
            args, setup, [sequences[i] for i in check_shard], part.v2.layers[setup.layer] if fresh else None,
            limit=max(1, -(-32 // env.world_size)),
        ) if check_shard else []
        result = ("ok", part, checks)
    except SETUP_ERRORS as caught:
        result = ("error", str(caught))
    gathered = comm.gather(result)
    code = 0
    if env.is_root:
        if _report_rank_errors([r[1] if r[0] == "error" else None for r in gathered], env):
            code = EXIT_SETUP
        else:
            code = _finish_root(args, parsed, setup, plan, cache, gathered, directory, open_warning, env)
    return _leave_together(comm, code)


def _leave_together(comm: distributed.Communicator, code: int) -> int:
    """Every rank leaves with rank 0's code, and only once rank 0 has flushed what it printed: torchrun stops
    the other workers as soon as one exits non-zero. (Should rank 0 crash instead, torchrun stops the others.)"""
    if comm.env.is_root:
        sys.stdout.flush()
        sys.stderr.flush()
    return comm.broadcast(code)


def _finish_root(
    args: argparse.Namespace, parsed: ParsedInput, setup: Setup, plan: CachePlan, cache: EmbeddingCache | None,
    gathered: list[tuple], directory: str | None, open_warning: str | None, env: distributed.DistEnv,
) -> int:
    """Rank 0: reassemble the shards in input order, merge cached rows, store new ones, measure the
    numerics sample over the whole set, report."""
    ids, sequences = [r.id for r in parsed.records], [r.sequence for r in parsed.records]
    computed = None
    if plan.missing:
        shards = distributed.shard_indices([len(sequences[i]) for i in plan.missing], env.world_size)
        computed = distributed.assemble_runs(shards, [r[1] for r in gathered], [ids[i] for i in plan.missing])
    run = merge_run(plan, setup.model, ids, sequences, computed)
    stats = CacheStats(dir=directory, hits=len(sequences) - len(plan.missing), computed=len(plan.missing))
    stats.warning = store_or_warn(cache, plan, computed)
    checks = distributed.merge_checks([r[2] for r in gathered])
    try:
        v2_path = setup.v2_path or packed_path(setup.model, args.backend)
        run.yardstick = measure_yardstick(setup.model, setup.alphabet, sequences, run.layers, setup.yardstick,
                                          v2_path, args.max_tokens)
    except SETUP_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    return _report(args, parsed, setup, run, checks, _cache_summary(directory, stats, open_warning), env.world_size)


def models_command(args: argparse.Namespace) -> int:
    device = default_device()
    print(f"device: {device}")
    print("pretrained (weights in the local torch hub cache?):")
    for name in PRETRAINED:
        print(f"  {name:<22} {'available' if pretrained_available(name) else 'not cached (downloads on a connected host)'}")
    print("demo weights (random init, offline): " + ", ".join(f"demo-{size}" for size in DEMO_SIZES))
    for dtype_label, dtype in DTYPES.items():
        print(f"v2.0 attention backends in {dtype_label}: {', '.join(available_backends(device, dtype))}")
    return 0


def _sample_size(text: str) -> int | None:
    """--reference-sample: a count >= 0, or 'all' (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count >= 0 or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0 or 'all', got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="ESM-2 attention divergence: v1.0 (padded) vs v2.0 (packed).")
    commands = parser.add_subparsers(dest="command", required=True)

    compare = commands.add_parser("compare", help="compare both paths on a sequence set and give the verdict")
    compare.add_argument("input", nargs="?", help="FASTA or one-sequence-per-line file (gzip ok), or - for stdin")
    compare.add_argument("--example", choices=["patterns", "real", "all"], help="use a built-in example set instead of INPUT")
    compare.add_argument("--model", default="auto", help="pretrained name, checkpoint path, or demo-<size> (default: auto)")
    compare.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="default: fp16 on GPU, fp32 on CPU")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    compare.add_argument("--layer", type=int, default=None, help="layer to pool, 0 … last (default: last; negative counts from the end)")
    compare.add_argument("--seed", type=int, default=0, help="proxy classifier seed (default 0)")
    compare.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="v2.0 attention backend")
    compare.add_argument("--out", help="directory for summary.json and sequences.csv")
    compare.add_argument("--fail-on", choices=["validate", "fallback"], help="exit 1 when the verdict is at or below this level")
    compare.add_argument("--max-tokens", type=int, default=None, help="token budget per batch (default: 16384 on GPU, 2048 on CPU)")
    compare.add_argument("--too-long", choices=["truncate", "reject"], default="truncate", help="records over 1022 residues")
    compare.add_argument("--v1-attention", action="store_true",
                         help="v2.0 = the v1-compatible fallback: fair-esm's attention behind the packed API")
    compare.add_argument("--v2", metavar="MODULE:FACTORY",
                         help="v2.0 = your implementation; the factory receives the loaded fair-esm model")
    compare.add_argument("--reference", choices=["auto", "none", "fp32", "fp64"], default="auto",
                         help="the numerics gate's yardstick: the standard path on the same weights in a wider dtype "
                              "(auto: fp32 with TF32 off on a GPU, fp64 on a CPU), or none: v1.0's rounding floor")
    compare.add_argument("--reference-sample", type=_sample_size, default=DEFAULT_REFERENCE_SAMPLE, metavar="N|all|0",
                         help=f"sequences in the numerics sample, chosen to span the lengths (default "
                              f"{DEFAULT_REFERENCE_SAMPLE}; 0: no reference, the rounding floor instead)")
    compare.add_argument("--rule-k", type=float, default=DEFAULT_K, help="FlashAttention rule: v2.0 error <= k x v1.0 error")
    compare.add_argument("--proxy", choices=PROXY_KINDS, default="balanced",
                         help="proxy heads: balanced (centred, boundary at v1.0's median; default) or seed (uncentred)")
    compare.add_argument("--seeds", type=int, default=DEFAULT_HEADS, metavar="K",
                         help=f"proxy heads that decide the prediction verdict (default {DEFAULT_HEADS}; 0: the --seed "
                              "head alone)")
    compare.add_argument("--head", help="your classification head (.safetensors, or a state_dict loaded weights_only)")
    compare.add_argument("--extra-features", help="per-sequence features for the head (CSV with an id column, or .npy)")
    compare.add_argument("--checks", action="store_true", help="also run packing-invariance and determinism checks on v2.0")
    compare.add_argument("--only-layer", action="store_true", help="pool only the chosen layer (less memory; no per-layer profile)")
    compare.add_argument("--cache", metavar="DIR", default=None,
                         help=f"reuse pooled embeddings stored in DIR, compute only new sequences (default: ${CACHE_ENV} or off)")
    compare.add_argument("--min-cosine", type=float, default=Thresholds.min_cosine)
    compare.add_argument("--min-agreement", type=float, default=Thresholds.min_agreement)
    compare.add_argument("--accept-agreement", type=float, default=Thresholds.accept_agreement)
    compare.set_defaults(handler=compare_command)

    models = commands.add_parser("models", help="list models, whether their weights are here, and attention backends")
    models.set_defaults(handler=models_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and bool(args.input) == bool(args.example):
        parser.error("give exactly one of INPUT or --example")
    return args.handler(args)
