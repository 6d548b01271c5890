"""Direct logit attribution (definitions in the `sublens.mechanistic` package docstring): every
component's direct contribution to logit[bias] - logit[control] through the final norm frozen at
the final residual (``direct_logit_attribution``, ``Attribution``), the same from captured
activations (``attribution_from_cache``, ``dla_hook_names``), and the contrastive component
scores taken from it (``contrastive_component_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sublens.arch import Adapter
from sublens.hooks import hook_names
from sublens.mechanistic.components import attention_terms
from sublens.mechanistic.frozen_norm import freeze_norm

# ---------------------------------------------------------------------------------------------
# components


@torch.no_grad()
def contrastive_component_scores(
    adapter: Adapter,
    embed: torch.Tensor,
    z: torch.Tensor,
    mlp: torch.Tensor,
    final: torch.Tensor,
    bias_token: int,
    control_token: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive scores of every head and MLP (`sublens.mechanistic` package docstring): each
    component's direct contribution to logit[bias] - logit[control], through the final norm
    frozen at `final`. Same inputs as `direct_logit_attribution` -> heads [b, L, H], mlp [b, L]
    (float64)."""
    dla = direct_logit_attribution(adapter, embed, z, mlp, final, bias_token, control_token)
    return dla.heads, dla.mlp


@dataclass(frozen=True)
class Attribution:
    """Direct logit attribution to logit[bias] - logit[control] (float64, per prompt)."""

    embed: torch.Tensor  # [b]
    heads: torch.Tensor  # [b, L, H]
    attn_bias: torch.Tensor  # [b, L]
    mlp: torch.Tensor  # [b, L]
    constant: torch.Tensor  # [b]: the final norm's bias and the unembedding bias, projected
    logit_diff: torch.Tensor  # [b]: the real logit difference (real norm, lm_head)
    residual_error: torch.Tensor = field(repr=False)  # [b]: max |sum of components - x|

    def total(self) -> torch.Tensor:
        return self.embed + self.heads.sum(dim=(1, 2)) + self.attn_bias.sum(dim=1) + self.mlp.sum(dim=1) + self.constant


def logit_direction(adapter: Adapter, bias_token: int, control_token: int) -> tuple[torch.Tensor, float]:
    """W_U[bias] - W_U[control] [d] (float64) and the unembedding-bias difference."""
    head = adapter.lm_head()
    W_U = head.weight.detach()
    direction = (W_U[bias_token] - W_U[control_token]).double()
    b_U = getattr(head, "bias", None)
    shift = float(b_U[bias_token] - b_U[control_token]) if isinstance(b_U, torch.Tensor) else 0.0
    return direction, shift


def dla_hook_names(n_layers: int) -> list[str]:
    """The activations `attribution_from_cache` reads (capture them with sublens.hooks.capture)."""
    return [
        "blocks.0.hook_resid_pre",
        f"blocks.{n_layers - 1}.hook_resid_post",
        *hook_names(["attn.hook_z", "hook_mlp_out"], range(n_layers)),
    ]


def attribution_from_cache(
    adapter: Adapter,
    cache: dict[str, torch.Tensor],
    bias_token: int,
    control_token: int,
    position: int | None = -1,
) -> Attribution:
    """`direct_logit_attribution` from captured activations (`dla_hook_names`) at `position` of
    every prompt; position None: the cache already holds that one position per prompt."""

    def at(name: str) -> torch.Tensor:
        return cache[name] if position is None else cache[name][:, position]

    L = adapter.n_layers
    z = torch.stack([at(f"blocks.{layer}.attn.hook_z") for layer in range(L)], dim=1)
    mlp = torch.stack([at(f"blocks.{layer}.hook_mlp_out") for layer in range(L)], dim=1)
    return direct_logit_attribution(
        adapter,
        at("blocks.0.hook_resid_pre"),
        z,
        mlp,
        at(f"blocks.{L - 1}.hook_resid_post"),
        bias_token,
        control_token,
    )


@torch.no_grad()
def direct_logit_attribution(
    adapter: Adapter,
    embed: torch.Tensor,
    z: torch.Tensor,
    mlp: torch.Tensor,
    final: torch.Tensor,
    bias_token: int,
    control_token: int,
) -> Attribution:
    """DLA of every component at one position per prompt (`sublens.mechanistic` package docstring).

    embed [b, d] (blocks.0.hook_resid_pre), z [b, L, H, d_head], mlp [b, L, d] (hook_mlp_out),
    final [b, d] (blocks.{L-1}.hook_resid_post), all at that position.
    """
    direction, shift = logit_direction(adapter, bias_token, control_token)
    direction = direction.to(final.device)
    x = final.double()
    frozen = freeze_norm(adapter.norm_final(), x)

    def project(c: torch.Tensor) -> torch.Tensor:
        return (frozen.apply(c) * direction).sum(dim=-1)

    heads, biases, rebuilt = [], [], embed.double().clone()
    for layer in range(adapter.n_layers):
        h, b = attention_terms(adapter, layer, z[:, layer, None].double())  # [b, 1, H, d], [b, 1, d]
        heads.append(project(h[:, 0]))
        biases.append(project(b[:, 0]))
        rebuilt = rebuilt + h[:, 0].sum(dim=1) + b[:, 0] + mlp[:, layer].double()
    constant = torch.full_like(x[:, 0], shift)
    if frozen.bias is not None:
        constant = constant + frozen.bias @ direction
    normed = adapter.norm_final()(final).double()
    return Attribution(
        embed=project(embed.double()),
        heads=torch.stack(heads, dim=1),
        attn_bias=torch.stack(biases, dim=1),
        mlp=project(mlp.double()),
        constant=constant,
        logit_diff=normed @ direction + shift,
        residual_error=(rebuilt - x).abs().amax(dim=-1),
    )
