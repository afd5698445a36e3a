"""How balanced each proxy head is: a head that puts nearly every sequence in one class cannot show a
label change, whatever v2.0 does, so every report states each head's balance and warns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.analysis.proxies import UNINFORMATIVE_SHARE, HeadVotes
from core.analysis.verdict import SeedRule


def majority_share(labels: np.ndarray) -> float:
    """Share of the sequences in the most common label, (n,) int labels -> float."""
    return float(np.bincount(np.asarray(labels, dtype=np.int64)).max() / labels.size)


@dataclass(frozen=True)
class ProxyBalance:
    """The majority-class share under v1.0 of the chosen head, of every deciding head and of the seed rule's."""

    chosen_name: str
    chosen_share: float
    votes: HeadVotes
    seed_rule: SeedRule

    @property
    def warnings(self) -> list[str]:
        """One line per uninformative head (or group of heads)."""
        found = []
        if self.chosen_share > UNINFORMATIVE_SHARE:
            found.append(f"{self.chosen_name} puts {100 * self.chosen_share:.1f}% of sequences in one class: its "
                         "agreement cannot fall (uninformative)")
        uninformative = self.votes.uninformative
        if uninformative.any():
            found.append(f"{int(uninformative.sum())} of {self.votes.bank.size} {self.votes.bank.kind} proxy heads put "
                         f"more than {100 * UNINFORMATIVE_SHARE:g}% of sequences in one class: their agreement cannot "
                         "fall (uninformative)")
        if not self.seed_rule.informative:
            found.append(f"the seed rule's uncentred head (seed {self.seed_rule.seed}) puts "
                         f"{100 * self.seed_rule.share:.1f}% of sequences in one class: its agreement cannot fall "
                         "(uninformative)")
        return found

    def to_json(self) -> dict:
        bank, rule = self.votes.bank, self.seed_rule
        return {
            "kind": bank.kind,
            "uninformative_above": UNINFORMATIVE_SHARE,
            "chosen_head": {"name": self.chosen_name, "majority_share": self.chosen_share,
                            "informative": self.chosen_share <= UNINFORMATIVE_SHARE},
            "heads": {"n": bank.size, "seeds": bank.seeds.tolist(), "majority_share": self.votes.share.tolist(),
                      "n_uninformative": int(self.votes.uninformative.sum())},
            "seed_rule_head": {"seed": rule.seed, "majority_share": rule.share, "informative": rule.informative},
            "warnings": self.warnings,
        }
