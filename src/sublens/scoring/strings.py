"""String level: ``score_strings`` tokenizes each string *as it appears after the prompt* (prompt
text + string, tokenized together, then split after the prompt's tokens). When the split is
not clean (the prompt's last token would merge with the string's start), the string is
tokenized on its own and flagged ``in_context=False``.

Word probability: P(word) over all its tokens (chain rule) and the first-token probability,
as two separately named fields. Neither is substituted for the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sublens.prompts import PromptText, as_prompt, encode_prompt
from sublens.scoring.core import (
    LM,
    ScoringError,
    _unpack,
)
from sublens.scoring.tokens import ContinuationScores, score_many

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
    joined = tokenizer([p.text + s for s in strings], add_special_tokens=p.add_special_tokens)["input_ids"]
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


def score_strings(lm: LM, prompt: PromptText | str, strings: Sequence[str], batch_size: int = 128) -> StringScores:
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
    scores = score_many(model, [(ids, [t.token_ids for t in toks]) for ids, toks in tokenized], batch_size)
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
