"""Command line: ``python -m core compare INPUT ...``, ``python -m core check INPUT`` and ``python -m core models``.

It parses (core.cli_args), calls the one pipeline (core.pipeline.run_comparison; under torchrun with
the torchrun executor), analyses and prints. Exit codes (core.cli_args.EXIT_CODES_EPILOG): 0 done;
1 the verdict is at or below ``--fail-on`` and nothing else; 2 an argument or input problem (every
refused record is named; valid ones are still compared and written); 3 the model, the backend or a
plug-in cannot be set up, or ``--out`` cannot be written; 4 an internal error (a bug: traceback, then
one line); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Sequence

import torch

from core.analysis.analyse import AnalysisOptions, analyse
from core.analysis.heads import HeadClassifier, HeadError
from core.analysis.memo import Memo, remembering
from core.analysis.metrics import Thresholds, verdict_at_or_below
from core.analysis.profile import prewarm_profile
from core.cli_args import (
    EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_SETUP, build_parser, parse_arguments,
)
from core.cli_stdout import reader_may_leave
from core.embed import distributed
from core.embed.cache_store import cache_dir_from_env
from core.input.examples import example_sequences
from core.input.fasta import read_sequences
from core.input.head_files import load_extra_features, load_head
from core.input.records import ParsedInput
from core.input.sources import InputUnavailable, input_path, read_stdin
from core.numerics.attention import available_backends
from core.numerics.environment import default_device, device_or_cpu, versions
from core.numerics.precision import DTYPES
from core.numerics.specs import (PRETRAINED, TINY_DEMO, default_dtype, default_model_spec, demo_specs,
                                 pretrained_available)
from core.pipeline import SETUP_ERRORS, ComparisonRequest, ComparisonResult, Executor, LocalExecutor, SetupFailed, run_comparison
from core.report.tables import write_outputs
from core.report.terminal import format_summary


def _read_input(args: argparse.Namespace) -> ParsedInput:
    """The records of --example, stdin ('-') or the INPUT path; InputUnavailable when it cannot be opened."""
    if args.example:
        return ParsedInput(records=example_sequences(args.example), problems=[])
    source = read_stdin(sys.stdin) if args.input == "-" else input_path(args.input)
    return read_sequences(source, on_too_long=args.too_long)


def _read_checked(args: argparse.Namespace, quiet: bool = False) -> ParsedInput | int:
    """The parsed input, or an exit code (input problems are printed unless ``quiet``)."""
    try:
        parsed = _read_input(args)
    except InputUnavailable as error:
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
            thresholds: Thresholds, memo: Memo) -> int:
    """Analyse, print the table and verdict, write the files; returns the exit code."""
    if result.cache is not None and result.cache.warning:
        print(f"warning: {result.cache.warning}", file=sys.stderr)
    options = AnalysisOptions(seed=args.seed, thresholds=thresholds, proxy=args.proxy, n_heads=args.seeds, k=args.rule_k,
                              classifier=head, classifier_name=head.describe() if head is not None else None)
    analysis = analyse(result.run, result.layer, options, parsed, versions(), checks=result.checks,
                       cache=result.cache, world_size=result.world_size, memo=memo)
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
        memo = remembering()  # the metrics that need no numerics sample are computed while it runs
        result = run_comparison(request, ids, sequences, executor=executor, preflight=check_head,
                                meanwhile=lambda run: prewarm_profile(run, args.seed, args.proxy, memo))
    except (SetupFailed, *SETUP_ERRORS) as error:
        if executor.is_root:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    return _report(args, parsed, result, heads[0], thresholds, memo) if result is not None else 0


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
    print("demo weights (random init, offline): " + ", ".join(
        f"{spec} (not an ESM-2 size: smoke runs)" if spec == TINY_DEMO else spec for spec in demo_specs()))
    for dtype_label, dtype in DTYPES.items():
        print(f"v2.0 attention backends in {dtype_label}: {', '.join(available_backends(device, dtype))}")
    return 0


def check_command(args: argparse.Namespace) -> int:
    """``check INPUT``: compare's input stage alone — every problem named as compare names it, then what
    compare would embed; exit 0, or EXIT_INPUT for refused records or nothing to compare."""
    parsed = _read_checked(args)
    if isinstance(parsed, int):
        return parsed
    lengths = [len(record.sequence) for record in parsed.records]
    each = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)} to {max(lengths)}"
    print(f"{len(lengths)} sequence(s) to compare: {sum(lengths):,} residues, {each} each")
    if parsed.errors:
        print(f"error: {len(parsed.errors)} record(s) refused (listed above); compare would compare the rest",
              file=sys.stderr)
        return EXIT_INPUT
    return 0


def _dispatch(argv: Sequence[str] | None) -> int:
    args = parse_arguments(build_parser(), None if argv is None else list(argv))
    commands = {"compare": compare_command, "check": check_command, "models": models_command}
    return commands[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argument errors raise SystemExit(2), as argparse does).

    Anything unexpected is a bug, exit EXIT_INTERNAL: never 1, which CI reads as the --fail-on verdict."""
    try:
        with reader_may_leave():
            return _dispatch(argv)
    except KeyboardInterrupt:
        print(f"interrupted (exit {EXIT_INTERRUPTED})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place that turns a bug into its exit code
        traceback.print_exc()
        message = " ".join(str(error).split())  # the last line stays one line for CI logs
        print(f"internal error: {type(error).__name__}: {message} (exit {EXIT_INTERNAL}) — please report",
              file=sys.stderr)
        return EXIT_INTERNAL
