"""Decoding samples: prompts left-padded to a common width with position ids that skip the pads,
an optional shared prefix whose KV is computed once, then one token per step until a stop token
or max_new_tokens, in a batch that rows leave when they finish and new prompts join."""

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


@dataclass
class _Prefilled:
    """Rows whose prompts have run: each row's first next-token log-probs and its cache."""

    rows: list[tuple[int, int]]  # (prompt, sample), in cache order
    logp: torch.Tensor  # [B, V]
    cache: DynamicCache
    attention: torch.Tensor  # [B, cached positions]
    next_position: torch.Tensor  # [B]


def _prefill(
    model: Any, ids: list[list[int]], rows: list[tuple[int, int]], width: int, head: _SharedPrefix | None
) -> _Prefilled:
    """Run the prompts of `rows` (all of one band: same padded width, with or without the head),
    each distinct prompt once, and repeat its KV for its samples."""
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
    pick = torch.tensor([unique.index(i) for i, _ in rows], dtype=torch.long, device=device)  # [B]
    cache.batch_select_indices(pick)
    return _Prefilled(
        rows=list(rows),
        logp=logp.index_select(0, pick),
        cache=cache,
        attention=attention.index_select(0, pick),
        next_position=positions[:, -1].index_select(0, pick) + 1,
    )


def _left_pad(t: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns == 0:
        return t
    shape = list(t.shape)
    shape[dim] = columns
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class _DecodingBatch:
    """Rows decoding together, one token per step. Rows that finish leave; rows whose prompts
    have just run join (`join`) before the next step, so the batch stays full while rows wait.

    Rows joined at different times have caches of different lengths: the shorter are
    left-padded to the longest with masked slots (positions are explicit, so a pad changes no
    position, and sliding windows count back from the newest slot, so a pad on the left moves
    no real token out of a window). A row's numbers then depend on its neighbours only through
    float rounding, as they already do through the batch size (measured on SmolLM2: log-probs
    agree to ~1e-5 across batch sizes and paddings; in bf16 on a GPU the rounding is coarser and
    2 of 60 answers changed with the batch composition); its draws come from its own uniform
    stream, so the same config and seed give the same samples.
    """

    def __init__(self, settings: _Settings, masks: _AllowedMasks, start: _Prefilled | None = None) -> None:
        self.settings, self.masks = settings, masks
        rows = start.rows if start is not None else []
        self.rows: list[tuple[int, int]] = list(rows)  # in cache order
        self.generated: list[list[int]] = [[] for _ in rows]
        self.masses: list[list[float]] = [[] for _ in rows]
        steps = settings.max_new_tokens
        self.uniforms = torch.stack([_row_uniforms(settings.seed, i, j, steps) for i, j in rows]) if rows else None
        self.logp = start.logp if start is not None else None  # [B, V] until the rows draw
        self.chosen: torch.Tensor | None = None  # [B] drawn, not yet run
        self.cache = start.cache if start is not None else None
        self.attention = start.attention if start is not None else None  # [B, cached positions]
        self.next_position = start.next_position if start is not None else None  # [B]

    def __len__(self) -> int:
        return len(self.rows)

    def draw(self) -> list[Sample]:
        """Draw every row's next token from its log-probs; return the rows that finished (a stop
        token, or max_new_tokens reached) and keep the rest, their tokens waiting to run."""
        assert self.logp is not None and self.uniforms is not None
        settings = self.settings
        steps_done = torch.tensor([len(g) for g in self.generated])
        draws = self.uniforms[torch.arange(len(self.rows)), steps_done]
        mask = self.masks(self.generated)
        chosen, mass = _choose(self.logp, settings.temperature, settings.top_k, settings.top_p, mask, draws)
        finished: list[Sample] = []
        still: list[int] = []
        for pos, tok in enumerate(chosen.tolist()):
            if mass is not None:
                self.masses[pos].append(float(mass[pos]))
            if tok in settings.stops:
                finished.append(self._sample(pos, "stop", tok))
                continue
            self.generated[pos].append(tok)
            if len(self.generated[pos]) == settings.max_new_tokens:
                finished.append(self._sample(pos, "length", None))
            else:
                still.append(pos)
        self.logp, self.chosen = None, chosen
        if len(still) < len(self.rows):
            self._keep(still)
        return finished

    def join(self, other: _DecodingBatch) -> None:
        """Take in the rows of `other` (drawn, not yet run), left-padding the shorter caches."""
        if not len(other):
            return
        if not len(self):
            self.__dict__.update(other.__dict__)
            return
        assert self.cache is not None and other.cache is not None
        assert self.attention is not None and other.attention is not None
        mine, theirs = self.attention.shape[1], other.attention.shape[1]
        width = max(mine, theirs)
        _kv(self.cache), _kv(other.cache)  # both hold key/value tensors (checked before any change)
        # Layer by layer, each joined layer replacing the batch's own at once, so that at most one
        # layer's copy exists beside the two caches (a whole joined cache would double the peak).
        layers: list[Any] = list(self.cache.layers)  # key/value layers, as _kv checked
        for layer, joining in zip(layers, list[Any](other.cache.layers), strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, width - mine, 2), _left_pad(joining.keys, width - theirs, 2)])
            layer.values = torch.cat(
                [_left_pad(layer.values, width - mine, 2), _left_pad(joining.values, width - theirs, 2)]
            )
            joining.keys = joining.values = None  # the joining rows' copy is no longer needed
        other.cache = None
        self.attention = torch.cat(
            [_left_pad(self.attention, width - mine, 1), _left_pad(other.attention, width - theirs, 1)]
        )
        self.rows += other.rows
        self.generated += other.generated
        self.masses += other.masses
        for name in ("uniforms", "chosen", "next_position"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))

    def advance(self, model: Any) -> None:
        """Run every row's drawn token through the model: the next log-probs to draw from."""
        assert self.attention is not None and self.next_position is not None and self.chosen is not None
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(self.rows), 1))], dim=-1)
        out = model(
            input_ids=self.chosen.unsqueeze(1),
            attention_mask=self.attention,
            position_ids=self.next_position.unsqueeze(1),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.next_position = self.next_position + 1
        self.logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
        self.chosen = None

    def _sample(self, pos: int, reason: Literal["stop", "length"], stop: int | None) -> Sample:
        return _make_sample(self.rows[pos], self.generated[pos], reason, stop, self.masses[pos], self.settings.allowed)

    def _keep(self, still: list[int]) -> None:
        """Keep only the rows at `still` in the batch and the cache, and drop the slots every
        remaining row has masked at the front (left by rows that joined earlier and finished)."""
        assert self.cache is not None and self.attention is not None and self.chosen is not None
        assert self.next_position is not None and self.uniforms is not None
        self.rows = [self.rows[p] for p in still]
        self.generated = [self.generated[p] for p in still]
        self.masses = [self.masses[p] for p in still]
        keep = torch.tensor(still, dtype=torch.long, device=self.attention.device)
        self.attention = self.attention.index_select(0, keep)
        front = int(self.attention.argmax(dim=-1).min()) if still else 0  # the earliest real slot
        self.attention = self.attention[:, front:]
        self.cache.batch_select_indices(keep)
        if front > 0:
            for layer in list[Any](self.cache.layers):  # key/value layers (join checked them)
                layer.keys, layer.values = layer.keys[:, :, front:], layer.values[:, :, front:]
        self.next_position = self.next_position.index_select(0, keep)
        self.chosen = self.chosen.index_select(0, keep)
        self.uniforms = self.uniforms.index_select(0, keep.cpu())


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
