"""The scoring memory budget (sublens.kv_budget): the bytes per position match the cache a real
forward pass builds, a budget lowers the rows run together exactly as its arithmetic says, and
a lowered batch changes no score and no sample."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from sublens.config import Config
from sublens.kv_budget import (
    DEFAULT_SCORING_MEMORY_MB,
    kv_bytes_per_position,
    rows_within_budget,
    scoring_memory,
)
from sublens.scoring import sample, score_many
from tiny import FAMILIES, VOCAB, tiny_model

MIB = 2**20


def cache_bytes(model: torch.nn.Module, positions: int) -> int:
    """Bytes of keys and values a plain forward over `positions` tokens leaves in its cache."""
    ids = torch.arange(positions).remainder(VOCAB).unsqueeze(0)
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_bytes_per_position_match_a_real_cache(family: str) -> None:
    model = tiny_model(family)
    # 3 positions: within every tiny model's sliding window (a sliding layer keeps window - 1),
    # so every layer holds all of them. Beyond it the estimate errs high, on the safe side.
    assert kv_bytes_per_position(model) * 3 == cache_bytes(model, 3)


def test_a_budget_lowers_the_rows_by_its_arithmetic() -> None:
    model = tiny_model("llama")  # 3 layers x 2 kv heads x head_dim 8 x 2 (K, V) x 4 bytes
    per_position = 3 * 2 * 8 * 2 * 4
    assert kv_bytes_per_position(model) == per_position
    assert rows_within_budget(model, 128, context=50) == 128  # the default budget holds them
    with scoring_memory(1.0):  # 1 MiB / (2 copies x 50 positions x 384 bytes) = 27.3 rows
        assert rows_within_budget(model, 128, context=50) == MIB // (2 * 50 * per_position) == 27
        assert rows_within_budget(model, 8, context=50) == 8  # never more than batch_size
    with scoring_memory(0.001):  # not even one row fits: still one, never zero
        assert rows_within_budget(model, 128, context=50) == 1
    assert rows_within_budget(model, 128, context=50) == 128  # the block restored the default


@contextmanager
def largest_batch(model: torch.nn.Module) -> Iterator[list[int]]:
    """The batch sizes the model's forward passes see inside the block."""
    seen: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True
    )
    try:
        yield seen
    finally:
        handle.remove()


def test_a_lowered_batch_changes_no_score_and_no_sample() -> None:
    model = tiny_model("qwen2")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (9,), generator=g).tolist() for _ in range(12)]
    conts = [[[1], [1, 2], [3, 4, 5], [7]] for _ in prompts]
    unbounded = score_many(model, list(zip(prompts, conts, strict=True)), batch_size=64)
    # Room for about 3 rows of 12 positions: the 12 prompts run in several batches.
    rows = 3
    mb = rows * 2 * 12 * kv_bytes_per_position(model) / MIB
    with scoring_memory(mb * 1.01), largest_batch(model) as seen:
        bounded = score_many(model, list(zip(prompts, conts, strict=True)), batch_size=64)
    assert max(seen) == rows
    for a, b in zip(unbounded, bounded, strict=True):
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5, equal_nan=True)
    kwargs: dict[str, Any] = dict(
        n=2, temperature=1.0, top_k=None, top_p=None, max_new_tokens=4, seed=3, stop_token_ids=[], pad_multiple=4
    )
    free = sample(model, prompts, batch_size=64, **kwargs)
    with scoring_memory(mb), largest_batch(model) as seen:
        squeezed = sample(model, prompts, batch_size=64, **kwargs)
    assert max(seen) < 24 and squeezed == free


def test_every_experiment_config_carries_the_budget() -> None:
    assert Config().scoring_memory_mb == DEFAULT_SCORING_MEMORY_MB
    with pytest.raises(ValueError, match="positive"), scoring_memory(0):
        pass
