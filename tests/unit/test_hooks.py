"""Scoped capture and head masks on tiny random models of every family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.errors import SublensError
from sublens.hooks import capture, head_label, hook_names, mask_heads, parse_head, per_head_output


def _attn_output(model: nn.Module, adapter: Adapter, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The attention module's own output (o_proj output, before any post-norm)."""
    seen: list[torch.Tensor] = []
    handle = adapter.attn(layer).register_forward_hook(lambda _m, _i, out: seen.append(out[0]))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return seen[0]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_z_through_W_O_reproduces_attention_output(model: nn.Module, input_ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    for layer in range(adapter.n_layers):
        with capture(model, adapter, [f"blocks.{layer}.attn.hook_z"]) as cache, torch.no_grad():
            model(input_ids)
        z = cache[f"blocks.{layer}.attn.hook_z"]
        assert z.shape == (*input_ids.shape, adapter.n_heads, adapter.d_head)
        total = per_head_output(adapter, layer, z).sum(dim=2)
        bias = adapter.b_O(layer)
        if bias is not None:
            total = total + bias
        torch.testing.assert_close(total, _attn_output(model, adapter, layer, input_ids), atol=1e-5, rtol=1e-5)


def test_pattern_values_and_z_are_consistent(model: nn.Module, input_ids: torch.Tensor) -> None:
    """z[h] = A[h] @ v[group(h)]: ties hook_pattern, hook_v and hook_z together."""
    adapter = adapter_for(model)
    names = hook_names(["attn.hook_pattern", "attn.hook_v", "attn.hook_z"], range(adapter.n_layers))
    with capture(model, adapter, names) as cache, torch.no_grad():
        model(input_ids)
    for layer in range(adapter.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [b, head, q, k]
        v = cache[f"blocks.{layer}.attn.hook_v"]  # [b, pos, kv, d_head]
        z = cache[f"blocks.{layer}.attn.hook_z"]
        assert pattern.shape == (input_ids.shape[0], adapter.n_heads, input_ids.shape[1], input_ids.shape[1])
        assert v.shape == (*input_ids.shape, adapter.n_kv_heads, adapter.d_head)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
        assert torch.all(pattern.triu(diagonal=1) == 0)  # causal
        groups = torch.tensor([adapter.kv_group(h) for h in range(adapter.n_heads)])
        expected = torch.einsum("bhqk,bkhd->bqhd", pattern, v[:, :, groups])
        torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)


def test_pattern_capture_restores_sdpa(family: str, input_ids: torch.Tensor) -> None:
    from tiny import tiny_model

    model = tiny_model(family, attn_implementation="sdpa")
    adapter = adapter_for(model)
    with torch.no_grad():
        reference = model(input_ids).logits
    with capture(model, adapter, ["blocks.0.attn.hook_pattern"]) as cache, torch.no_grad():
        assert model.config._attn_implementation == "eager"
        eager = model(input_ids).logits
    assert model.config._attn_implementation == "sdpa"
    assert cache["blocks.0.attn.hook_pattern"].shape[1] == adapter.n_heads
    torch.testing.assert_close(eager, reference, atol=1e-5, rtol=1e-4)


def test_resid_post_and_block_outputs_add_up(model: nn.Module, input_ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    names = hook_names(["hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"], range(adapter.n_layers))
    with capture(model, adapter, names) as cache, torch.no_grad():
        logits = model(input_ids).logits
    for layer in range(adapter.n_layers):
        pre, post = cache[f"blocks.{layer}.hook_resid_pre"], cache[f"blocks.{layer}.hook_resid_post"]
        added = cache[f"blocks.{layer}.hook_attn_out"] + cache[f"blocks.{layer}.hook_mlp_out"]
        torch.testing.assert_close(post, pre + added, atol=1e-5, rtol=1e-5)
    last = cache[f"blocks.{adapter.n_layers - 1}.hook_resid_post"]
    with torch.no_grad():
        rebuilt = adapter.lm_head()(adapter.norm_final()(last))
    torch.testing.assert_close(rebuilt, logits, atol=1e-5, rtol=1e-5)


def test_masking_all_heads_equals_zeroing_attention(model: nn.Module, input_ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    layer = adapter.n_layers - 1
    bias = adapter.b_O(layer)

    def only_bias(_m: nn.Module, _i: object, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        zero = torch.zeros_like(out[0]) + (bias if bias is not None else 0)
        return (zero, *out[1:])

    handle = adapter.attn(layer).register_forward_hook(only_bias)
    with torch.no_grad():
        zeroed = model(input_ids).logits
    handle.remove()
    heads = [head_label(layer, h) for h in range(adapter.n_heads)]
    with mask_heads(model, adapter, heads), torch.no_grad():
        masked = model(input_ids).logits
    torch.testing.assert_close(masked, zeroed, atol=1e-5, rtol=1e-5)


def test_masking_one_head_removes_only_its_contribution(model: nn.Module, input_ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    layer, head = 1, 1
    with capture(model, adapter, [f"blocks.{layer}.attn.hook_z"]) as cache, torch.no_grad():
        model(input_ids)
    contributions = per_head_output(adapter, layer, cache[f"blocks.{layer}.attn.hook_z"])
    keep = [h for h in range(adapter.n_heads) if h != head]
    expected = contributions[:, :, keep].sum(dim=2)
    bias = adapter.b_O(layer)
    if bias is not None:
        expected = expected + bias
    with mask_heads(model, adapter, [(layer, head)]):
        out = _attn_output(model, adapter, layer, input_ids)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Layers below are untouched; the unmasked model is restored afterwards.
    with capture(model, adapter, ["blocks.0.hook_resid_post"]) as before, torch.no_grad():
        model(input_ids)
    with mask_heads(model, adapter, [(layer, head)]), capture(model, adapter, ["blocks.0.hook_resid_post"]) as after:
        with torch.no_grad():
            model(input_ids)
    torch.testing.assert_close(before["blocks.0.hook_resid_post"], after["blocks.0.hook_resid_post"])


def test_hooks_are_removed_after_an_exception(model: nn.Module, input_ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    baseline = _hook_count(model)
    implementation = model.config._attn_implementation
    names = hook_names(["hook_resid_post", "attn.hook_pattern", "attn.hook_z"], range(adapter.n_layers))
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, adapter, names), mask_heads(model, adapter, ["L0H0"]):
            assert _hook_count(model) > baseline
            raise RuntimeError("boom")
    assert _hook_count(model) == baseline
    assert model.config._attn_implementation == implementation


def test_bad_names_and_heads_are_clear_errors(model: nn.Module) -> None:
    adapter = adapter_for(model)
    with pytest.raises(SublensError, match="kind one of"), capture(model, adapter, ["blocks.0.mlp"]):
        pass
    with pytest.raises(SublensError, match="layers"), capture(model, adapter, ["blocks.99.hook_resid_post"]):
        pass
    with pytest.raises(SublensError, match="does not exist"), mask_heads(model, adapter, ["L0H99"]):
        pass
    with pytest.raises(SublensError, match="L<layer>H<head>"):
        parse_head("layer0head1")
    assert parse_head("L12H3") == (12, 3)
