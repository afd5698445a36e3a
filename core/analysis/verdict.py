"""The headline a decision meeting reads: do predictions change, are the numerics v1.0's, and one verdict.

- Predictions: K balanced proxy heads (core.analysis.proxies) judged on the lower quantile of their agreement,
  counting only flips beyond each head's rounding floor — or a user's own head, alone, on its labels.
  Agreement > 99% agrees (ACCEPT), 95–99% VALIDATE, < 95% FALLBACK (thresholds are options).
- Numerics: the gate of core.analysis.numerics_gate over every layer.
- Verdict: the predictions' verdict; ACCEPT only when the numerics are equivalent to rounding and every
  sequence's cosine exceeds the threshold, else capped at VALIDATE.
- Seed rule: the seed's own decision on one uncentred head, shown beside it so results stay comparable
  with published ones; it never decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from core.analysis.metrics import Comparison, format_percent, Thresholds, Verdict, verdict_for
from core.analysis.numerics_gate import NumericsGate
from core.analysis.proxies import HeadVotes, UNINFORMATIVE_SHARE
from core.input.records import MAX_RESIDUES


@dataclass(frozen=True)
class Predictions:
    """The prediction half: the verdict from label agreement alone, and what it was judged on.

    agreement: the judged value (the heads' lower quantile, or the user's head's agreement);
    votes: the proxy heads (None when a user's head decided); flips: the deciding flips.
    """

    verdict: Verdict
    agreement: Fraction
    decided_by: str
    flips: int
    votes: HeadVotes | None = None

    @property
    def agree(self) -> bool:
        return self.verdict == "ACCEPT"

    def line(self) -> str:
        pct = format_percent(float(self.agreement))
        if self.votes is not None:
            summary = self.votes.to_json()
            detail = (f"at least {pct} of labels kept in {100 * (1 - summary['lower_quantile']):g}% of heads; "
                      f"{summary['counted_flips']} flip(s) beyond the rounding floor, "
                      f"{summary['rounding_flips']} within it")
        else:
            detail = f"{pct} of labels agree, {self.flips} flip(s)"
        outcome = "agree" if self.agree else f"change ({self.verdict})"
        return f"Predictions: {outcome} — {self.decided_by}: {detail}."

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "agree": self.agree,
            "agreement": float(self.agreement),
            "decided_by": self.decided_by,
            "flips": self.flips,
            "heads": self.votes.to_json() if self.votes is not None else None,
            "line": self.line(),
        }


def predictions_from_votes(votes: HeadVotes, thresholds: Thresholds) -> Predictions:
    """Judge the heads on their lower quantile of agreement (flips within the rounding floor left out)."""
    agreement = votes.lower_agreement
    return Predictions(verdict_for(agreement, thresholds), agreement, votes.bank.describe(),
                       int(votes.counted.sum()), votes)


def predictions_from_head(comparison: Comparison, head: str, thresholds: Thresholds) -> Predictions:
    """A user's own head decides alone, on its labels."""
    agreement = Fraction(comparison.n_agree, comparison.n)
    return Predictions(verdict_for(agreement, thresholds), agreement, head, int(comparison.flips.sum()))


@dataclass(frozen=True)
class SeedRule:
    """The seed's rule on one uncentred head of ``seed`` (``comparison``), for comparison only.

    share: the majority class's share of the sequences under v1.0; above UNINFORMATIVE_SHARE the
    agreement cannot fall, whatever v2.0 does.
    """

    comparison: Comparison
    seed: int
    share: float

    @property
    def informative(self) -> bool:
        return self.share <= UNINFORMATIVE_SHARE

    def line(self) -> str:
        caveat = "" if self.informative else (
            f"; uninformative: {format_percent(self.share)} of sequences in one class, agreement cannot fall")
        return (f"Seed rule (one uncentred head, seed {self.seed}): {self.comparison.verdict}, "
                f"agreement {format_percent(self.comparison.agreement)}{caveat}.")

    def to_json(self) -> dict:
        return {
            "verdict": self.comparison.verdict,
            "seed": self.seed,
            "label_agreement": self.comparison.agreement,
            "majority_share": self.share,
            "informative": self.informative,
            "line": self.line(),
        }


def named(ids: tuple[str, ...], limit: int = 5) -> str:
    """The first ``limit`` ids, comma-separated, with … when there are more."""
    return ", ".join(ids[:limit]) + (" …" if len(ids) > limit else "")


@dataclass(frozen=True)
class NonFinite:
    """Sequences whose pooled embedding holds a NaN or an infinity on the standard path (``v1``) and on
    v2.0 (``v2``), in input order. No statistic can be trusted on them, so they decide on their own."""

    v1: tuple[str, ...] = ()
    v2: tuple[str, ...] = ()

    @property
    def only_v2(self) -> tuple[str, ...]:
        in_v1 = set(self.v1)
        return tuple(seq_id for seq_id in self.v2 if seq_id not in in_v1)

    @property
    def only_v1(self) -> tuple[str, ...]:
        in_v2 = set(self.v2)
        return tuple(seq_id for seq_id in self.v1 if seq_id not in in_v2)

    @property
    def both(self) -> tuple[str, ...]:
        in_v2 = set(self.v2)
        return tuple(seq_id for seq_id in self.v1 if seq_id in in_v2)

    def reasons(self) -> list[str]:
        """One clause per kind of non-finite result, naming the sequences."""
        clauses = []
        if self.only_v2:
            clauses.append(f"v2.0 returned NaN or infinity for {len(self.only_v2)} sequence(s) where v1.0 did not "
                           f"({named(self.only_v2)})")
        if self.both:
            clauses.append(f"both paths returned NaN or infinity for {len(self.both)} sequence(s) ({named(self.both)}): "
                           "an overflow of the model's dtype; compare in a wider one")
        if self.only_v1:
            clauses.append(f"v1.0 returned NaN or infinity for {len(self.only_v1)} sequence(s) where v2.0 did not "
                           f"({named(self.only_v1)}), so they cannot be compared")
        return clauses

    def row_warnings(self) -> dict[str, str]:
        """id -> what the sequence table says of a non-finite row (its cosine, 0, is not a measurement)."""
        paths = {seq_id: "v2.0" for seq_id in self.only_v2} | {seq_id: "v1.0" for seq_id in self.only_v1} | {
            seq_id: "both paths" for seq_id in self.both}
        return {seq_id: f"{where} returned NaN or infinity: no cosine or difference can be measured (counted as "
                        "failing)" for seq_id, where in paths.items()}

    def to_json(self) -> dict:
        return {"v1": list(self.v1), "v2": list(self.v2)}


@dataclass(frozen=True)
class Headline:
    """Predictions and numerics, the cosine check, and the verdict they give together."""

    predictions: Predictions
    numerics: NumericsGate | None
    cosine_failures: tuple[str, ...]
    thresholds: Thresholds
    seed_rule: SeedRule
    non_finite: NonFinite = NonFinite()
    failed_checks: tuple[str, ...] = ()  # v2.0's own checks that failed (--checks), each "name: what it measured"
    longest: int | None = None  # residues of the longest sequence compared: what an ACCEPT covers

    @property
    def numerics_passed(self) -> bool:
        return self.numerics is not None and self.numerics.passed

    @property
    def verdict(self) -> Verdict:
        """The predictions' verdict, capped at VALIDATE by the cosine check, the numerics, a non-finite
        result of v1.0 or a failed check of v2.0 (packing invariance, determinism); FALLBACK whenever v2.0
        returns NaN or infinity where v1.0 does not."""
        if self.non_finite.only_v2:
            return "FALLBACK"
        verdict = self.predictions.verdict
        capped = self.cosine_failures or not self.numerics_passed or self.non_finite.v1 or self.failed_checks
        if verdict == "ACCEPT" and capped:
            return "VALIDATE"
        return verdict

    def numerics_line(self) -> str:
        if self.numerics is None:
            return "Numerics: not measured (this run has no numerics sample), so ACCEPT is withheld."
        return self.numerics.line()

    def lines(self) -> tuple[str, str, str]:
        """The predictions line, the numerics line and the seed rule's line."""
        return self.predictions.line(), self.numerics_line(), self.seed_rule.line()

    def recommendation(self) -> str:
        """The sentence next to the verdict."""
        predictions, thresholds = self.predictions, self.thresholds
        pct = format_percent(float(predictions.agreement))
        if self.verdict == "ACCEPT":
            return (f"Adopt v2.0{self._scope()}: predictions agree ({pct} of labels, {predictions.decided_by}) and its "
                    "numerics are v1.0's to rounding; the divergence is cosmetic.")
        departure = self._numerics_reason()
        others = ([f"its numerics {departure}"] if departure else []) + self._cosine_reason() + self._checks_reason()
        if self.verdict == "FALLBACK":
            reasons = self.non_finite.reasons()  # the most specific reason first
            if predictions.verdict == "FALLBACK":
                reasons.append(f"label agreement {pct} ({predictions.decided_by}) is below "
                               f"{100 * thresholds.min_agreement:g}%, so v2.0 changes predictions")
            lead, others = reasons[0], reasons[1:] + others
            also = f" Also: {'; '.join(others)}." if others else ""
            return f"Fall back to a v1.0-compatible path: {lead}.{also}"
        others = self.non_finite.reasons() + others
        reasons = []
        if predictions.verdict == "VALIDATE":
            reasons.append(f"label agreement {pct} ({predictions.decided_by}) is between "
                           f"{100 * thresholds.min_agreement:g}% and {100 * thresholds.accept_agreement:g}%")
        return f"Validate v2.0 on a production dataset before adopting it: {' and '.join(reasons + others)}."

    def _scope(self) -> str:
        """What an ACCEPT covers when the set stops short of ESM-2's longest input: a path can be wrong only
        past some length (a rotary table or a kernel sized too small), and no sequence here would show it."""
        if self.longest is None or self.longest >= MAX_RESIDUES:
            return ""
        return f" for sequences of up to {self.longest:,} residues (the longest here; compare longer ones to cover them)"

    def _checks_reason(self) -> list[str]:
        if not self.failed_checks:
            return []
        return [f"v2.0 failed its own checks ({'; '.join(self.failed_checks)})"]

    def _cosine_reason(self) -> list[str]:
        if not self.cosine_failures:
            return []
        return [f"{len(self.cosine_failures)} sequence(s) are at or below cosine {self.thresholds.min_cosine:g} "
                f"({named(self.cosine_failures)})"]

    def _numerics_reason(self) -> str | None:
        if self.numerics is None:
            return "were not measured"
        first = self.numerics.first_departure
        if first is None:
            return None
        return f"depart from v1.0's beyond rounding from layer {first.layer} (likely {self.numerics.likely_cause()})"
