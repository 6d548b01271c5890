"""What scoring and sampling share: token-id types, `ScoringError`, the `LM` protocol, model
helpers (context length, vocabulary width, eval mode, one forward pass and its key/value cache)
and the checks on a scoring request."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from sublens.errors import SublensError

TokenIds = Sequence[int] | torch.Tensor
KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, kv_heads, seq, d_head]
AllowedTokens = Collection[int] | Callable[[Sequence[int]], Collection[int]]

# Tokens that end an assistant turn in common chat formats (used when present in the vocabulary).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "<|end|>")


class ScoringError(SublensError):
    """Bad input to scoring or sampling (empty candidates, too-long prompt, empty word...)."""


class LMLike(Protocol):
    """Anything with a model and a tokenizer (sublens.models.LoadedModel)."""

    model: Any
    tokenizer: Any


LM = LMLike | tuple[Any, Any]


def _unpack(lm: LM) -> tuple[Any, Any]:
    if isinstance(lm, tuple):
        model, tokenizer = lm
        return model, tokenizer
    return lm.model, lm.tokenizer


# ---------------------------------------------------------------------------------------------
# model helpers


def max_positions(model: Any) -> int | None:
    """Longest sequence the model was built for (max_position_embeddings / n_positions)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocab_width(model: Any) -> int:
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Dropout off for the duration (a model left in train mode scores randomly); every
    module's own mode is restored afterwards, even on an exception."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _forward(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: DynamicCache | None = None,
) -> tuple[torch.Tensor, DynamicCache]:
    """One forward pass. input_ids [B, T] -> (last-position log-probs [B, V] float32, cache
    holding the T positions after whatever `cache` held already). attention_mask [B, cached + T]
    and position_ids [B, T] for padded rows (None: no padding).

    A config-less DynamicCache keeps every position in every layer (no sliding-window
    cropping), so its tensors can be sliced and regrouped freely; sliding-window layers still
    get their window through the attention mask.
    """
    cache = DynamicCache() if cache is None else cache
    padding = {} if attention_mask is None else {"attention_mask": attention_mask, "position_ids": position_ids}
    out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1, **padding)
    logits = out.logits[:, -1, :].float()  # [B, V]
    return torch.log_softmax(logits, dim=-1), cache


def _kv(cache: DynamicCache) -> KV:
    out: KV = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise ScoringError(
                f"The model's cache layer {type(layer).__name__} holds no key/value tensors "
                "(linear attention?); KV reuse needs a transformer with a key/value cache."
            )
        out.append((keys, values))
    return out


# ---------------------------------------------------------------------------------------------
# input checks


def _as_ids(ids: TokenIds, what: str) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ScoringError(f"{what} must be a 1-D list of token ids, got shape {tuple(ids.shape)}.")
        return [int(t) for t in ids.tolist()]
    return [int(t) for t in ids]


def _check_request(model: Any, prompt: list[int], continuations: list[tuple[int, ...]], vocab: int, where: str) -> None:
    if not prompt:
        raise ScoringError(f"{where}: the prompt has no tokens; give at least one (e.g. BOS).")
    if not continuations:
        raise ScoringError(f"{where}: the list of continuations is empty; give at least one.")
    for c in continuations:
        if not c:
            raise ScoringError(f"{where}: a continuation has no tokens; every candidate needs at least one.")
    for t in (*prompt, *(t for c in continuations for t in c)):
        if not 0 <= t < vocab:
            raise ScoringError(f"{where}: token id {t} is outside the vocabulary (0..{vocab - 1}).")
    limit = max_positions(model)
    longest = len(prompt) + max(len(c) for c in continuations)
    if limit is not None and longest > limit:
        raise ScoringError(
            f"{where}: prompt ({len(prompt)} tokens) + longest continuation is {longest} tokens, "
            f"more than the model's context of {limit}. Shorten the prompt or the candidates."
        )
