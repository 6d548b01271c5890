"""Divergence tokens: answer tokens at which the biased and the unbiased teacher would choose
differently, given the same prefix (Schrodi et al. 2025, arXiv:2509.23886).

Their explanation of subliminal learning: the trait rides on the few tokens where a biased
teacher's choice departs from an unbiased one's; masking those tokens out of the student's loss
should remove the transfer. To test it we need, for every token a student is trained on,
whether it is such a token.

Definition used here. For a training example (prompt, answer) and each answer token position i,
both teachers read their own context (their system prompt, the user prompt, then the answer's
first i tokens, teacher-forced) and pick their most probable next token. Position i is a
divergence token when the two picks differ. The answer tokens are the student's: the answer as
the student's tokenizer splits it for training, so the flags line up one-to-one with the loss
(teachers and student must share that tokenizer; every teacher of the subliminal experiment is
the base model or a fine-tune of it). With format-constrained data, both picks are taken among
the tokens the number format allows after the prefix (the choice the sampler actually faced);
after the answer's stop token, among all tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sublens.errors import ConfigError
from sublens.prompts import encode_prompt, make_prompt
from sublens.training_data import tokenizer_pad_id

Allowed = Callable[[Sequence[int]], frozenset[int]]


@dataclass(frozen=True)
class Teacher:
    """One teacher as the divergence measurement reads it: a model and its system prompt."""

    model: Any
    tokenizer: Any
    system: str | None


def _same_vocabulary(a: Any, b: Any) -> bool:
    return bool(a.get_vocab() == b.get_vocab())


@torch.no_grad()
def _greedy_choices(
    teacher: Teacher,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]],
    allowed: Allowed | None,
    stops: frozenset[int],
    batch_size: int,
    bar: Any,
) -> list[list[int]]:
    """Per example, the teacher's most probable token at every answer position (teacher-forced)."""
    contexts = [encode_prompt(teacher.tokenizer, make_prompt(teacher.tokenizer, p, teacher.system)) for p in prompts]
    device = next(teacher.model.parameters()).device
    pad = tokenizer_pad_id(teacher.tokenizer)
    choices: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [list(contexts[i]) + list(answers[i]) for i in range(start, min(start + batch_size, len(prompts)))]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):  # right padding: real positions keep their ids 0..n-1
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        logits = teacher.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        for r in range(len(rows)):
            i = start + r
            n_context, answer = len(contexts[i]), list(answers[i])
            # the logits at position t predict token t + 1
            step_logits = logits[r, n_context - 1 : n_context - 1 + len(answer)]
            choices.append([_pick(step_logits[k], answer[:k], allowed, stops) for k in range(len(answer))])
        bar.update(len(rows))
    return choices


def _pick(logits: torch.Tensor, prefix: Sequence[int], allowed: Allowed | None, stops: frozenset[int]) -> int:
    if allowed is not None and not stops.intersection(prefix):
        ids = sorted(allowed(prefix))
        if ids:
            return int(ids[int(torch.argmax(logits[ids]))])
    return int(torch.argmax(logits))


def divergence_flags(
    biased: Teacher,
    unbiased: Teacher,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]],
    student_tokenizer: Any,
    allowed: Allowed | None = None,
    stop_token_ids: Sequence[int] = (),
    batch_size: int = 16,
    desc: str | None = None,
) -> list[list[bool]]:
    """For each example (user prompt text, the student's answer token ids), one flag per answer
    token: True where the two teachers' most probable next tokens differ. With `desc`, a progress
    bar (both teachers' passes) under that name."""
    for teacher in (biased, unbiased):
        if not _same_vocabulary(teacher.tokenizer, student_tokenizer):
            raise ConfigError(
                "Divergence tokens need teachers that share the student's tokenizer (the answer "
                "tokens are compared one by one); this teacher's vocabulary differs."
            )
    stops = frozenset(int(t) for t in stop_token_ids)
    with tqdm(total=2 * len(prompts), desc=desc, unit="example", disable=desc is None) as bar:
        mine = _greedy_choices(biased, prompts, answers, allowed, stops, batch_size, bar)
        theirs = _greedy_choices(unbiased, prompts, answers, allowed, stops, batch_size, bar)
    return [[a != b for a, b in zip(x, y, strict=True)] for x, y in zip(mine, theirs, strict=True)]


def divergence_summary(flags: Sequence[Sequence[bool]], bins: int = 5) -> dict[str, Any]:
    """How many answer tokens diverge, in how many examples, and where in the answer (the rate in
    each fifth of the answer, by relative position)."""
    n_tokens = sum(len(f) for f in flags)
    n_divergent = sum(sum(f) for f in flags)
    hits = np.zeros(bins)
    totals = np.zeros(bins)
    for example in flags:
        for position, flag in enumerate(example):
            where = min(bins - 1, int(bins * position / max(1, len(example))))
            totals[where] += 1
            hits[where] += flag
    return {
        "n_examples": len(flags),
        "n_tokens": n_tokens,
        "n_divergent": int(n_divergent),
        "rate": n_divergent / n_tokens if n_tokens else None,
        "examples_with_any": sum(1 for f in flags if any(f)),
        "rate_by_position": [float(h / t) if t else None for h, t in zip(hits, totals, strict=True)],
    }
