"""Throughput benchmark: ``python -m core.bench`` prints a table and appends it to BENCHMARKS.md.

For each model × dtype × workload it measures path v1.0, path v2.0 (every available backend,
the slow ``reference`` one only on the small workload) and the whole comparison (both paths plus
metrics): seconds, tokens per second, achieved TFLOP/s and that as a fraction of the ceiling
measured on the same device (a large matrix product in the same dtype), peak GPU memory, and
the model's load time from a local checkpoint.

FLOPs per pass over a sequence of T tokens (residues + BOS + EOS):
    2 · N · T  +  layers · 4 · T² · E
with N the non-embedding parameters of the transformer layers (the LM and contact heads are not
counted) and E the embedding width; the second term is QKᵀ and PV. Padding is not counted, so
v1.0's padding overhead shows up as a lower fraction. The comparison counts both passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from core.bench_measure import matmul_ceiling, pass_flops, peak_gib, report_header, reset_peak, synchronize
from core.bench_peers import FAESM_PEERS, PEERS, bench_peers, faesm_rows_in_child, peer_table, rows_json
from core.numerics.attention import available_backends
from core.embed.passes import embed_path, PathEmbeddings
from core.embed.paths import packed_path, standard_path
from core.embed.run import run_both_paths
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE, measure_yardstick, plan_yardstick
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.loading import load_esm2_model, save_checkpoint
from core.numerics.precision import parse_dtype
from core.analysis.analyse import AnalysisOptions, analyse
from core.analysis.memo import remembering
from core.analysis.profile import prewarm_profile
from core.pipeline import alongside
from core.input.examples import example_sequences, REALISTIC_MEDIAN, REALISTIC_MIN, realistic_sequences
from core.input.records import format_fasta, MAX_RESIDUES, ProteinRecord

def workload(name: str, n: int, seed: int) -> list[str]:
    if name == "examples":
        return [record.sequence for record in example_sequences("all")]
    if name == "realistic":
        return realistic_sequences(n, seed)
    raise ValueError(f"unknown workload {name!r}: use examples or realistic")


@dataclass
class Row:
    model: str
    dtype: str
    workload: str
    stage: str
    sequences: int
    tokens: int
    seconds: float
    flops: float
    ceiling: float
    peak_gib: float | None
    note: str = ""

    def cells(self) -> list[str]:
        achieved = self.flops / self.seconds
        return [
            self.model, self.dtype, self.workload, self.stage, f"{self.sequences:,}", f"{self.tokens:,}",
            f"{self.seconds:.2f}", f"{self.tokens / self.seconds:,.0f}", f"{achieved / 1e12:.3g}",
            f"{100 * achieved / self.ceiling:.1f}%", "" if self.peak_gib is None else f"{self.peak_gib:.1f}", self.note,
        ]


HEADER = ["model", "dtype", "workload", "stage", "seqs", "tokens", "s", "tokens/s", "TFLOP/s", "of ceiling", "peak GiB", "note"]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def load_time(spec: str, dtype: str, device: torch.device) -> tuple[ESM2WithFlashAttention, object, float]:
    """Load ``spec`` (demo weights), save it as a local fair-esm checkpoint, and time loading that file."""
    model, alphabet = load_esm2_model(spec, dtype=dtype, device=device)
    with tempfile.TemporaryDirectory() as directory:
        path = save_checkpoint(model, Path(directory) / f"{spec}.pt")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        synchronize(device)
        start = time.perf_counter()
        model, alphabet = load_esm2_model(str(path), dtype=dtype, device=device)
        synchronize(device)
        seconds = time.perf_counter() - start
    return model, alphabet, seconds


def bench_model(spec: str, dtype: str, device: torch.device, workloads: dict[str, list[str]], ceiling: float,
                max_tokens: int | None) -> tuple[list[Row], float]:
    """Rows for one model in one dtype over every workload, and its checkpoint load time in seconds."""
    model, alphabet, loaded_in = load_time(spec, dtype, device)
    run_both_paths(model, alphabet, ["w1", "w2"], ["MKTAYIAKQRQISFVKSHFSRQ", "GSWQ" * 30], max_tokens=max_tokens)  # warm-up
    rows = []
    for name, sequences in workloads.items():
        tokens = sum(len(seq) + 2 for seq in sequences)
        flops = pass_flops(model, sequences)
        ids = [f"s{i}" for i in range(len(sequences))]

        def row(stage: str, seconds: float, n_passes: int, note: str = "") -> Row:
            return Row(spec, dtype, name, stage, len(sequences), n_passes * tokens, seconds, n_passes * flops, ceiling,
                       peak_gib(device), note)

        reset_peak(device)
        start = time.perf_counter()
        plan = plan_yardstick("auto", DEFAULT_REFERENCE_SAMPLE, model.dtype, model.device)
        run = run_both_paths(model, alphabet, ids, sequences, max_tokens=max_tokens)
        memo, prewarm = remembering(), []

        def metrics_meanwhile() -> None:  # as the CLI does (core.pipeline.alongside)
            prewarm_start = time.perf_counter()
            prewarm_profile(run, 0, "balanced", memo)
            prewarm.append(time.perf_counter() - prewarm_start)

        measure = functools.partial(measure_yardstick, model, alphabet, sequences, run.layers, plan, packed_path(model),
                                    run.v1, run.v2, max_tokens)
        run.yardstick = alongside(measure, metrics_meanwhile, concurrently=device.type == "cuda")
        analysis_start = time.perf_counter()
        analyse(run, model.num_layers, memo=memo)  # the defaults: 100 balanced heads, the numerics gate
        analysis = time.perf_counter() - analysis_start
        total = time.perf_counter() - start
        bare_start = time.perf_counter()
        analyse(dataclasses.replace(run, yardstick=None), model.num_layers, AnalysisOptions(n_heads=0), memo=memo)
        gate = run.yardstick.seconds + analysis - (time.perf_counter() - bare_start)  # one head, no gate, as bare
        both = run.v1.seconds + run.v2.seconds
        rows.append(row("v1.0 fair-esm", run.v1.seconds, 1, path_note(run.v1)))
        rows.append(row(f"v2.0 {run.v2.backend}", run.v2.seconds, 1, path_note(run.v2)))
        rows.append(row(f"numerics sample ({plan.dtype} reference)", run.yardstick.seconds, 0,
                        f"{run.yardstick.size} sequences ({len(run.yardstick.probes)} probes through v1.0 and v2.0), "
                        "v2.0 deep in a pack, reference"))
        rows.append(row("comparison (both + sample + metrics)", total, 2,
                        f"metrics {prewarm[0]:.2f} s {'alongside' if device.type == 'cuda' else 'before'} the "
                        f"sample + {analysis:.2f} s after; sample + heads + gate add {gate:.2f} s = "
                        f"{100 * gate / both:.1f}% of v1.0 + v2.0"))
        for backend in available_backends(device, parse_dtype(dtype)):
            if backend == run.v2.backend or (backend == "reference" and name != "examples"):
                continue
            reset_peak(device)
            other = embed_path(model, alphabet, sequences, None, packed_path(model, backend), max_tokens)
            rows.append(row(f"v2.0 {backend}", other.seconds, 1))
        if model.fuses():  # the same v2.0 with PyTorch's op sequence instead of the fused kernels
            model.fused = False
            reset_peak(device)
            unfused = embed_path(model, alphabet, sequences, None, packed_path(model), max_tokens)
            rows.append(row(f"v2.0 {unfused.backend}, PyTorch ops (unfused)", unfused.seconds, 1))
            model.fused = True
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, loaded_in


def profile_paths(spec: str, dtype: str, device: torch.device, sequences: Sequence[str], max_tokens: int | None,
                  top: int = 15) -> str:
    """torch.profiler's table of the most expensive kernels for each path over ``sequences``."""
    from torch.profiler import ProfilerActivity, profile

    model, alphabet = load_esm2_model(spec, dtype=dtype, device=device)
    tables = []
    for path in (standard_path(model), packed_path(model)):
        embed_path(model, alphabet, sequences[:8], None, path, max_tokens)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            embed_path(model, alphabet, sequences, None, path, max_tokens)
        sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        tables.append(f"### {path.implementation}\n\n" + prof.key_averages().table(sort_by=sort_by, row_limit=top))
    return "\n\n".join(tables)


def path_note(embeddings: PathEmbeddings) -> str:
    """Host waits (tokenisation the GPU had to wait for) and out-of-memory splits of one path."""
    note = f"host wait {embeddings.host_wait_seconds:.2f} s"
    return note + (f", {embeddings.oom_splits} OOM splits" if embeddings.oom_splits else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo-8M,demo-650M,demo-3B", help="comma-separated model specs")
    parser.add_argument("--dtypes", default="fp16,bf16", help="comma-separated dtypes")
    parser.add_argument("--workloads", default="examples,realistic", help="examples and/or realistic")
    parser.add_argument("--n", type=int, default=10_000, help="sequences in the realistic workload")
    parser.add_argument("--seed", type=int, default=0, help="seed of the realistic workload")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per batch (default: the tool's)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="cap this process's GPU memory (simulates a smaller GPU, e.g. 24)")
    parser.add_argument("--append", default="BENCHMARKS.md", help="file to append the table to ('' = do not)")
    parser.add_argument("--write-fasta", metavar="PATH",
                        help="instead: write the first workload as FASTA (e.g. for torchrun scaling runs) and stop")
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile each path on the first model, dtype and workload and print the top kernels")
    parser.add_argument("--peers", action="store_true",
                        help="instead: every popular fast ESM-2 side by side on the realistic workload (core/bench_peers.py)")
    parser.add_argument("--only", default="", help="with --peers: comma-separated implementations (default: all)")
    parser.add_argument("--faesm-site", metavar="DIR", default="",
                        help="with --peers: a directory holding faesm and transformers<5; FAESM rows run in a child with it")
    parser.add_argument("--rows-json", metavar="-", default="", help=argparse.SUPPRESS)  # the child's answer
    return parser


def report_text(args: argparse.Namespace, command: str, device: torch.device, ceilings: dict[str, float],
                load_lines: list[str], rows: list[Row]) -> str:
    """The section appended to BENCHMARKS.md: when, where, the command, versions, the ceiling, the table."""
    memory_cap = f", GPU memory capped at {args.gpu_memory_gib:g} GiB" if args.gpu_memory_gib else ""
    return "\n".join([
        *report_header("", command, device, ceilings, memory_cap),
        f"Realistic workload: {args.n:,} sequences, log-normal lengths (median {REALISTIC_MEDIAN}, "
        f"clipped {REALISTIC_MIN}–{MAX_RESIDUES}), seed {args.seed}  ",
        "Load from a local checkpoint: " + "; ".join(load_lines),
        "",
        markdown_table(rows),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if args.gpu_memory_gib is not None:
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory_gib / total), device)
    workloads = {name: workload(name, args.n, args.seed) for name in args.workloads.split(",")}
    if args.write_fasta:
        records = [ProteinRecord(f"w{i + 1:06d}", seq) for i, seq in enumerate(next(iter(workloads.values())))]
        Path(args.write_fasta).write_text(format_fasta(records))
        return 0
    if args.profile:
        first = next(iter(workloads.values()))
        print(profile_paths(args.models.split(",")[0], args.dtypes.split(",")[0], device, first, args.max_tokens))
        return 0
    if args.peers:
        return peers_main(args, device, workload("realistic", args.n, args.seed), argv)
    rows: list[Row] = []
    load_lines, ceilings = [], {}
    for dtype in args.dtypes.split(","):
        ceilings[dtype] = matmul_ceiling(device, parse_dtype(dtype), size=8192 if device.type == "cuda" else 1024,
                                         repeats=20 if device.type == "cuda" else 2)
        for spec in args.models.split(","):
            model_rows, loaded_in = bench_model(spec, dtype, device, workloads, ceilings[dtype], args.max_tokens)
            rows += model_rows
            load_lines.append(f"{spec} {dtype}: {loaded_in:.1f} s")
            print(markdown_table(model_rows), flush=True)
    command = "python -m core.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    report = report_text(args, command, device, ceilings, load_lines, rows)
    print("\n" + report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


def peers_main(args: argparse.Namespace, device: torch.device, sequences: list[str], argv: Sequence[str] | None) -> int:
    """``--peers``: the parity-and-speed table (see core/bench_peers.py), printed and appended."""
    keys = [key for key in args.only.split(",") if key] or [k for k in PEERS if not (args.faesm_site and k in FAESM_PEERS)]
    unknown = [key for key in keys if key not in PEERS]
    if unknown:
        raise SystemExit(f"unknown implementation(s) {unknown}; choose from {list(PEERS)}")
    rows, ceilings = [], {}
    for dtype in args.dtypes.split(","):
        ceilings[dtype] = matmul_ceiling(device, parse_dtype(dtype), size=8192 if device.type == "cuda" else 1024,
                                         repeats=20 if device.type == "cuda" else 2)
        for spec in args.models.split(","):
            model_rows = bench_peers(spec, dtype, device, sequences, ceilings[dtype], keys, args.max_tokens)
            rows += model_rows
            if not args.rows_json:
                print(peer_table(model_rows), flush=True)
    if args.rows_json:
        print(rows_json(rows))
        return 0
    child_argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--peers"]
    if args.faesm_site:
        rows += faesm_rows_in_child(args.faesm_site, _without_option(child_argv, "--faesm-site"))
    order = {(r.model, r.dtype): i for i, r in enumerate(rows)}
    rows.sort(key=lambda r: order.get((r.model, r.dtype), len(order)))
    command = "python -m core.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    report = peers_report(args, command, device, ceilings, rows)
    print("\n" + report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def peers_report(args: argparse.Namespace, command: str, device: torch.device, ceilings: dict[str, float],
                 rows: list) -> str:
    return "\n".join([
        *report_header("Peers, ", command, device, ceilings),
        f"Workload: {args.n:,} realistic sequences (seed {args.seed}), every layer pooled; parity = the tool's "
        "default headline against v1.0 with a float64 reference sample",
        "",
        peer_table(rows),
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
