"""Adapters expose every canonical component of all four families."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sublens.arch import adapter_for
from sublens.errors import ArchitectureError


def test_adapter_finds_every_component(model: nn.Module, family: str) -> None:
    adapter = adapter_for(model)
    assert adapter.family == family
    modules = set(model.modules())
    assert isinstance(adapter.embed(), nn.Embedding) and adapter.embed() in modules
    assert len(adapter.layers()) == adapter.n_layers
    for layer in range(adapter.n_layers):
        for part in (
            adapter.attn,
            adapter.q,
            adapter.k,
            adapter.v,
            adapter.o,
            adapter.mlp,
            adapter.attn_out_site,
            adapter.mlp_out_site,
        ):
            assert part(layer) in modules
        assert adapter.W_O(layer).shape == (adapter.n_heads, adapter.d_head, adapter.d_model)
    assert adapter.norm_final() in modules
    assert adapter.lm_head().weight.shape == (model.config.vocab_size, adapter.d_model)
    assert adapter.n_heads % adapter.n_kv_heads == 0


def test_geometry_matches_config(model: nn.Module, family: str) -> None:
    adapter = adapter_for(model)
    expected = {"llama": (3, 6, 2, 8), "gemma3": (3, 4, 1, 16), "gpt2": (2, 4, 4, 12), "qwen2": (2, 4, 2, 12)}
    assert (adapter.n_layers, adapter.n_heads, adapter.n_kv_heads, adapter.d_head) == expected[family]
    assert adapter.tied_embeddings == (family != "qwen2")
    assert adapter.post_norm_residual == (family == "gemma3")


def test_parameter_groups_are_disjoint_and_named(model: nn.Module) -> None:
    adapter = adapter_for(model)
    names = dict(model.named_parameters())
    attn = dict(adapter.attention_parameters())
    mlp = dict(adapter.mlp_parameters())
    assert attn and mlp and not set(attn) & set(mlp)
    for name, param in {**attn, **mlp}.items():
        assert names[name] is param


def test_unsupported_architecture_names_the_supported_ones() -> None:
    class Fake(nn.Module):
        config = type("C", (), {"model_type": "mamba"})()

    with pytest.raises(ArchitectureError, match="gemma3.*gpt2.*llama.*qwen2"):  # by family name
        adapter_for(Fake())


def test_gpt2_values_are_sliced_from_fused_qkv() -> None:
    from tiny import tiny_model

    model = tiny_model("gpt2")
    adapter = adapter_for(model)
    x = torch.randn(1, 3, adapter.d_model)
    fused = adapter.v(0)(x)  # Conv1D [1, 3, 3*d_model]
    v = adapter.values_from(0, fused)
    assert v.shape == (1, 3, adapter.n_heads, adapter.d_head)
    w, b = adapter.v(0).weight, adapter.v(0).bias  # Conv1D stores [in, out]
    expected = x @ w[:, 2 * adapter.d_model :] + b[2 * adapter.d_model :]
    torch.testing.assert_close(v.flatten(-2), expected)


def test_adapters_register_themselves() -> None:
    # Every adapter module of the package is imported and its class registered: no table.
    import pkgutil

    import sublens.arch
    from sublens.arch.base import REGISTRY, DecoderAdapter

    modules = {m.name for m in pkgutil.iter_modules(sublens.arch.__path__)} - {"base"}
    assert {cls.__module__.rsplit(".", 1)[-1] for cls in REGISTRY.values()} == modules
    assert DecoderAdapter not in REGISTRY.values()  # a layout base, not a family

    with pytest.raises(TypeError, match="already has the llama adapter"):

        class Clash(DecoderAdapter):  # defining the class is what raises
            family = "clash"
            model_types = ("llama",)

    assert "clash" not in REGISTRY
