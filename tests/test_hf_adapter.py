"""The Hugging Face ESM adapter: HF's EsmModel over fair-esm's weights gives fair-esm's representations."""

from __future__ import annotations

import inspect

import pytest
import torch

import transformers  # pinned in requirements-dev.txt: a broken or missing install fails here, it does not skip

from core.adapters.hf_esm import (
    HFEsmImplementation,
    build_hf_esm,
    hf_available,
    make_eager,
    make_flash_attention_2,
    make_sdpa,
)
from core.embed.batching import padded_tokens

LAYERS = (0, 3, 6)
SEQUENCES = [  # four lengths, so three of them are padded
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQW",
    "MSILVTRPSPAGEELVSRLRTLGQVAWHFPLIEFSPGQQLPQLADQLAALGESDLLFALSQHAVAFAQSQLHQQ",
    "GAMGSWEEVKKLLEAAKEGRLDELKRL",
    "MKV",
]
MASKED = ["MKTAY<mask>AKQRQISF<mask>KSHFSRQ", "GAMG<mask>W", "MSILVTRPSPAGEELVSRLRTLGQVAWHF"]



def errors(model, alphabet, implementation, sequences, layers=LAYERS) -> dict[int, tuple[float, float]]:
    """Per layer: (max abs difference, max abs difference / max |fair-esm|) over non-padding tokens."""
    tokens = padded_tokens(alphabet, sequences)
    keep = tokens != alphabet.padding_idx
    expected = model(tokens, repr_layers=layers)["representations"]
    got = implementation.forward(tokens, layers)["representations"]
    assert sorted(got) == sorted(layers)
    result = {}
    for layer in layers:
        assert got[layer].shape == expected[layer].shape and got[layer].dtype == expected[layer].dtype
        diff = (got[layer][keep] - expected[layer][keep]).abs().max().item()
        result[layer] = (diff, diff / expected[layer][keep].abs().max().item())
    print(f"\n{implementation.name} {model.dtype}: " + ", ".join(f"L{k} abs {a:.2e} rel {r:.2e}" for k, (a, r) in result.items()))
    return result


def fp64_rotary(monkeypatch) -> None:
    """Make HF's rotary run in the model dtype, as fair-esm's does.

    transformers 5 builds cos/sin and rotates q, k in float32 whatever the dtype; 4.x used the
    dtype of inv_freq, so it needs no patch.
    """
    from transformers.models.esm import modeling_esm

    if "position_ids" not in inspect.signature(modeling_esm.EsmRotaryEmbedding.forward).parameters:
        return

    def tables(self, x, position_ids, layer_type=None):
        freqs = position_ids[..., None].to(self.inv_freq.dtype) * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    def rotate(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + modeling_esm.rotate_half(q) * sin, k * cos + modeling_esm.rotate_half(k) * sin

    monkeypatch.setattr(modeling_esm.EsmRotaryEmbedding, "forward", tables)
    monkeypatch.setattr(modeling_esm, "apply_rotary_pos_emb", rotate)


def test_hf_available():
    assert hf_available()


@pytest.mark.parametrize("make", [make_eager, make_sdpa], ids=["eager", "sdpa"])
def test_fp32_matches_fair_esm(perturbed_fp32, make):
    """eager runs fair-esm's operations in fair-esm's order: bit-identical (the README's claim); sdpa
    is a different kernel, measured ≤ 5.3e-7 relative."""
    model, alphabet = perturbed_fp32
    limit = 0.0 if make is make_eager else 2e-6
    for layer, (_, relative) in errors(model, alphabet, make(model), SEQUENCES).items():
        assert relative <= limit, layer


@pytest.mark.parametrize("make", [make_eager, make_sdpa], ids=["eager", "sdpa"])
def test_fp32_matches_fair_esm_with_mask_tokens(perturbed_fp32, make):
    model, alphabet = perturbed_fp32
    for layer, (_, relative) in errors(model, alphabet, make(model), MASKED).items():
        assert relative < 1e-5, layer


@pytest.mark.parametrize("make", [make_eager, make_sdpa], ids=["eager", "sdpa"])
def test_fp64_matches_fair_esm_to_hf_float32_rotary(perturbed_fp64, make):
    """HF runs float64 on the CPU, but its rotary in float32: agreement is ~1e-8, not 1e-15."""
    model, alphabet = perturbed_fp64
    for layer, (_, relative) in errors(model, alphabet, make(model), SEQUENCES).items():
        assert relative < 1e-6, layer


@pytest.mark.parametrize("make", [make_eager, make_sdpa], ids=["eager", "sdpa"])
def test_fp64_exact_once_rotary_runs_in_fp64(perturbed_fp64, make, monkeypatch):
    """With the rotary in float64 the rest (weights, layer semantics, attention) agrees to rounding."""
    fp64_rotary(monkeypatch)
    model, alphabet = perturbed_fp64
    for layer, (_, relative) in errors(model, alphabet, make(model), SEQUENCES).items():
        assert relative < 1e-10, layer


def test_fp64_mask_tokens_use_a_float32_mask_ratio(perturbed_fp64, monkeypatch):
    """HF computes token dropout's observed mask ratio in float32 (fair-esm: in the model dtype)."""
    fp64_rotary(monkeypatch)
    model, alphabet = perturbed_fp64
    tokens = padded_tokens(alphabet, MASKED)
    keep = tokens != alphabet.padding_idx
    expected = model(tokens, repr_layers=[0])["representations"][0]
    got = make_eager(model).forward(tokens, [0])["representations"][0]
    unmasked = ~(tokens == alphabet.mask_idx).any(-1)
    assert torch.equal(got[unmasked], expected[unmasked])
    masked_rows = keep & ~unmasked[:, None]
    relative = ((got - expected)[masked_rows].abs().max() / expected[masked_rows].abs().max()).item()
    assert 0 < relative < 1e-7
    assert torch.all(got[tokens == alphabet.mask_idx] == 0)


def expected_tensors(esm2) -> dict[str, torch.Tensor]:
    """HF EsmModel name -> fair-esm tensor, written out independently of the adapter's table."""
    modules = {
        "embeddings.word_embeddings": esm2.embed_tokens,
        "encoder.emb_layer_norm_after": esm2.emb_layer_norm_after,
        "contact_head.regression": esm2.contact_head.regression,
    }
    for i, layer in enumerate(esm2.layers):
        modules |= {
            f"encoder.layer.{i}.attention.self.query": layer.self_attn.q_proj,
            f"encoder.layer.{i}.attention.self.key": layer.self_attn.k_proj,
            f"encoder.layer.{i}.attention.self.value": layer.self_attn.v_proj,
            f"encoder.layer.{i}.attention.output.dense": layer.self_attn.out_proj,
            f"encoder.layer.{i}.attention.LayerNorm": layer.self_attn_layer_norm,
            f"encoder.layer.{i}.intermediate.dense": layer.fc1,
            f"encoder.layer.{i}.output.dense": layer.fc2,
            f"encoder.layer.{i}.LayerNorm": layer.final_layer_norm,
        }
    return {f"{prefix}.{name}": tensor for prefix, module in modules.items() for name, tensor in module.named_parameters()}


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_every_hf_parameter_is_the_fair_esm_tensor(request, dtype):
    model, _ = request.getfixturevalue(f"perturbed_{dtype}")
    hf = build_hf_esm(model)
    expected = expected_tensors(model.esm2)
    parameters = dict(hf.named_parameters())
    assert sorted(parameters) == sorted(expected)
    for name, parameter in parameters.items():
        assert parameter.dtype == model.dtype and parameter.device == model.device, name
        assert torch.equal(parameter, expected[name]), name
    buffers = dict(hf.named_buffers())
    inv_freqs = [tensor for name, tensor in buffers.items() if name.endswith("inv_freq")]
    assert inv_freqs and all(torch.equal(t, model.esm2.layers[0].self_attn.rot_emb.inv_freq) for t in inv_freqs)
    assert not any(tensor.is_meta for tensor in buffers.values())
    assert not hf.training and hf.config.hidden_size == model.embed_dim and hf.config.token_dropout
    assert hf.config.layer_norm_eps == 1e-5 and hf.config.vocab_size == 33 and hf.pooler is None


def test_flash_attention_2_on_cpu_is_a_clear_value_error(perturbed_fp32):
    with pytest.raises(ValueError, match="flash_attention_2.*CUDA"):
        make_flash_attention_2(perturbed_fp32[0])


def test_unknown_attention_is_a_value_error(perturbed_fp32):
    with pytest.raises(ValueError, match="attn_implementation"):
        HFEsmImplementation(perturbed_fp32[0], "flex")


def test_name_and_version(perturbed_fp32):
    implementation = make_sdpa(perturbed_fp32[0])
    assert implementation.name == "transformers EsmModel (sdpa)"
    assert implementation.version == transformers.__version__
    assert make_eager(perturbed_fp32[0]).name == "transformers EsmModel (eager)"


def test_layers_out_of_range_are_refused(perturbed_fp32):
    model, alphabet = perturbed_fp32
    with pytest.raises(ValueError, match="out of range"):
        make_eager(model).forward(padded_tokens(alphabet, ["MKV"]), [7])
