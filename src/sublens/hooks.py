"""Scoped activation capture and head masking.

Activation names follow TransformerLens so analyses move between the two:
  blocks.{l}.hook_resid_pre     residual stream entering block l        [batch, pos, d_model]
  blocks.{l}.hook_resid_post    residual stream after block l           [batch, pos, d_model]
  blocks.{l}.attn.hook_z        per-head attention output before W_O    [batch, pos, head, d_head]
  blocks.{l}.attn.hook_v        value vectors per KV head               [batch, pos, kv_head, d_head]
  blocks.{l}.attn.hook_pattern  attention probabilities (eager)         [batch, head, query, key]
  blocks.{l}.hook_attn_out      attention's addition to the residual    [batch, pos, d_model]
  blocks.{l}.hook_mlp_out       MLP's addition to the residual          [batch, pos, d_model]
For Gemma3, hook_attn_out / hook_mlp_out are taken after its post-attention / post-MLP
RMSNorms, i.e. exactly what is added to the residual (adapter.post_norm_residual).

Every context manager here removes its hooks (and restores the attention implementation)
on exit, also when the body raises: a crashed experiment never leaves a model modified.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from sublens.arch import Adapter
from sublens.errors import SublensError

HOOK_KINDS = (
    "hook_resid_pre",
    "hook_resid_post",
    "attn.hook_z",
    "attn.hook_v",
    "attn.hook_pattern",
    "hook_attn_out",
    "hook_mlp_out",
)
_NAME = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in HOOK_KINDS) + r")$")
_HEAD = re.compile(r"^L(\d+)H(\d+)$")

Head = tuple[int, int]


def hook_names(kinds: Iterable[str], layers: Iterable[int]) -> list[str]:
    """All `blocks.{l}.{kind}` names for the given kinds and layers."""
    return [f"blocks.{layer}.{kind}" for layer in layers for kind in kinds]


def parse_head(head: str | Head) -> Head:
    """'L3H2' or (3, 2) -> (3, 2)."""
    if isinstance(head, str):
        match = _HEAD.match(head)
        if not match:
            raise SublensError(f"Bad head label {head!r}: write heads as L<layer>H<head>, e.g. L3H2.")
        return int(match[1]), int(match[2])
    return int(head[0]), int(head[1])


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _first(output: Any) -> torch.Tensor:
    """Modules return a tensor or a tuple whose first element is the hidden states."""
    return output[0] if isinstance(output, tuple) else output


class ActivationCache(dict[str, torch.Tensor]):
    """name -> activation of the most recent forward pass that reached that hook."""


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Temporarily switch to eager attention (sdpa returns no attention probabilities)."""
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextmanager
def capture(
    model: nn.Module,
    adapter: Adapter,
    names: Iterable[str],
    detach: bool = True,
) -> Iterator[ActivationCache]:
    """Capture the named activations of every forward pass run inside the block.

    With `detach=False` the captured tensors keep their graph (for losses on activations).
    """
    cache = ActivationCache()
    parsed = [_parse_name(name, adapter) for name in names]

    def store(name: str, value: torch.Tensor) -> None:
        cache[name] = value.detach() if detach else value

    with ExitStack() as stack:
        if any(kind == "attn.hook_pattern" for _, _, kind in parsed):
            stack.enter_context(eager_attention(model))
        for name, layer, kind in parsed:
            stack.callback(_register(adapter, name, layer, kind, store).remove)
        yield cache


def _parse_name(name: str, adapter: Adapter) -> tuple[str, int, str]:
    match = _NAME.match(name)
    if not match:
        raise SublensError(
            f"Unknown activation name {name!r}: use blocks.<layer>.<kind> with kind one of {', '.join(HOOK_KINDS)}."
        )
    layer = int(match[1])
    if layer >= adapter.n_layers:
        raise SublensError(f"{name!r}: layer {layer} does not exist (the model has {adapter.n_layers} layers).")
    return name, layer, match[2]


def _register(
    adapter: Adapter, name: str, layer: int, kind: str, store: Callable[[str, torch.Tensor], None]
) -> torch.utils.hooks.RemovableHandle:
    if kind == "hook_resid_pre":

        def pre_layer(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            store(name, args[0] if args else kwargs["hidden_states"])

        return adapter.layer(layer).register_forward_pre_hook(pre_layer, with_kwargs=True)
    if kind == "hook_resid_post":
        return adapter.layer(layer).register_forward_hook(lambda _m, _i, out: store(name, _first(out)))
    if kind == "attn.hook_z":

        def pre_o(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            store(name, args[0].unflatten(-1, (adapter.n_heads, adapter.d_head)))

        return adapter.o(layer).register_forward_pre_hook(pre_o)
    if kind == "attn.hook_v":
        return adapter.v(layer).register_forward_hook(lambda _m, _i, out: store(name, adapter.values_from(layer, out)))
    if kind == "attn.hook_pattern":

        def post_attn(_m: nn.Module, _i: Any, out: tuple[torch.Tensor, torch.Tensor | None]) -> None:
            if out[1] is None:
                raise SublensError("Attention probabilities were not returned: the model must run eager attention.")
            store(name, out[1])

        return adapter.attn(layer).register_forward_hook(post_attn)
    if kind == "hook_attn_out":
        return adapter.attn_out_site(layer).register_forward_hook(lambda _m, _i, out: store(name, _first(out)))
    if kind == "hook_mlp_out":
        return adapter.mlp_out_site(layer).register_forward_hook(lambda _m, _i, out: store(name, _first(out)))
    raise AssertionError(kind)


def head_scales(adapter: Adapter, heads: Iterable[str | Head], scale: float = 0.0) -> dict[int, torch.Tensor]:
    """layer -> per-head multiplier [n_heads]: `scale` for the listed heads, 1 elsewhere."""
    scales: dict[int, torch.Tensor] = {}
    for item in heads:
        layer, head = parse_head(item)
        if not (0 <= layer < adapter.n_layers and 0 <= head < adapter.n_heads):
            raise SublensError(
                f"Head L{layer}H{head} does not exist: the model has {adapter.n_layers} layers "
                f"of {adapter.n_heads} heads (L0H0 to L{adapter.n_layers - 1}H{adapter.n_heads - 1})."
            )
        scales.setdefault(layer, torch.ones(adapter.n_heads))[head] = scale
    return scales


@contextmanager
def mask_heads(model: nn.Module, adapter: Adapter, heads: Iterable[str | Head], scale: float = 0.0) -> Iterator[None]:
    """Scale the listed heads' outputs (z, before W_O) by `scale` (0 removes them).

    transformers 5.x ignores `head_mask=`; a pre-hook on the output projection scales each
    head's slice of its input instead, which works under eager and sdpa and in generation.
    Scaling z by 0 equals zeroing that head's attention probabilities (z = A V is linear in A).
    """
    scales = head_scales(adapter, heads, scale)

    def make_hook(multiplier: torch.Tensor) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor]]:
        def pre_o(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            z = args[0].unflatten(-1, (adapter.n_heads, adapter.d_head))  # [b, pos, head, d_head]
            z = z * multiplier.to(device=z.device, dtype=z.dtype)[:, None]
            return (z.flatten(-2),)

        return pre_o

    with ExitStack() as stack:
        for layer, multiplier in scales.items():
            stack.callback(adapter.o(layer).register_forward_pre_hook(make_hook(multiplier)).remove)
        yield


def per_head_output(adapter: Adapter, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's output through its own slice of W_O: [b, pos, head, d_head] -> [b, pos, head, d_model].

    Summed over heads plus b_O this is the output projection's output (before Gemma3's post-norm).
    """
    W_O = adapter.W_O(layer).to(z.dtype)  # [head, d_head, d_model]
    return torch.einsum("bphd,hdm->bphm", z, W_O)
