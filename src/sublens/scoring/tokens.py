"""Token-level scoring: log-probabilities of continuations (token ids) after prompts.

    log P(c | prompt) = sum_t log p(c_t | prompt, c_<t)   (chain rule, in float64)

The work is done by the prefix forest (`sublens.scoring.forest`); this module checks the
requests, groups prompts by length and assembles the per-prompt results.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sublens.kv_budget import rows_within_budget
from sublens.scoring.core import (
    ScoringError,
    TokenIds,
    _as_ids,
    _check_request,
    _eval_mode,
    _vocab_width,
)
from sublens.scoring.forest import _Forest, _run_forest

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
# public: token level


@torch.inference_mode()
def score_many(
    model: Any,
    requests: Sequence[tuple[TokenIds, Sequence[Sequence[int]]]],
    batch_size: int = 128,
) -> list[ContinuationScores]:
    """Score several prompts, each with its own continuations: [(prompt_ids, continuations)].

    Prompts of equal token length are run together (up to ``batch_size`` per forest, fewer where
    their key/value buffers would pass the scoring memory budget, see `sublens.kv_budget`);
    each prompt's continuations share its KV cache and a prefix tree. Results are in request order.
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
            context = len(prompts[members[0]]) + max((len(c) for i in members for c in conts[i]), default=0)
            rows = rows_within_budget(model, batch_size, context)
            for start in range(0, len(members), rows):
                group = members[start : start + rows]
                forest = _Forest.build([conts[i] for i in group])
                ids = torch.tensor([prompts[i] for i in group], dtype=torch.long)  # [G, L]
                levels = _run_forest(model, ids, forest, rows)
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
        1 for d in range(forest.depth - 1) for node in forest.internal(d) if forest.owners[d][node] == slot
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
