"""User-supplied classification heads, to see whether v1.0 vs v2.0 embeddings change *their* predictions.

A head is one linear layer or a small MLP (linear layers with one activation between them),
read from a ``.safetensors`` file or a plain torch state_dict (``.pt``/``.pth``/``.bin``).
Its input width is the pooled embedding width, or that plus the width of per-sequence extra
features (``load_extra_features``) that ``head_inputs`` concatenates after the embedding.
All arithmetic is float64 numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.special import erf

from core.analysis.metrics import softmax


ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "tanh")

DEFAULT_ACTIVATION = "relu"

MAX_LISTED = 10

Layer = tuple[np.ndarray, np.ndarray]


class HeadError(ValueError):
    """A head or feature file that cannot be used; the message says why in plain words."""


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    """Elementwise activation of a float64 array, any shape."""
    if activation == "relu":
        return np.maximum(x, 0.0)
    if activation == "gelu":
        # Exact erf GELU, as torch.nn.GELU() and fair-esm use (not the tanh approximation).
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if activation == "tanh":
        return np.tanh(x)
    raise HeadError(f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")


def check_activation(activation: Any) -> str:
    """The activation name lower-cased, or HeadError when it is not one we implement."""
    if not isinstance(activation, str):
        raise HeadError(f"the activation must be a string naming one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    name = activation.strip().lower()
    if name not in ACTIVATIONS:
        raise HeadError(f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
    return name


def check_layers(layers: Sequence[Layer], names: Sequence[str]) -> None:
    """Raise HeadError unless the layers are finite 2-D weights with matching biases that chain into >= 2 classes."""
    if not layers:
        raise HeadError("the head has no layers (no weight tensors)")
    for (weight, bias), name in zip(layers, names):
        if weight.ndim != 2:
            raise HeadError(
                f"weight of layer '{name}' has shape {tuple(weight.shape)}; every layer must be a linear layer "
                "with a 2-D (out_features, in_features) weight"
            )
        if bias.shape != (weight.shape[0],):
            raise HeadError(
                f"bias of layer '{name}' has shape {tuple(bias.shape)} but its weight {tuple(weight.shape)} "
                f"needs a bias of shape ({weight.shape[0]},)"
            )
        for part, values in (("weight", weight), ("bias", bias)):
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise HeadError(f"{part} of layer '{name}' has {bad} non-finite value(s) (NaN or infinity)")
    for k in range(len(layers) - 1):
        out_k, in_next = layers[k][0].shape[0], layers[k + 1][0].shape[1]
        if out_k != in_next:
            raise HeadError(
                f"layers do not chain: layer '{names[k]}' outputs {out_k} features but the next layer "
                f"'{names[k + 1]}' takes {in_next}"
            )
    n_classes = layers[-1][0].shape[0]
    if n_classes < 2:
        raise HeadError(
            f"the last layer '{names[-1]}' has {n_classes} output; a classification head needs at least 2 classes "
            "(a single-logit sigmoid head is not supported: export it as 2 logits [0, z])"
        )


@dataclass(frozen=True, eq=False)
class ClassificationHead:
    """A linear head or MLP: logits = L_k(act(... act(L_1(x)))), then softmax.

    layers: ((weight (out, in) float64, bias (out,) float64), ...) in the order applied.
    """

    layers: tuple[Layer, ...]
    activation: str = DEFAULT_ACTIVATION
    source: str = ""

    def __post_init__(self) -> None:
        layers = tuple(
            (np.array(w, dtype=np.float64), np.array(b, dtype=np.float64)) for w, b in self.layers
        )
        check_layers(layers, [f"layer {k + 1}" for k in range(len(layers))])
        for weight, bias in layers:
            weight.setflags(write=False)
            bias.setflags(write=False)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "activation", check_activation(self.activation))

    @property
    def in_features(self) -> int:
        return int(self.layers[0][0].shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.layers[-1][0].shape[0])

    def describe(self) -> str:
        """One line for reports, e.g. 'MLP 3328→512→2 (relu) from head.safetensors'."""
        widths = "→".join(str(w) for w in [self.in_features] + [weight.shape[0] for weight, _ in self.layers])
        kind = f"linear {widths}" if len(self.layers) == 1 else f"MLP {widths} ({self.activation})"
        return f"{kind} from {self.source}" if self.source else kind

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(n, in_features) -> (n, n_classes) float64."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise HeadError(f"the head expects (n, {self.in_features}) inputs, got shape {tuple(x.shape)}")
        for k, (weight, bias) in enumerate(self.layers):
            if k:
                x = _activate(x, self.activation)
            x = x @ weight.T + bias
        return x

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Softmax class probabilities, (n, in_features) -> (n, n_classes) float64."""
        return softmax(self.logits(features))


def head_inputs(embeddings: np.ndarray, extra: np.ndarray | None, head: ClassificationHead) -> np.ndarray:
    """[embeddings, extra] concatenated along columns, (n, embed_dim + k) float64, checked against the head.

    embeddings: (n, embed_dim); extra: (n, k) or None.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise HeadError(f"embeddings must be 2-D (n, embed_dim), got shape {embeddings.shape}")
    n, width = embeddings.shape
    if extra is None:
        extra = np.empty((n, 0), dtype=np.float64)
    extra = np.asarray(extra, dtype=np.float64)
    if extra.ndim != 2 or extra.shape[0] != n:
        raise HeadError(f"extra features have shape {extra.shape}; need {n} rows, one per sequence")
    k = extra.shape[1]
    if width + k != head.in_features:
        needed = head.in_features - width
        if needed > 0 and k == 0:
            hint = f"supply --extra-features with {needed} columns"
        elif needed > 0:
            hint = f"the extra features need {needed} columns, not {k}"
        elif needed == 0:
            hint = "this head takes the embedding alone; drop --extra-features"
        else:
            hint = "the head is narrower than the embedding alone; was it trained on a smaller ESM-2 model or layer?"
        raise HeadError(
            f"the head expects {head.in_features} input features but gets {width + k} "
            f"(ESM-2 embedding {width} + extra {k}); {hint}"
        )
    return np.concatenate([embeddings, extra], axis=1)


@dataclass(frozen=True, eq=False)
class HeadClassifier:
    """A user's head over pooled embeddings, with its extra features concatenated after them.

    Satisfies core.analysis.metrics.Classifier, so it can replace the proxy classifier in a comparison.
    """

    head: ClassificationHead
    extra: np.ndarray | None = None

    def check_width(self, embed_dim: int) -> None:
        """HeadError now, before any model work, when the widths cannot match."""
        head_inputs(np.zeros((self.n_rows, embed_dim)), self.extra, self.head)

    @property
    def n_rows(self) -> int:
        return 1 if self.extra is None else int(self.extra.shape[0])

    def describe(self) -> str:
        extra = f" + {self.extra.shape[1]} extra features" if self.extra is not None else ""
        return f"your head: {self.head.describe()}{extra}"

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, embed_dim) -> (n, n_classes)."""
        return self.head.probabilities(head_inputs(embeddings, self.extra, self.head))
