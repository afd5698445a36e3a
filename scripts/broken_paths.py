"""Plant each catalogued packed-path bug in turn, and the faithful paths, and print the verdict table.

    python scripts/broken_paths.py --model demo-650M --dtype fp16 --workload realistic --n 300
    python scripts/broken_paths.py --model demo-8M --dtype fp32 --workload patterns          # CPU
    python scripts/broken_paths.py --model demo-650M --dtype fp16 --false-alarms 20 --n 300   # faithful only

Every row is a whole comparison with the tool's default settings (balanced heads, numerics gate; v1.0 and
the reference computed once and shared, as they do not depend on v2.0):
a catalogued bug must never be ACCEPT, a faithful path never anything else. ``--false-alarms N``
runs the built-in v2.0 against v1.0 on N different random realistic sets and counts those flagged.
Exit code 1 when any row is wrong (a bug accepted, a faithful path flagged).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from core.numerics.attention import available_backends  # noqa: E402
from core.bench_measure import device_label  # noqa: E402
from core.embed.paths import fallback_path, packed_path
from core.embed.run import run_both_paths, v1_baseline, with_v2
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE, plan_yardstick
from core.numerics.environment import default_device  # noqa: E402
from core.numerics.loading import load_esm2_model  # noqa: E402
from core.embed.plugins import make_plugin_path  # noqa: E402
from core.analysis.analyse import analyse  # noqa: E402
from core.input.examples import example_sequences, realistic_sequences  # noqa: E402
from tests.plugins.broken_paths import CATALOGUE  # noqa: E402

HF_FACTORIES = {"Hugging Face eager": "core.adapters.hf_esm:make_eager", "Hugging Face sdpa": "core.adapters.hf_esm:make_sdpa"}
HEADER = ("| v2.0 | expected | verdict | predictions (lower agreement) | numerics | first departing layer | "
          "max error × v1.0's | closer v1 : v2 | cosine min | seed rule |")


def faithful_paths(model) -> dict[str, object]:
    """The built-in packed path with every backend here, the fallback, and Hugging Face's ESM when installed."""
    paths = {f"built-in packed ({backend})": packed_path(model, backend)
             for backend in available_backends(model.device, model.dtype)}
    paths["v1-compatible fallback"] = fallback_path(model)
    for name, spec in HF_FACTORIES.items():
        try:
            paths[name] = make_plugin_path(spec, model)
        except ValueError as error:  # transformers missing: say so, do not hide it
            print(f"note: {name} skipped: {error}", file=sys.stderr)
    return paths


def row(name: str, expected: str, summary: dict) -> tuple[str, bool]:
    """A markdown row and whether the verdict is right (a bug: not ACCEPT; a faithful path: ACCEPT)."""
    numerics, predictions = summary["numerics"], summary["predictions"]
    first = numerics["first_departing_layer"]
    if numerics["departs_only_deep_in_a_pack"]:
        layer = numerics["deep_pack"]
    else:
        layer = next((entry for entry in numerics["layers"] if entry["layer"] == first), None) or max(
            numerics["layers"], key=lambda entry: entry["ratio"] or 0.0)
    ratio = layer["ratio"]
    closer = f"{layer['closer_v1']} : {layer['closer_v2']}" if layer["closer_v1"] is not None else "n/a"
    right = (summary["verdict"] == "ACCEPT") == (expected == "ACCEPT")
    cells = [name, expected, summary["verdict"] + ("" if right else " (WRONG)"),
             f"{predictions['verdict']} ({100 * predictions['agreement']:.2f}%)",
             "pass" if numerics["passed"] else "FAIL",
             "—" if first is None else f"{first}{' (deep pack)' if numerics['departs_only_deep_in_a_pack'] else ''}",
             "n/a" if ratio is None else f"{ratio:.3g}", closer, f"{summary['cosine']['min']:.6f}",
             summary["seed_rule"]["verdict"]]
    return "| " + " | ".join(cells) + " |", right


def default_plan(model):
    return plan_yardstick("auto", DEFAULT_REFERENCE_SAMPLE, model.dtype, model.device)


def ids_for(sequences: Sequence[str]) -> list[str]:
    return [f"seq{i + 1}" for i in range(len(sequences))]


def baseline_run(model, alphabet, sequences: Sequence[str]):
    """A whole comparison with the tool's defaults (the built-in v2.0): v1.0 and the numerics sample."""
    return run_both_paths(model, alphabet, ids_for(sequences), sequences, yardstick=default_plan(model))


def shared_baseline(model, alphabet, sequences: Sequence[str]):
    """v1.0 and the numerics sample with the tool's defaults, for compare() to swap each v2.0 into."""
    return v1_baseline(model, alphabet, ids_for(sequences), sequences, default_plan(model))


def compare(model, alphabet, sequences: Sequence[str], path, run=None) -> dict:
    """summary.json's document of the comparison with ``path`` as v2.0 and the defaults; ``run``: a
    shared_baseline over ``sequences`` whose v1.0 and reference are reused."""
    run = run or shared_baseline(model, alphabet, sequences)
    return analyse(with_v2(run, model, alphabet, sequences, path), model.num_layers).summary.to_json()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-8M")
    parser.add_argument("--dtype", default=None, help="default: fp16 on a GPU, fp32 on a CPU")
    parser.add_argument("--workload", choices=["patterns", "real", "all", "realistic"], default="all",
                        help="a built-in example set, or --n random sequences of realistic lengths")
    parser.add_argument("--n", type=int, default=300, help="sequences in a realistic set")
    parser.add_argument("--false-alarms", type=int, default=0, metavar="N",
                        help="instead: the built-in v2.0 on N random realistic sets (seeds 1 … N)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write every row's summary.json document, by row name, to PATH")
    args = parser.parse_args(argv)
    device = default_device()
    dtype = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    start = time.perf_counter()
    model, alphabet = load_esm2_model(args.model, dtype=dtype, device=device)
    print(f"{args.model} {dtype} on {device_label(device)}; "
          f"loaded in {time.perf_counter() - start:.1f} s", flush=True)
    wrong = 0
    if args.false_alarms:
        print("| set (seed) | verdict | predictions | numerics | largest error ratio | smallest sign-test p |")
        print("| --- | --- | --- | --- | --- | --- |")
        for seed in range(1, args.false_alarms + 1):
            sequences = realistic_sequences(args.n, seed)
            summary = analyse(baseline_run(model, alphabet, sequences), model.num_layers).summary.to_json()
            layers = summary["numerics"]["layers"]
            ratio = max(entry["ratio"] or 0.0 for entry in layers)
            p_min = min((entry["sign_p"] for entry in layers if entry["sign_p"] is not None), default=None)
            wrong += summary["verdict"] != "ACCEPT"
            print(f"| {seed} | {summary['verdict']} | {summary['predictions']['verdict']} "
                  f"({100 * summary['predictions']['agreement']:.2f}%) | "
                  f"{'pass' if summary['numerics']['passed'] else 'FAIL'} | {ratio:.3f} | "
                  f"{'n/a' if p_min is None else f'{p_min:.2g}'} |", flush=True)
        print(f"\nflagged {wrong} of {args.false_alarms} faithful runs ({time.perf_counter() - start:.0f} s)")
        return 1 if wrong else 0
    sequences = (realistic_sequences(args.n, 0) if args.workload == "realistic"
                 else [r.sequence for r in example_sequences(args.workload)])
    print(f"{len(sequences)} sequences ({args.workload})\n\n{HEADER}")
    print("|" + " --- |" * (HEADER.count("|") - 1))
    cases = [(name, "ACCEPT", path) for name, path in faithful_paths(model).items()]
    cases += [(name, "not ACCEPT", make_plugin_path(spec, model)) for name, spec in CATALOGUE.items()]
    shared = shared_baseline(model, alphabet, sequences)
    summaries = {}
    for name, expected, path in cases:
        summaries[name] = compare(model, alphabet, sequences, path, shared)
        line, right = row(name, expected, summaries[name])
        wrong += not right
        print(line, flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(summaries, indent=1))
    print(f"\n{wrong} wrong of {len(cases)} ({time.perf_counter() - start:.0f} s)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
