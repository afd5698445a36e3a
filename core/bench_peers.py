"""Parity and speed of every popular fast ESM-2 over the same weights: ``python -m core.bench --peers``.

For each model × dtype, one realistic workload is embedded once by v1.0 (fair-esm) and once by each
implementation below; every implementation is then judged against v1.0 exactly as the tool judges a
v2.0 (the default headline: 100 balanced heads and the numerics gate with a float64 reference), so
each row carries speed (tokens/s, TFLOP/s, % of the measured matmul ceiling, peak memory) and parity
(verdict, cosine min against v1.0, FlashAttention-rule ratio = its max error against the reference ÷
v1.0's, at the worst layer).

FAESM 0.1.1 imports transformers 4.x internals that transformers 5 removed, while the Hugging Face
adapter wants transformers 5: ``--faesm-site DIR`` names a directory holding faesm and a transformers
4.x, and the FAESM rows are then measured in a child process with DIR first on its path (same
weights: demo weights are seeded; same sequences: the same workload seed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from core.analysis.analyse import analyse
from core.bench_measure import pass_flops, peak_gib, reset_peak
from core.embed.passes import embed_v2
from core.embed.paths import ForwardPath, packed_path
from core.embed.plugins import make_plugin_path
from core.embed.run import EmbeddingRun, run_both_paths, v1_baseline, with_v2
from core.embed.yardstick import DEFAULT_REFERENCE_SAMPLE, plan_yardstick
from core.numerics.attention import available_backends
from core.numerics.esm2_packed import ESM2WithFlashAttention
from core.numerics.loading import load_esm2_model

PEERS = {  # key -> built-in backend ("backend:NAME") or plug-in ("module:factory")
    "built-in torch-flash": "backend:torch-flash",
    "built-in flash-attn": "backend:flash-attn",
    "HF EsmModel eager": "core.adapters.hf_esm:make_eager",
    "HF EsmModel sdpa": "core.adapters.hf_esm:make_sdpa",
    "HF EsmModel flash_attention_2": "core.adapters.hf_esm:make_flash_attention_2",
    "FAESM flash-attn": "core.adapters.faesm:make_flash",
    "FAESM sdpa": "core.adapters.faesm:make_sdpa",
}
FAESM_PEERS = tuple(key for key, spec in PEERS.items() if spec.startswith("core.adapters.faesm:"))
PEER_HEADER = ["model", "dtype", "implementation", "s", "tokens/s", "TFLOP/s", "of ceiling", "peak GiB", "verdict",
               "cosine min vs v1.0 (last layer)", "rule ratio (worst layer)", "note"]


@dataclass
class PeerRow:
    """One implementation on one model and dtype: its speed and its parity with v1.0."""

    model: str
    dtype: str
    implementation: str
    seconds: float | None = None
    tokens: int = 0
    flops: float = 0.0
    ceiling: float = 1.0
    peak_gib: float | None = None
    verdict: str = ""
    cosine_min: float | None = None
    rule_ratio: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        if self.seconds is None:
            return [self.model, self.dtype, self.implementation] + [""] * 8 + [self.note]
        achieved = self.flops / self.seconds
        return [
            self.model, self.dtype, self.implementation, f"{self.seconds:.2f}", f"{self.tokens / self.seconds:,.0f}",
            f"{achieved / 1e12:.3g}", f"{100 * achieved / self.ceiling:.1f}%",
            "" if self.peak_gib is None else f"{self.peak_gib:.1f}", self.verdict,
            "" if self.cosine_min is None else f"{self.cosine_min:.8f}",
            "" if self.rule_ratio is None else f"{self.rule_ratio:.2f}×", self.note,
        ]


def peer_table(rows: Sequence[PeerRow]) -> str:
    lines = ["| " + " | ".join(PEER_HEADER) + " |", "|" + "---|" * len(PEER_HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row.cells()) + " |" for row in rows])


def peer_path(key: str, model: ESM2WithFlashAttention) -> ForwardPath:
    """The v2.0 path of one peer (ValueError / PluginError when it cannot run here)."""
    spec = PEERS[key]
    if spec.startswith("backend:"):
        backend = spec.removeprefix("backend:")
        if backend not in available_backends(model.device, model.dtype):
            raise ValueError(f"backend {backend} is not available here")
        return packed_path(model, backend)
    return make_plugin_path(spec, model)


def bench_peers(spec: str, dtype: str, device: torch.device, sequences: Sequence[str], ceiling: float,
                keys: Sequence[str], max_tokens: int | None, reference: str = "fp64") -> list[PeerRow]:
    """Rows for ``keys`` on one model and dtype. v1.0 and the reference sample are computed once
    (neither depends on v2.0) and every peer's v2.0 is judged against them."""
    model, alphabet = load_esm2_model(spec, dtype=dtype, device=device)
    ids = [f"s{i}" for i in range(len(sequences))]
    tokens, flops = sum(len(s) + 2 for s in sequences), pass_flops(model, sequences)
    run_both_paths(model, alphabet, ids[:4], sequences[:4], max_tokens=max_tokens)  # warm-up
    reset_peak(device)
    plan = plan_yardstick(reference, DEFAULT_REFERENCE_SAMPLE, model.dtype, model.device)
    base = v1_baseline(model, alphabet, ids, sequences, plan, max_tokens)
    rows = [PeerRow(spec, dtype, f"v1.0 {base.v1.implementation}", base.v1.seconds, tokens, flops, ceiling,
                    peak_gib(device), note=f"the standard path every row is judged against; peak includes the {plan.dtype} "
                    f"reference copy (sample of {base.yardstick.size} sequences)")]
    for key in keys:
        row = PeerRow(spec, dtype, key, tokens=tokens, flops=flops, ceiling=ceiling)
        try:
            path = peer_path(key, model)
            embed_v2(model, alphabet, sequences[:4], base.layers, max_tokens=max_tokens, path=path)  # warm-up
            reset_peak(device)
            run = with_v2(base, model, alphabet, sequences, path, max_tokens)
            row.seconds, row.peak_gib = run.v2.seconds, peak_gib(device)
            _judge(row, run, model.num_layers)
        except Exception as error:  # a peer that cannot run here is a row that says why, not a stopped table
            row.note = f"not run: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _judge(row: PeerRow, run: EmbeddingRun, layer: int) -> None:
    """Fill the parity cells from the tool's own analysis of the last layer (the gate covers all)."""
    summary = analyse(run, layer).summary
    row.verdict = summary.headline.verdict
    row.cosine_min = float(summary.comparison.cosine.min())
    gate = summary.headline.numerics
    row.rule_ratio = gate.largest_ratio if gate is not None else None
    reason = "" if row.verdict == "ACCEPT" else f" — {summary.headline.recommendation()}"
    row.note = run.v2.implementation + reason


def faesm_rows_in_child(site: str, argv: Sequence[str]) -> list[PeerRow]:
    """Run the FAESM peers in a child process with ``site`` first on its path; its rows as PeerRows."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "core.bench", *argv, "--peers", "--only", ",".join(FAESM_PEERS),
               "--rows-json", "-", "--append", ""]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [PeerRow("", "", key, note=f"not run: child process failed: {tail[0][:200]}") for key in FAESM_PEERS]
    rows = [PeerRow(**fields) for fields in json.loads(done.stdout.strip().splitlines()[-1])]
    for row in rows:
        if row.implementation.startswith("v1.0"):
            row.note = "measured again in the FAESM child process (transformers 4.x)"
    return rows


def rows_json(rows: Sequence[PeerRow]) -> str:
    return json.dumps([dataclasses.asdict(row) for row in rows])
