"""Attention-head importance by entropy, and the head masks of a pruning sweep.

**Head entropy.** Row q of head h's attention pattern, A[h, q, :], is a probability
distribution over the keys 0..q. Its Shannon entropy in nats is

    H(h, q) = - sum_k A[h, q, k] log A[h, q, k]        (0 log 0 = 0)

A head's entropy is the mean of H(h, q) over every *valid* query row of every prompt, pooled
(each row counts once, so a longer prompt weighs more). Valid rows are:
- non-padding positions only: prompts are right-padded, so a real token never attends to
  padding (causal mask) and its row equals the unpadded prompt's row exactly; padding query
  rows are dropped through the attention mask;
- without the first position of each prompt: it can only attend to itself, so its entropy is
  0 for every head; keeping it would pull every head toward 0 by the same number of rows and
  carry no information about the head.
Low entropy = a focused head (attends to few tokens); high entropy = a diffuse head.

**Masks.** With H_total = n_layers x n_heads heads and kept fraction f, exactly
round(f * H_total) heads are kept (halves round up). Criteria:
- ``entropy``: keep the lowest-entropy heads, prune the rest (prune above the percentile);
- ``reverse``: keep the highest-entropy heads, prune the lowest (the opposite criterion);
- ``random``: keep a random set; draw d uses one seeded permutation of all heads for every
  fraction, so like the entropy criterion its kept sets are nested as f decreases.
Ties in entropy are broken by (layer, head) order. A pruned head is removed with
`sublens.hooks.mask_heads` (its z scaled by 0 before W_O, i.e. its output removed; this equals
zeroing its columns of W_O). For Gemma3 (post-norm residual) the remaining heads' sum still
passes through the post-attention RMSNorm, so removing a head also rescales what the others add.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sublens.arch import Adapter
from sublens.errors import ConfigError
from sublens.hooks import Head, capture, hook_names, mask_heads
from sublens.settings import CRITERIA, Criterion

# ---------------------------------------------------------------------------------------------
# entropy


def row_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats, float64) of each attention row: [..., query, key] -> [..., query]."""
    p = pattern.double()
    return -torch.special.xlogy(p, p).sum(dim=-1)


def valid_query_rows(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rows that count: non-padding positions except each sequence's first one. [b, pos] -> bool."""
    valid = attention_mask.bool()
    first = valid & (valid.long().cumsum(dim=-1) == 1)
    return valid & ~first


def entropy_sums(pattern: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence and head: the sum of row entropies over valid rows, and the number of rows.

    pattern [b, head, query, key], attention_mask [b, query] -> sums [b, head] (float64), rows [b].
    """
    rows = valid_query_rows(attention_mask)  # [b, q]
    entropy = row_entropy(pattern)  # [b, head, q]
    # where(), not a product: a padding row may hold NaN (a fully masked softmax), and NaN * 0 is NaN.
    sums = torch.where(rows[:, None, :], entropy, 0.0).sum(dim=-1)  # [b, head]
    return sums, rows.sum(dim=-1)


def head_entropy(pattern: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean entropy per head over the valid rows of every sequence of one pattern: [head]."""
    if attention_mask is None:
        attention_mask = torch.ones(pattern.shape[0], pattern.shape[2], dtype=torch.long)
    sums, rows = entropy_sums(pattern, attention_mask)
    return sums.sum(dim=0) / rows.sum()


@dataclass(frozen=True)
class HeadEntropy:
    """Pooled mean entropy per head and its per-prompt breakdown."""

    mean: torch.Tensor  # [layer, head] float64: pooled over all valid rows of all prompts
    per_prompt: torch.Tensor  # [prompt, layer, head]: mean over that prompt's valid rows
    rows: torch.Tensor  # [prompt]: valid rows per prompt

    def tensors(self) -> dict[str, torch.Tensor]:
        """For safetensors."""
        return {
            "entropy": self.mean,
            "entropy_per_prompt": self.per_prompt,
            "rows_per_prompt": self.rows,
        }


def right_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [b, max_len], padding on the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
        mask[i, : len(p)] = 1
    return ids, mask


@torch.inference_mode()
def attention_entropy(
    model: nn.Module,
    adapter: Adapter,
    prompts: Sequence[Sequence[int]],
    batch_size: int = 8,
    progress: bool = True,
) -> HeadEntropy:
    """Entropy of every head on token-id prompts (see the module docstring for the definition)."""
    if not prompts or any(len(p) < 2 for p in prompts):
        raise ConfigError("Head entropy needs prompts of at least 2 tokens (the first row is excluded).")
    device = next(model.parameters()).device
    names = hook_names(["attn.hook_pattern"], range(adapter.n_layers))
    sums = torch.zeros(len(prompts), adapter.n_layers, adapter.n_heads, dtype=torch.float64)
    rows = torch.zeros(len(prompts), dtype=torch.long)
    starts = range(0, len(prompts), batch_size)
    with capture(model, adapter, names) as cache:
        for start in tqdm(starts, desc="head entropy", disable=not progress, leave=False):
            batch = prompts[start : start + batch_size]
            ids, mask = right_padded(batch, pad_id=0)
            model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
            for layer in range(adapter.n_layers):
                pattern = cache[f"blocks.{layer}.attn.hook_pattern"].cpu()  # [b, head, q, k]
                layer_sums, layer_rows = entropy_sums(pattern, mask)
                sums[start : start + len(batch), layer] = layer_sums
                rows[start : start + len(batch)] = layer_rows
    per_prompt = sums / rows[:, None, None]
    return HeadEntropy(mean=sums.sum(dim=0) / rows.sum(), per_prompt=per_prompt, rows=rows)


# ---------------------------------------------------------------------------------------------
# masks


def keep_count(fraction: float, total: int) -> int:
    """round(fraction * total), halves up; the fraction must be in (0, 1]."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"A kept fraction must be in (0, 1], got {fraction}.")
    return int(np.floor(fraction * total + 0.5 + 1e-9))


def ranked_heads(entropy: torch.Tensor | np.ndarray) -> list[Head]:
    """All heads, lowest entropy first (ties: lower layer, then lower head first)."""
    values = np.asarray(entropy, dtype=np.float64)  # [layer, head]
    order = np.argsort(values.reshape(-1), kind="stable")
    n_heads = values.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def random_order(n_layers: int, n_heads: int, seed: int, draw: int) -> list[Head]:
    """A seeded random order of all heads (draw d of seed s); its first n are kept."""
    rng = np.random.default_rng([seed, draw])
    order = rng.permutation(n_layers * n_heads)
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def pruned_heads(
    entropy: torch.Tensor | np.ndarray,
    fraction: float,
    criterion: Criterion,
    seed: int = 0,
    draw: int = 0,
) -> list[Head]:
    """The heads to prune (sorted by layer, head) so that exactly keep_count(fraction) remain."""
    values = np.asarray(entropy, dtype=np.float64)
    n_layers, n_heads = values.shape
    n_keep = keep_count(fraction, n_layers * n_heads)
    if criterion == "entropy":
        order = ranked_heads(values)
    elif criterion == "reverse":
        order = ranked_heads(-values)  # highest entropy first; ties still in (layer, head) order
    elif criterion == "random":
        order = random_order(n_layers, n_heads, seed, draw)
    else:
        raise ConfigError(f"Unknown pruning criterion {criterion!r}; choose from {', '.join(CRITERIA)}.")
    return sorted(order[n_keep:])


# ---------------------------------------------------------------------------------------------
# the sweep


@dataclass(frozen=True)
class Unit:
    """One masked model to measure: a (fraction, criterion, draw) and the heads it prunes."""

    fraction: float
    criterion: Criterion
    draw: int
    pruned: tuple[Head, ...]

    @property
    def key(self) -> str:
        return f"{self.criterion}@{self.fraction:g}#{self.draw}"


def plan(
    entropy: torch.Tensor | np.ndarray,
    fractions: Iterable[float],
    criteria: Iterable[Criterion],
    random_draws: int,
    seed: int,
    draws_at: Mapping[float, int] | None = None,
) -> list[Unit]:
    """Every (fraction, criterion, draw) to measure, in sweep order. `draws_at` gives some
    fractions their own number of random draws (the claim fraction's rank test needs many);
    draw d is the same permutation at every fraction, so the first draws stay nested."""
    draws_at = draws_at or {}
    units = []
    for fraction in fractions:
        for criterion in criteria:
            n_draws = draws_at.get(fraction, random_draws)
            draws = range(n_draws) if criterion == "random" else range(1)
            for draw in draws:
                heads = pruned_heads(entropy, fraction, criterion, seed, draw)
                units.append(Unit(fraction, criterion, draw, tuple(heads)))
    return units


Measure = Callable[[], dict[str, Any]]


def sweep(
    model: nn.Module,
    adapter: Adapter,
    units: Sequence[Unit],
    measure: Measure,
    done: dict[str, dict[str, Any]] | None = None,
    unpruned: dict[str, Any] | None = None,
    progress: bool = True,
) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Measure the model under each unit's head mask; yields (unit, measurement) in order.

    `done` holds measurements of an earlier, interrupted run (by unit key): they are reused, not
    remeasured. A unit that prunes no head gets the `unpruned` measurement when one is given.
    The mask is scoped to each measurement: it is removed before the result is yielded and
    also when `measure` raises.
    """
    done = done or {}
    for unit in tqdm(units, desc="pruning sweep", disable=not progress):
        if unit.key in done:
            result = done[unit.key]
        elif not unit.pruned and unpruned is not None:
            result = unpruned
        else:
            with mask_heads(model, adapter, unit.pruned):
                result = measure()
        yield unit, result
