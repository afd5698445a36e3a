"""The numerics gate: does v2.0 depart from v1.0 beyond rounding, and from which layer on?

Measured on the run's numerics sample (``core.embed.yardstick.Yardstick``: v1.0, v2.0 in a deep pack, and the
reference or v1.0's rounding floor, on sequences spanning the set's lengths and residues) at every pooled layer:

- with a wider reference: FlashAttention's acceptance rule on the max error (v2.0's error against the
  reference at most k times v1.0's) and a two-sided sign test on which path is closer to the reference,
  sequence by sequence. A faithful path is closer about half the time; a systematic difference — a bug,
  or arithmetic that is not v1.0's (another GELU, rotary tables or softmax in another precision) — is
  on one side for nearly every sequence even when its size is within rounding. The layers' tests share
  one family-wise level, ALPHA (Bonferroni).
- with the rounding floor (no reference): v2.0's max distance from v1.0 in multiples of v1.0's distance
  from itself under another batch composition; only departures beyond FLOOR_MULTIPLE are seen.

The same test runs once more at the first attention layer on v2.0 with every sequence deep in one pack:
a packed path whose result depends on where a sequence sits (position ids that run on through the pack,
attention across boundaries) departs there even when the run's own packs are shallow.

Layer 0 is the scaled embedding, layer 1 the first transformer block, so the first departing layer
and its size point at the likely bug class.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from core.analysis.attribution import DEFAULT_K
from core.embed.run import EmbeddingRun
from core.embed.yardstick import DeepPackSkipped, YardstickKind, largest_errors
from core.analysis.metrics import cosine_similarity, nan_as_inf

ALPHA = 1e-3  # family-wise level of the per-layer sign tests
FLOOR_MULTIPLE = 4.0  # without a reference: v2.0 may be this many rounding floors from v1.0
STRUCTURAL_DISTANCE = 1e-4  # 1 − cosine(v2.0, v1.0) above this at the first departing layer: no precision effect
UNIFORM_SCALE_DISTANCE = 1e-6  # 1 − cosine below this at layer 0: v2.0 is v1.0 times a scale
MIN_AGREEING_SHARE = 0.25  # of the sample, agreeing, before a departure of the longer sequences alone is read
FAITHFUL_SIDE_ALPHA = 0.05  # the agreeing shorter sequences must not lean to one side even at this (loose) level


@dataclass(frozen=True)
class LayerNumerics:
    """One layer's test on the sample.

    baseline_error: max |v1.0 − reference| (floor mode: max |v1.0 re-batched − v1.0|, the floor);
    candidate_error: max |v2.0 − reference| (floor mode: max |v2.0 − v1.0|); bound: k (floor mode:
    FLOOR_MULTIPLE). closer_v1 / closer_v2 / ties: sequences where that path's mean abs error is the
    smaller, and sign_p the two-sided binomial p-value of that split (None in floor mode).
    min_cosine: the smallest cosine between v2.0 and v1.0 over the sample.
    """

    layer: int
    baseline_error: float
    candidate_error: float
    bound: float
    closer_v1: int | None
    closer_v2: int | None
    ties: int | None
    sign_p: float | None
    alpha: float
    min_cosine: float

    @property
    def ratio(self) -> float | None:
        """candidate_error / baseline_error; None when both are 0, inf when only the baseline's is."""
        if self.baseline_error > 0:
            return self.candidate_error / self.baseline_error
        return None if self.candidate_error == 0 else math.inf

    @property
    def within_bound(self) -> bool:
        return self.candidate_error <= self.bound * self.baseline_error

    @property
    def systematic(self) -> bool:
        return self.sign_p is not None and self.sign_p < self.alpha

    @property
    def departs(self) -> bool:
        return not self.within_bound or self.systematic

    @property
    def farther(self) -> bool:
        """v2.0 is the path farther from the reference on most sequences."""
        return (self.closer_v1 or 0) > (self.closer_v2 or 0)

    def to_json(self) -> dict:
        ratio = self.ratio
        return asdict(self) | {
            "ratio": None if ratio is None or math.isinf(ratio) else ratio,
            "within_bound": self.within_bound,
            "systematic": self.systematic,
            "departs": self.departs,
        }


def sign_test(closer_v1: int, closer_v2: int) -> float:
    """Two-sided binomial p-value of the split, ties left out (1.0 when every sequence tied)."""
    from scipy.stats import binomtest  # here, not at the top: scipy.stats costs every process 0.6 s to import

    n = closer_v1 + closer_v2
    return 1.0 if n == 0 else float(binomtest(closer_v2, n, 0.5, alternative="two-sided").pvalue)


def measure_layer(v1: np.ndarray, v2: np.ndarray, yardstick: np.ndarray, kind: YardstickKind, layer: int, k: float,
                  alpha: float, floor_multiple: float) -> LayerNumerics:
    """The test at one layer; v1, v2, yardstick: (m, embed_dim) rows of the sample."""
    v1, v2, yardstick = (np.asarray(a, np.float64) for a in (v1, v2, yardstick))
    min_cosine = float(cosine_similarity(v1, v2).min())
    baseline_error, candidate_error = largest_errors(v1, v2, yardstick, kind)
    if kind == "floor":
        return LayerNumerics(layer, baseline_error, candidate_error, floor_multiple, None, None, None, None, alpha,
                             min_cosine)
    error_v1, error_v2 = np.abs(v1 - yardstick), np.abs(v2 - yardstick)
    mean_v1, mean_v2 = nan_as_inf(error_v1.mean(axis=1)), nan_as_inf(error_v2.mean(axis=1))
    closer_v1, closer_v2 = int((mean_v1 < mean_v2).sum()), int((mean_v2 < mean_v1).sum())
    return LayerNumerics(
        layer, baseline_error, candidate_error, k, closer_v1, closer_v2,
        int(mean_v1.size - closer_v1 - closer_v2), sign_test(closer_v1, closer_v2), alpha, min_cosine,
    )


@dataclass(frozen=True)
class LengthSplit:
    """In residues: the sample's sequences shorter than ``depart_from`` (``shorter`` of them, the longest
    ``agree_up_to``) agree as a faithful path's do; ``departing`` of the ``at_least`` sequences of
    ``depart_from`` or more depart."""

    agree_up_to: int
    depart_from: int
    departing: int
    at_least: int
    shorter: int

    def described(self) -> str:
        share = "all" if self.departing == self.at_least else f"{self.departing} of the"
        return (f"{share} {self.at_least} sequences of {self.depart_from:,} residues or more depart; the {self.shorter} "
                f"of {self.agree_up_to:,} or fewer agree as a faithful path's do")


@dataclass(frozen=True)
class NumericsGate:
    """The gate over every pooled layer: passes when no layer departs."""

    kind: YardstickKind
    dtype: str  # of the reference (floor: the model's)
    n_sample: int  # sequences in the sample, probes included
    n_probes: int  # probe proteins that topped a small set up
    alpha: float  # family-wise level of the sign tests
    layers: tuple[LayerNumerics, ...]
    deep_pack: LayerNumerics | None = None  # the first attention layer again, v2.0 deep in one pack
    deep_pack_skipped: DeepPackSkipped | None = None  # why a packed v2.0 has no deep pack
    length_split: LengthSplit | None = None  # at the first departing layer, only the longer sequences depart

    @property
    def tests(self) -> tuple[LayerNumerics, ...]:
        return self.layers + ((self.deep_pack,) if self.deep_pack is not None else ())

    @property
    def passed(self) -> bool:
        return not any(test.departs for test in self.tests)

    @property
    def first_departure(self) -> LayerNumerics | None:
        """The departing test at the lowest layer; at the deep pack's layer, the run's own batches first."""
        return min((test for test in self.tests if test.departs), key=lambda test: test.layer, default=None)

    @property
    def departs_only_deep(self) -> bool:
        """Whether the first departure is the deep pack's: at that layer v2.0 agreed in the run's own batches."""
        return self.first_departure is not None and self.first_departure is self.deep_pack

    @property
    def largest_ratio(self) -> float | None:
        ratios = [test.ratio for test in self.tests if test.ratio is not None]
        return max(ratios) if ratios else None

    def likely_cause(self) -> str | None:
        """The bug class the first departure points at, in words (None when the gate passes)."""
        first = self.first_departure
        if first is None:
            return None
        if not math.isfinite(first.candidate_error):
            return (f"NaN or infinity in v2.0 from layer {first.layer}: a value beyond the dtype's range (an overflow), "
                    "or a division by zero (an empty or fully masked row)")
        if self.departs_only_deep:
            return (f"at layer {first.layer} only deep in a pack: the result depends on where a sequence sits in its "
                    "pack — position ids that run on instead of restarting per sequence, attention across "
                    "sequence boundaries, or a pack reordered and its rows not put back")
        if self.length_split is not None:
            return (f"from layer {first.layer} only on the longer sequences ({self.length_split.described()}): a limit "
                    "on length or position — a rotary or position table built for shorter inputs, sequences cut short, "
                    "or a kernel's block or tile limit")
        large = 1.0 - first.min_cosine > STRUCTURAL_DISTANCE
        if first.layer == 0:
            if 1.0 - first.min_cosine < UNIFORM_SCALE_DISTANCE:
                return ("a uniform scale from layer 0, before any attention: embedding or token-dropout scaling, or "
                        "a mean divided by the wrong count (BOS and EOS counted)")
            return ("from layer 0, before any attention: the embedding, which positions are pooled (EOS, BOS or "
                    "padding in the mean), or rows returned for the wrong sequences (a batch reordered, by length "
                    "say, and not put back)")
        if large:
            return self._structural_cause(first.layer)
        side = "farther from" if first.farther else "closer to"
        if self._only_at_the_last_layer(first.layer):
            return (f"small but systematic only at layer {first.layer}, the last one measured, after the layers before "
                    f"it agreed (v2.0 {side} the reference on most sequences): at the model's final layer, the final "
                    "layer norm's eps or precision; or a small activation or precision difference (GELU form, rotary "
                    "tables, softmax precision) that grew through the layers")
        return (f"small but systematic from layer {first.layer} (v2.0 {side} the reference on most sequences): "
                "an activation or precision difference — GELU form, rotary tables or positions, softmax precision")

    def _agreed_before(self, layer: int) -> bool:
        """Whether at least one attention layer measured before ``layer`` agreed (the first departure is ``layer``)."""
        return any(1 <= test.layer < layer for test in self.layers)

    def _only_at_the_last_layer(self, layer: int) -> bool:
        """Whether ``layer`` is the last layer measured and an attention layer before it agreed."""
        return layer == max(test.layer for test in self.layers) and self._agreed_before(layer)

    def _structural_cause(self, layer: int) -> str:
        """The likely cause of a large departure first seen at ``layer`` (>= 1). A bug in attention itself
        shows from the first attention layer; one that appears only later, after measured layers agreed, is
        in something only that layer has (at the model's last layer: the final layer norm)."""
        attention = ("attention masking or packing (sequences attending across boundaries or to padding, a causal "
                     "mask, a missing BOS or EOS), position ids that do not restart per sequence, the rotary embedding (its "
                     "table layout, or left off q or k), the attention scale (1/√head_dim missing or applied twice), or "
                     "layers returned off by one")
        if layer == 1 or not self._agreed_before(layer):
            where = "the first attention" if layer == 1 else f"layer {layer}, the first attention layer measured"
            return f"large from {where}: {attention}"
        if self._only_at_the_last_layer(layer):
            return (f"large only at layer {layer}, the last one measured, after the layers before it agreed: a step "
                    "only that layer takes — at the model's final layer, the final layer norm (emb_layer_norm_after) "
                    "missing, or applied twice")
        return (f"large from layer {layer}, after the layers before it agreed: something particular to that layer "
                "(its weights, or which layer's output is returned); masking, position and scaling bugs show from "
                "the first attention")

    def line(self) -> str:
        """The Numerics line of the headline."""
        where = f"{self.dtype} reference" if self.kind == "reference" else "rounding floor (v1.0 re-batched)"
        probes = f" ({self.n_probes} of them probes)" if self.n_probes else ""
        deep = " + a deep pack" if self.deep_pack is not None else ""
        skipped = self.deep_pack_skipped
        if skipped is not None and skipped.reason == "needless":
            deep = f"; no deep pack: v2.0 already {skipped.ratio:.3g}× v1.0's error in its own batches"
        elif skipped is not None:
            deep = "; no deep pack: it did not fit in memory, so position bugs deep in a pack went untested"
        sample = f"{self.n_sample} sequences{probes}, {len(self.layers)} layer{'s' * (len(self.layers) != 1)}{deep}"
        unit = "× v1.0's error" if self.kind == "reference" else " rounding floors"
        if self.passed:
            largest = self.largest_ratio
            size = "" if largest is None else f"; v2.0 at most {largest:.2f}{unit}"
            systematic = ", no systematic side" if self.kind == "reference" else ""
            return f"Numerics: equivalent to rounding ({where}, {sample}{size}{systematic})."
        first = self.first_departure
        evidence = []
        if first.systematic:
            side = "farther from" if first.farther else "closer to"
            evidence.append(f"v2.0 {side} the reference on {max(first.closer_v1, first.closer_v2)} of "
                            f"{first.closer_v1 + first.closer_v2} sequences, p = {first.sign_p:.1e}")
        if not first.within_bound:
            ratio = first.ratio
            evidence.append(f"{'unbounded' if ratio is None or not math.isfinite(ratio) else f'{ratio:.3g}'}{unit}, "
                            f"above {first.bound:g}")
        deep = " in a deep pack" if self.departs_only_deep else ""
        return (f"Numerics: different — departs from layer {first.layer}{deep} ({'; '.join(evidence)}; {where}, "
                f"{sample}). Likely cause: {self.likely_cause()}.")

    def to_json(self) -> dict:
        first = self.first_departure
        return {
            "kind": self.kind,
            "dtype": self.dtype,
            "n_sample": self.n_sample,
            "n_probes": self.n_probes,
            "passed": self.passed,
            "first_departing_layer": None if first is None else first.layer,
            "departs_only_deep_in_a_pack": self.departs_only_deep,
            "departs_by_length": None if self.length_split is None else asdict(self.length_split),
            "likely_cause": self.likely_cause(),
            "alpha": self.alpha,
            "line": self.line(),
            "layers": [layer.to_json() for layer in self.layers],
            "deep_pack": self.deep_pack.to_json() if self.deep_pack is not None else None,
            "deep_pack_skipped": asdict(self.deep_pack_skipped) if self.deep_pack_skipped is not None else None,
        }


def rounding_noise(run: EmbeddingRun, layer: int) -> np.ndarray | None:
    """(m, embed_dim) how far v1.0's own rounding moves its pooled embeddings at ``layer`` on the sample:
    v1.0 minus the reference, or v1.0 re-batched minus v1.0. None without a numerics sample."""
    yardstick = run.yardstick
    if yardstick is None:
        return None
    return (np.asarray(yardstick.reference.layers[layer], np.float64)
            - np.asarray(yardstick.baseline.layers[layer], np.float64))


def numerics_gate(run: EmbeddingRun, k: float = DEFAULT_K, alpha: float = ALPHA,
                  floor_multiple: float = FLOOR_MULTIPLE) -> NumericsGate | None:
    """The gate over every layer the run pooled; None when the run has no numerics sample."""
    yardstick = run.yardstick
    if yardstick is None:
        return None
    per_test_alpha = alpha / (len(run.layers) + yardstick.deep_tested)

    def test(candidate, layer: int) -> LayerNumerics:
        return measure_layer(yardstick.baseline.layers[layer], candidate.layers[layer],
                             yardstick.reference.layers[layer], yardstick.kind, layer, k, per_test_alpha,
                             floor_multiple)

    layers = tuple(test(yardstick.candidate, layer) for layer in run.layers)
    deep = None if yardstick.deep is None else test(yardstick.deep, next(iter(yardstick.deep.layers)))
    gate = NumericsGate(yardstick.kind, yardstick.dtype, yardstick.size, len(yardstick.probes), alpha, layers, deep,
                        yardstick.deep_skipped)
    first = gate.first_departure
    if first is None or gate.departs_only_deep:
        return gate
    lengths = np.concatenate([np.asarray(run.lengths)[yardstick.indices], [len(probe) for probe in yardstick.probes]])
    parts = (yardstick.baseline, yardstick.candidate, yardstick.reference)
    split = length_split(*(part.layers[first.layer] for part in parts), yardstick.kind, first.bound, lengths)
    return replace(gate, length_split=split)


def length_split(v1: np.ndarray, v2: np.ndarray, yardstick: np.ndarray, kind: YardstickKind, bound: float,
                 lengths: np.ndarray) -> LengthSplit | None:
    """Whether only the longer sequences depart: a sequence departs when its own largest error is beyond
    ``bound`` × v1.0's largest over the sample. With M the shortest departing length, the sequences shorter
    than M — at least MIN_AGREEING_SHARE of the sample — must also show no systematic side against the
    reference (a precision difference moves every sequence to one side, the longer ones the most); of those
    of M or more, at least two and at least half must depart (a bug past some position moves a sequence by
    how much of it lies past, so not every one need). v1, v2, yardstick: (m, embed_dim) rows; lengths: (m,)
    residues."""
    v1, v2, yardstick = (np.asarray(a, np.float64) for a in (v1, v2, yardstick))
    baseline, _ = largest_errors(v1, v2, yardstick, kind)
    against = v1 if kind == "floor" else yardstick
    departing = nan_as_inf(np.abs(v2 - against).max(axis=1)) > bound * baseline
    if not departing.any():
        return None
    depart_from = int(lengths[departing].min())
    shorter = lengths < depart_from
    # One sequence departing, or a few among many as long, is no sign of a length limit: something in those
    # sequences themselves (a rare residue, say) is likelier.
    if departing.sum() < max(2, 0.5 * (~shorter).sum()):
        return None
    # A sequence alone in its pack agrees whatever a packing bug does (the shortest of a set goes alone first):
    # a length limit is read only when a good part of the sample agrees.
    if shorter.sum() < max(2, MIN_AGREEING_SHARE * lengths.size):
        return None
    if kind == "reference":
        error_v1 = np.abs(v1[shorter] - yardstick[shorter]).mean(axis=1)
        error_v2 = np.abs(v2[shorter] - yardstick[shorter]).mean(axis=1)
        if sign_test(int((error_v1 < error_v2).sum()), int((error_v2 < error_v1).sum())) < FAITHFUL_SIDE_ALPHA:
            return None
    return LengthSplit(int(lengths[shorter].max()), depart_from, int(departing.sum()), int((~shorter).sum()),
                       int(shorter.sum()))
