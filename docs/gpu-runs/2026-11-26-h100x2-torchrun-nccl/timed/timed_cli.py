"""Run core.cli with each stage's wall time printed to stderr, per rank (profiling torchrun's wall clock).
Run from the repo root: python3 -m torch.distributed.run --nproc-per-node 2 timed_cli.py compare FASTA --model demo-3B --out DIR"""
import functools, os, sys, time
START = time.time()
RANK = os.environ.get("RANK", "-")

def log(what, seconds=None):
    extra = "" if seconds is None else f" took {seconds:.1f} s"
    print(f"[rank {RANK} t={time.time() - START:6.1f}s] {what}{extra}", file=sys.stderr, flush=True)

log("python started (imports next)")
import core.pipeline as P, core.embed.distributed as D, core.cli as C, core.analysis.analyse as A

def timed(module, name):
    original = getattr(module, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        t = time.time(); log(f"{name} start")
        try:
            return original(*args, **kwargs)
        finally:
            log(f"{name} end", time.time() - t)
    setattr(module, name, wrapper)

for module, name in [(P, "load_model"), (P, "embed_and_check"), (P, "sample"), (P, "finish_cache"), (P, "lookup"),
                     (D, "gather_layers"), (D, "assemble_runs"), (D, "embed_and_check"), (D, "init"), (C, "_report"),
                     (C, "_read_checked"), (A, "analyse")]:
    timed(module, name)
# the CLI and the executor call these through their own modules' names
C.run_comparison = P.run_comparison
if hasattr(C, "analyse"): C.analyse = A.analyse
log("imports done")
code = C.main(sys.argv[1:])
log(f"exit {code}")
sys.exit(code)
