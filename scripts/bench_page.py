"""How the page holds up on a large stored run: seconds per widget change and the process's memory.

    python scripts/bench_page.py                    # 100,000 sequences, demo-8M shaped (7 layers × 320)
    python scripts/bench_page.py --n 20000 --sizes 50000

A synthetic run (dashboard.synthetic: both paths a truth plus float32-sized noise, 20 sequences far off)
is saved by a child process as the page saves a finished run, then opened with
streamlit.testing.v1.AppTest through ``?run=<id>``, as a browser would, and each widget is changed in
turn. AppTest runs the page in this process, so the resident memory is the server's. ``--sizes N`` also saves an N-sequence run with every layer kept as
computed and compact (dashboard.compact) and prints both embeddings.npz sizes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

from dashboard.compact import compact_run  # noqa: E402
from dashboard.runs import RunStore  # noqa: E402
from dashboard.server import RUNS_DIR_ENV  # noqa: E402
from dashboard.synthetic import store_synthetic_run, synthetic_input, synthetic_run  # noqa: E402

APP = str(REPO / "dashboard" / "app.py")


@dataclass(frozen=True)
class Step:
    """One measured page run: what was done, its seconds, resident and peak memory (MB) after it."""

    action: str
    seconds: float
    rss_mb: float
    peak_mb: float


def resident_mb() -> float:
    """This process's resident memory now, from /proc (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured(action: str, step: Callable[[], AppTest]) -> tuple[Step, AppTest]:
    """Run ``step`` (one page run) and measure it; raises when the page raised."""
    start = time.perf_counter()
    app = step()
    seconds = time.perf_counter() - start
    if app.exception:
        raise RuntimeError(f"{action}: the page raised {app.exception[0].message}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Step(action, seconds, resident_mb(), peak), app


def page_steps(run_id: str) -> list[Step]:
    """Open the run in a fresh session, change each widget, and change the seed and layer back."""
    app = AppTest.from_file(APP, default_timeout=900)
    app.query_params.update({"run": run_id})
    steps = []
    for action, change in (
        ("open the run (?run=, read from disk)", lambda: app.run()),
        ("min cosine threshold 0.99 → 0.999", lambda: app.number_input(key="min_cosine").set_value(0.999).run()),
        ("accept agreement 0.99 → 0.995", lambda: app.number_input(key="accept_agreement").set_value(0.995).run()),
        ("seed 0 → 1", lambda: app.number_input(key="seed").set_value(1).run()),
        ("layer 6 → 3", lambda: app.slider(key="layer").set_value(3).run()),
        ("layer 3 → 6 (seen before)", lambda: app.slider(key="layer").set_value(6).run()),
        ("seed 1 → 0 (seen before)", lambda: app.number_input(key="seed").set_value(0).run()),
        ("layer 6 → 0", lambda: app.slider(key="layer").set_value(0).run()),
        ("seed 0 → 123456789 at layer 0", lambda: app.number_input(key="seed").set_value(123456789).run()),
    ):
        step, app = measured(action, change)
        steps.append(step)
        print(f"  {step.action}: {step.seconds:.2f} s", flush=True)
    second = AppTest.from_file(APP, default_timeout=900)
    second.query_params.update({"run": run_id})
    step, _ = measured("open it in a second session (cached)", lambda: second.run())
    return steps + [step]


def npz_sizes(n: int, root: Path) -> tuple[int, int]:
    """(bytes of embeddings.npz with every layer as computed, bytes with all but the last layer compact)."""
    store, run = RunStore(root), synthetic_run(n, seed=1)
    sizes = []
    for stored in (run, compact_run(run, [max(run.layers)])):
        run_id = store.new_id()
        store.create(run_id, synthetic_input(run), {"model": "demo-8M"})
        store.save_embeddings(run_id, stored)
        sizes.append((store.run_dir(run_id) / "embeddings.npz").stat().st_size)
    return sizes[0], sizes[1]


def in_child(arguments: list[str], root: Path) -> str:
    """Run this script with ``arguments`` and --store-only ``root`` in a child process (so the arrays it
    synthesises do not weigh on this process's memory); returns the last line it printed."""
    child = subprocess.run([sys.executable, __file__, *arguments, "--store-only", str(root)], check=True,
                           capture_output=True, text=True)
    return child.stdout.strip().splitlines()[-1]


def report(n: int, stored_seconds: float, npz_bytes: int, steps: list[Step]) -> str:
    lines = [f"{n:,} sequences, demo-8M shaped (7 layers × 320), embeddings.npz {npz_bytes / 1e6:,.0f} MB; "
             f"synthesised and saved in {stored_seconds:.0f} s; load average {os.getloadavg()[0]:.1f} "
             f"on {os.cpu_count()} CPUs", "",
             "| page run | seconds | RSS MB | peak RSS MB |", "| --- | --- | --- | --- |"]
    lines += [f"| {s.action} | {s.seconds:.2f} | {s.rss_mb:,.0f} | {s.peak_mb:,.0f} |" for s in steps]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="sequences in the stored run (default 100,000)")
    parser.add_argument("--sizes", type=int, default=0, help="also compare embeddings.npz sizes at this many sequences")
    parser.add_argument("--store-only", metavar="ROOT", help=argparse.SUPPRESS)  # the child: save, print the id
    args = parser.parse_args(argv)
    if args.store_only:
        root = Path(args.store_only)
        print(" ".join(map(str, npz_sizes(args.sizes, root))) if args.sizes else store_synthetic_run(RunStore(root), args.n))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        if args.sizes:
            full, compact = map(int, in_child(["--sizes", str(args.sizes)], Path(folder) / "sizes").split())
            print(f"embeddings.npz at {args.sizes:,} sequences: every layer as computed {full / 1e6:,.0f} MB, "
                  f"compact {compact / 1e6:,.0f} MB ({compact / full:.0%})\n")
        root = Path(folder) / "runs"
        os.environ[RUNS_DIR_ENV] = str(root)
        start = time.perf_counter()
        run_id = in_child(["--n", str(args.n)], root)
        stored = time.perf_counter() - start
        npz_bytes = (root / run_id / "embeddings.npz").stat().st_size
        print(f"stored run {run_id}, RSS {resident_mb():,.0f} MB; the page:", flush=True)
        steps = page_steps(run_id)
        print("\n" + report(args.n, stored, npz_bytes, steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
