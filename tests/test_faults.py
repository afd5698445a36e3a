"""Faults mid-run, injected: GPU out of memory, the flash-attn package failing to import.

Checkpoint faults (corrupt, truncated, mismatched, pickled code) are in test_model_loading.py,
a head of the wrong width in test_heads.py; CUDA unavailable and a full disk in test_cli.py.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch

from core.numerics import attention
from core.numerics.attention import available_backends, BackendUnavailable, resolve_backend
from core.embed.passes import embed_path, SequenceTooLarge
from core.embed.paths import packed_path, standard_path
from core.input.examples import example_sequences

SEQUENCES = [r.sequence for r in example_sequences("patterns")]
SHORTEST = SEQUENCES[:8]  # 10 … 171 residues: 740 tokens packed, 8 × 173 padded; over the 500 that "fit"


def out_of_memory_above(path, max_tokens: int, attempts: list[int]):
    """``path`` that raises CUDA's out-of-memory error on batches of more than ``max_tokens`` tokens
    (packed input_ids, or padded batch × width), recording every attempt's token count."""

    def run(*args):
        tokens = args[0].numel()
        attempts.append(tokens)
        if tokens > max_tokens:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return path.run(*args)

    return dataclasses.replace(path, run=run)


@pytest.mark.parametrize("make_path", [standard_path, packed_path], ids=["v1.0", "v2.0"])
def test_out_of_memory_splits_the_batch_and_retries(tiny_fp32, make_path):
    model, alphabet = tiny_fp32
    path = make_path(model)
    layers = [0, model.num_layers]
    whole = embed_path(model, alphabet, SHORTEST, layers, path, max_tokens=100_000)
    attempts: list[int] = []
    split = embed_path(model, alphabet, SHORTEST, layers, out_of_memory_above(path, 500, attempts), max_tokens=100_000)

    first_failure = next(i for i, tokens in enumerate(attempts) if tokens > 500)
    assert split.oom_splits > 0 and max(attempts[first_failure + 1:]) < attempts[first_failure]
    for layer in layers:  # every sequence is there, in input order; only batch composition changed
        np.testing.assert_allclose(split.layers[layer], whole.layers[layer], rtol=1e-5, atol=1e-5)
    assert whole.oom_splits == 0


def test_budget_stays_lowered_after_out_of_memory(tiny_fp32):
    """After one split, later batches start under the budget that fitted instead of failing again."""
    model, alphabet = tiny_fp32
    attempts: list[int] = []
    path = out_of_memory_above(packed_path(model), 600, attempts)
    run = embed_path(model, alphabet, SEQUENCES, [model.num_layers], path, max_tokens=1200)
    failed = [tokens for tokens in attempts if tokens > 600]
    assert len(attempts) > 6 and run.oom_splits == len(failed) == 1, attempts


def test_a_sequence_that_does_not_fit_alone_is_named(tiny_fp32):
    model, alphabet = tiny_fp32
    path = out_of_memory_above(standard_path(model), 0, [])
    with pytest.raises(SequenceTooLarge, match=r"sequence #\d+ \(\d+ residues\) does not fit in GPU memory even alone"):
        embed_path(model, alphabet, SEQUENCES[:3], [1], path, stage="v1.0")


def test_flash_attn_that_fails_to_import_is_named_and_auto_falls_back(monkeypatch):
    real_import = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "flash_attn":
            raise ImportError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(attention.importlib, "import_module", broken)
    cuda = torch.device("cuda")
    reason = attention.unavailable_reason("flash-attn", cuda, torch.float16)
    assert reason == "the flash-attn package cannot be imported (ImportError: libcudart.so.12: cannot open shared object file)"
    assert "flash-attn" not in available_backends(cuda, torch.float16)
    assert resolve_backend("auto", cuda, torch.float16) in ("torch-flash", "reference")
    with pytest.raises(BackendUnavailable, match="flash-attn package cannot be imported.*Available here: "):
        resolve_backend("flash-attn", cuda, torch.float16)
