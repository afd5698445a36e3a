"""Command line: ``python -m core compare INPUT ...`` and ``python -m core models``.

Exit codes: 0 done; 1 the verdict is at or below ``--fail-on``; 2 input problems (every
refused record is named; valid ones are still compared and written); 3 the model or the
attention backend cannot be set up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from core.attention import BACKENDS, BackendUnavailable, available_backends
from core.attribution import DEFAULT_K
from core.checks import determinism, packing_invariance
from core.heads import HeadClassifier, HeadError, load_extra_features, load_head
from core.plugins import PluginError, make_plugin_path
from core.compare import ForwardPath, fallback_path, run_both_paths
from core.metrics import Thresholds, verdict_at_or_below
from core.model import (
    DEMO_SIZES, DTYPES, PRETRAINED, WeightsUnavailable, default_device, default_dtype,
    default_model_spec, layer_indices, load_esm2_model, pretrained_available, versions,
)
from core.report import analyse, format_summary, write_outputs
from core.sequences import MAX_INPUT_BYTES, ParsedInput, example_sequences, read_sequences

EXIT_GATE, EXIT_INPUT, EXIT_SETUP = 1, 2, 3


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


def compare_command(args: argparse.Namespace) -> int:
    try:
        parsed = _read_input(args)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    for problem in parsed.problems:
        print(f"{problem.severity}: {problem.message}", file=sys.stderr)
    if not parsed.records:
        print("error: no valid sequences to compare", file=sys.stderr)
        return EXIT_INPUT

    try:
        device = torch.device(args.device) if args.device != "auto" else default_device()
    except RuntimeError:
        print(f"error: unknown device {args.device!r}; use auto, cpu, cuda or cuda:N", file=sys.stderr)
        return EXIT_SETUP
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for but CUDA is not available here", file=sys.stderr)
        return EXIT_SETUP
    model_spec = args.model if args.model != "auto" else default_model_spec(device)
    dtype = args.dtype if args.dtype != "auto" else default_dtype(device)
    if args.model == "auto":
        print(f"note: model 'auto' on {device.type} is {model_spec} in {dtype} (pass --model to choose)", file=sys.stderr)
    try:
        thresholds = Thresholds(args.min_cosine, args.min_agreement, args.accept_agreement)
        model, alphabet = load_esm2_model(model_spec, dtype=dtype, device=device, backend=args.backend)
        model.resolved_backend()
        layer = layer_indices(model, [args.layer if args.layer is not None else model.num_layers])[0]
        records = parsed.records
        ids, sequences = [r.id for r in records], [r.sequence for r in records]
        head = _load_head(args, model.embed_dim, ids)
        v2_path = v2_path_from_args(args, model)
        run = run_both_paths(
            model, alphabet, ids, sequences, layers=[layer] if args.only_layer else None,
            max_tokens=args.max_tokens, reference_dtype=None if args.reference == "none" else args.reference,
            v2_path=v2_path,
        )
        checks = []
        if args.checks:
            packed = run.v2.layers[layer]
            checks = [
                packing_invariance(model, alphabet, sequences, packed, layer, args.backend),
                determinism(model, alphabet, sequences, packed, layer, args.backend, args.max_tokens),
            ]
    except (ValueError, WeightsUnavailable, BackendUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    analysis = analyse(
        run, layer, args.seed, thresholds, parsed, versions(), n_seeds=args.seeds, k=args.rule_k, checks=checks,
        classifier=head, classifier_name=head.describe() if head is not None else None,
    )
    summary = analysis.summary
    print(format_summary(summary))
    if args.out:
        summary_path, csv_path = write_outputs(Path(args.out), summary, analysis.table)
        print(f"\n  wrote {summary_path} and {csv_path}")

    if parsed.errors:
        print(f"error: {len(parsed.errors)} record(s) refused (listed above); the rest were compared", file=sys.stderr)
        return EXIT_INPUT
    if args.fail_on and verdict_at_or_below(summary["verdict"], args.fail_on.upper()):
        print(f"failing: verdict {summary['verdict']} is at or below --fail-on {args.fail_on}", file=sys.stderr)
        return EXIT_GATE
    return 0


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
    compare.add_argument("--reference", choices=["none", "fp32", "fp64"], default="none",
                         help="add the standard path on the same weights in this dtype and attribute the error")
    compare.add_argument("--rule-k", type=float, default=DEFAULT_K, help="FlashAttention rule: v2.0 error <= k x v1.0 error")
    compare.add_argument("--seeds", type=int, default=0, metavar="N",
                         help="label agreement over N proxy seeds (0 = off; 100 is a good choice)")
    compare.add_argument("--head", help="your classification head (.safetensors, or a state_dict loaded weights_only)")
    compare.add_argument("--extra-features", help="per-sequence features for the head (CSV with an id column, or .npy)")
    compare.add_argument("--checks", action="store_true", help="also run packing-invariance and determinism checks on v2.0")
    compare.add_argument("--only-layer", action="store_true", help="pool only the chosen layer (less memory; no per-layer profile)")
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
