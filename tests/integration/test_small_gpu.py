"""The 3B comparison on a 24 GB GPU, simulated by capping this process's share of a larger one."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from core.input.examples import realistic_sequences
from core.embed.run import run_both_paths
from core.embed.yardstick import plan_yardstick
from core.analysis.analyse import analyse
from core.input.records import MAX_RESIDUES

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
log = logging.getLogger("divergence")
GIB = 2**30
SMALL_GPU_GIB = 24


@pytest.fixture
def gpu_capped_at_24_gib(esm2_3b_fp16):
    model, _ = esm2_3b_fp16
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(model.device).total_memory
    torch.cuda.set_per_process_memory_fraction(SMALL_GPU_GIB * GIB / total, model.device)
    torch.cuda.reset_peak_memory_stats(model.device)
    yield
    torch.cuda.set_per_process_memory_fraction(1.0, model.device)
    torch.cuda.empty_cache()


def long_sequences() -> list[str]:
    """16 sequences at the 1022-residue limit and 48 of realistic lengths."""
    at_limit = [seq.ljust(MAX_RESIDUES, "A")[:MAX_RESIDUES] for seq in realistic_sequences(16, seed=7)]
    return at_limit + realistic_sequences(48, seed=3)


@pytest.mark.parametrize("max_tokens", [None, 131_072], ids=["default-budget", "budget-too-large-for-24GiB"])
def test_3b_comparison_completes_in_24_gib(esm2_3b_fp16, gpu_capped_at_24_gib, max_tokens):
    """Every layer pooled, sequences up to 1022 residues, the default numerics sample (an fp32 reference
    copy of the 3B weights); a budget too large for the memory is split after out-of-memory errors
    instead of failing the run."""
    model, alphabet = esm2_3b_fp16
    sequences = long_sequences()
    plan = plan_yardstick("auto", 64, model.dtype, model.device)
    run = run_both_paths(model, alphabet, [f"s{i}" for i in range(len(sequences))], sequences, max_tokens=max_tokens,
                         yardstick=plan)
    summary = analyse(run, model.num_layers).summary.to_json()
    peak = torch.cuda.max_memory_allocated(model.device) / GIB
    log.warning("24 GiB cap, max_tokens %s: peak %.1f GiB, OOM splits v1 %d / v2 %d, cosine min %.8f, verdict %s",
                max_tokens, peak, run.v1.oom_splits, run.v2.oom_splits, summary["cosine"]["min"], summary["verdict"])
    assert peak <= SMALL_GPU_GIB
    assert summary["n_sequences"] == len(sequences) and max(map(len, sequences)) == MAX_RESIDUES
    assert np.isfinite(run.v1.layers[model.num_layers]).all() and np.isfinite(run.v2.layers[model.num_layers]).all()
    assert summary["cosine"]["min"] > 0.99
    assert summary["numerics"]["dtype"] == "fp32" and summary["numerics"]["passed"], summary["headline"]["numerics"]
    if max_tokens is not None:
        assert run.v1.oom_splits + run.v2.oom_splits > 0, "a 131k-token budget should not fit in 24 GiB with every layer kept"
