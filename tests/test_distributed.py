"""torchrun: token-balanced shards, reassembly in input order, and a real 2-process CPU (gloo) run
that must report what one process reports."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.analysis.checks import CheckResult
from core.cli import main
from core.embed.run import run_both_paths
from core.embed.distributed import (
    assemble_runs, DistEnv, DistributedSetupError, environment, merge_checks, shard_indices,
)
from core.input.examples import example_sequences

REPO_ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ["--example", "patterns", "--model", "demo-tiny", "--device", "cpu", "--dtype", "fp32"]


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_shards_cover_every_index_once_and_are_balanced(world_size):
    lengths = np.random.default_rng(world_size).integers(1, 1023, size=101).tolist()
    shards = shard_indices(lengths, world_size)
    assert len(shards) == world_size
    flat = sorted(i for shard in shards for i in shard)
    assert flat == list(range(len(lengths)))
    assert all(shard == sorted(shard) for shard in shards)  # input order within a shard
    loads = [sum(lengths[i] + 2 for i in shard) for shard in shards]
    # Greedy longest-first onto the least-loaded rank: loads differ by at most one sequence.
    assert max(loads) - min(loads) <= max(lengths) + 2


def test_sharding_puts_the_longest_first_on_rank_0_and_spreads_big_ones():
    lengths = [10, 500, 20, 480, 30, 5]
    shards = shard_indices(lengths, 2)
    assert 1 in shards[0] and 3 in shards[1]  # the two long ones on different ranks
    assert shard_indices(lengths, 2) == shards  # deterministic


def test_more_ranks_than_sequences_leaves_some_empty():
    shards = shard_indices([7, 3], 4)
    assert shards[0] == [0] and shards[1] == [1] and shards[2:] == [[], []]
    assert shard_indices([], 3) == [[], [], []]
    with pytest.raises(ValueError):
        shard_indices([1], 0)


def test_environment_is_detected_from_world_size():
    assert environment({}) is None
    assert environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert environment({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == DistEnv(2, 0, 4)
    with pytest.raises(DistributedSetupError, match="RANK"):
        environment({"WORLD_SIZE": "2"})


# ---------------------------------------------------------------- reassembly


def test_assembled_shards_equal_one_run_in_input_order(tiny_fp32):
    model, alphabet = tiny_fp32
    records = example_sequences("patterns")[:5]
    ids, seqs = [r.id for r in records], [r.sequence for r in records]
    shards = shard_indices([len(s) for s in seqs], 3)
    parts = [run_both_paths(model, alphabet, [ids[i] for i in shard], [seqs[i] for i in shard], layers=[2, 3])
             for shard in shards]
    merged = assemble_runs(shards, parts, ids)
    whole = run_both_paths(model, alphabet, ids, seqs, layers=[2, 3])
    assert merged.ids == ids and list(merged.lengths) == [len(s) for s in seqs]
    assert merged.v1.seconds == max(p.v1.seconds for p in parts)
    assert merged.yardstick is None  # rank 0 measures the numerics sample on the whole set afterwards
    for name in ("v1", "v2"):
        for layer in (2, 3):
            np.testing.assert_allclose(getattr(merged, name).layers[layer], getattr(whole, name).layers[layer], atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="cover"):
        assemble_runs(shards, parts[:2] + [None], ids)


def _gather_on_rank(rank: int, world_size: int, store: str, counts: list[int], out: str) -> None:
    """One gloo rank of test_pooled_arrays_travel_as_tensors: rank r's rows hold r·1000 + row·10 + layer."""
    import torch.distributed as dist

    from core.embed.distributed import Communicator, gather_layers, with_layers, without_layers
    from core.embed.passes import PathEmbeddings
    from core.embed.run import EmbeddingRun

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    comm = Communicator(DistEnv(rank, rank, world_size), None)
    part = None
    if counts[rank]:
        def path(offset: float) -> PathEmbeddings:
            return PathEmbeddings({layer: np.full((counts[rank], 4), rank * 1000.0 + offset + layer)
                                   + 10.0 * np.arange(counts[rank])[:, None] for layer in (2, 5)}, "b", 1.0)
        part = EmbeddingRun([f"r{rank}"] * counts[rank], np.ones(counts[rank]), path(0.0), path(0.5),
                            "m", "demo", "fp64", "cpu", [2, 5])
    layers = gather_layers(comm, [2, 5], part, counts)
    if rank == 0:
        stripped = without_layers(part)
        assert stripped.v1.layers == {} and with_layers(stripped, layers[0]).v1.layers[2].shape == (counts[0], 4)
        lines = []
        for r, entry in enumerate(layers):
            if entry is None:
                lines.append(f"{r}: none")
                continue
            v1, v2 = entry
            expected = r * 1000.0 + 10.0 * np.arange(counts[r])[:, None]
            ok = all(np.array_equal(v1[l], np.broadcast_to(expected + l, (counts[r], 4))) and
                     np.array_equal(v2[l], np.broadcast_to(expected + 0.5 + l, (counts[r], 4))) and
                     v1[l].dtype == np.float64 for l in (2, 5))
            lines.append(f"{r}: {'exact' if ok else 'WRONG'} {v1[2].shape}")
        Path(out).write_text("\n".join(lines))
    dist.barrier()
    dist.destroy_process_group()


def test_pooled_arrays_travel_as_tensors_and_an_empty_shard_arrives_as_none(tmp_path):
    """gather_layers over a real 3-rank gloo group: every row exact, in order, float64 kept; a rank with
    no sequences sends nothing and rank 0 gets None for it (the pickled gather carries no arrays)."""
    import torch.multiprocessing as mp

    counts, out = [3, 1, 0], tmp_path / "gathered.txt"
    mp.spawn(_gather_on_rank, args=(3, str(tmp_path / "store"), counts, str(out)), nprocs=3, join=True)
    assert out.read_text().splitlines() == ["0: exact (3, 4)", "1: exact (1, 4)", "2: none"]


def test_each_torchrun_rank_gets_its_share_of_the_cores_unless_told():
    from core.threads import THREADS_ENV, is_torchrun_worker, share_the_cores

    torchrun_default = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    environ = dict(torchrun_default)
    share_the_cores(environ, cpus=32)
    assert is_torchrun_worker(environ) and environ["OMP_NUM_THREADS"] == "16"
    chosen = {**torchrun_default, "OMP_NUM_THREADS": "4"}  # set by the user: kept
    share_the_cores(chosen, cpus=32)
    assert chosen["OMP_NUM_THREADS"] == "4"
    told = {**torchrun_default, THREADS_ENV: "1"}
    share_the_cores(told, cpus=32)
    assert told["OMP_NUM_THREADS"] == "1"
    alone = {"WORLD_SIZE": "1"}
    share_the_cores(alone, cpus=32)
    assert not is_torchrun_worker(alone) and "OMP_NUM_THREADS" not in alone


def test_checks_from_ranks_merge_to_the_worst():
    ok = CheckResult("determinism", True, 0.0, 1.0, 3, "d")
    bad = CheckResult("determinism", False, 2e-3, 0.999, 4, "d")
    (merged,) = merge_checks([[ok], [bad], []])
    assert (merged.passed, merged.max_abs_diff, merged.min_cosine, merged.n_sequences) == (False, 2e-3, 0.999, 7)


# ---------------------------------------------------------------- a real torchrun, 2 CPU processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*argv: str, nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "core", "compare", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> tuple[int, str, Path]:
    out_dir = tmp_path_factory.mktemp("single") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["compare", *PATTERNS, "--out", str(out_dir)])
    return code, stdout.getvalue(), out_dir


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``torchrun --nproc-per-node 2 -m core compare --example patterns ... --cache C --out DIR`` once."""
    root = tmp_path_factory.mktemp("two_ranks")
    result = torchrun(*PATTERNS, "--out", str(root / "out"), "--cache", str(root / "cache"))
    return result, root / "out", root / "cache"


def test_two_ranks_report_what_one_process_reports(two_ranks, single_process):
    result, out_dir, cache_dir = two_ranks
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    single_code, single_out, single_dir = single_process
    assert single_code == 0
    # rank 0 alone prints the report: one table, one verdict
    assert result.stdout.count("VERDICT:") == 1
    assert "processes" in result.stdout and "2 (torchrun)" in result.stdout

    many, one = (json.loads((d / "summary.json").read_text()) for d in (out_dir, single_dir))
    assert (many["world_size"], one["world_size"]) == (2, 1)
    assert many["cache"] == {"dir": str(cache_dir), "hits": 0, "computed": 18}
    for key in ("verdict", "n_sequences", "label_agreement", "n_label_flips", "model", "weights", "dtype", "layer",
                "backend_v1", "backend_v2", "impl_v1", "impl_v2", "device", "refused", "cosine_failures"):
        assert many[key] == one[key], key
    for key in ("min", "mean", "max"):  # 1 − cos is quadratic in a difference: rounding moves it ~1e-14
        assert many["cosine"][key] == pytest.approx(one["cosine"][key], rel=0, abs=1e-10)
    assert [layer["layer"] for layer in many["layers"]] == [layer["layer"] for layer in one["layers"]]

    table_many, table_one = (pd.read_csv(d / "sequences.csv", keep_default_na=False) for d in (out_dir, single_dir))
    assert list(table_many["id"]) == list(table_one["id"]) == [r.id for r in example_sequences("patterns")]
    assert list(table_many["length"]) == list(table_one["length"])
    assert list(table_many["label_v1"]) == list(table_one["label_v1"])
    assert list(table_many["label_v2"]) == list(table_one["label_v2"])
    np.testing.assert_allclose(table_many["cosine"], table_one["cosine"], atol=1e-10, rtol=0)
    for column in ("mean_abs_diff", "max_abs_diff", "confidence_v1", "confidence_v2"):
        np.testing.assert_allclose(table_many[column], table_one[column], atol=1e-6, rtol=0, err_msg=column)

    # the numerics gate (rank 0 measures the sample on the whole set) and the per-layer profile, not only labels
    gate_many, gate_one = many["numerics"], one["numerics"]
    for key in ("kind", "dtype", "n_sample", "n_probes", "passed", "first_departing_layer"):
        assert gate_many[key] == gate_one[key], key
    assert [t["layer"] for t in gate_many["layers"]] == [t["layer"] for t in gate_one["layers"]]
    # The errors are float32 rounding (~3e-7): ranks pad other batches, MKL blocks other matrix shapes,
    # so the last bits differ on some CPUs (seen: 2.87e-7 against 2.57e-7 on an AMD EPYC). A different
    # computation (a wrong sample, layer or dtype) is off by far more than half.
    for a, b in zip(gate_many["layers"], gate_one["layers"]):
        assert a["baseline_error"] == pytest.approx(b["baseline_error"], rel=0.5), a["layer"]
        assert a["candidate_error"] == pytest.approx(b["candidate_error"], rel=0.5), a["layer"]
    for a, b in zip(many["layers"], one["layers"]):
        assert a["cosine_min"] == pytest.approx(b["cosine_min"], rel=0, abs=1e-10), a["layer"]
        for key in ("mean_abs_diff", "max_abs_diff", "v1_mean_abs_error", "v2_mean_abs_error"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), (a["layer"], key)  # as the table
        assert a["label_agreement"] == b["label_agreement"], a["layer"]


def test_two_ranks_read_the_cache_rank_0_filled_and_run_checks(tmp_path, two_ranks):
    first, first_dir, cache_dir = two_ranks
    assert first.returncode == 0, first.stderr
    second = torchrun(*PATTERNS, "--cache", str(cache_dir), "--checks", "--out", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first_dir, tmp_path / "b"))
    assert b["cache"] == {"dir": str(cache_dir), "hits": 18, "computed": 0}
    assert b["seconds"]["v1"] == 0.0
    assert (a["verdict"], a["cosine"]) == (b["verdict"], b["cosine"])
    checks = {check["name"]: check for check in b["checks_v2"]}
    assert checks["determinism"]["passed"] and checks["determinism"]["n_sequences"] == 18
    assert checks["packing invariance"]["passed"]


def test_a_setup_error_stops_every_rank_with_its_code(tmp_path):
    result = torchrun(*PATTERNS, "--layer", "9", "--out", str(tmp_path / "out"), timeout=90)
    # torchrun itself exits 1 when a worker fails; the workers' own codes are in its report.
    assert result.returncode != 0
    assert result.stderr.count("error: layer 9 is out of range") == 1  # printed once, by rank 0
    assert "exitcode  : 3" in result.stderr
    assert 'File "' + str(REPO_ROOT / "core") not in result.stderr  # no traceback from the tool itself
    assert not (tmp_path / "out" / "summary.json").exists()
