"""Pluggable v2.0: point the tool at any fast ESM-2 path over the same weights.

A plug-in is named ``module:factory``. The factory receives the loaded
``ESM2WithFlashAttention`` (fair-esm weights, dtype and device already set) and returns an object
with, preferably, ``name`` and ``version`` attributes and either

- ``forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers) -> {"representations": {layer: (total_tokens, E)}}``, or
- ``forward(tokens, repr_layers) -> {"representations": {layer: (batch, T, E)}}`` on fair-esm's padded tokens,

with fair-esm's layer semantics (0 = scaled embeddings, last = after the final layer norm) and
BOS/EOS kept in place; the tool pools residues itself. Without a string ``name`` the plug-in is named
after its ``module:factory``; without a ``version``, after its distribution's version ('unversioned'
when no installed distribution provides the module); reports then say the name was derived.

The plug-in must leave the loaded model as it found it: v1.0 and the reference run on it, and would
share a change (core.embed.model_state); a change, in the factory or while it runs, is a PluginError
naming it. Every failure to build it (an import, a factory that raises or takes other arguments, an object
without the interface) is a one-line PluginError naming the plug-in; so is a failure while it runs —
an exception from its method (out-of-memory aside: the passes split the batch and retry) or
representations missing a layer or shaped unlike the batch — with the line of its code that raised.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from core.embed.model_state import ModelState, changes, described, model_state
from core.embed.passes import out_of_memory
from core.embed.paths import ForwardPath, plugin_path
from core.numerics.esm2_packed import ESM2WithFlashAttention


class PluginError(ValueError):
    """A v2.0 plug-in that cannot be loaded or does not offer the interface; the message says why."""


def load_factory(spec: str) -> Callable[[ESM2WithFlashAttention], Any]:
    """Import ``module:factory`` and return the factory."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"plug-in {spec!r} must be written module:factory, e.g. my_pipeline.esm:make_packed")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the module failing at import time
        raise PluginError(f"cannot import plug-in module {module_name!r}: {type(error).__name__}: {error}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise PluginError(f"plug-in module {module_name!r} has no callable {attribute!r}")
    return factory


def make_plugin_path(spec: str, model: ESM2WithFlashAttention) -> ForwardPath:
    """Build the plug-in from the loaded model and wrap it as the v2.0 path, which verifies after each pass
    that the plug-in left the model as it found it (see core.embed.model_state)."""
    before = model_state(model.esm2)
    implementation = build_implementation(spec, load_factory(spec), model)
    require_unchanged(spec, before, model, "in its factory")
    check_interface(spec, implementation)
    label, derived = plugin_label(spec, implementation)
    description = (f"{label} (name derived from module:factory and its distribution's version: the plug-in has "
                   f"no string {' or '.join(derived)} attribute)") if derived else label
    path = plugin_path(implementation, label, description)
    return replace(path, run=guarded(spec, path.run, "forward_packed" if path.packed else "forward"),
                   verify=lambda: require_unchanged(spec, before, model, "while it ran"))


def require_unchanged(spec: str, before: ModelState, model: ESM2WithFlashAttention, when: str) -> None:
    """A PluginError naming what the plug-in changed in the loaded model (or in the functions fair-esm
    calls) since ``before``: v1.0 and the reference run on that model, so they would share the change
    and the comparison would hide it."""
    found = changes(before, model_state(model.esm2))
    if found:
        raise PluginError(f"plug-in {spec!r} changed the loaded model {when} ({described(found)}). v1.0 and the reference run "
                          "on that model and would share the change, hiding it: change a copy "
                          "(copy.deepcopy(model)) or your own tensors instead")


def guarded(spec: str, run: Callable[..., dict], method: str) -> Callable[..., dict]:
    """``run(tokens_or_input_ids, …, layers)`` whose failures and malformed results are PluginErrors."""

    def call(*args):
        tokens, layers = args[0], args[-1]
        try:
            out = run(*args)
        except Exception as error:  # noqa: BLE001 - third-party code; its failure is a PluginError naming it
            if out_of_memory(error):
                raise
            message = " ".join(str(error).split())
            raise PluginError(f"plug-in {spec!r} failed in {method} on a batch of {tokens.numel()} tokens: "
                              f"{type(error).__name__}: {message}{raised_at(error)}") from error
        check_representations(spec, method, out, tokens, layers)
        return out

    return call


def raised_at(error: BaseException) -> str:
    """' (at file:line in function)' for the innermost frame outside torch, or ''. The file is named relative
    to the working directory when it lies inside it, else by its name alone: the message may reach a browser,
    which has no business learning the server's directory layout."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if "/torch/" not in frame.filename.replace("\\", "/")]
    if not frames:
        return ""
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        shown = path.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        shown = path.name
    return f" (at {shown}:{frame.lineno} in {frame.name})"


def check_representations(spec: str, method: str, out: Any, tokens: torch.Tensor, layers: Sequence[int]) -> None:
    """A PluginError unless ``out["representations"]`` holds every requested layer as a tensor shaped
    like ``tokens`` plus one embedding dimension."""
    representations = out.get("representations") if isinstance(out, dict) else None
    if not isinstance(representations, dict):
        raise PluginError(f"plug-in {spec!r}: {method} must return {{'representations': {{layer: tensor}}}}, "
                          f"got {type(out).__name__}")
    for layer in layers:
        rep = representations.get(layer)
        if rep is None:
            returned = sorted(representations, key=repr)
            hint = "; layer keys must be ints" if str(layer) in map(str, returned) else ""
            raise PluginError(f"plug-in {spec!r}: {method} returned no representation for layer {layer} "
                              f"(it returned layers {returned}{hint})")
        if not isinstance(rep, torch.Tensor):
            raise PluginError(f"plug-in {spec!r}: {method} returned layer {layer} as {type(rep).__name__}, "
                              "not a torch.Tensor")
        if rep.dim() != tokens.dim() + 1 or rep.shape[:tokens.dim()] != tokens.shape:
            expected = (*tokens.shape, "embed_dim")
            raise PluginError(f"plug-in {spec!r}: {method} returned layer {layer} shaped {tuple(rep.shape)}, "
                              f"expected {expected} for this batch")


def build_implementation(spec: str, factory: Callable[[ESM2WithFlashAttention], Any], model: ESM2WithFlashAttention) -> Any:
    """``factory(model)``; whatever it raises (a wrong signature included) becomes a PluginError."""
    try:
        return factory(model)
    except Exception as error:  # noqa: BLE001 - third-party code; its failure is a setup error naming it
        raise PluginError(
            f"plug-in {spec!r} failed when called with the loaded model: {type(error).__name__}: {error}. "
            "The factory must take the loaded fair-esm model and return the v2.0 object"
        ) from error


def check_interface(spec: str, implementation: Any) -> None:
    """A PluginError unless the object offers the method the passes call, callable with their arguments."""
    packed = hasattr(implementation, "forward_packed")
    method = getattr(implementation, "forward_packed" if packed else "forward", None)
    if not callable(method):
        raise PluginError(
            f"plug-in {spec!r} offers neither forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers) "
            "nor forward(tokens, repr_layers)"
        )
    call = "forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)" if packed else "forward(tokens, repr_layers)"
    try:
        signature = inspect.signature(method).replace(return_annotation=inspect.Signature.empty)
    except ValueError:  # no signature to inspect (a builtin): trust it
        return
    try:
        signature.bind(*range(4 if packed else 2))
    except TypeError:
        raise PluginError(f"plug-in {spec!r}: its {call.partition('(')[0]}{signature} cannot be called as {call}") from None


def plugin_label(spec: str, implementation: Any) -> tuple[str, list[str]]:
    """The plug-in's "name version", and which of the two were derived (absent or not a non-empty string)."""
    name, version = (getattr(implementation, attribute, None) for attribute in ("name", "version"))
    derived = [attribute for attribute, value in (("name", name), ("version", version))
               if not (isinstance(value, str) and value.strip())]
    name = name if "name" not in derived else spec
    version = version if "version" not in derived else distribution_version(spec.partition(":")[0])
    return f"{name} {version}".strip(), derived


def distribution_version(module_name: str) -> str:
    """The version of the one installed distribution that provides ``module_name``'s top-level package,
    or 'unversioned' (none, or several that cannot be told apart)."""
    top_level = module_name.split(".")[0]
    distributions = set(importlib.metadata.packages_distributions().get(top_level, []))
    if len(distributions) != 1:
        return "unversioned"
    try:
        return importlib.metadata.version(distributions.pop())
    except importlib.metadata.PackageNotFoundError:
        return "unversioned"
