"""Shared fixtures: small demo models on the CPU, and the GPU skip rule."""

from __future__ import annotations

import pytest
import torch

from core.numerics.loading import load_esm2_model


# glibc's malloc hands large blocks back to the kernel as soon as they are freed and maps the next ones
# afresh, so every activation of a CPU forward costs page faults: 79 of the suite's 516 CPU-seconds went to
# the kernel. Freed memory kept for reuse instead: 46 CPU-seconds, 261 s of tests instead of 271.
# Test processes are short-lived, so the memory they keep does not matter; the product leaves glibc as is.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": 1 << 30, "MALLOC_TRIM_THRESHOLD_": 2**31 - 1}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory() -> None:
    """glibc's thresholds for this process (mallopt) and, through the environment, for every process it
    starts: the test workers, the CLI, Streamlit and torchrun. Does nothing without glibc."""
    import ctypes
    import os

    for name, value in KEEP_FREED_MEMORY.items():
        os.environ.setdefault(name, str(value))
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(M_MMAP_THRESHOLD, KEEP_FREED_MEMORY["MALLOC_MMAP_THRESHOLD_"])
    mallopt(M_TRIM_THRESHOLD, KEEP_FREED_MEMORY["MALLOC_TRIM_THRESHOLD_"])


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores: torch's own threads on top of the
    workers' would oversubscribe a small machine: OpenMP threads that outnumber the cores run 3–6×
    slower, and the tests' matrices are too small to gain from several threads anyway."""
    import os

    keep_freed_memory()
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = max(1, cores // int(workers))
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)  # for the processes the tests start


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TEST_MODEL = "demo-tiny"
"""The suite's model wherever a test is about the tool, not about a real ESM-2 size: random weights in
ESM-2's layout and head width (16), 3 layers of 64 instead of demo-8M's 6 of 320, so a CPU comparison
costs a fiftieth. In float32 every catalogued bug is caught, and every faithful path accepted, on it as
on demo-8M (scripts/broken_paths.py runs the catalogue on demo-8M; the device on demo-650M and demo-3B).
Tests whose point is a real size, or a real size's rounding, keep demo-8M (demo_fp32, demo_fp64)."""


@pytest.fixture(scope="session")
def tiny_fp64():
    """demo-tiny (3 layers, 64 wide) in float64 on the CPU: (model, alphabet)."""
    return load_esm2_model(TEST_MODEL, dtype="fp64", device="cpu")


@pytest.fixture(scope="session")
def tiny_fp32():
    """demo-tiny in float32 on the CPU: (model, alphabet)."""
    return load_esm2_model(TEST_MODEL, dtype="fp32", device="cpu")


@pytest.fixture
def tiny_page_model(monkeypatch):
    """The page loads demo-tiny by default (and offers it), as a CPU server loads demo-8M: for tests of
    the page's behaviour, not of a model's numbers."""
    import dashboard.server
    import dashboard.settings

    monkeypatch.setattr(dashboard.settings, "default_model_spec", lambda device: TEST_MODEL)
    monkeypatch.setattr(dashboard.server, "default_model_spec", lambda device: TEST_MODEL)


@pytest.fixture(scope="session")
def demo_fp64():
    """demo-8M (6 layers, 320 wide) in float64 on the CPU: (model, alphabet)."""
    return load_esm2_model("demo-8M", dtype="fp64", device="cpu")


@pytest.fixture(scope="session")
def demo_fp32():
    """demo-8M in float32 on the CPU: (model, alphabet)."""
    return load_esm2_model("demo-8M", dtype="fp32", device="cpu")


def perturbed(model):
    """A copy whose layer norms are not the demo's ones and zeros, so a swapped weight mapping shows."""
    import copy

    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.esm2.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


@pytest.fixture(scope="session")
def perturbed_fp32(demo_fp32):
    """demo-8M float32 with perturbed layer norms (adapter tests): (model, alphabet)."""
    return perturbed(demo_fp32[0]), demo_fp32[1]


@pytest.fixture(scope="session")
def perturbed_fp64(demo_fp64):
    """demo-8M float64 with perturbed layer norms (adapter tests): (model, alphabet)."""
    return perturbed(demo_fp64[0]), demo_fp64[1]


@pytest.fixture
def short_examples(monkeypatch):
    """The "patterns" example set cut to at most 100 residues a sequence (18 sequences still): for tests
    of the page's behaviour, not of its numbers, a run costs a fifth. The set's own numbers are held
    at full length by the golden files (tests/test_golden.py) and the CLI tests."""
    import core.input.examples as examples

    monkeypatch.setattr(examples, "_PATTERN_MAX_LENGTH", 100)
    examples._pattern_records.cache_clear()
    yield
    examples._pattern_records.cache_clear()


@pytest.fixture(autouse=True, scope="session")
def runs_in_a_temporary_directory(tmp_path_factory):
    """Dashboard runs saved by any test go to a temporary runs directory, not ./runs."""
    import os

    os.environ.setdefault("ESM2_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    yield


@pytest.fixture(autouse=True, scope="session")
def streamlit_components_scanned_once():
    """Each new AppTest scans every installed distribution for Streamlit components (~0.6 s on this
    machine, a tenth of a page test); the installed set cannot change during a test session, so the
    scan runs once and its result is reused."""
    import functools

    try:
        from streamlit.components.v2 import manifest_scanner
    except ImportError:  # a GPU host runs tests/integration without Streamlit installed
        yield
        return
    scan = manifest_scanner.scan_component_manifests
    manifest_scanner.scan_component_manifests = functools.cache(scan)
    yield
    manifest_scanner.scan_component_manifests = scan


@pytest.fixture
def light_numerics(monkeypatch):
    """A numerics sample of at most 4 sequences (no probe top-up beyond that) and a 256-token deep pack,
    for tests of what the CLI and the page do with a run, not of the numerics gate's power: a run costs
    a third. The full sample stays under test where the gate decides: tests/test_numerics_gate.py,
    test_broken_paths.py, test_golden.py, test_attribution.py, and the browser and torchrun tests (their
    own processes)."""
    import core.embed.yardstick as yardstick
    import core.pipeline as pipeline

    monkeypatch.setattr(yardstick, "MIN_NUMERICS_SAMPLE", 4)
    monkeypatch.setattr(yardstick, "DEEP_PACK_OFFSET", 256)
    full_plan = pipeline.plan_yardstick

    def light_plan(reference, sample, model_dtype, device):
        return full_plan(reference, 4 if sample is None else min(sample, 4), model_dtype, device)

    monkeypatch.setattr(pipeline, "plan_yardstick", light_plan)
