"""entanglement: the measuring helpers the stages of `run` call: the candidate sets, the phase-1
scores of every number surface (`phase1_scores`, gathered in `Phase1`), the phase-2
probabilities of the answer words (`animal_probabilities`) and the template control's words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sublens.entanglement import autoregressive_numbers, vocabulary_numbers
from sublens.errors import ConfigError
from sublens.experiments.entanglement.categorising import CandidateSet
from sublens.experiments.entanglement.config import EntanglementConfig
from sublens.experiments.entanglement.results import (
    AnimalProbabilities,
    Categories,
    ScoringWork,
    SetInfo,
    TunedTeacher,
)
from sublens.experiments.entanglement.study_prompts import _tokenizer, shipped_template_words
from sublens.prompts import PromptText
from sublens.scoring import LM, ScoringStats, score_strings, word_probability_many


def candidate_sets(lm: LM, config: EntanglementConfig) -> list[CandidateSet]:
    """The candidate sets in the order they are studied: vocab, then ar1, ar2, ..."""
    sets: list[CandidateSet] = []
    if "vocab" in config.sets:
        vocab = vocabulary_numbers(_tokenizer(lm))
        sets.append(CandidateSet("vocab", "vocab", None, list(vocab.numbers), vocab.describe()))
    if "autoregressive" in config.sets:
        for n in config.lengths:
            numbers = autoregressive_numbers(n, config.leading_zeros)
            info = {"n_numbers": len(numbers), "leading_zeros": config.leading_zeros}
            sets.append(CandidateSet(f"ar{n}", "autoregressive", n, numbers, info))
    return sets


@dataclass(frozen=True)
class PromptScores:
    """Phase 1 after one prompt: log P of every number surface (chain rule), its tokens."""

    logp: dict[str, float]
    tokens: dict[str, Sequence[int]]
    in_context: dict[str, bool]  # False: the surface does not tokenize cleanly after the prefill
    work: ScoringStats


def phase1_scores(
    lm: LM, prompts: dict[str, PromptText], surfaces: list[str], batch_size: int
) -> dict[str, PromptScores]:
    """Per prompt: surface -> log P (chain rule), plus each surface's in-context tokens."""
    out: dict[str, PromptScores] = {}
    for name, prompt in tqdm(prompts.items(), desc="phase 1: scoring numbers", unit="prompt"):
        scores = score_strings(lm, prompt, surfaces, batch_size)
        out[name] = PromptScores(
            logp=dict(zip(surfaces, scores.total.tolist(), strict=True)),
            tokens={s.text: s.token_ids for s in scores.strings},
            in_context={s.text: s.in_context for s in scores.strings},
            work=scores.scores.stats,
        )
    return out


@dataclass(frozen=True)
class Phase1:
    table: pd.DataFrame  # phase1.parquet: every candidate of every set
    sets: dict[str, SetInfo]
    categories: dict[str, Categories]  # the sets not skipped
    work: dict[str, ScoringWork]
    warnings: list[str]
    tuned: TunedTeacher | None = None  # the teachers of the tuned sets


def animal_probabilities(
    lm: LM, prompts: Sequence[PromptText], words: Sequence[str], batch_size: int, desc: str
) -> list[AnimalProbabilities]:
    """Per prompt, chain-rule and first-token probabilities of ' bias' and ' control' (`words`),
    with a progress bar."""
    out: list[AnimalProbabilities] = []
    step = max(batch_size, 8)
    spaced = [f" {w}" for w in words]
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
        for start in range(0, len(prompts), step):
            chunk = list(prompts[start : start + step])
            for bias, control in word_probability_many(lm, chunk, spaced, batch_size):
                out.append(
                    AnimalProbabilities(
                        p_bias=bias.p_word,
                        p_control=control.p_word,
                        p_bias_first=bias.p_first_token,
                        p_control_first=control.p_first_token,
                    )
                )
            bar.update(len(chunk))
    return out


def template_words(config: EntanglementConfig) -> list[str]:
    """The template control's words: n_template_words (default k) drawn with the seed."""
    pool = config.template_words or shipped_template_words()
    bad = [w for w in pool if any(c.isdigit() for c in w) or not w.strip()]
    if bad:
        raise ConfigError(f"Template words must be non-empty and contain no digits: {bad[:5]}.")
    n = min(config.n_template_words or config.k, len(pool))
    rng = np.random.default_rng([config.seed, 7])
    return [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
