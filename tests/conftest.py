"""Shared fixtures: small demo models on the CPU, and the GPU skip rule."""

from __future__ import annotations

import pytest
import torch

from core.numerics.loading import load_esm2_model


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_fp64():
    """demo-8M (6 layers, 320 wide) in float64 on the CPU: (model, alphabet)."""
    return load_esm2_model("demo-8M", dtype="fp64", device="cpu")


@pytest.fixture(scope="session")
def demo_fp32():
    """demo-8M in float32 on the CPU: (model, alphabet)."""
    return load_esm2_model("demo-8M", dtype="fp32", device="cpu")


@pytest.fixture(autouse=True, scope="session")
def runs_in_a_temporary_directory(tmp_path_factory):
    """Dashboard runs saved by any test go to a temporary runs directory, not ./runs."""
    import os

    os.environ.setdefault("ESM2_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    yield
