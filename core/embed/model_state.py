"""What v1.0 and the reference depend on, so a v2.0 plug-in can be held to leaving it as it found it.

A plug-in's factory receives the loaded model itself. A factory (or a forward) that switches off
fair-esm's token dropout, casts the weights, swaps a layer or patches fair-esm's GELU would change
v1.0 and the float64 reference with it — the two paths would then agree on the bug, and the verdict
would be ACCEPT. ``model_state`` records the fair-esm module's tensors (which object, its storage, dtype,
device, shape and in-place version), its modules and their public attributes, the functions fair-esm's
forward reaches by name (fair-esm's own, ``torch.nn.functional``, the torch.nn modules it is built from,
the torch functions and tensor methods it calls), and torch's precision switches; ``changes`` names
what differs.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from dataclasses import dataclass
from typing import Any

import torch

# What fair-esm's standard forward calls by name: its own modules' functions and classes, every function of
# torch.nn.functional, the torch.nn modules it is built from, and the torch functions it calls. Not all of
# torch: importing a library may legitimately re-wrap unrelated torch functions (torch.manual_seed).
WATCHED_NAMESPACES = ("esm.model.esm2", "esm.modules", "esm.multihead_attention", "esm.rotary_embedding",
                      "torch.nn.functional")
WATCHED_CLASSES = (torch.nn.Module, torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding)
WATCHED_TORCH_FUNCTIONS = ("arange", "baddbmm", "bmm", "cat", "cos", "einsum", "erf", "exp", "layer_norm", "matmul",
                           "sin", "softmax", "sqrt", "stack", "tanh")
# The tensor methods and operators fair-esm's forward calls (traced with a TorchFunctionMode), and their
# near kin: a plug-in that replaced ``torch.Tensor.masked_fill`` would change v1.0 and the reference too.
WATCHED_TENSOR_METHODS = (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__matmul__",
    "__neg__", "__invert__", "__eq__", "__bool__", "__getitem__", "__setitem__", "add", "any", "bmm", "chunk",
    "contiguous", "cos", "div", "double", "eq", "erf", "exp", "float", "half", "masked_fill", "masked_fill_", "matmul",
    "mean", "mul", "mul_", "neg", "pow", "rsqrt", "sin", "softmax", "sqrt", "sum", "tanh", "to", "transpose", "type",
    "type_as", "unsqueeze", "view",
)
PLAIN = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class ModelState:
    """tensors: name -> (id, data_ptr, dtype, device, shape, version); modules: name -> (id, class, public
    attributes: plain values as they are, anything else by identity); functions: qualified name -> id;
    settings: torch's process-wide precision switches (TF32, reduced-precision reductions, default dtype)."""

    tensors: dict[str, tuple]
    modules: dict[str, tuple]
    functions: dict[str, int]
    settings: dict[str, object]


def model_state(esm2: torch.nn.Module) -> ModelState:
    """The state of fair-esm's ``esm2`` module (an ``esm.model.esm2.ESM2``) and of the functions it calls."""
    tensors = {name: (id(t), t.data_ptr(), t.dtype, t.device, tuple(t.shape), t._version)
               for name, t in itertools.chain(esm2.named_parameters(), esm2.named_buffers())}
    modules = {name: (id(module), type(module), _public_attributes(module)) for name, module in esm2.named_modules()}
    return ModelState(tensors, modules, _functions(), _settings())


def changes(before: ModelState, after: ModelState) -> list[str]:
    """What differs from ``before`` in ``after``, in words (empty when nothing does). Names that appear
    only ``after`` (a lazily imported torch submodule, a new cache) are not changes."""
    found = []
    for name, was in before.tensors.items():
        now = after.tensors.get(name)
        if now is None:
            found.append(f"tensor {name} removed")
        elif now[2:5] != was[2:5]:
            found.append(f"tensor {name} now {now[2]} {list(now[4])} on {now[3]} (was {was[2]} {list(was[4])} on {was[3]})")
        elif now[:2] != was[:2]:
            found.append(f"tensor {name} replaced")
        elif now[5] != was[5]:
            found.append(f"tensor {name} modified in place")
    for name, (identity, kind, attributes) in before.modules.items():
        now = after.modules.get(name)
        if now is None or now[0] != identity:
            found.append(f"module {name or 'esm2'} replaced")
        elif now[1] is not kind:
            found.append(f"module {name or 'esm2'} now a {now[1].__name__} (was {kind.__name__})")
        else:
            found += [f"{name or 'esm2'}.{key} = {now[2].get(key)!r} (was {value!r})"
                      for key, value in attributes.items() if now[2].get(key) != value]
    found += [f"{name} replaced" for name, identity in before.functions.items()
              if after.functions.get(name, identity) != identity]
    found += [f"{name} = {after.settings[name]!r} (was {value!r})" for name, value in before.settings.items()
              if after.settings[name] != value]
    return found


def described(found: list[str], shown: int = 4) -> str:
    """``changes``' findings for a message: the first ``shown``, then how many more."""
    return "; ".join(found[:shown]) + (f"; and {len(found) - shown} more" if len(found) > shown else "")


def _settings() -> dict[str, object]:
    """The switches that change how fair-esm's float32 / FP16 arithmetic rounds, for the whole process: a
    plug-in that turned TF32 on would take v1.0 with it (the reference switches it off for itself)."""
    matmul = torch.backends.cuda.matmul
    return {
        "torch.backends.cuda.matmul.allow_tf32": matmul.allow_tf32,
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction": matmul.allow_fp16_reduced_precision_reduction,
        "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction": matmul.allow_bf16_reduced_precision_reduction,
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.get_default_dtype()": torch.get_default_dtype(),
    }


def _public_attributes(module: torch.nn.Module) -> dict[str, Any]:
    """A module's own public attributes (submodules, parameters and buffers are recorded apart): plain
    values as they are, anything else (a function, an alphabet) by identity."""
    return {key: value if isinstance(value, PLAIN) else id(value)
            for key, value in vars(module).items() if not key.startswith("_")}


def _functions() -> dict[str, int]:
    """qualified name -> id of every function in WATCHED_NAMESPACES, of the methods of the classes defined
    there and of WATCHED_CLASSES, of WATCHED_TORCH_FUNCTIONS and of WATCHED_TENSOR_METHODS (as torch.Tensor
    resolves them, so a replacement on torch.Tensor or on its C base shows)."""
    found = {f"torch.{name}": id(getattr(torch, name)) for name in WATCHED_TORCH_FUNCTIONS}
    found.update({f"torch.Tensor.{name}": id(inspect.getattr_static(torch.Tensor, name))
                  for name in WATCHED_TENSOR_METHODS})
    classes = list(WATCHED_CLASSES)
    for namespace in WATCHED_NAMESPACES:
        module = importlib.import_module(namespace)
        for name, value in vars(module).items():
            if callable(value):
                found[f"{namespace}.{name}"] = id(value)
            if isinstance(value, type) and value.__module__ == namespace:
                classes.append(value)
    for cls in classes:
        for name, value in vars(cls).items():
            if callable(value) or isinstance(value, (staticmethod, classmethod, property)):
                found[f"{cls.__module__}.{cls.__qualname__}.{name}"] = id(value)
    return found
