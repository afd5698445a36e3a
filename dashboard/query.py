"""A link's query string, checked value by value before anything uses it.

A link is untrusted input: each value must parse, be finite and lie in its range, and a model must be
one the server offers. An invalid value is ignored (the default is kept) and reported as a
``QueryProblem`` naming the parameter and the value. Pure functions, no Streamlit: what the server
allows comes in as a ``LinkPolicy``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from core.analysis.proxies import MAX_SEED, PROXY_KINDS
from core.input.records import MAX_RECORDS
from core.numerics.attention import BACKENDS
from core.numerics.precision import DTYPES
from core.numerics.specs import ModelSpec
from dashboard.paths import PathNotAllowed, allowed_path
from dashboard.settings import THRESHOLD_DECIMALS, Settings
from dashboard.views import EXAMPLES, REFERENCES

MAX_HEADS = 10_000  # proxy heads that decide, at most, from the page
DEVICES = ("cpu", "cuda")
FLAGS = {"1": True, "true": True, "0": False, "false": False, "": False}
SHOWN_VALUE_CHARS = 300  # a longer value is cut in the message
_INTEGER = re.compile(r"[0-9]{1,40}")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


@dataclass(frozen=True)
class QueryProblem:
    """One query value that was ignored, and why."""

    parameter: str
    value: str
    reason: str
    instead: str = "the default is used instead"

    def message(self) -> str:
        """One line naming the parameter and the value (cut if long); plain text, to be escaped for Markdown."""
        shown = self.value if len(self.value) <= SHOWN_VALUE_CHARS else self.value[:SHOWN_VALUE_CHARS] + "…"
        return f"Link value {self.parameter}={shown!r} ignored: {self.reason}; {self.instead}."


@dataclass(frozen=True)
class LinkPolicy:
    """What the server lets a link choose."""

    models: tuple[str, ...]  # model names (the first is the default when the usual default is not offered)
    checkpoint_dirs: tuple[Path, ...]  # a checkpoint path must resolve inside one of these
    v2_choices: tuple[str, ...]  # 'packed', 'fallback' and the server's plug-in labels


@dataclass(frozen=True)
class LinkQuery:
    """A query string checked: the settings it stands for, the example set and run it names (None when
    absent or invalid), and every value it ignored."""

    settings: Settings
    example: str | None
    run: str | None
    problems: tuple[QueryProblem, ...]


class BadValue(ValueError):
    """A query value that cannot be used; the message says why, without repeating the value."""


def integer(text: str, low: int, high: int) -> int:
    """A whole number low ≤ n ≤ high written in ASCII digits."""
    if not _INTEGER.fullmatch(text.strip()):
        raise BadValue(f"expected a whole number from {low:,} to {high:,}")
    value = int(text)
    if not low <= value <= high:
        raise BadValue(f"expected a whole number from {low:,} to {high:,}")
    return value


def fraction(text: str, decimals: int) -> float:
    """A finite decimal in [0, 1] with at most ``decimals`` decimals (what its number box shows)."""
    if not _DECIMAL.fullmatch(text.strip()):
        raise BadValue("expected a number from 0 to 1")
    value = float(text)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise BadValue("expected a number from 0 to 1")
    if round(value, decimals) != value:
        raise BadValue(f"more than {decimals} decimals (the page's box shows {decimals})")
    return value


def choice(text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise BadValue(f"expected one of {', '.join(choices)}")
    return text


def flag(text: str) -> bool:
    if text.strip().lower() not in FLAGS:
        raise BadValue("expected 1 or 0")
    return FLAGS[text.strip().lower()]


def sample(text: str) -> str:
    """The numerics sample: 'all', or a count 0 … MAX_RECORDS written back in canonical form."""
    if text.strip().lower() == "all":
        return "all"
    return str(integer(text, 0, MAX_RECORDS))


def model(text: str, policy: LinkPolicy) -> str:
    """An offered model name (as the parser spells it), or a checkpoint path inside an allowed directory."""
    offered = ", ".join(policy.models)
    if ModelSpec.is_named(text):
        try:
            name = ModelSpec.parse(text).name
        except ValueError:
            name = None
        if name in policy.models:
            return name
        raise BadValue(f"not a model this server offers (allowed: {offered})")
    try:
        allowed_path(text, policy.checkpoint_dirs)
    except PathNotAllowed as error:
        dirs = ", ".join(error.roots) or "none"
        raise BadValue(f"not a model this server offers (allowed: {offered}) nor a checkpoint file in an "
                       f"allowed directory ({dirs})") from None
    return text


def parsers(policy: LinkPolicy) -> dict[str, Callable[[str], object]]:
    """One parser per Settings field a link may set; each raises BadValue."""
    decimals = THRESHOLD_DECIMALS
    return {
        "model": lambda text: model(text, policy),
        "dtype": lambda text: choice(text, tuple(DTYPES)),
        "device": lambda text: choice(text, DEVICES),
        "backend": lambda text: choice(text, ("auto", *BACKENDS)),
        "v2": lambda text: choice(text, policy.v2_choices),
        "reference": lambda text: choice(text, tuple(REFERENCES)),
        "reference_sample": sample,
        "layer": lambda text: integer(text, 0, 10_000),
        "seed": lambda text: integer(text, 0, MAX_SEED),
        "proxy": lambda text: choice(text, PROXY_KINDS),
        "seeds": lambda text: integer(text, 0, MAX_HEADS),
        **{name: (lambda text, n=n: fraction(text, n)) for name, n in decimals.items()},
        "present": flag,
    }


def model_depth_problem(settings: Settings, query: Mapping[str, str]) -> QueryProblem | None:
    """A layer beyond the chosen named model's last one (a checkpoint's depth is known only once loaded)."""
    if settings.layer is None or not ModelSpec.is_named(settings.model):
        return None
    architecture = ModelSpec.parse(settings.model).architecture
    if settings.layer <= architecture.num_layers:
        return None
    return QueryProblem("layer", query["layer"],
                        f"{settings.model} has layers 0 to {architecture.num_layers}")


def agreement_order_problem(settings: Settings, query: Mapping[str, str]) -> QueryProblem | None:
    """FALLBACK's agreement bound above ACCEPT's is no rule; both fall back to their defaults."""
    if settings.min_agreement <= settings.accept_agreement:
        return None
    name = "min_agreement" if "min_agreement" in query else "accept_agreement"
    return QueryProblem(name, query[name], f"min_agreement ({settings.min_agreement:g}) must not exceed "
                                           f"accept_agreement ({settings.accept_agreement:g})")


def check_query(query: Mapping[str, str], policy: LinkPolicy, defaults: Settings) -> LinkQuery:
    """The settings, example set and run a query string names, every invalid value ignored and reported.
    Parameters that are not settings (and not ``example`` or ``run``) are left alone."""
    settings, problems = dataclasses.replace(defaults), []
    if settings.model not in policy.models and policy.models:
        settings.model = policy.models[0]
    for name, parse in parsers(policy).items():
        if name in query:
            try:
                setattr(settings, name, parse(query[name]))
            except BadValue as error:
                problems.append(QueryProblem(name, query[name], str(error)))
    depth = model_depth_problem(settings, query)
    if depth is not None:
        settings.layer = defaults.layer
        problems.append(depth)
    order = agreement_order_problem(settings, query)
    if order is not None:
        settings.min_agreement, settings.accept_agreement = defaults.min_agreement, defaults.accept_agreement
        problems.append(order)
    example = query.get("example")
    if example is not None and example not in EXAMPLES:
        problems.append(QueryProblem("example", example, f"expected one of {', '.join(EXAMPLES)}",
                                     "no example set was loaded"))
        example = None
    return LinkQuery(settings, example, query.get("run") or None, tuple(problems))
