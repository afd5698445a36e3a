"""Command line: ``python -m core compare INPUT ...`` and ``python -m core models``.

It parses, calls the one pipeline (core.pipeline.run_comparison; under torchrun with the torchrun
executor), analyses and prints. Exit codes: 0 done; 1 the verdict is at or below ``--fail-on``;
2 input problems (every refused record is named; valid ones are still compared and written); 3 the
model, the backend or a plug-in cannot be set up, or ``--out`` cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from core.analysis.analyse import AnalysisOptions, analyse
from core.analysis.attribution import DEFAULT_K
from core.analysis.heads import HeadClassifier, HeadError
from core.analysis.metrics import Thresholds, verdict_at_or_below
from core.analysis.proxies import DEFAULT_HEADS, PROXY_KINDS
from core.embed import distributed
from core.embed.cache_store import CACHE_ENV, cache_dir_from_env
from core.embed.plugins import PluginError
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE
from core.input.examples import example_sequences
from core.input.fasta import read_sequences
from core.input.head_files import load_extra_features, load_head
from core.input.records import MAX_INPUT_BYTES, ParsedInput
from core.numerics.attention import BACKENDS, available_backends
from core.numerics.environment import default_device, device_or_cpu, versions
from core.numerics.precision import DTYPES
from core.numerics.specs import PRETRAINED, default_dtype, default_model_spec, demo_specs, pretrained_available
from core.pipeline import SETUP_ERRORS, ComparisonRequest, ComparisonResult, Executor, LocalExecutor, SetupFailed, run_comparison
from core.report.tables import write_outputs
from core.report.terminal import format_summary

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


def _load_head(args: argparse.Namespace, embed_dim: int, ids: list[str]) -> HeadClassifier | None:
    """The user's head (and extra features) as a classifier over pooled embeddings; HeadError is a ValueError."""
    if args.head is None:
        if args.extra_features is not None:
            raise HeadError("--extra-features needs --head: extra features only feed a user-supplied head")
        return None
    extra = load_extra_features(args.extra_features, ids) if args.extra_features is not None else None
    classifier = HeadClassifier(load_head(args.head), extra)
    classifier.check_width(embed_dim)
    return classifier


def _single_device(device: str) -> torch.device:
    """The device of a single-process run (the CPU, with a warning, when CUDA is asked for but absent);
    ValueError (one line) for a device name torch does not know."""
    try:
        requested = torch.device(device) if device != "auto" else default_device()
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    requested, notice = device_or_cpu(requested)
    if notice:
        print(f"warning: {notice}", file=sys.stderr)
    return requested


def _candidate(args: argparse.Namespace) -> str:
    """--v1-attention (the fallback) or --v2 module:factory (a plug-in); else the built-in packed path."""
    if args.v1_attention and args.v2:
        raise PluginError("give at most one of --v1-attention and --v2")
    return "fallback" if args.v1_attention else (args.v2 or "packed")


def _request(args: argparse.Namespace, device: torch.device, announce: bool) -> ComparisonRequest:
    model = args.model if args.model != "auto" else default_model_spec(device)
    dtype = args.dtype if args.dtype != "auto" else default_dtype(device)
    if args.model == "auto" and announce:
        print(f"note: model 'auto' on {device.type} is {model} in {dtype} (pass --model to choose)", file=sys.stderr)
    return ComparisonRequest(
        model=model, dtype=dtype, device=str(device), candidate=_candidate(args), backend=args.backend,
        reference=args.reference, reference_sample=args.reference_sample, layer=args.layer, only_layer=args.only_layer,
        max_tokens=args.max_tokens, cache_dir=cache_dir_from_env(args.cache), checks=args.checks,
    )


def _report(args: argparse.Namespace, parsed: ParsedInput, result: ComparisonResult, head: HeadClassifier | None,
            thresholds: Thresholds) -> int:
    """Analyse, print the table and verdict, write the files; returns the exit code."""
    if result.cache is not None and result.cache.warning:
        print(f"warning: {result.cache.warning}", file=sys.stderr)
    options = AnalysisOptions(seed=args.seed, thresholds=thresholds, proxy=args.proxy, n_heads=args.seeds, k=args.rule_k,
                              classifier=head, classifier_name=head.describe() if head is not None else None)
    analysis = analyse(result.run, result.layer, options, parsed, versions(), checks=result.checks,
                       cache=result.cache, world_size=result.world_size)
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
    if args.fail_on and verdict_at_or_below(summary.verdict, args.fail_on.upper()):
        print(f"failing: verdict {summary.verdict} is at or below --fail-on {args.fail_on}", file=sys.stderr)
        return EXIT_GATE
    return 0


def _compare(args: argparse.Namespace, parsed: ParsedInput, device: torch.device, executor: Executor) -> int:
    """One rank's comparison (the only one without torchrun): run the pipeline, report on the root."""
    ids, sequences = [r.id for r in parsed.records], [r.sequence for r in parsed.records]
    heads: list[HeadClassifier | None] = [None]

    def check_head(loaded) -> None:  # before any embedding, on every rank, so a bad head stops them together
        heads[0] = _load_head(args, loaded.model.embed_dim, ids)

    try:
        thresholds = Thresholds(args.min_cosine, args.min_agreement, args.accept_agreement)
        request = _request(args, device, announce=executor.is_root)
        result = run_comparison(request, ids, sequences, executor=executor, preflight=check_head)
    except (SetupFailed, *SETUP_ERRORS) as error:
        if executor.is_root:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    return _report(args, parsed, result, heads[0], thresholds) if result is not None else 0


def compare_command(args: argparse.Namespace) -> int:
    try:
        env = distributed.environment()
    except distributed.DistributedSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    if env is None:
        parsed = _read_checked(args)
        if isinstance(parsed, int):
            return parsed
        try:
            device = _single_device(args.device)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_SETUP
        return _compare(args, parsed, device, LocalExecutor())
    return _compare_torchrun(args, env)


def _compare_torchrun(args: argparse.Namespace, env: distributed.DistEnv) -> int:
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
    executor = distributed.TorchrunExecutor(comm)
    code = executor.finish(_compare(args, parsed, device, executor))  # an unexpected exception ends the job via torchrun
    comm.shutdown()
    return code


def models_command(args: argparse.Namespace) -> int:
    device = default_device()
    print(f"device: {device}")
    print("pretrained (weights in the local torch hub cache?):")
    for name in PRETRAINED:
        print(f"  {name:<22} {'available' if pretrained_available(name) else 'not cached (downloads on a connected host)'}")
    print("demo weights (random init, offline): " + ", ".join(demo_specs()))
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


def _add_run_arguments(compare: argparse.ArgumentParser) -> None:
    """What to compare and how to run it."""
    compare.add_argument("input", nargs="?", help="FASTA or one-sequence-per-line file (gzip ok), or - for stdin")
    compare.add_argument("--example", choices=["patterns", "real", "all"], help="use a built-in example set instead of INPUT")
    compare.add_argument("--model", default="auto", help="pretrained name, checkpoint path, or demo-<size> (default: auto)")
    compare.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="default: fp16 on GPU, fp32 on CPU")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    compare.add_argument("--layer", type=int, default=None, help="layer to pool, 0 … last (default: last; negative counts from the end)")
    compare.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="v2.0 attention backend")
    compare.add_argument("--out", help="directory for summary.json and sequences.csv")
    compare.add_argument("--max-tokens", type=int, default=None, help="token budget per batch (default: 16384 on GPU, 2048 on CPU)")
    compare.add_argument("--too-long", choices=["truncate", "reject"], default="truncate", help="records over 1022 residues")
    compare.add_argument("--v1-attention", action="store_true",
                         help="v2.0 = the v1-compatible fallback: fair-esm's attention behind the packed API")
    compare.add_argument("--v2", metavar="MODULE:FACTORY",
                         help="v2.0 = your implementation; the factory receives the loaded fair-esm model")
    compare.add_argument("--checks", action="store_true", help="also run packing-invariance and determinism checks on v2.0")
    compare.add_argument("--only-layer", action="store_true", help="pool only the chosen layer (less memory; no per-layer profile)")
    compare.add_argument("--cache", metavar="DIR", default=None,
                         help=f"reuse pooled embeddings stored in DIR, compute only new sequences (default: ${CACHE_ENV} or off)")


def _add_verdict_arguments(compare: argparse.ArgumentParser) -> None:
    """The evidence and the thresholds of the verdict."""
    compare.add_argument("--seed", type=int, default=0, help="proxy classifier seed (default 0)")
    compare.add_argument("--fail-on", choices=["validate", "fallback"], help="exit 1 when the verdict is at or below this level")
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
    compare.add_argument("--min-cosine", type=float, default=Thresholds.min_cosine)
    compare.add_argument("--min-agreement", type=float, default=Thresholds.min_agreement)
    compare.add_argument("--accept-agreement", type=float, default=Thresholds.accept_agreement)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="ESM-2 attention divergence: v1.0 (padded) vs v2.0 (packed).")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="compare both paths on a sequence set and give the verdict")
    _add_run_arguments(compare)
    _add_verdict_arguments(compare)
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
