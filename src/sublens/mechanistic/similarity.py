"""Residual similarity and spike layers (definitions in the `sublens.mechanistic` package
docstring): the cosine of two residuals in float64 (``cosine``), a number's cosine with a
reference statement per layer (``similarity_profiles``), and the block that raises the
bias-minus-control difference most, with its jump (``spike_layers``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sublens.mechanistic.errors import MechanisticError

# ---------------------------------------------------------------------------------------------
# residual similarity and spike layers


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (broadcasting), in float64; 0 for a zero vector."""
    a, b = a.double(), b.double()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def similarity_profiles(numbers: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """cos(number residual, reference residual) per layer: [n, S, d] x [S, d] -> [n, S]."""
    return cosine(numbers, reference[None])


def spike_layers(diff: torch.Tensor, layers: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spike layer and its jump per number.

    diff: [n, 1 + L]; column 0 is the embedding, column l + 1 is the output of block l.
    Returns (layer [n] long, jump [n] float64): the block l (in `layers`, default 1..L-1) with
    the largest ``diff[:, l + 1] - diff[:, l]``; ties go to the earliest layer.
    """
    jumps = (diff[:, 1:] - diff[:, :-1]).double()  # [n, L]
    n_layers = jumps.shape[1]
    default = list(range(1, n_layers)) or [0]
    allowed = default if layers is None else sorted(set(layers))
    if not allowed or not all(0 <= layer < n_layers for layer in allowed):
        raise MechanisticError(f"Spike layers must be among 0..{n_layers - 1}; got {list(layers or [])}.")
    masked = torch.full_like(jumps, -math.inf)
    masked[:, allowed] = jumps[:, allowed]
    layer = masked.argmax(dim=1)  # torch returns the first maximum
    return layer, jumps.gather(1, layer[:, None])[:, 0]
