"""ESM-2 with two inference paths over the same weights.

- v1.0, ``forward(tokens, repr_layers)``: fair-esm's own padded forward, unmodified.
- v2.0, ``forward_packed(input_ids, cu_seqlens, max_seqlen, repr_layers)``: padding
  stripped, sequences concatenated, attention by a varlen backend (``core.attention``).

The packed path reuses fair-esm's modules and repeats its arithmetic in the same order
(token-dropout scaling, q scaled before rotary, rotary tables built in the dtype of the
model's ``inv_freq`` buffer, exact erf GELU), so that with the ``reference`` backend the
two paths agree to rounding; the FlashAttention backends differ only in attention.
"""

from __future__ import annotations

import argparse
import copy
import math
import zlib
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import esm
import esm.multihead_attention
import torch
from esm.model.esm2 import ESM2
from esm.modules import gelu
from esm.rotary_embedding import rotate_half
from torch import nn

from core.attention import resolve_backend, softmax_dtype, varlen_attention

WeightsKind = Literal["pretrained", "checkpoint", "demo"]
V1_COMPATIBLE_BACKEND = "v1-compatible (fair-esm torch.bmm)"
RotaryPrecision = Literal["model", "fp32"]


@dataclass(frozen=True)
class Architecture:
    num_layers: int
    embed_dim: int
    attention_heads: int


PRETRAINED: dict[str, Architecture] = {
    "esm2_t6_8M_UR50D": Architecture(6, 320, 20),
    "esm2_t12_35M_UR50D": Architecture(12, 480, 20),
    "esm2_t30_150M_UR50D": Architecture(30, 640, 20),
    "esm2_t33_650M_UR50D": Architecture(33, 1280, 20),
    "esm2_t36_3B_UR50D": Architecture(36, 2560, 40),
    "esm2_t48_15B_UR50D": Architecture(48, 5120, 40),
}
DEMO_SIZES: dict[str, str] = {
    "8M": "esm2_t6_8M_UR50D",
    "35M": "esm2_t12_35M_UR50D",
    "150M": "esm2_t30_150M_UR50D",
    "650M": "esm2_t33_650M_UR50D",
    "3B": "esm2_t36_3B_UR50D",
    "15B": "esm2_t48_15B_UR50D",
}
DEFAULT_MODEL = "esm2_t36_3B_UR50D"
DEMO_SEED = 20240229

DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp64": torch.float64,
}


class WeightsUnavailable(RuntimeError):
    """Model weights cannot be loaded; the message says how to supply them."""


def _fair_esm_softmax(x: torch.Tensor, dim: int, onnx_trace: bool = False) -> torch.Tensor:
    return torch.softmax(x, dim=dim, dtype=softmax_dtype(x.dtype))


# fair-esm computes attention softmax in float32 whatever the model dtype. That is kept for
# fp16/bf16/fp32; only float64 models get a float64 softmax, so a float64 run is a true
# float64 reference for every backend to be checked against.
esm.multihead_attention.utils_softmax = _fair_esm_softmax


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``'fp16'``/``'bf16'``/``'fp32'``/``'fp64'`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def rotary_inv_freq(head_dim: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """RoFormer's inverse frequencies, (head_dim // 2,): fair-esm's formula, computed in ``dtype``."""
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=dtype, device=device) / head_dim))


def reset_rotary_frequencies(model: ESM2) -> None:
    """Recompute every layer's rotary ``inv_freq`` buffer in its own dtype."""
    with torch.no_grad():
        for layer in model.layers:
            inv_freq = layer.self_attn.rot_emb.inv_freq
            inv_freq.copy_(rotary_inv_freq(2 * inv_freq.numel(), inv_freq.dtype, inv_freq.device))
    reset_rotary_caches(model)


def reset_rotary_caches(model: ESM2) -> None:
    """Drop fair-esm's cached rotary tables, which are keyed on length only, not dtype."""
    for layer in model.layers:
        layer.self_attn.rot_emb._seq_len_cached = None


def rotary_tables(
    inv_freq: torch.Tensor, max_seqlen: int, precision: RotaryPrecision = "model"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_seqlen, head_dim), built exactly as fair-esm builds them.

    ``precision='model'`` uses the dtype of ``inv_freq`` (fp16 after ``model.half()``), as the
    standard path does; ``'fp32'`` recomputes the frequencies and tables in float32.
    """
    if precision == "fp32":
        inv_freq = rotary_inv_freq(2 * inv_freq.numel(), torch.float32, inv_freq.device)
    positions = torch.arange(max_seqlen, device=inv_freq.device).type_as(inv_freq)
    freqs = torch.einsum("i,j->ij", positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (total_tokens, heads, head_dim); cos, sin: (total_tokens, head_dim). Returns x's dtype."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return ((x * cos) + (rotate_half(x) * sin)).to(x.dtype)


class ESM2WithFlashAttention(nn.Module):
    """fair-esm's ESM2 with a second, packed forward over the same weights.

    Attributes ``name`` and ``weights`` (``'pretrained'``, ``'checkpoint'`` or ``'demo'``)
    say what was loaded; every result downstream carries them.
    """

    def __init__(
        self,
        esm2: ESM2,
        *,
        name: str = "esm2",
        weights: WeightsKind = "pretrained",
        backend: str = "auto",
        rotary_precision: RotaryPrecision = "model",
    ):
        super().__init__()
        self.esm2 = esm2
        self.name = name
        self.weights = weights
        self.backend = backend
        self.rotary_precision = rotary_precision
        self.activation = gelu  # fair-esm's exact erf GELU; tests swap it to prove they would notice

    @property
    def num_layers(self) -> int:
        return self.esm2.num_layers

    @property
    def embed_dim(self) -> int:
        return self.esm2.embed_dim

    @property
    def device(self) -> torch.device:
        return self.esm2.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.esm2.embed_tokens.weight.dtype

    def _apply(self, fn, *args, **kwargs):
        # .half(), .to(dtype), .cuda() all land here: fair-esm's rotary cache would go stale.
        result = super()._apply(fn, *args, **kwargs)
        reset_rotary_caches(self.esm2)
        return result

    def forward(self, tokens: torch.Tensor, repr_layers: Sequence[int] = (), **kwargs) -> dict:
        """v1.0: fair-esm's own forward on padded tokens (batch, seq_len)."""
        return self.esm2(tokens, repr_layers=list(repr_layers), **kwargs)

    def resolved_backend(self, backend: str | None = None) -> str:
        """The attention backend a packed forward will run with (``'auto'`` resolved)."""
        return resolve_backend(backend or self.backend, self.device, self.dtype)

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        repr_layers: Sequence[int] = (),
        backend: str | None = None,
        v1_compatible: bool = False,
    ) -> dict:
        """v2.0: packed forward.

        input_ids: (total_tokens,) or (1, total_tokens) int64, each sequence with its BOS and EOS;
        cu_seqlens: (batch + 1,) int32 sequence boundaries; max_seqlen: longest sequence in tokens.
        Returns ``{"representations": {layer: (total_tokens, embed_dim)}, "backend": name}`` with
        fair-esm's layer semantics: 0 = scaled embeddings, last = after the final layer norm.
        Only layers up to the highest one requested are computed.

        ``v1_compatible=True`` is the fallback: the same interface, but fair-esm's standard
        attention (unpack by cu_seqlens, pad, ``forward``, repack), so a pipeline written for the
        packed API can return to v1.0's numerics without other changes.
        """
        if v1_compatible:
            return self._forward_packed_via_v1(input_ids.reshape(-1), cu_seqlens, max_seqlen, repr_layers)
        backend = self.resolved_backend(backend)
        model = self.esm2
        input_ids = input_ids.reshape(-1)
        seq_index, seq_lengths, positions = self._packed_positions(cu_seqlens, input_ids.numel())

        x = self._packed_embeddings(input_ids, seq_index, seq_lengths)
        wanted = set(repr_layers)
        last_needed = max(wanted, default=0)
        representations = {0: x} if 0 in wanted else {}

        for layer_idx, layer in enumerate(model.layers[:last_needed]):
            x = self._packed_layer(layer, x, positions, cu_seqlens, max_seqlen, backend)
            if layer_idx + 1 in wanted:
                representations[layer_idx + 1] = x
        if model.num_layers in wanted:
            representations[model.num_layers] = model.emb_layer_norm_after(x)
        return {"representations": representations, "backend": backend}

    @staticmethod
    def _packed_positions(cu_seqlens: torch.Tensor, total_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(seq_index, seq_lengths, positions): for each token its sequence, (total_tokens,) int64; each
        sequence's token count, (batch,) int64; and its position within its sequence, (total_tokens,) int64,
        restarting at 0 for every sequence as v1.0's padded rows do."""
        cu_seqlens_long = cu_seqlens.long()
        seq_lengths = cu_seqlens_long[1:] - cu_seqlens_long[:-1]
        seq_index = torch.repeat_interleave(
            torch.arange(seq_lengths.numel(), device=cu_seqlens.device), seq_lengths, output_size=total_tokens
        )
        positions = torch.arange(total_tokens, device=cu_seqlens.device) - cu_seqlens_long[seq_index]
        return seq_index, seq_lengths, positions

    def _forward_packed_via_v1(
        self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, repr_layers: Sequence[int]
    ) -> dict:
        """Packed in, packed out, fair-esm's padded forward in between."""
        bounds = cu_seqlens.long()
        token_counts = bounds[1:] - bounds[:-1]
        positions = torch.arange(max_seqlen, device=input_ids.device)
        is_token = positions[None, :] < token_counts[:, None]  # (batch, max_seqlen)
        tokens = torch.full(is_token.shape, self.esm2.padding_idx, dtype=input_ids.dtype, device=input_ids.device)
        tokens[is_token] = input_ids
        padded = self.esm2(tokens, repr_layers=list(repr_layers))["representations"]
        return {
            "representations": {layer: rep[is_token] for layer, rep in padded.items()},
            "backend": V1_COMPATIBLE_BACKEND,
        }

    def _packed_embeddings(
        self, input_ids: torch.Tensor, seq_index: torch.Tensor, seq_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings (total_tokens, embed_dim) with fair-esm's token-dropout rescaling."""
        model = self.esm2
        x = model.embed_scale * model.embed_tokens(input_ids)
        if model.token_dropout:
            is_mask = input_ids == model.mask_idx
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            mask_ratio_train = 0.15 * 0.8
            mask_counts = torch.zeros_like(seq_lengths).index_add_(0, seq_index, is_mask.long())
            mask_ratio_observed = mask_counts.to(x.dtype) / seq_lengths
            x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[seq_index, None]
        return x

    def _packed_layer(
        self,
        layer: nn.Module,
        x: torch.Tensor,
        positions: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: str,
    ) -> torch.Tensor:
        """One pre-LN transformer layer on packed (total_tokens, embed_dim) activations."""
        x = x + self._packed_self_attention(
            layer.self_attn, layer.self_attn_layer_norm(x), positions, cu_seqlens, max_seqlen, backend
        )
        return x + layer.fc2(self.activation(layer.fc1(layer.final_layer_norm(x))))

    def _packed_self_attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,
        positions: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        backend: str,
    ) -> torch.Tensor:
        total_tokens = x.shape[0]
        shape = (total_tokens, attn.num_heads, attn.head_dim)
        # fair-esm scales q before the rotary rotation; the kernel then runs with scale 1.
        q = (attn.q_proj(x) * attn.scaling).view(shape)
        k = attn.k_proj(x).view(shape)
        v = attn.v_proj(x).view(shape)
        cos, sin = self._rotary(attn.rot_emb.inv_freq, positions, max_seqlen)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = self._attend(q, k, v, cu_seqlens, max_seqlen, backend)
        return attn.out_proj(out.reshape(total_tokens, attn.embed_dim))

    def _rotary(self, inv_freq: torch.Tensor, positions: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for each token's position, each (total_tokens, head_dim)."""
        cos, sin = rotary_tables(inv_freq, max_seqlen, self.rotary_precision)
        return cos[positions], sin[positions]

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                backend: str) -> torch.Tensor:
        """Attention within each packed sequence; q (already scaled), k, v: (total_tokens, heads, head_dim)."""
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=1.0, backend=backend)


# ---------------------------------------------------------------- loading


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, in words; None when it can."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to this process (driver missing, or CUDA_VISIBLE_DEVICES empty)"
    return None


def device_or_cpu(requested: torch.device) -> tuple[torch.device, str | None]:
    """``requested``, or the CPU with a notice saying why when it is a CUDA device and CUDA is unavailable."""
    reason = cuda_unavailable_reason() if requested.type == "cuda" else None
    if reason is None:
        return requested, None
    return torch.device("cpu"), (
        f"CUDA was asked for but is not available: {reason}. Running on the CPU instead, which is much "
        "slower; the comparison is otherwise the same"
    )


def default_model_spec(device: torch.device) -> str:
    """3B on a GPU (pretrained when cached here, else demo-3B); demo-8M on a CPU so a run finishes."""
    if device.type == "cuda":
        return DEFAULT_MODEL if pretrained_available(DEFAULT_MODEL) else "demo-3B"
    return "demo-8M"


def default_dtype(device: torch.device) -> str:
    """FP16 on a GPU (the seed's setting); FP32 on a CPU, where FP16 matmuls are slow."""
    return "fp16" if device.type == "cuda" else "fp32"


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    found = {"torch": torch.__version__}
    for package in ("fair-esm", "flash-attn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def _new_alphabet() -> esm.data.Alphabet:
    return esm.data.Alphabet.from_architecture("ESM-1b")


def _demo_values(module: nn.Module, param_name: str, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Values PyTorch's default initialisation would draw, from a per-parameter generator."""
    shape = tuple(param.shape)
    if isinstance(module, nn.Embedding):
        values = torch.randn(shape, generator=generator)
        if module.padding_idx is not None:
            values[module.padding_idx] = 0
        return values
    if isinstance(module, nn.LayerNorm):
        return torch.ones(shape) if param_name == "weight" else torch.zeros(shape)
    if isinstance(module, nn.Linear):
        bound = 1 / math.sqrt(module.in_features)
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)
    return torch.zeros(shape)  # the LM head's output bias


def build_demo_model(arch: Architecture, seed: int, dtype: torch.dtype, device: torch.device) -> ESM2:
    """Random-init ESM-2 of the given shape, identical on every machine for the same seed.

    Built on the meta device and filled one parameter at a time from a generator seeded by
    (seed, parameter name), so a 15B model never exists in float32 on the host.
    """
    with torch.device("meta"):
        model = ESM2(arch.num_layers, arch.embed_dim, arch.attention_heads, alphabet=_new_alphabet())
    model = model.to(dtype).to_empty(device=device)
    model.lm_head.weight = model.embed_tokens.weight  # to_empty() replaced the tied parameter
    seen: set[int] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if id(param) in seen:  # the LM head shares the embedding matrix
                    continue
                seen.add(id(param))
                full_name = f"{module_name}.{param_name}"
                generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(full_name.encode()))
                param.copy_(_demo_values(module, param_name, param, generator))
        for layer in model.layers:  # computed in float32, then cast, as model.half() would
            inv_freq = layer.self_attn.rot_emb.inv_freq
            inv_freq.copy_(rotary_inv_freq(2 * inv_freq.numel(), torch.float32, inv_freq.device))
    reset_rotary_caches(model)
    return model


def _first_lines(error: BaseException, lines: int = 4, limit: int = 800) -> str:
    """The start of an exception's message, enough to say what is wrong without a wall of text."""
    return " ".join(line.strip() for line in str(error).splitlines()[:lines] if line.strip())[:limit]


def _safe_torch_load(path: Path) -> dict:
    """torch.load with ``weights_only=True``: tensors and plain containers only, no code runs.

    fair-esm checkpoints keep their config in an ``argparse.Namespace``, the one class allowed.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsUnavailable(
            f"cannot read checkpoint {path}: {type(error).__name__}: {_first_lines(error, 1) or 'empty or truncated file'}. "
            "Only fair-esm ESM-2 checkpoints (tensors and an argparse config) are accepted; "
            "pickled code is refused."
        ) from error


def _esm2_from_model_data(model_data: dict, regression_data: dict | None, source: str) -> ESM2:
    if not isinstance(model_data, dict) or "model" not in model_data or "cfg" not in model_data:
        raise WeightsUnavailable(f"{source} is not a fair-esm ESM-2 checkpoint (expected keys 'cfg' and 'model')")
    cfg = model_data["cfg"].get("model") if isinstance(model_data["cfg"], dict) else None
    if not all(hasattr(cfg, field) for field in ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads")):
        raise WeightsUnavailable(f"{source} has no ESM-2 architecture in cfg['model'] (is it an ESM-1 checkpoint?)")
    try:
        model, _ = esm.pretrained.load_model_and_alphabet_core("esm2", model_data, regression_data)
    except Exception as error:
        raise WeightsUnavailable(f"{source} does not match ESM-2's layout: {_first_lines(error)}") from error
    return model


def save_checkpoint(model: ESM2WithFlashAttention | ESM2, path: str | Path) -> Path:
    """Write weights in fair-esm's checkpoint format (readable by fair-esm and by ``load_esm2_model``)."""
    esm2 = model.esm2 if isinstance(model, ESM2WithFlashAttention) else model
    cfg = argparse.Namespace(
        encoder_layers=esm2.num_layers,
        encoder_embed_dim=esm2.embed_dim,
        encoder_attention_heads=esm2.attention_heads,
        token_dropout=esm2.token_dropout,
    )
    state = {f"encoder.{key}": value.detach().cpu() for key, value in esm2.state_dict().items()}
    path = Path(path)
    torch.save({"cfg": {"model": cfg}, "model": state}, path)
    return path


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint cache, where fair-esm keeps downloaded pretrained weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_checkpoint(name: str) -> Path:
    """Where fair-esm keeps (or would download) the pretrained weights called ``name``."""
    return hub_checkpoint_dir() / f"{name}.pt"


def pretrained_available(name: str) -> bool:
    """Whether a pretrained model's weights are already in the local torch hub cache."""
    return hub_checkpoint(name).is_file()


def _load_pretrained(name: str) -> ESM2:
    local = hub_checkpoint(name)
    if local.is_file():
        regression = local.with_name(f"{name}-contact-regression.pt")
        regression_data = _safe_torch_load(regression) if regression.is_file() else None
        return _esm2_from_model_data(_safe_torch_load(local), regression_data, str(local))
    try:
        model, _ = esm.pretrained.load_model_and_alphabet_hub(name)
    except Exception as error:
        raise WeightsUnavailable(
            f"weights for {name} are not in the torch hub cache ({local}) and could not be downloaded "
            f"({type(error).__name__}: {_first_lines(error, 1) or 'no detail'}). "
            f"On a connected host the first run downloads them; offline, copy {name}.pt into "
            f"{local.parent}, pass a local checkpoint file as the model, or use demo weights "
            f"(demo-{next(size for size, full in DEMO_SIZES.items() if full == name)})."
        ) from error
    return model


def describe_model_spec(name_or_path: str) -> tuple[WeightsKind, str]:
    """Classify a model spec: ``(kind, canonical name)``; raises ValueError for unknown specs."""
    if name_or_path in PRETRAINED:
        return "pretrained", name_or_path
    if name_or_path.lower().startswith("demo-"):
        size = name_or_path[5:].upper()
        if size not in DEMO_SIZES:
            raise ValueError(f"unknown demo size {name_or_path!r}; choose one of " + ", ".join(f"demo-{s}" for s in DEMO_SIZES))
        return "demo", f"demo-{size}"
    if Path(name_or_path).expanduser().is_file():
        return "checkpoint", str(Path(name_or_path).expanduser())
    raise ValueError(
        f"unknown model {name_or_path!r}: not a pretrained ESM-2 name ({', '.join(PRETRAINED)}), "
        f"not demo-<size> ({', '.join(DEMO_SIZES)}), and no file at that path"
    )


def load_esm2_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "fp16",
    device: str | torch.device | None = None,
    *,
    backend: str = "auto",
    demo_seed: int = DEMO_SEED,
) -> tuple[ESM2WithFlashAttention, esm.data.Alphabet]:
    """Load ESM-2 weights and wrap them with both inference paths.

    name_or_path: a fair-esm pretrained name (``esm2_t36_3B_UR50D``), a local fair-esm checkpoint
    file, or ``demo-<size>`` (8M, 35M, 150M, 650M, 3B, 15B) for random weights from ``demo_seed``.
    Returns ``(model, alphabet)``; ``model.weights`` says which kind of weights it holds.
    """
    kind, name = describe_model_spec(name_or_path)
    torch_dtype = parse_dtype(dtype)
    target = torch.device(device) if device is not None else default_device()
    if kind == "demo":
        esm2 = build_demo_model(PRETRAINED[DEMO_SIZES[name[5:]]], demo_seed, torch_dtype, target)
    elif kind == "pretrained":
        esm2 = _load_pretrained(name)
    else:
        esm2 = _esm2_from_model_data(_safe_torch_load(Path(name)), None, name)
    model = ESM2WithFlashAttention(esm2.eval(), name=name, weights=kind, backend=backend)
    model = model.to(device=target, dtype=torch_dtype).eval().requires_grad_(False)
    return model, esm2.alphabet


def reference_copy(model: ESM2WithFlashAttention, dtype: torch.dtype = torch.float64) -> ESM2WithFlashAttention:
    """The same weights in a wider dtype, for a reference to measure both paths against.

    Rotary frequencies are recomputed exactly in ``dtype`` (a low-precision model keeps them
    rounded, which is part of that model's error, not of its weights).
    """
    wide = ESM2WithFlashAttention(
        copy.deepcopy(model.esm2), name=model.name, weights=model.weights, backend="reference"
    ).to(dtype)
    reset_rotary_frequencies(wide.esm2)
    return wide.eval().requires_grad_(False)


def layer_indices(model: ESM2WithFlashAttention, layers: Iterable[int] | None = None) -> list[int]:
    """Validate layer numbers (0 … num_layers; negative counts from the end). None = all layers."""
    if layers is None:
        return list(range(model.num_layers + 1))
    resolved = []
    for layer in layers:
        index = layer + model.num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= model.num_layers:
            raise ValueError(f"layer {layer} is out of range for {model.name}: choose 0 … {model.num_layers}")
        resolved.append(index)
    return sorted(set(resolved))
