"""Batched log-probabilities of continuations, with prompt KV reuse and prefix sharing, and
batched sampling with a KV cache.

Scoring (token level): each prompt runs once; its KV cache is shared by all its
continuations. Continuations are put in a prefix tree (trie) per prompt, so a shared prefix
(" 1" in " 12", " 123", ...) is computed once: the work is one token per distinct prefix that
has a continuation after it (leaves need no forward pass: their log-probability comes from
their parent's distribution). Trie nodes are run level by level, ``batch_size`` nodes at a
time; the nodes of one level all have the same context length (prompt + depth), and prompts
are grouped by length, so no batch is ever padded and padding cannot change a result.

    log P(c | prompt) = sum_t log p(c_t | prompt, c_<t)   (chain rule, in float64)

String level: ``score_strings`` tokenizes each string *as it appears after the prompt* (prompt
text + string, tokenized together, then split after the prompt's tokens). When the split is
not clean (the prompt's last token would merge with the string's start), the string is
tokenized on its own and flagged ``in_context=False``.

Word probability: P(word) over all its tokens (chain rule) and the first-token probability,
as two separately named fields. Neither is substituted for the other.

Sampling: explicit temperature / top_k / top_p / max_new_tokens / seed (no library defaults),
stop tokens, an optional allowed-token mask per step (format-constrained sampling), one
random stream per (prompt, sample) so results do not depend on batching. Prompts of different
lengths decode together: each prompt is left-padded to its own length rounded up past the next
multiple of ``pad_multiple`` (at least one pad, so every row always carries an attention mask),
with position ids that skip the pads. A row's padding depends on its own length only, so a
sample never depends on which other prompts share its batch.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from sublens.errors import SublensError
from sublens.prompts import PromptText, as_prompt, encode_prompt

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
# results


@dataclass(frozen=True)
class ScoringStats:
    """Work done for one prompt, in tokens run through the model."""

    prompt_tokens: int  # the prompt, run once
    node_tokens: int  # trie nodes run (one token each)
    naive_tokens: int  # what one full forward pass per continuation would run

    @property
    def tokens_processed(self) -> int:
        return self.prompt_tokens + self.node_tokens


@dataclass(frozen=True)
class ContinuationScores:
    """Log-probabilities of the continuations of one prompt (natural log)."""

    continuations: tuple[tuple[int, ...], ...]
    logprobs: torch.Tensor  # [n, max_len] float32, log p(token_t | prompt, earlier); NaN past the end
    lengths: torch.Tensor  # [n] int64
    total: torch.Tensor  # [n] float64, chain rule: sum of each row's token log-probs
    stats: ScoringStats

    def __len__(self) -> int:
        return len(self.continuations)

    def token_logprobs(self, i: int) -> torch.Tensor:
        """[len_i] log-probs of continuation i's tokens."""
        return self.logprobs[i, : int(self.lengths[i])]


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


def _check_request(
    model: Any, prompt: list[int], continuations: list[tuple[int, ...]], vocab: int, where: str
) -> None:
    if not prompt:
        raise ScoringError(f"{where}: the prompt has no tokens; give at least one (e.g. BOS).")
    if not continuations:
        raise ScoringError(f"{where}: the list of continuations is empty; give at least one.")
    for c in continuations:
        if not c:
            raise ScoringError(
                f"{where}: a continuation has no tokens; every candidate needs at least one."
            )
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


# ---------------------------------------------------------------------------------------------
# the prefix forest


@dataclass
class _Forest:
    """Tries over the continuations of G prompts of equal length, stored level by level.

    Level d holds the distinct (d+1)-token prefixes: tokens[d][i] is node i's last token,
    parents[d][i] its parent at level d-1 (for d = 0: the prompt slot 0..G-1).
    """

    tokens: list[list[int]]
    parents: list[list[int]]
    paths: list[list[list[int]]]  # [prompt slot][continuation] -> node index per level
    owners: list[list[int]]  # [level][node] -> prompt slot

    @classmethod
    def build(cls, continuations: list[list[tuple[int, ...]]]) -> _Forest:
        tokens: list[list[int]] = []
        parents: list[list[int]] = []
        owners: list[list[int]] = []
        index: list[dict[tuple[int, int], int]] = []
        paths: list[list[list[int]]] = []
        for slot, conts in enumerate(continuations):
            slot_paths = []
            for cont in conts:
                parent, path = slot, []
                for d, tok in enumerate(cont):
                    if d == len(index):
                        index.append({})
                        tokens.append([])
                        parents.append([])
                        owners.append([])
                    node = index[d].get((parent, tok))
                    if node is None:
                        node = index[d][(parent, tok)] = len(tokens[d])
                        tokens[d].append(tok)
                        parents[d].append(parent)
                        owners[d].append(slot)
                    path.append(node)
                    parent = node
                slot_paths.append(path)
            paths.append(slot_paths)
        return cls(tokens, parents, paths, owners)

    @property
    def depth(self) -> int:
        return len(self.tokens)

    def internal(self, d: int) -> list[int]:
        """Nodes of level d that have children (the only ones that need a forward pass)."""
        return sorted(set(self.parents[d + 1])) if d + 1 < self.depth else []


def _gather_children(
    logp: torch.Tensor,  # [B, V] distributions after the batch's parents
    batch_parents: torch.Tensor,  # [B] parent ids (level d-1 node or prompt slot)
    n_parents: int,
    child_parent: torch.Tensor,  # [N] parent of every node of level d
    child_token: torch.Tensor,  # [N]
    out: torch.Tensor,  # [N] log-probs of level d, filled where the parent is in the batch
) -> None:
    row_of = torch.full((n_parents,), -1, dtype=torch.long)
    row_of[batch_parents] = torch.arange(len(batch_parents))
    rows = row_of[child_parent]  # [N]
    hit = rows >= 0
    out[hit] = logp[rows[hit].to(logp.device), child_token[hit].to(logp.device)].cpu()


class _BufferLayer(DynamicLayer):
    """A full-attention cache layer over preallocated buffers [B, kv_heads, P + T, d_head] whose
    first P positions are filled: update() writes the next T in place instead of concatenating,
    so a batch's context is copied once (and a shared prompt part can be reused across batches).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        super().__init__()
        self._kbuf, self._vbuf, self._filled = keys, values, filled
        self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._filled + key_states.shape[-2]
        assert end <= self._kbuf.shape[-2], "buffer cache overflow"
        self._kbuf[:, :, self._filled : end] = key_states
        self._vbuf[:, :, self._filled : end] = value_states
        self._filled = end
        self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
        return self.keys, self.values


def _buffer_cache(buffers: KV, filled: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [_BufferLayer(k, v, filled) for k, v in buffers]
    return cache


def _run_prompts(
    model: Any, prompts: torch.Tensor, batch_size: int, on_logp: Callable[[torch.Tensor, torch.Tensor], None]
) -> KV:
    """prompts [G, L] -> per layer KV [G, kv_heads, L, d_head]; on_logp(rows [b], logp [b, V])
    receives the distribution after each prompt."""
    device = _device(model)
    chunks: list[KV] = []
    for start in range(0, prompts.shape[0], batch_size):
        rows = torch.arange(start, min(start + batch_size, prompts.shape[0]))
        logp, cache = _forward(model, prompts[rows].to(device))
        on_logp(rows, logp)
        chunks.append(_kv(cache))
    if len(chunks) == 1:
        return chunks[0]
    return [
        (torch.cat([c[i][0] for c in chunks]), torch.cat([c[i][1] for c in chunks]))
        for i in range(len(chunks[0]))
    ]


def _run_forest(
    model: Any, prompts: torch.Tensor, forest: _Forest, batch_size: int
) -> list[torch.Tensor]:
    """prompts [G, L] -> per level, [N_d] float32 log-prob of each node's token given its prefix."""
    device = _device(model)
    n_slots, prompt_len = prompts.shape
    child_parent = [torch.tensor(p, dtype=torch.long) for p in forest.parents]
    child_token = [torch.tensor(t, dtype=torch.long) for t in forest.tokens]
    logp_levels = [torch.full((len(t),), float("nan")) for t in forest.tokens]

    def first_tokens(rows: torch.Tensor, logp: torch.Tensor) -> None:
        _gather_children(logp, rows, n_slots, child_parent[0], child_token[0], logp_levels[0])

    prompt_kv = _run_prompts(model, prompts, batch_size, first_tokens)

    # KV of the internal nodes of each level, per layer [n_internal_d, kv_heads, d_head].
    level_kv: list[KV] = []
    kv_row: list[torch.Tensor] = []  # per level: node -> row in level_kv[d] (-1: not stored)
    for d in range(forest.depth - 1):
        nodes = forest.internal(d)
        rows_of = torch.full((len(forest.tokens[d]),), -1, dtype=torch.long)
        rows_of[nodes] = torch.arange(len(nodes))
        kv_row.append(rows_of)
        keep_kv = bool(forest.internal(d + 1))  # deeper nodes need these as context
        width = min(batch_size, len(nodes))
        # Context of a level-d node: prompt (L) + its d ancestors, + 1 slot for the node itself.
        buffers: KV = [
            (pk.new_empty(width, pk.shape[1], prompt_len + d + 1, pk.shape[3]),
             pv.new_empty(width, pv.shape[1], prompt_len + d + 1, pv.shape[3]))
            for pk, pv in prompt_kv
        ]
        if n_slots == 1:  # one prompt: its part of the buffers is filled once for the level
            for (bk, bv), (pk, pv) in zip(buffers, prompt_kv, strict=True):
                bk[:, :, :prompt_len] = pk
                bv[:, :, :prompt_len] = pv
        stored: list[KV] = []
        for start in range(0, len(nodes), batch_size):
            batch = torch.tensor(nodes[start : start + batch_size], dtype=torch.long)  # [B]
            b = len(batch)
            chain = [batch]  # the batch's ancestors at levels d-1 .. 0, then prompt slots
            for j in range(d, 0, -1):
                chain.append(child_parent[j][chain[-1]])
            slots = child_parent[0][chain[-1]].to(device)  # [B]
            ancestors = chain[1:][::-1]  # level 0 .. d-1, each [B]
            view: KV = []
            for layer, ((bk, bv), (pk, pv)) in enumerate(zip(buffers, prompt_kv, strict=True)):
                bk, bv = bk[:b], bv[:b]
                if n_slots > 1:
                    bk[:, :, :prompt_len] = pk.index_select(0, slots)
                    bv[:, :, :prompt_len] = pv.index_select(0, slots)
                for j, anc in enumerate(ancestors):
                    lk, lv = level_kv[j][layer]
                    r = kv_row[j][anc].to(device)
                    bk[:, :, prompt_len + j] = lk.index_select(0, r)
                    bv[:, :, prompt_len + j] = lv.index_select(0, r)
                view.append((bk, bv))
            cache = _buffer_cache(view, prompt_len + d)
            ids = child_token[d][batch].unsqueeze(1).to(device)  # [B, 1]
            out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
            _gather_children(
                logp, batch, len(forest.tokens[d]), child_parent[d + 1], child_token[d + 1],
                logp_levels[d + 1],
            )
            if keep_kv:  # the node's own K/V, just written at position L + d
                stored.append([(k[:, :, -1].clone(), v[:, :, -1].clone()) for k, v in view])
            del cache, out
        level_kv.append(
            [
                (torch.cat([s[i][0] for s in stored]), torch.cat([s[i][1] for s in stored]))
                for i in range(len(stored[0]))
            ]
            if stored
            else []
        )
        del buffers
    return logp_levels


# ---------------------------------------------------------------------------------------------
# public: token level


@torch.inference_mode()
def score_many(
    model: Any,
    requests: Sequence[tuple[TokenIds, Sequence[Sequence[int]]]],
    batch_size: int = 128,
) -> list[ContinuationScores]:
    """Score several prompts, each with its own continuations: [(prompt_ids, continuations)].

    Prompts of equal token length are run together (up to ``batch_size`` per forest); each
    prompt's continuations share its KV cache and a prefix tree. Results are in request order.
    """
    if batch_size < 1:
        raise ScoringError(f"batch_size must be at least 1, got {batch_size}.")
    if not requests:
        raise ScoringError("No prompts given to score; pass at least one (prompt, continuations).")
    vocab = _vocab_width(model)
    prompts: list[list[int]] = []
    conts: list[list[tuple[int, ...]]] = []
    for i, (prompt, continuations) in enumerate(requests):
        p = _as_ids(prompt, "prompt_ids")
        cs = [tuple(_as_ids(c, "continuation")) for c in continuations]
        _check_request(model, p, cs, vocab, f"prompt {i}" if len(requests) > 1 else "scoring")
        prompts.append(p)
        conts.append(cs)

    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)

    results: list[ContinuationScores | None] = [None] * len(prompts)
    with _eval_mode(model):
        for members in by_length.values():
            for start in range(0, len(members), batch_size):
                group = members[start : start + batch_size]
                forest = _Forest.build([conts[i] for i in group])
                ids = torch.tensor([prompts[i] for i in group], dtype=torch.long)  # [G, L]
                levels = _run_forest(model, ids, forest, batch_size)
                for slot, i in enumerate(group):
                    results[i] = _assemble(prompts[i], conts[i], forest, slot, levels)
    return [r for r in results if r is not None]


def _assemble(
    prompt: list[int],
    continuations: list[tuple[int, ...]],
    forest: _Forest,
    slot: int,
    levels: list[torch.Tensor],
) -> ContinuationScores:
    n, width = len(continuations), max(len(c) for c in continuations)
    logprobs = torch.full((n, width), float("nan"))
    for row, path in enumerate(forest.paths[slot]):
        for d, node in enumerate(path):
            logprobs[row, d] = levels[d][node]
    lengths = torch.tensor([len(c) for c in continuations], dtype=torch.long)
    total = torch.nan_to_num(logprobs.double(), nan=0.0).sum(dim=1)
    node_tokens = sum(
        1
        for d in range(forest.depth - 1)
        for node in forest.internal(d)
        if forest.owners[d][node] == slot
    )
    stats = ScoringStats(
        prompt_tokens=len(prompt),
        node_tokens=node_tokens,
        naive_tokens=sum(len(prompt) + len(c) for c in continuations),
    )
    return ContinuationScores(tuple(continuations), logprobs, lengths, total, stats)


def score_continuations(
    model: Any,
    prompt_ids: TokenIds,
    continuations: Sequence[Sequence[int]],
    batch_size: int = 128,
) -> ContinuationScores:
    """Log-probabilities of each continuation (token ids) after one prompt (token ids).

    Returns per-token log-probs [n, max_len] (NaN-padded) and chain-rule totals [n].
    """
    return score_many(model, [(prompt_ids, continuations)], batch_size)[0]


# ---------------------------------------------------------------------------------------------
# public: strings and words


@dataclass(frozen=True)
class TokenizedString:
    text: str
    token_ids: tuple[int, ...]
    in_context: bool  # True: the tokens it gets after the prompt; False: tokenized on its own


@dataclass(frozen=True)
class StringScores:
    prompt: PromptText
    prompt_ids: tuple[int, ...]
    strings: tuple[TokenizedString, ...]
    scores: ContinuationScores

    @property
    def total(self) -> torch.Tensor:
        """[n] float64 chain-rule log P(string | prompt)."""
        return self.scores.total

    def as_dict(self) -> dict[str, float]:
        """string -> log P(string | prompt)."""
        return {s.text: float(v) for s, v in zip(self.strings, self.total, strict=True)}


def tokenize_continuations(
    tokenizer: Any, prompt: PromptText | str, strings: Sequence[str]
) -> tuple[list[int], list[TokenizedString]]:
    """Prompt ids and each string's token ids as it would appear right after the prompt.

    prompt text + string is tokenized as one text; when its first tokens are exactly the prompt's
    tokens, the rest are the string's tokens (in_context=True). Otherwise the string changed
    how the prompt's end tokenizes (e.g. the prompt ends mid-word) and the string is tokenized
    on its own, without special tokens (in_context=False).
    """
    p = as_prompt(prompt)
    prompt_ids = encode_prompt(tokenizer, p)
    if not strings:
        raise ScoringError("The list of candidate strings is empty; give at least one.")
    joined = tokenizer(
        [p.text + s for s in strings], add_special_tokens=p.add_special_tokens
    )["input_ids"]
    n = len(prompt_ids)
    out = []
    for s, ids in zip(strings, joined, strict=True):
        ids = list(ids)
        if ids[:n] == prompt_ids:
            tokens, in_context = ids[n:], True
        else:
            tokens = list(tokenizer(s, add_special_tokens=False)["input_ids"])
            in_context = False
        if not tokens:
            raise ScoringError(
                f"The candidate {s!r} tokenizes to no tokens after the prompt. Remove it, or "
                "give its text (e.g. ' owl' with its leading space)."
            )
        out.append(TokenizedString(s, tuple(tokens), in_context))
    return prompt_ids, out


def score_strings(
    lm: LM, prompt: PromptText | str, strings: Sequence[str], batch_size: int = 128
) -> StringScores:
    """log P(string | prompt) for each string (chain rule over its in-context tokens)."""
    return score_strings_many(lm, [prompt], strings, batch_size)[0]


def score_strings_many(
    lm: LM, prompts: Sequence[PromptText | str], strings: Sequence[str], batch_size: int = 128
) -> list[StringScores]:
    """The same candidate strings scored after each of several prompts (batched)."""
    model, tokenizer = _unpack(lm)
    if not prompts:
        raise ScoringError("No prompts given; pass at least one.")
    tokenized = [tokenize_continuations(tokenizer, p, strings) for p in prompts]
    scores = score_many(
        model, [(ids, [t.token_ids for t in toks]) for ids, toks in tokenized], batch_size
    )
    return [
        StringScores(as_prompt(p), tuple(ids), tuple(toks), sc)
        for p, (ids, toks), sc in zip(prompts, tokenized, scores, strict=True)
    ]


@dataclass(frozen=True)
class WordProbability:
    """P(word | prompt) two ways, both natural-log and probability."""

    word: str
    token_ids: tuple[int, ...]
    in_context: bool
    logp_word: float  # chain rule over all the word's tokens
    logp_first_token: float  # the first token only: a different, labelled quantity

    @property
    def p_word(self) -> float:
        return float(torch.tensor(self.logp_word, dtype=torch.float64).exp())

    @property
    def p_first_token(self) -> float:
        return float(torch.tensor(self.logp_first_token, dtype=torch.float64).exp())

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def _word_probs(scores: StringScores) -> list[WordProbability]:
    return [
        WordProbability(
            word=s.text,
            token_ids=s.token_ids,
            in_context=s.in_context,
            logp_word=float(scores.total[i]),
            logp_first_token=float(scores.scores.logprobs[i, 0]),
        )
        for i, s in enumerate(scores.strings)
    ]


def word_probability(
    lm: LM, prompt: PromptText | str, words: Sequence[str], batch_size: int = 128
) -> list[WordProbability]:
    """For each word: full chain-rule P(word | prompt) and first-token probability."""
    if not words:
        raise ScoringError("The list of candidate words is empty; give at least one, e.g. [' owl'].")
    return _word_probs(score_strings(lm, prompt, words, batch_size))


def word_probability_many(
    lm: LM, prompts: Sequence[PromptText | str], words: Sequence[str], batch_size: int = 128
) -> list[list[WordProbability]]:
    """word_probability for the same words after each of several prompts (batched)."""
    if not words:
        raise ScoringError("The list of candidate words is empty; give at least one, e.g. [' owl'].")
    return [_word_probs(s) for s in score_strings_many(lm, prompts, words, batch_size)]


# ---------------------------------------------------------------------------------------------
# sampling


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


@dataclass(frozen=True)
class TextSample(Sample):
    text: str = ""


SAMPLER = "shared-prefix KV, padded batches, per-row inverse-CDF draws (v3)"  # recorded with every sample set


def _row_uniforms(seed: int, prompt_index: int, sample_index: int, steps: int) -> torch.Tensor:
    """The row's stream of uniform draws in [0, 1), one per step, float64 [steps].

    Seeded from a hash of (seed, prompt, sample) only, so a sample does not depend on batching.
    """
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample_index}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.rand(steps, generator=gen, dtype=torch.float64)


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


def _check_sampling(
    temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int, n: int
) -> None:
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
    if mask is not None:
        mass = scaled.exp().masked_fill(~mask, 0.0).sum(dim=-1)  # [B]
        scaled = scaled.masked_fill(~mask, float("-inf"))
    if temperature == 0:
        return scaled.argmax(dim=-1), mass
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
    return _inverse_cdf(probs, uniforms.to(probs.device)), mass


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
    samples; sample j of prompt i does not depend on batch_size or on the other prompts.
    Prompts whose padded lengths (`padded_length`, set by pad_multiple) agree decode together.
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
    ids = [_as_ids(p, "prompt_ids") for p in prompts]
    limit = max_positions(model)
    for i, p in enumerate(ids):
        _check_request(model, p, [(0,)], vocab, f"prompt {i}")
        if limit is not None and len(p) + max_new_tokens > limit:
            raise ScoringError(
                f"prompt {i}: {len(p)} tokens + max_new_tokens={max_new_tokens} exceeds the "
                f"model's context of {limit}. Lower max_new_tokens or shorten the prompt."
            )
    masks = _AllowedMasks(allowed_token_ids, vocab, _device(model))
    settings = _Settings(temperature, top_k, top_p, max_new_tokens, seed, stops, allowed_token_ids)
    out: dict[tuple[int, int], Sample] = {}
    with _eval_mode(model):
        head = _SharedPrefix(model, list(prefix)) if prefix and not _counts_window_in_slots(model) else None
        # A band: rows that share the prefix (or not) and have the same padded length after it.
        bands: dict[tuple[bool, int], list[tuple[int, int]]] = defaultdict(list)
        for i, p in enumerate(ids):
            shared = head is not None and head.starts(p)
            rest = len(p) - (len(head) if shared and head is not None else 0)
            bands[(shared, padded_length(rest, pad_multiple))].extend((i, j) for j in range(n))
        for (shared, width), rows in sorted(bands.items()):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                for s in _sample_chunk(model, ids, chunk, width, settings, masks, head if shared else None):
                    out[(s.prompt_index, s.sample_index)] = s
    return [out[(i, j)] for i in range(len(ids)) for j in range(n)]


@dataclass(frozen=True)
class _Settings:
    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int
    seed: int
    stops: set[int]
    allowed: AllowedTokens | None


def _left_padded(ids: list[list[int]], width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        chosen, mass = _choose(logp, settings.temperature, settings.top_k, settings.top_p, mask,
                               uniforms[active, step])
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
        out = model(input_ids=chosen.unsqueeze(1), attention_mask=attention, position_ids=next_position.unsqueeze(1),
                    cache=cache, use_cache=True, logits_to_keep=1)
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


__all__ = [
    "END_OF_TURN_TOKENS",
    "SAMPLER",
    "ContinuationScores",
    "Sample",
    "ScoringError",
    "ScoringStats",
    "StringScores",
    "TextSample",
    "TokenizedString",
    "WordProbability",
    "default_stop_token_ids",
    "max_positions",
    "padded_length",
    "sample",
    "sample_text",
    "score_continuations",
    "score_many",
    "score_strings",
    "score_strings_many",
    "shared_prefix",
    "tokenize_continuations",
    "word_probability",
    "word_probability_many",
]
