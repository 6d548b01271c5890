"""Sampling: explicit temperature / top_k / top_p / max_new_tokens / seed (no library defaults),
stop tokens, an optional allowed-token mask per step (format-constrained sampling), one
random stream per (prompt, sample) so a row's draws do not depend on batching. Prompts of
different lengths decode together: each prompt runs left-padded to its own length rounded up past the next
multiple of ``pad_multiple`` (at least one pad, so every row always carries an attention mask),
with position ids that skip the pads. Rows that finish leave the decoding batch and waiting
prompts take their slots (see `sublens.scoring.decode._DecodingBatch`), so the batch stays full.
A row's numbers depend on the other rows only through float rounding (~1e-5 in log-probability
on SmolLM2, the same as a change of batch size), and its draws only on its own stream.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sublens.kv_budget import rows_within_budget
from sublens.prompts import PromptText, encode_prompt
from sublens.scoring.core import (
    END_OF_TURN_TOKENS,
    LM,
    AllowedTokens,
    ScoringError,
    TokenIds,
    _as_ids,
    _check_request,
    _device,
    _eval_mode,
    _unpack,
    _vocab_width,
    max_positions,
)
from sublens.scoring.decode import (
    Sample,
    _counts_window_in_slots,
    _DecodingBatch,
    _prefill,
    _Prefilled,
    _Settings,
    _SharedPrefix,
)
from sublens.scoring.draws import _AllowedMasks


@dataclass(frozen=True)
class TextSample(Sample):
    text: str = ""


def shared_prefix(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix every prompt starts with, leaving each at least one token."""
    if not prompts:
        return []
    first, shortest = list(prompts[0]), min(len(p) for p in prompts)
    length = 0
    while length < shortest - 1 and all(p[length] == first[length] for p in prompts):
        length += 1
    return first[:length]


def padded_length(length: int, pad_multiple: int) -> int:
    """The length a prompt is left-padded to: past the next multiple of pad_multiple, so every
    row has at least one pad (pad_multiple 1: one pad). Depends on the prompt alone."""
    return (length // pad_multiple + 1) * pad_multiple


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int, n: int) -> None:
    if temperature < 0:
        raise ScoringError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ScoringError(f"top_k must be None (off) or >= 1, got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ScoringError(f"top_p must be None (off) or in (0, 1], got {top_p}.")
    if max_new_tokens < 1:
        raise ScoringError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if n < 1:
        raise ScoringError(f"n (samples per prompt) must be >= 1, got {n}.")


@torch.inference_mode()
def sample(
    model: Any,
    prompts: Sequence[TokenIds],
    *,
    n: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    max_new_tokens: int,
    seed: int,
    stop_token_ids: Collection[int],
    allowed_token_ids: AllowedTokens | None = None,
    batch_size: int = 32,
    pad_multiple: int = 32,
    prefix: Sequence[int] | None = None,
) -> list[Sample]:
    """n samples per prompt (token ids), ordered by (prompt, sample).

    Every setting is explicit: temperature 0 is greedy, top_k/top_p None means off. Sampling
    stops at any of stop_token_ids or after max_new_tokens. allowed_token_ids restricts every
    step to a set of tokens (or to the set a callable returns for the tokens generated so far),
    renormalising the model's probabilities over it. The same arguments and seed give the same
    samples; sample j of prompt i draws from its own stream, so batch_size and the other prompts
    touch it only through float rounding of the model's probabilities.
    Prompts whose padded lengths (`padded_length`, set by pad_multiple) agree run together; up to
    batch_size rows decode at a time (fewer where their key/value cache would pass the scoring
    memory budget, see `sublens.kv_budget`), and a finished row's slot goes to a waiting one.
    `prefix`: token ids that many prompts start with (e.g. `shared_prefix` of the whole data
    set); its KV is computed once and each such prompt runs only the rest (padded to a
    multiple of pad_multiple). Pass the same prefix whenever the same samples are wanted.
    Models with sliding-window attention ignore it (see `_counts_window_in_slots`).
    """
    _check_sampling(temperature, top_k, top_p, max_new_tokens, n)
    if batch_size < 1:
        raise ScoringError(f"batch_size must be at least 1, got {batch_size}.")
    if pad_multiple < 1:
        raise ScoringError(f"pad_multiple must be at least 1, got {pad_multiple}.")
    if not prompts:
        raise ScoringError("No prompts given to sample from; pass at least one.")
    vocab = _vocab_width(model)
    stops = {int(t) for t in stop_token_ids}
    ids = _checked_prompts(model, prompts, vocab, max_new_tokens)
    masks = _AllowedMasks(allowed_token_ids, vocab, _device(model))
    settings = _Settings(temperature, top_k, top_p, max_new_tokens, seed, stops, allowed_token_ids)
    out: dict[tuple[int, int], Sample] = {}
    with _eval_mode(model):
        head = _SharedPrefix(model, list(prefix)) if prefix and not _counts_window_in_slots(model) else None
        bands = sorted(_bands(ids, head, n, pad_multiple).items())
        longest = max((len(head) if shared and head is not None else 0) + width for (shared, width), _ in bands)
        rows_at_once = rows_within_budget(model, batch_size, longest + max_new_tokens)
        batch = _DecodingBatch(settings, masks)
        waiting = deque((band, row) for band, rows in bands for row in rows)
        while waiting or len(batch):
            while waiting and rows_at_once - len(batch) >= _admit_at_least(rows_at_once):
                room = rows_at_once - len(batch)
                joining = _DecodingBatch(settings, masks, _prefill_next(model, ids, waiting, room, head))
                finished = joining.draw()  # each row's first token, from its prompt's own pass
                batch.join(joining)
                out.update(((s.prompt_index, s.sample_index), s) for s in finished)
            if len(batch):
                batch.advance(model)
                out.update(((s.prompt_index, s.sample_index), s) for s in batch.draw())
    return [out[(i, j)] for i in range(len(ids)) for j in range(n)]


def _admit_at_least(rows_at_once: int) -> int:
    """Waiting rows join once this many slots are free: each joining costs a prefill pass and a
    copy of the batch's cache, so the slots are filled a few at a time rather than one by one."""
    return max(1, rows_at_once // 8)


def _prefill_next(
    model: Any,
    ids: list[list[int]],
    waiting: deque[tuple[tuple[bool, int], tuple[int, int]]],
    room: int,
    head: _SharedPrefix | None,
) -> _Prefilled:
    """Take up to `room` waiting rows of the first waiting band and run their prompts."""
    (shared, width), _ = waiting[0]
    rows: list[tuple[int, int]] = []
    while waiting and len(rows) < room and waiting[0][0] == (shared, width):
        rows.append(waiting.popleft()[1])
    return _prefill(model, ids, rows, width, head if shared else None)


def _checked_prompts(model: Any, prompts: Sequence[TokenIds], vocab: int, max_new_tokens: int) -> list[list[int]]:
    """The prompts as token-id lists, each checked: ids in the vocabulary, and room in the
    model's context for max_new_tokens after it."""
    ids = [_as_ids(p, "prompt_ids") for p in prompts]
    limit = max_positions(model)
    for i, p in enumerate(ids):
        _check_request(model, p, [(0,)], vocab, f"prompt {i}")
        if limit is not None and len(p) + max_new_tokens > limit:
            raise ScoringError(
                f"prompt {i}: {len(p)} tokens + max_new_tokens={max_new_tokens} exceeds the "
                f"model's context of {limit}. Lower max_new_tokens or shorten the prompt."
            )
    return ids


def _bands(
    ids: list[list[int]], head: _SharedPrefix | None, n: int, pad_multiple: int
) -> dict[tuple[bool, int], list[tuple[int, int]]]:
    """(shared, padded width) -> rows (prompt, sample). A band: rows that share the prefix (or
    not) and have the same padded length after it."""
    bands: dict[tuple[bool, int], list[tuple[int, int]]] = defaultdict(list)
    for i, p in enumerate(ids):
        shared = head is not None and head.starts(p)
        rest = len(p) - (len(head) if shared and head is not None else 0)
        bands[(shared, padded_length(rest, pad_multiple))].extend((i, j) for j in range(n))
    return bands


def default_stop_token_ids(lm: LM) -> list[int]:
    """EOS of the tokenizer and generation config, plus end-of-turn tokens in the vocabulary."""
    model, tokenizer = _unpack(lm)
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list | tuple):
        ids.update(int(t) for t in gen_eos)
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


def sample_text(
    lm: LM,
    prompts: Sequence[PromptText | str],
    *,
    n: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    max_new_tokens: int,
    seed: int,
    stop_token_ids: Collection[int] | None = None,
    allowed_token_ids: AllowedTokens | None = None,
    batch_size: int = 32,
    pad_multiple: int = 32,
    prefix: Sequence[int] | None = None,
) -> list[TextSample]:
    """sample() on prompts given as text; stop tokens default to default_stop_token_ids(lm)
    (record them: they are part of the sampling settings)."""
    model, tokenizer = _unpack(lm)
    stops = default_stop_token_ids(lm) if stop_token_ids is None else stop_token_ids
    samples = sample(
        model,
        [encode_prompt(tokenizer, p) for p in prompts],
        n=n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        stop_token_ids=stops,
        allowed_token_ids=allowed_token_ids,
        batch_size=batch_size,
        pad_multiple=pad_multiple,
        prefix=prefix,
    )
    return [
        TextSample(
            prompt_index=s.prompt_index,
            sample_index=s.sample_index,
            token_ids=s.token_ids,
            finish_reason=s.finish_reason,
            stop_token=s.stop_token,
            allowed_mass=s.allowed_mass,
            text=tokenizer.decode(list(s.token_ids)),
        )
        for s in samples
    ]
