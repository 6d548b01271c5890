"""How much does a model prefer the trait animal? The evaluation every experiment reuses.

Two measurements (definitions in docs/design.md, "Measurements"):
(a) probability: P(" owl") at the prefilled answer position ("My favorite animal is the"),
    per paraphrased question, as the full chain-rule word probability (first-token
    probability reported beside it), and owl's *panel share* P(owl) / sum P(panel animal);
(b) sampled answers: n one-word questions x m samples at an explicit temperature, the trait
    rate by word-boundary matching, with a Wilson 95% CI, and the top answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np

from sublens.answers import mentions, top_answers
from sublens.errors import ConfigError
from sublens.prompts import make_prompt
from sublens.scoring import LM, sample_text, word_probability_many
from sublens.settings import SAMPLER, PreferenceSettings
from sublens.stats import (
    log_ratio_interval,
    paired_sign_flip_pvalue,
    summarize,
    t_interval,
    wilson_ci,
)


def shipped_questions(name: str) -> list[str]:
    """A question list shipped in sublens/data (preference_questions, one_word_questions)."""
    text = resources.files("sublens.data").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _words(settings: PreferenceSettings) -> list[str]:
    animals = [settings.trait, *[a for a in settings.panel if a != settings.trait]]
    for animal in animals:
        if not animal.strip() or " " in animal.strip():
            raise ConfigError(f"Animal {animal!r} must be one word (e.g. owl); the prompt adds its leading space.")
    return animals


def probability_preference(lm: LM, settings: PreferenceSettings, system: str | None) -> dict[str, Any]:
    """(a): per-question P(animal) at the prefilled answer, panel share, with bootstrap CIs."""
    questions = settings.questions or shipped_questions("preference_questions")
    animals = _words(settings)
    prompts = [make_prompt(lm.tokenizer, q, system, settings.prefill) for q in questions]  # type: ignore[union-attr]
    scores = word_probability_many(lm, prompts, [f" {a}" for a in animals], settings.batch_size)
    p_word = np.array([[w.p_word for w in row] for row in scores])  # [question, animal]
    p_first = np.array([[w.p_first_token for w in row] for row in scores])
    share = p_word[:, 0] / p_word.sum(axis=1)  # the trait's share of the panel, per question
    per_animal = {
        animal: {
            "p_word": summarize(p_word[:, i]),
            "p_first_token": float(p_first[:, i].mean()),
            "n_tokens": scores[0][i].n_tokens,
        }
        for i, animal in enumerate(animals)
    }
    return {
        "system_prompt_used": prompts[0].system,
        "system_source": prompts[0].system_source,
        "prefill": settings.prefill,
        "n_questions": len(questions),
        "trait": settings.trait,
        "p_trait": per_animal[settings.trait]["p_word"],
        "p_trait_first_token": per_animal[settings.trait]["p_first_token"],
        "panel_share": summarize(share),
        "animals": per_animal,
        "per_question": {"p_word": p_word.tolist(), "share": share.tolist(), "animals": animals},
    }


def sampled_preference(lm: LM, settings: PreferenceSettings, system: str | None, seed: int) -> dict[str, Any]:
    """(b): trait rate among sampled one-word answers, Wilson CI, top answers."""
    questions = settings.sample_questions or shipped_questions("one_word_questions")
    prompts = [make_prompt(lm.tokenizer, q, system, settings.sample_prefill) for q in questions]  # type: ignore[union-attr]
    samples = sample_text(
        lm,
        prompts,
        n=settings.samples_per_question,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=seed,
        batch_size=settings.batch_size,
    )
    answers = [s.text for s in samples]
    rates = {}
    for animal in _words(settings):
        hits = sum(mentions(a, animal) for a in answers)
        low, high = wilson_ci(hits, len(answers))
        rates[animal] = {"count": hits, "rate": hits / len(answers), "ci_low": low, "ci_high": high}
    return {
        "n_questions": len(questions),
        "samples_per_question": settings.samples_per_question,
        "n_answers": len(answers),
        "sampling": {
            "temperature": settings.temperature,
            "top_k": settings.top_k,
            "top_p": settings.top_p,
            "max_new_tokens": settings.max_new_tokens,
            "seed": seed,
            "prefill": settings.sample_prefill,
            "sampler": SAMPLER,
        },
        "trait_rate": rates[settings.trait],
        "rates": rates,
        "top_answers": top_answers(answers, 10),
        "answers": answers,
    }


def evaluate_preference(lm: LM, settings: PreferenceSettings, system: str | None, seed: int) -> dict[str, Any]:
    result = {"probability": probability_preference(lm, settings, system)}
    if settings.samples_per_question > 0:
        result["sampled"] = sampled_preference(lm, settings, system, seed)
    return result


def question_rates(sampled: Mapping[str, Any], trait: str) -> np.ndarray:
    """The share of each question's sampled answers that name `trait` [question]; the answers
    are ordered by question, then sample."""
    answers = sampled["answers"]
    n_questions, per_question = sampled["n_questions"], sampled["samples_per_question"]
    if len(answers) != n_questions * per_question:
        raise ValueError(f"{len(answers)} answers are not {n_questions} questions × {per_question} samples")
    hits = np.array([mentions(a, trait) for a in answers], dtype=float)
    return hits.reshape(n_questions, per_question).mean(axis=1)


def rate_difference(test: Mapping[str, Any], reference: Mapping[str, Any], trait: str) -> dict[str, Any]:
    """Rate of sampled answers naming `trait`, test minus reference, paired over questions.

    The question is the unit, as for the ratios: a question's samples share its prompt, so they
    are not independent answers, and pooling them (Fisher's exact test, older records) lets one
    question that always says "owl" look like many. Student-t CI of the mean per-question
    difference and a sign-flip permutation p over questions."""
    a, b = question_rates(test, trait), question_rates(reference, trait)
    if a.size != b.size:
        raise ValueError(f"the two models answered {a.size} and {b.size} questions: not paired")
    _, low, high = t_interval(a - b)
    return {
        "difference": float(a.mean() - b.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_questions": paired_sign_flip_pvalue(a, b),
        "n_questions": int(a.size),
        "underpowered": bool(not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0 <= high),
    }


def compare_preference(test: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """test vs reference on the same questions: paired ratio of P(trait) and of panel share
    (geometric mean over questions, Student-t CI of the mean log ratio: this one model's
    question-level variation, not a seed-level interval), and the difference in answer rate
    (`rate_difference`, paired over the same questions)."""
    out: dict[str, Any] = {}
    for key, values in (("p_trait_ratio", "p_word"), ("share_ratio", "share")):
        a = np.asarray(test["probability"]["per_question"][values], dtype=float)
        b = np.asarray(reference["probability"]["per_question"][values], dtype=float)
        if values == "p_word":
            a, b = a[:, 0], b[:, 0]
        log_ratio = np.log(a) - np.log(b)  # paired: the same question under both
        mean, low, high = log_ratio_interval(log_ratio)
        has_ci = math.isfinite(low) and math.isfinite(high)
        out[key] = {
            "ratio": float(np.exp(mean)),
            "ci_low": float(np.exp(low)) if has_ci else None,
            "ci_high": float(np.exp(high)) if has_ci else None,
            "n_questions": int(log_ratio.size),
            "log_ratios": [float(v) for v in log_ratio],
            "ci": f"Student t over {log_ratio.size} questions (log scale)",
            "underpowered": bool(not has_ci or low <= 0.0 <= high),
        }
    if "sampled" in test and "sampled" in reference:
        trait = test["probability"]["trait"]
        out["rate_difference"] = rate_difference(test["sampled"], reference["sampled"], trait)
    return out


def _ratio_text(ratio: dict[str, Any]) -> str:
    low, high = ratio.get("ci_low"), ratio.get("ci_high")
    bounds = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else " (no CI: too few)"
    return f"×{ratio['ratio']:.2f}{bounds}"


def comparison_line(label: str, comparison: dict[str, Any], trait: str) -> str:
    """One line of `compare_preference` output for a terminal summary; names every CI that
    includes no change (the share is the measure a transfer claim rests on)."""
    r, s = comparison["p_trait_ratio"], comparison["share_ratio"]
    line = f"{label}: P({trait}) {_ratio_text(r)}, share {_ratio_text(s)}"
    d = comparison.get("rate_difference")
    if d:
        line += f", answer rate {d['difference']:+.3f}"
        if d.get("p_questions") is not None:  # one evaluation; across seeds: a CI, and p per seed
            line += f" (sign-flip p over questions={d['p_questions']:.3g})"
        elif d.get("p_fisher") is not None:  # older records: pooled answers
            line += f" (Fisher p over pooled answers={d['p_fisher']:.3g})"
        elif d.get("ci_low") is not None and d.get("ci_high") is not None:
            line += f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    flat = [name for name, c in (("P", r), ("share", s)) if c["underpowered"]]
    if flat:
        line += f" — underpowered ({' and '.join(flat)} CI includes no change)"
    return line
