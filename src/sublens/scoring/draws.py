"""One sampling step's choice of token: each row's own stream of uniform draws, allowed-token
masks (format-constrained sampling), temperature / top-k / top-p, and the inverse-CDF draw."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import torch

from sublens.scoring.core import (
    AllowedTokens,
    ScoringError,
)


def _row_uniforms(seed: int, prompt_index: int, sample_index: int, steps: int) -> torch.Tensor:
    """The row's stream of uniform draws in [0, 1), one per step, float64 [steps].

    Seeded from a hash of (seed, prompt, sample) only, so a row's draws do not depend on batching.
    """
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample_index}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.rand(steps, generator=gen, dtype=torch.float64)


class _AllowedMasks:
    """[B, V] bool masks of the allowed next tokens. A callable's sets repeat (one per grammar
    state), so each distinct set becomes a mask row once."""

    def __init__(self, allowed: AllowedTokens | None, vocab: int, device: torch.device) -> None:
        self.allowed, self.vocab, self.device = allowed, vocab, device
        self._rows: dict[frozenset[int], torch.Tensor] = {}

    def _row(self, ids: Collection[int]) -> torch.Tensor:
        key = ids if isinstance(ids, frozenset) else frozenset(int(t) for t in ids)
        row = self._rows.get(key)
        if row is None:
            if not key:
                raise ScoringError("allowed_token_ids gave an empty set: at least one token must be allowed.")
            if min(key) < 0 or max(key) >= self.vocab:
                raise ScoringError(f"allowed_token_ids has ids outside the vocabulary (0..{self.vocab - 1}).")
            row = torch.zeros(self.vocab, dtype=torch.bool)
            row[torch.tensor(sorted(key), dtype=torch.long)] = True
            self._rows[key] = row
        return row

    def __call__(self, generated: list[list[int]]) -> torch.Tensor | None:
        if self.allowed is None:
            return None
        if callable(self.allowed):
            return torch.stack([self._row(self.allowed(g)) for g in generated]).to(self.device)
        return self._row(self.allowed).expand(len(generated), -1).to(self.device)


def _choose(
    logp: torch.Tensor,  # [B, V] log-probs at temperature 1
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    mask: torch.Tensor | None,  # [B, V] bool
    uniforms: torch.Tensor,  # [B] float64 in [0, 1): this step's draw per row
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token per row [B] and the allowed mass per row [B] (None without a mask).

    Order: temperature, allowed-token mask (renormalised), top-k, top-p; then inverse-CDF
    sampling with the row's own uniform draw.
    """
    scaled = logp if temperature == 0 else torch.log_softmax(logp / temperature, dim=-1)
    mass = None
    columns = None  # with a mask: the tokens any row may take; the rest of the vocabulary is skipped
    if mask is not None:
        columns = mask.any(dim=0).nonzero().squeeze(-1)  # [C]
        scaled, mask = scaled.index_select(-1, columns), mask.index_select(-1, columns)  # [B, C]
        mass = scaled.exp().masked_fill(~mask, 0.0).sum(dim=-1)  # [B]
        scaled = scaled.masked_fill(~mask, float("-inf"))
    chosen = _draw(scaled, temperature, top_k, top_p, uniforms)
    return (chosen if columns is None else columns[chosen]), mass


def _draw(
    scaled: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, uniforms: torch.Tensor
) -> torch.Tensor:
    """The column each row draws from its log-probs at temperature (-inf: not allowed)."""
    if temperature == 0:
        return scaled.argmax(dim=-1)
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)  # [B, V], renormalised over what is left
    if top_p is not None and top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        drop_sorted = before >= top_p  # smallest prefix reaching top_p is kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    return _inverse_cdf(probs, uniforms.to(probs.device))


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative (unnormalised) mass exceeds u * total.

    A token without mass is never chosen: its cumulative sum equals its predecessor's. Rounding
    can put u * total at the very top; such a draw falls to the last token with mass.
    """
    cdf = probs.double().cumsum(dim=-1)  # [B, V]
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)  # [B, 1]
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    last_with_mass = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(tokens, last_with_mass)
