"""Per-component contributions at the final position: what each attention head and the output
bias add to the residual (``attention_terms``, through the post-norm frozen at the layer's
attention output on post-norm models), the cosines of every head's and MLP's contribution with
reference residuals (``component_cosines``), and the best-scoring head of each number's layer
(``top_heads``).
"""

from __future__ import annotations

import torch

from sublens.arch import Adapter
from sublens.hooks import per_head_output
from sublens.mechanistic.frozen_norm import freeze_norm
from sublens.mechanistic.similarity import cosine

# ---------------------------------------------------------------------------------------------
# components


@torch.no_grad()
def attention_terms(adapter: Adapter, layer: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What each head and the output bias add to the residual: z [b, pos, H, d_head] ->
    (heads [b, pos, H, d_model], bias [b, pos, d_model]), in z's dtype.

    heads.sum(2) + bias equals the layer's ``hook_attn_out``. Without a post-norm, heads are
    ``per_head_output``; with one (Gemma3) they pass through it frozen at the full attention
    output (`sublens.mechanistic` package docstring).
    """
    heads = per_head_output(adapter, layer, z)
    b_O = adapter.b_O(layer)
    bias = (
        b_O.detach().to(z.dtype).expand(*z.shape[:2], -1)
        if b_O is not None
        else z.new_zeros(*z.shape[:2], adapter.d_model)
    )
    if not adapter.post_norm_residual:
        return heads, bias
    frozen = freeze_norm(adapter.attn_out_site(layer), heads.sum(dim=2) + bias)
    norm_bias = frozen.bias if frozen.bias is not None else 0.0
    return frozen.apply(heads), frozen.apply(bias) + norm_bias


@torch.no_grad()
def component_cosines(
    adapter: Adapter, z: torch.Tensor, mlp: torch.Tensor, references: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of every head's and MLP's contribution with reference residuals, per layer.

    z [b, L, H, d_head], mlp [b, L, d] (final position), references [R, L, d] (e.g. the bias
    and control statements' resid_post) -> heads [b, R, L, H], mlp [b, R, L] (float64).
    """
    per_layer = []
    for layer in range(adapter.n_layers):
        heads, _ = attention_terms(adapter, layer, z[:, layer, None].double())  # [b, 1, H, d]
        per_layer.append(cosine(heads[:, None, 0], references[None, :, layer, None]))  # [b, R, H]
    mlp_cos = cosine(mlp[:, None].double(), references[None])  # [b, R, L]
    return torch.stack(per_layer, dim=2), mlp_cos


def top_heads(scores: torch.Tensor, layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per number, the best head of its layer: scores [n, L, H], layer [n] -> (head [n], score [n])."""
    at_layer = scores[torch.arange(scores.shape[0]), layer]  # [n, H]
    best = at_layer.argmax(dim=1)
    return best, at_layer.gather(1, best[:, None])[:, 0]
