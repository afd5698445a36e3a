"""The benchmark's workload, FLOP count and report (its timings are measured on a GPU, not here)."""

from __future__ import annotations

import numpy as np

from core.bench import main
from core.bench_measure import non_embedding_parameters, pass_flops
from core.input.examples import realistic_sequences
from core.input.records import MAX_RESIDUES


def test_realistic_workload_is_seeded_and_protein_like():
    sequences = realistic_sequences(2000, seed=0)
    lengths = np.array([len(s) for s in sequences])
    assert sequences == realistic_sequences(2000, seed=0) and sequences != realistic_sequences(2000, seed=1)
    assert 270 <= np.median(lengths) <= 330 and lengths.max() == MAX_RESIDUES and lengths.min() >= 20
    letters = "".join(sequences[:200])
    assert set(letters) <= set("ACDEFGHIKLMNPQRSTVWY") and 0.08 < letters.count("L") / len(letters) < 0.115


def test_flops_are_two_per_parameter_per_token_plus_attention(demo_fp32):
    model, _ = demo_fp32
    n = non_embedding_parameters(model)
    # 6 layers of width 320: 4 projections (4·320² + 4·320), two MLP matrices (2·4·320² + 4·320 + 320),
    # two layer norms (4·320) per layer, plus the final layer norm (2·320).
    e = 320
    assert n == 6 * (12 * e * e + 13 * e) + 2 * e
    assert pass_flops(model, ["A" * 8]) == 2 * n * 10 + 6 * 4 * e * 10**2


def test_bench_prints_and_appends_a_table(tmp_path, capsys):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n")
    assert main(["--models", "demo-tiny", "--dtypes", "fp32", "--workloads", "realistic", "--n", "3",
                 "--device", "cpu", "--append", str(report)]) == 0
    text = report.read_text()
    assert text.startswith("# Benchmarks\n") and "Command: `python -m core.bench --models demo-tiny" in text
    rows = [line for line in text.splitlines() if line.startswith("| demo-tiny | fp32 | realistic |")]
    assert [row.split(" | ")[3] for row in rows] == ["v1.0 fair-esm", "v2.0 reference", "numerics sample (fp64 reference)",
                                                    "comparison (both + sample + metrics)"]
    assert "sample + heads + gate add" in rows[-1]
    assert "Load from a local checkpoint: demo-tiny fp32:" in text and "| tokens/s |" in capsys.readouterr().out


def test_workload_written_as_fasta_reads_back(tmp_path):
    from core.input.fasta import read_sequences

    path = tmp_path / "w.fasta"
    assert main(["--workloads", "realistic", "--n", "5", "--write-fasta", str(path)]) == 0
    parsed = read_sequences(path)
    assert [r.sequence for r in parsed.records] == realistic_sequences(5, 0) and not parsed.problems


def test_peers_table_judges_each_implementation_against_v1(tmp_path, monkeypatch):
    """--peers: one row per implementation with its verdict and rule ratio; one that cannot run says why."""
    import core.bench_peers as peers

    monkeypatch.setitem(peers.PEERS, "broken: EOS in the pool", "tests.plugins.broken_paths:make_eos_in_pool")
    monkeypatch.setattr(peers, "DEFAULT_REFERENCE_SAMPLE", 4)  # the table's plumbing, not the gate's power
    report = tmp_path / "BENCHMARKS.md"
    assert main(["--peers", "--models", "demo-tiny", "--dtypes", "fp32", "--n", "8", "--device", "cpu",
                 "--only", "built-in torch-flash,broken: EOS in the pool", "--append", str(report)]) == 0
    rows = {line.split(" | ")[2]: line.split(" | ") for line in report.read_text().splitlines()
            if line.startswith("| demo-tiny | fp32 |")}
    assert "not run: ValueError: backend torch-flash is not available here" in rows["built-in torch-flash"][-1]
    broken = rows["broken: EOS in the pool"]
    assert broken[8] != "ACCEPT" and float(broken[10].rstrip("×")) > 2, broken
    assert next(k for k in rows).startswith("v1.0 fair-esm")
