"""Decoding one batch of samples: prompts left-padded to a common width with position ids that
skip the pads, an optional shared prefix whose KV is computed once, then one token per step
until a stop token or max_new_tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache

from sublens.scoring.core import (
    AllowedTokens,
    _device,
    _forward,
    _kv,
)
from sublens.scoring.draws import _AllowedMasks, _choose, _row_uniforms


@dataclass(frozen=True)
class Sample:
    prompt_index: int
    sample_index: int
    token_ids: tuple[int, ...]  # generated tokens, the stop token excluded
    finish_reason: Literal["stop", "length"]
    stop_token: int | None
    # With allowed_token_ids: per step, the probability mass (at the sampling temperature, before
    # top-k/top-p) the model put on the allowed tokens. None without a mask.
    allowed_mass: tuple[float, ...] | None


class _SharedPrefix:
    """The KV of a prompt head that many prompts start with (a chat template and its system
    prompt), computed once, alone, so that a row's result does not depend on its batch."""

    def __init__(self, model: Any, ids: list[int]) -> None:
        self.ids = ids
        _, cache = _forward(model, torch.tensor([ids], dtype=torch.long, device=_device(model)))
        self.kv = _kv(cache)  # per layer [1, kv_heads, P, d_head]

    def __len__(self) -> int:
        return len(self.ids)

    def starts(self, prompt: list[int]) -> bool:
        """Whether the prompt starts with the prefix and has at least one token after it."""
        return len(prompt) > len(self.ids) and prompt[: len(self.ids)] == self.ids

    def cache(self, rows: int) -> DynamicCache:
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(self.kv):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
        return cache


def _counts_window_in_slots(model: Any) -> bool:
    """Whether the model has sliding-window attention. Its window is counted in cache slots, so
    pads between a shared prefix and the rest would push real tokens out of the window: such
    models take no shared prefix (left padding alone keeps the window right)."""
    config = getattr(model, "config", None)
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return True
    return bool(getattr(config, "sliding_window", None)) and bool(getattr(config, "use_sliding_window", True))


@dataclass(frozen=True)
class _Settings:
    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int
    seed: int
    stops: set[int]
    allowed: AllowedTokens | None


def _left_padded(
    ids: list[list[int]], width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids [U, width] of prompts left-padded to width.
    The pad id is arbitrary (0): pads are masked and take no position."""
    tokens = torch.zeros((len(ids), width), dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for row, p in enumerate(ids):
        tokens[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention[row, width - len(p) :] = 1
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    return tokens.to(device), attention.to(device), positions.to(device)


def _sample_chunk(
    model: Any,
    ids: list[list[int]],
    rows: list[tuple[int, int]],
    width: int,
    settings: _Settings,
    masks: _AllowedMasks,
    head: _SharedPrefix | None,
) -> list[Sample]:
    device = _device(model)
    unique = sorted({i for i, _ in rows})
    skip = len(head) if head is not None else 0
    tokens, attention, positions = _left_padded([ids[i][skip:] for i in unique], width, device)
    cache = None
    if head is not None:  # [prefix | pads | rest]: the pads sit between the two, masked
        cache = head.cache(len(unique))
        attention = torch.cat([attention.new_ones((len(unique), skip)), attention], dim=-1)
        positions = positions + skip
    logp, cache = _forward(model, tokens, attention, positions, cache)  # logp [U, V]
    # Each distinct prompt ran once; its KV is repeated for its samples.
    pick = torch.tensor([unique.index(i) for i, _ in rows], dtype=torch.long, device=device)  # [B]
    logp = logp.index_select(0, pick)
    cache.batch_select_indices(pick)
    attention = attention.index_select(0, pick)
    next_position = positions[:, -1].index_select(0, pick) + 1  # [B]
    uniforms = torch.stack([_row_uniforms(settings.seed, i, j, settings.max_new_tokens) for i, j in rows])
    generated: list[list[int]] = [[] for _ in rows]
    masses: list[list[float]] = [[] for _ in rows]
    finished: list[Sample | None] = [None] * len(rows)
    active = list(range(len(rows)))  # row numbers still generating, in cache order
    last_step = settings.max_new_tokens - 1
    for step in range(settings.max_new_tokens):
        mask = masks([generated[r] for r in active])
        chosen, mass = _choose(logp, settings.temperature, settings.top_k, settings.top_p, mask, uniforms[active, step])
        still: list[int] = []
        for pos, (r, tok) in enumerate(zip(active, chosen.tolist(), strict=True)):
            if mass is not None:
                masses[r].append(float(mass[pos]))
            if tok in settings.stops:
                finished[r] = _make_sample(rows[r], generated[r], "stop", tok, masses[r], settings.allowed)
                continue
            generated[r].append(tok)
            if step == last_step:
                finished[r] = _make_sample(rows[r], generated[r], "length", None, masses[r], settings.allowed)
            else:
                still.append(pos)
        if not still:
            break
        if len(still) < len(active):  # drop finished rows from the batch and the cache
            keep = torch.tensor(still, dtype=torch.long, device=device)
            cache.batch_select_indices(keep)
            chosen, attention, next_position = (t.index_select(0, keep) for t in (chosen, attention, next_position))
            active = [active[p] for p in still]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
        out = model(
            input_ids=chosen.unsqueeze(1),
            attention_mask=attention,
            position_ids=next_position.unsqueeze(1),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        next_position = next_position + 1
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B_active, V]
    return [s for s in finished if s is not None]


def _make_sample(
    row: tuple[int, int],
    generated: list[int],
    reason: Literal["stop", "length"],
    stop: int | None,
    masses: list[float],
    allowed: AllowedTokens | None,
) -> Sample:
    return Sample(
        prompt_index=row[0],
        sample_index=row[1],
        token_ids=tuple(generated),
        finish_reason=reason,
        stop_token=stop,
        allowed_mass=tuple(masses) if allowed is not None else None,
    )
