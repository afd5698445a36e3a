"""The command line's arguments: the parser, one-line argument errors, range checks, the exit codes.

Every numeric option is checked by its ``type=`` validator, so a value out of range is an argument
error (exit 2, one line on stderr) before any model is loaded, never a traceback or a silent pass.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

from core.analysis.attribution import DEFAULT_K
from core.analysis.metrics import Thresholds
from core.analysis.proxies import DEFAULT_HEADS, MAX_SEED, PROXY_KINDS
from core.embed.cache_store import CACHE_ENV
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE
from core.numerics.attention import BACKENDS
from core.numerics.precision import DTYPES

PROG = "python -m core"
EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_SETUP, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_USAGE = 2  # argparse's own code for argument errors; input errors share it

EXIT_CODES_EPILOG = """\
exit codes:
  0    done; the verdict passed any --fail-on gate
  1    the verdict is at or below --fail-on (the CI gate; nothing else exits 1)
  2    usage or input: a bad argument (one line on stderr), an unreadable input,
       or refused records (named on stderr; the valid ones are still compared)
  3    setup: the model, the backend or the --v2 plug-in cannot be set up
       (or the plug-in fails while it runs), or --out cannot be written
  4    internal error: a bug; the traceback is printed, please report it
  130  interrupted (Ctrl-C)
"""


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit EXIT_USAGE (subcommands included)."""

    def error(self, message: str) -> NoReturn:
        one_line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    """``text`` as an int, or a one-line ArgumentTypeError."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _finite(text: str) -> float:
    """``text`` as a finite float (nan and inf refused), or a one-line ArgumentTypeError."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seed(text: str) -> int:
    """--seed: 0 ≤ seed ≤ MAX_SEED (numpy seeds are unsigned 32-bit)."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED:,}, got {value}")
    return value


def head_count(text: str) -> int:
    """--seeds: heads 0 … K − 1, so 0 ≤ K ≤ MAX_SEED + 1."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED + 1:
        raise argparse.ArgumentTypeError(f"expected a count of heads >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number > 0 (--max-tokens)."""
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (--rule-k)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A finite number in [0, 1] (the verdict's thresholds)."""
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def non_empty(text: str) -> str:
    """A path or name that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty value, got an empty string")
    return text


def sample_size(text: str) -> int | None:
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
    compare.add_argument("input", nargs="?", type=non_empty,
                         help="FASTA, FASTQ, a CSV/TSV table or .xlsx/.xls sheet with a 'sequence' column, GenBank/UniProt/EMBL, or one "
                              "sequence per line (gzip ok; a pipe, FIFO or /dev/fd/N too), or - for stdin")
    compare.add_argument("--example", choices=["patterns", "real", "all"], help="use a built-in example set instead of INPUT")
    compare.add_argument("--model", default="auto", type=non_empty,
                         help="pretrained name, checkpoint path, or demo-<size> (default: auto)")
    compare.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="default: fp16 on GPU, fp32 on CPU")
    compare.add_argument("--device", default="auto", type=non_empty, help="auto, cpu, cuda or cuda:N")
    compare.add_argument("--layer", type=_integer, default=None,
                         help="layer to pool, 0 … last (default: last; negative counts from the end)")
    compare.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="v2.0 attention backend")
    compare.add_argument("--out", type=non_empty, help="directory for summary.json and sequences.csv")
    compare.add_argument("--max-tokens", type=positive_int, default=None,
                         help="token budget per batch, > 0 (default: 16384 on GPU, 2048 on CPU)")
    compare.add_argument("--too-long", choices=["truncate", "reject"], default="truncate", help="records over 1022 residues")
    compare.add_argument("--v1-attention", action="store_true",
                         help="v2.0 = the v1-compatible fallback: fair-esm's attention behind the packed API")
    compare.add_argument("--v2", metavar="MODULE:FACTORY", type=non_empty,
                         help="v2.0 = your implementation; the factory receives the loaded fair-esm model")
    compare.add_argument("--checks", action="store_true", help="also run packing-invariance and determinism checks on v2.0")
    compare.add_argument("--only-layer", action="store_true", help="pool only the chosen layer (less memory; no per-layer profile)")
    compare.add_argument("--cache", metavar="DIR", default=None, type=non_empty,
                         help=f"reuse pooled embeddings stored in DIR, compute only new sequences (default: ${CACHE_ENV} or off)")


def _add_verdict_arguments(compare: argparse.ArgumentParser) -> None:
    """The evidence and the thresholds of the verdict."""
    compare.add_argument("--seed", type=seed, default=0, help=f"proxy classifier seed, 0 … {MAX_SEED} (default 0)")
    compare.add_argument("--fail-on", choices=["validate", "fallback"], help="exit 1 when the verdict is at or below this level")
    compare.add_argument("--reference", choices=["auto", "none", "fp32", "fp64"], default="auto",
                         help="the numerics gate's yardstick: the standard path on the same weights in a wider dtype "
                              "(auto: fp32 with TF32 off on a GPU, fp64 on a CPU), or none: v1.0's rounding floor")
    compare.add_argument("--reference-sample", type=sample_size, default=DEFAULT_REFERENCE_SAMPLE, metavar="N|all|0",
                         help=f"sequences in the numerics sample, chosen to span the lengths, and one more for each "
                              f"residue letter they miss (default {DEFAULT_REFERENCE_SAMPLE}; 0: no reference, the "
                              "rounding floor instead)")
    compare.add_argument("--rule-k", type=positive_float, default=DEFAULT_K,
                         help="FlashAttention rule: v2.0 error <= k x v1.0 error (k > 0)")
    compare.add_argument("--proxy", choices=PROXY_KINDS, default="balanced",
                         help="proxy heads: balanced (centred, boundary at v1.0's median; default) or seed (uncentred)")
    compare.add_argument("--seeds", type=head_count, default=DEFAULT_HEADS, metavar="K",
                         help=f"proxy heads that decide the prediction verdict (default {DEFAULT_HEADS}; 0: the --seed "
                              "head alone)")
    compare.add_argument("--head", type=non_empty, help="your classification head (.safetensors, or a state_dict loaded weights_only)")
    compare.add_argument("--extra-features", type=non_empty,
                         help="per-sequence features for the head (CSV with an id column, or .npy)")
    for name in ("min_cosine", "min_agreement", "accept_agreement"):
        compare.add_argument(f"--{name.replace('_', '-')}", type=fraction, default=getattr(Thresholds, name),
                             help="0 … 1 (default %(default)s)")


def build_parser() -> CliParser:
    """``python -m core {compare,check,models}``; every parser and subparser is a CliParser."""
    parser = CliParser(prog=PROG, description="ESM-2 attention divergence: v1.0 (padded) vs v2.0 (packed).",
                       epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CliParser)
    compare = commands.add_parser("compare", help="compare both paths on a sequence set and give the verdict",
                                  epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(compare)
    _add_verdict_arguments(compare)
    compare.set_defaults(command_parser=compare)  # so rules across options name compare's --help
    check = commands.add_parser("check", help="read INPUT as compare would and list every problem, without a model "
                                              "(exit 0 all fine, 2 refused records or nothing to compare)")
    check.add_argument("input", type=non_empty, help="as for compare: a file (gzip ok), a pipe or FIFO, or - for stdin")
    check.add_argument("--too-long", choices=["truncate", "reject"], default="truncate", help="records over 1022 residues")
    check.set_defaults(example=None)
    commands.add_parser("models", help="list models, whether their weights are here, and attention backends")
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with the rules that span several options checked (an argument error if broken)."""
    args = parser.parse_args(argv)
    if args.command == "compare":
        parser = args.command_parser
        if (args.input is not None) == (args.example is not None):
            parser.error("give exactly one of INPUT or --example")
        if args.v1_attention and args.v2:
            parser.error("give at most one of --v1-attention and --v2")
        if args.min_agreement > args.accept_agreement:
            parser.error(f"--min-agreement {args.min_agreement} must not exceed --accept-agreement {args.accept_agreement}")
    return args

