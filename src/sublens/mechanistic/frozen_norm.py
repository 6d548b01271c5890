"""Norms frozen at a given input: a LayerNorm or RMSNorm whose scale is fixed at one residual
becomes a linear map plus a bias (``FrozenNorm``), the linearisation direct logit attribution
and the post-norm head outputs rest on; ``freeze_norm`` builds one and refuses any norm whose
output it cannot reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sublens.mechanistic.errors import MechanisticError

# ---------------------------------------------------------------------------------------------
# norms frozen at a given input


@dataclass(frozen=True)
class FrozenNorm:
    """A LayerNorm / RMSNorm with its scale fixed at one input x: a linear map plus a bias.

    ``apply(c) = gain * C(c) * inv_scale`` with C the centering (LayerNorm) or the identity
    (RMSNorm) and inv_scale = 1 / s(x); ``norm(x) = apply(x) + bias`` (checked on creation).
    """

    centered: bool
    gain: torch.Tensor  # [d]
    bias: torch.Tensor | None  # [d]
    inv_scale: torch.Tensor  # x.shape[:-1]

    def apply(self, c: torch.Tensor) -> torch.Tensor:
        """c: x.shape[:-1] + (any extra dims) + [d]."""
        if self.centered:
            c = c - c.mean(dim=-1, keepdim=True)
        lead = self.inv_scale.shape
        scale = self.inv_scale.reshape(*lead, *([1] * (c.dim() - len(lead))))
        return c * self.gain.to(c.dtype) * scale.to(c.dtype)


def _norm_eps(norm: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, float | int):
            return float(value)
    return None


@torch.no_grad()
def freeze_norm(norm: nn.Module, x: torch.Tensor) -> FrozenNorm:
    """Freeze `norm` at input x [..., d] (computed in x's dtype; use float64 for attribution).

    Supports nn.LayerNorm and RMSNorms with a gain of ``weight`` (Llama, Qwen2) or
    ``1 + weight`` (Gemma): which one is decided by reproducing norm(x), and anything that does
    not reproduce it is refused rather than silently mis-attributed.
    """
    weight = getattr(norm, "weight", None)
    eps = _norm_eps(norm)
    if not isinstance(weight, torch.Tensor) or eps is None:
        raise MechanisticError(
            f"Cannot freeze the norm {type(norm).__name__}: expected a LayerNorm or an RMSNorm "
            "with `weight` and `eps`/`variance_epsilon`. Add support for it in sublens.mechanistic."
        )
    centered = isinstance(norm, nn.LayerNorm)
    bias_param = getattr(norm, "bias", None) if centered else None
    bias = bias_param.detach().to(x.dtype) if isinstance(bias_param, torch.Tensor) else None
    xc = x - x.mean(dim=-1, keepdim=True) if centered else x
    inv_scale = torch.rsqrt(xc.pow(2).mean(dim=-1) + eps)
    expected = norm(x.to(weight.dtype)).to(x.dtype)
    w = weight.detach().to(x.dtype)
    gains = [w] if centered else [w, 1.0 + w]
    tolerance = (1e-4 if weight.dtype in (torch.float32, torch.float64) else 2e-2) * max(
        1.0, float(expected.abs().max())
    )
    for gain in gains:
        frozen = FrozenNorm(centered, gain, bias, inv_scale)
        rebuilt = frozen.apply(x) + (bias if bias is not None else 0.0)
        if float((rebuilt - expected).abs().max()) <= tolerance:
            return frozen
    raise MechanisticError(
        f"The norm {type(norm).__name__} is not a LayerNorm or an RMSNorm with gain w or 1 + w "
        "(freezing its scale does not reproduce its output). Add support for it in sublens.mechanistic."
    )
