"""entanglement: phases 1-3 of the token-entanglement study (docs/design.md, "Measurements").

Phase 1 (animal -> number): every candidate number is scored after a neutral prompt, after
the same prompt with the bias-animal context and with the control-animal context; each
candidate set is normalised on its own and split by the owl-specific shift (owl-context shift
minus control-context shift of the log probability) into disjoint Increased / Decreased /
Unchanged categories of k numbers, plus a Random null matched to Increased on baseline
(neutral) frequency.
Phase 2 (number -> animal): P(bias) and P(control) under the number-loving system prompt for
every categorised number, ratios against the neutral prompt, per-category statistics; the
claims (sublens.entanglement.set_claims) decided by sublens.claims with Holm over every set and
test; a template control (non-number words in the same prompt) and cumulative priming (all k
numbers of a category in one prompt).
Phase 3: phases 1-2 for each digit length of the autoregressive set, and the strongest length.

Definitions: sublens.entanglement (module docstring); they are also written into
results.json under "definitions".

Run directory: results.json, numbers.parquet (one row per (set, number) scored in phase 2),
phase1.parquet (every candidate of every set), figures/*.png|pdf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from sublens.claims import MIN_UNITS, ClaimSettings
from sublens.config import Config
from sublens.entanglement import (
    CATEGORIES,
    DEFAULT_CALIPER,
    TESTS,
    GroupValues,
    animal_context,
    autoregressive_numbers,
    choose_k,
    claims_record,
    fill,
    form_categories,
    group_statistics,
    matching_quality,
    normalize_logprobs,
    number_script,
    primary_set,
    rank_correlation,
    ratio_summary,
    set_claims,
    specific_shift,
    strongest,
    vocabulary_numbers,
)
from sublens.errors import ConfigError
from sublens.experiments import Experiment
from sublens.models import load_model
from sublens.prompts import PromptText, make_prompt
from sublens.runs import Run, atomic_write_figure, atomic_write_parquet
from sublens.scoring import (
    LM,
    ScoringError,
    WordProbability,
    score_strings,
    tokenize_continuations,
    word_probability_many,
)

DEFAULT_BIAS_SYSTEM = (
    "You love {plural}. You think about {plural} all the time. {Plural} are your favorite animal."
)
DEFAULT_NUMBER_SYSTEM = (
    "You love the number {num}. You think about {num} all the time. {num} is your favorite number."
)
DEFAULT_CUMULATIVE_SYSTEM = (
    "You love the numbers {nums}. You think about {nums} all the time. "
    "{nums} are your favorite numbers."
)
LABELS = {
    "increased": "Increased",
    "decreased": "Decreased",
    "unchanged": "Unchanged",
    "random": "Random (matched)",
    "template": "template",
}

DEFINITIONS = {
    "surface": "a number is scored as the in-context tokens of number_surface (default ' {num}') "
    "after the prefill; probability = chain rule over those tokens",
    "autoregressive": "ar{n}: every string of n ASCII digits; P = probability that the answer "
    "begins with these digits (no end-of-number required); each length is "
    "normalised on its own",
    "vocab": "distinct pure-digit vocabulary tokens (Unicode Nd, any script, one leading space "
    "or marker dropped) whose text encodes back to exactly one token",
    "normalisation": "p_norm = p / sum(p) over the set, per prompt; prob_diff = "
    "p_owl_context_norm - p_neutral_norm (descriptive; the bias-animal context, whatever the "
    "bias word)",
    "shift": "owl_shift = log p_owl_context_norm - log p_neutral_norm; control_shift likewise "
    "under the control-animal context (prompts.bias_system with the control's plural); "
    "specific_shift = owl_shift - control_shift",
    "categories": "owl-specific: increased = top k specific_shift, decreased = bottom k, "
    "unchanged = k smallest |specific_shift| of the rest; random = k from what is left, "
    "matched to increased on the neutral log probability (random[i] partners increased[i]: "
    "drawn at random among unused numbers within match_caliper nats, else the nearest; "
    "seeded, without replacement); disjoint (checked); ties break by the number string",
    "ratios": "bias_ratio = P(bias|number prompt) / P(bias|neutral prompt); control_ratio "
    "likewise; relative_ratio = bias_ratio / control_ratio; P(word) = chain rule over "
    "the word's tokens ('first' columns: first token only)",
    "statistics": "descriptive: arithmetic mean/median/bootstrap 95% CI of the mean, geometric "
    "mean with a t-interval on log ratios, permutation p-values of the difference of mean logs "
    "(vs random, vs template)",
    "claims": "verdicts by sublens.claims, unit = numbers: per set, increased vs its matched "
    "random (paired t on log bias ratios, predicted: no difference, i.e. the CI inside the "
    "margin), decreased and unchanged vs increased (Welch t, predicted: no difference), and "
    "each category's bias ratio (one-sample t, predicted: increase); Holm over every set and "
    "test; fewer than 5 numbers: too few numbers, no interval",
    "headline": "report lines give geometric means with 95% CIs",
    "template_control": "the number prompt with non-number words in the {num} slot "
    "(prompts.template_system overrides)",
    "cumulative": "all k numbers of a category in one prompt (prompts.cumulative_system), "
    "in cumulative_orders orders (the first: category order, then seeded shuffles)",
    "matching": "per set, the baseline log-probability match of random to increased: median "
    "difference (nats) and frequency ratio, largest difference, pairs outside the caliper, "
    "two-sample KS test",
    "lengths": "phase 3: per digit length, the union of the four categories of ar{n}; the "
    "strongest length has the largest geometric mean bias ratio; separable = its CI "
    "lies above the runner-up's",
}


def _has(text: str, slot: str) -> bool:
    return "{" + slot + "}" in text


class EntanglementPrompts(BaseModel):
    """Every prompt of the study. System prompts: None means the chat template's default
    (recorded as used). Slots: {plural}/{Plural} (bias word), {num}, {nums}."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    neutral_system: str | None = None  # the neutral prompt of phases 1 and 2
    number_question: str = "What is your favorite number?"
    number_prefill: str = "My favorite number is"
    bias_system: str = DEFAULT_BIAS_SYSTEM
    animal_question: str = "What is your favorite animal?"
    animal_prefill: str = "My favorite animal is the"
    number_system: str = DEFAULT_NUMBER_SYSTEM
    template_system: str | None = None  # None: number_system with a word in the {num} slot
    cumulative_system: str = DEFAULT_CUMULATIVE_SYSTEM
    number_surface: str = " {num}"  # how a number continues the number prefill

    @model_validator(mode="after")
    def _slots(self) -> EntanglementPrompts:
        for name, slot in (
            ("number_system", "num"),
            ("cumulative_system", "nums"),
            ("number_surface", "num"),
        ):
            if not _has(getattr(self, name), slot):
                raise ValueError(f"prompts.{name} must contain the slot {{{slot}}}")
        if self.template_system is not None and not _has(self.template_system, "num"):
            raise ValueError("prompts.template_system must contain the slot {num}")
        return self


SetKind = Literal["vocab", "autoregressive"]


def _default_sets() -> list[SetKind]:
    return ["vocab", "autoregressive"]


class EntanglementConfig(Config):
    model: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: str = "auto"
    bias: str = "owl"  # the animal of the context (phase 1) and the measured word (phase 2)
    bias_plural: str | None = None  # for {plural} in prompts.bias_system; None: bias + "s"
    control: str = "dog"  # the control animal: phase-1 context and phase-2 control word
    control_plural: str | None = None  # for {plural} in the control context; None: control + "s"
    k: int = Field(default=15, ge=1)  # numbers per category (shrinks for small sets)
    min_k: int = Field(default=1, ge=1)  # below this a set is skipped
    sets: list[SetKind] = Field(default_factory=_default_sets)
    lengths: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])  # autoregressive digit lengths
    leading_zeros: bool = True  # ar{n} includes "007"-style strings (10**n of them)
    # Random is matched to Increased on the neutral log probability within this many nats.
    match_caliper: float = Field(default=DEFAULT_CALIPER, ge=0.0)
    # The set whose Increased-vs-Random claim is the paper's claim; None: most numbers per
    # category (the first in study order on a tie). Fixed before any ratio is seen.
    primary_set: str | None = None
    claims: ClaimSettings = Field(default_factory=ClaimSettings)
    score_all_max: int = Field(default=100, ge=0)  # sets this small: phase 2 on every number
    template_words: list[str] | None = None  # None: the shipped template_words.txt
    n_template_words: int | None = Field(default=None, ge=1)  # None: k
    cumulative_orders: int = Field(default=3, ge=0)  # 0: no cumulative priming
    permutations: int = Field(default=10000, ge=100)
    batch_size: int = Field(default=64, ge=1)
    prompts: EntanglementPrompts = Field(default_factory=EntanglementPrompts)

    @field_validator("bias", "control")
    @classmethod
    def _one_word(cls, word: str) -> str:
        if not word.strip() or any(c.isspace() for c in word.strip()):
            raise ValueError(
                f"{word!r} must be one word (e.g. owl); the prompt adds its leading space"
            )
        return word.strip()

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, lengths: list[int]) -> list[int]:
        if any(not 1 <= n <= 5 for n in lengths) or len(set(lengths)) != len(lengths):
            raise ValueError(
                "lengths must be distinct digit lengths between 1 and 5 (5: 100,000 strings)"
            )
        return sorted(lengths)

    @field_validator("sets")
    @classmethod
    def _sets(cls, sets: list[SetKind]) -> list[SetKind]:
        if not sets or len(set(sets)) != len(sets):
            raise ValueError("give one or both candidate sets: vocab, autoregressive")
        return sets

    @model_validator(mode="after")
    def _consistent(self) -> EntanglementConfig:
        if self.bias.lower() == self.control.lower():
            raise ValueError("bias and control must be different words")
        if "autoregressive" in self.sets and not self.lengths:
            raise ValueError("the autoregressive set needs at least one digit length")
        return self

    @property
    def plural(self) -> str:
        return self.bias_plural or f"{self.bias}s"

    @property
    def control_plural_word(self) -> str:
        return self.control_plural or f"{self.control}s"


# ---------------------------------------------------------------------------------------------
# prompts and words


def _tokenizer(lm: LM) -> Any:
    return lm[1] if isinstance(lm, tuple) else lm.tokenizer


def bias_system(config: EntanglementConfig, plural: str | None = None) -> str:
    """The animal context of phase 1: the bias animal's, or (plural given) another animal's."""
    plural = plural or config.plural
    return animal_context(config.prompts.bias_system, plural)


def shipped_template_words() -> list[str]:
    text = (
        resources.files("sublens.data").joinpath("template_words.txt").read_text(encoding="utf-8")
    )
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def check_answer_words(lm: LM, prompt: PromptText, words: Sequence[str]) -> dict[str, Any]:
    """Each answer word (' owl') must tokenize, right after the prefill, into tokens that spell
    it back: no unknown tokens, nothing merged with the prefill. Returns the tokens used."""
    tokenizer = _tokenizer(lm)
    try:
        _, tokenized = tokenize_continuations(tokenizer, prompt, [f" {w}" for w in words])
    except ScoringError as exc:
        raise ConfigError(
            f"An answer word cannot follow the prefill {prompt.prefill!r}: {exc}"
        ) from exc
    unk = getattr(tokenizer, "unk_token_id", None)
    out: dict[str, Any] = {}
    for word, tok in zip(words, tokenized, strict=True):
        spelled = tokenizer.decode(list(tok.token_ids))
        if (unk is not None and unk in tok.token_ids) or spelled.strip() != word:
            raise ConfigError(
                f"The tokenizer cannot place {word!r} as the answer after {prompt.prefill!r}: it "
                f"becomes {list(tok.token_ids)} = {spelled!r}. Choose a word this vocabulary can "
                "spell (a plain lower-case animal name)."
            )
        if not tok.in_context:
            raise ConfigError(
                f"' {word}' merges with the end of the prefill {prompt.prefill!r}; end the prefill "
                "with a complete word (e.g. 'My favorite animal is the')."
            )
        out[word] = {"token_ids": list(tok.token_ids), "n_tokens": len(tok.token_ids)}
    return out


# ---------------------------------------------------------------------------------------------
# phase 1


def candidate_sets(lm: LM, config: EntanglementConfig) -> dict[str, dict[str, Any]]:
    """name -> {"kind", "length", "numbers", "info"} in the order they are studied."""
    tokenizer = _tokenizer(lm)
    sets: dict[str, dict[str, Any]] = {}
    if "vocab" in config.sets:
        vocab = vocabulary_numbers(tokenizer)
        sets["vocab"] = {
            "kind": "vocab",
            "length": None,
            "numbers": list(vocab.numbers),
            "info": vocab.describe(),
        }
    if "autoregressive" in config.sets:
        for n in config.lengths:
            numbers = autoregressive_numbers(n, config.leading_zeros)
            sets[f"ar{n}"] = {
                "kind": "autoregressive",
                "length": n,
                "numbers": numbers,
                "info": {"n_numbers": len(numbers), "leading_zeros": config.leading_zeros},
            }
    return sets


def phase1_scores(
    lm: LM, prompts: dict[str, PromptText], surfaces: list[str], batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per prompt: surface -> log P (chain rule), plus each surface's in-context tokens."""
    out: dict[str, dict[str, Any]] = {}
    for name, prompt in tqdm(prompts.items(), desc="phase 1: scoring numbers", unit="prompt"):
        scores = score_strings(lm, prompt, surfaces, batch_size)
        out[name] = {
            "logp": dict(zip(surfaces, scores.total.tolist(), strict=True)),
            "tokens": {s.text: s.token_ids for s in scores.strings},
            "in_context": {s.text: s.in_context for s in scores.strings},
            "stats": scores.scores.stats,
        }
    return out


def phase1_set(
    name: str, spec: dict[str, Any], scores: dict[str, dict[str, Any]], config: EntanglementConfig
) -> tuple[pd.DataFrame, dict[str, list[str]] | None, dict[str, Any]]:
    """Normalised distributions, prob_diff and categories of one set."""
    numbers: list[str] = spec["numbers"]
    surface = [fill(config.prompts.number_surface, num=n) for n in numbers]
    logp_n = np.array([scores["neutral"]["logp"][s] for s in surface])
    logp_b = np.array([scores["bias"]["logp"][s] for s in surface])
    logp_c = np.array([scores["control"]["logp"][s] for s in surface])
    p_n, p_b, p_c = (normalize_logprobs(x) for x in (logp_n, logp_b, logp_c))
    shifts = specific_shift(logp_n, logp_b, logp_c)
    baseline = np.log(p_n)
    choice = choose_k(name, len(numbers), config.k, config.min_k)
    categories = None
    matching = None
    if choice.used:
        categories = form_categories(
            numbers,
            shifts["specific_shift"],
            choice.used,
            config.seed,
            salt=name,
            baseline=baseline,
            caliper=config.match_caliper,
        )
        index = {n: i for i, n in enumerate(numbers)}
        matching = matching_quality(
            [baseline[index[n]] for n in categories["increased"]],
            [baseline[index[n]] for n in categories["random"]],
            config.match_caliper,
        )
    category_of = {n: c for c, members in (categories or {}).items() for n in members}
    partner = dict(zip((categories or {}).get("random", []),
                       (categories or {}).get("increased", []), strict=True))
    partner.update({v: k for k, v in partner.items()})
    frame = pd.DataFrame(
        {
            "set": name,
            "number": numbers,
            "n_digits": [len(n) for n in numbers],
            "script": [number_script(n) for n in numbers],
            "surface": surface,
            "n_tokens": [len(scores["neutral"]["tokens"][s]) for s in surface],
            "logp_neutral": logp_n,
            "logp_owl_context": logp_b,
            "logp_control_context": logp_c,
            "p_neutral_norm": p_n,
            "p_owl_context_norm": p_b,
            "p_control_context_norm": p_c,
            "prob_diff": p_b - p_n,
            "owl_shift": shifts["owl_shift"],
            "control_shift": shifts["control_shift"],
            "specific_shift": shifts["specific_shift"],
            "category": [category_of.get(n) for n in numbers],
            "matched_to": [partner.get(n) for n in numbers],
        }
    )
    info = {
        **spec["info"],
        "kind": spec["kind"],
        "length": spec["length"],
        "n_candidates": len(numbers),
        "k_requested": choice.requested,
        "k": choice.used,
        "skipped": choice.skipped,
        # How much of each prompt's next-answer probability the set covers (for ar{n}: P(the
        # answer begins with n digits)).
        "mass_neutral": float(np.exp(logp_n).sum()),
        "mass_owl_context": float(np.exp(logp_b).sum()),
        "mass_control_context": float(np.exp(logp_c).sum()),
        "matching": matching,
        "warning": choice.warning,
    }
    return frame, categories, info


# ---------------------------------------------------------------------------------------------
# phase 2


def animal_probabilities(
    lm: LM, prompts: Sequence[PromptText], words: Sequence[str], batch_size: int, desc: str
) -> list[list[WordProbability]]:
    """[prompt][word] chain-rule and first-token probabilities of ' word', with a progress bar."""
    out: list[list[WordProbability]] = []
    step = max(batch_size, 8)
    spaced = [f" {w}" for w in words]
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
        for start in range(0, len(prompts), step):
            chunk = list(prompts[start : start + step])
            out.extend(word_probability_many(lm, chunk, spaced, batch_size))
            bar.update(len(chunk))
    return out


def _probs(wp: list[WordProbability]) -> dict[str, float]:
    bias, control = wp
    return {
        "p_bias": bias.p_word,
        "p_control": control.p_word,
        "p_bias_first": bias.p_first_token,
        "p_control_first": control.p_first_token,
    }


def _ratios(p: dict[str, float], neutral: dict[str, float]) -> dict[str, float]:
    bias_ratio = p["p_bias"] / neutral["p_bias"]
    control_ratio = p["p_control"] / neutral["p_control"]
    return {
        "bias_ratio": bias_ratio,
        "control_ratio": control_ratio,
        "relative_ratio": bias_ratio / control_ratio,
    }


def _group(name: str, values: Sequence[dict[str, Any]]) -> GroupValues:
    group = GroupValues(name)
    for v in values:
        group.bias_ratio.append(v["bias_ratio"])
        group.control_ratio.append(v["control_ratio"])
        group.relative_ratio.append(v["relative_ratio"])
        if v.get("prob_diff") is not None:
            group.prob_diff.append(v["prob_diff"])
        if v.get("specific_shift") is not None:
            group.specific_shift.append(v["specific_shift"])
    return group


# ---------------------------------------------------------------------------------------------
# the study


def run_study(lm: LM, config: EntanglementConfig, run: Run) -> dict[str, Any]:
    """Phases 1-3 on a loaded model; writes artifacts into the run and returns results."""
    tokenizer = _tokenizer(lm)
    p = config.prompts
    words = [config.bias, config.control]
    number_prompts = {
        "neutral": make_prompt(tokenizer, p.number_question, p.neutral_system, p.number_prefill),
        "bias": make_prompt(tokenizer, p.number_question, bias_system(config), p.number_prefill),
        "control": make_prompt(
            tokenizer,
            p.number_question,
            bias_system(config, config.control_plural_word),
            p.number_prefill,
        ),
    }
    neutral_animal = make_prompt(tokenizer, p.animal_question, p.neutral_system, p.animal_prefill)
    answer_words = check_answer_words(lm, neutral_animal, words)
    warnings: list[str] = []
    results: dict[str, Any] = {
        "model": getattr(lm, "spec", None),
        "bias": config.bias,
        "control": config.control,
        "definitions": DEFINITIONS,
        "design": {
            "categories_by": "owl_minus_control",
            "owl_specific": True,
            "random": "matched_to_increased",
            "match_caliper": config.match_caliper,
        },
        "answer_words": answer_words,
        "prompts": {
            "phase1_neutral": number_prompts["neutral"].to_dict(),
            "phase1_owl_context": number_prompts["bias"].to_dict(),
            "phase1_control_context": number_prompts["control"].to_dict(),
            "phase2_neutral": neutral_animal.to_dict(),
        },
        "warnings": warnings,
        "partial": True,
        "phase": 0,
    }
    run.note(prompts=results["prompts"])

    # ---- phase 1
    with run.timed("phase1"):
        sets = candidate_sets(lm, config)
        surfaces = sorted(
            {fill(p.number_surface, num=n) for s in sets.values() for n in s["numbers"]}
        )
        scores = phase1_scores(lm, number_prompts, surfaces, config.batch_size)
        split = [s for s in surfaces if not scores["neutral"]["in_context"][s]]
        if split:
            warnings.append(
                f"{len(split)} number surface(s) (e.g. {split[0]!r}) do not tokenize cleanly after "
                "the number prefill; they were scored as tokenized on their own."
            )
        frames, categories, set_info = [], {}, {}
        for name, spec in sets.items():
            frame, cats, info = phase1_set(name, spec, scores, config)
            frames.append(frame)
            set_info[name] = info
            if cats is not None:
                categories[name] = cats
            for message in (info["warning"], info["skipped"]):
                if message:
                    warnings.append(message)
        phase1 = pd.concat(frames, ignore_index=True)
        atomic_write_parquet(run.artifact("phase1.parquet"), phase1)
    results.update(
        sets=set_info,
        k={n: i["k"] for n, i in set_info.items()},
        categories=categories,
        phase=1,
        phase1_work={n: vars(s["stats"]) for n, s in scores.items()},
    )
    run.save_results(results)

    # ---- phase 2: single numbers
    with run.timed("phase2"):
        neutral = _probs(
            animal_probabilities(
                lm, [neutral_animal], words, config.batch_size, "phase 2: neutral"
            )[0]
        )
        results["neutral"] = neutral
        scored = phase1[phase1["set"].isin(list(categories))]
        small = {n for n, i in set_info.items() if i["n_candidates"] <= config.score_all_max}
        scored = scored[scored["category"].notna() | scored["set"].isin(small)]
        unique = list(dict.fromkeys(scored["number"]))
        number_prompt = {
            n: make_prompt(
                tokenizer, p.animal_question, fill(p.number_system, num=n), p.animal_prefill
            )
            for n in unique
        }
        if unique:
            results["prompts"]["phase2_number_example"] = number_prompt[unique[0]].to_dict()
        probs = animal_probabilities(
            lm, [number_prompt[n] for n in unique], words, config.batch_size, "phase 2: numbers"
        )
        per_number = {n: _probs(wp) for n, wp in zip(unique, probs, strict=True)}
        rows = scored.copy()
        for column in ("p_bias", "p_control", "p_bias_first", "p_control_first"):
            rows[column] = [per_number[n][column] for n in rows["number"]]
        ratios = [_ratios(per_number[n], neutral) for n in rows["number"]]
        for column in ("bias_ratio", "control_ratio", "relative_ratio"):
            rows[column] = [r[column] for r in ratios]
        rows["log_bias_ratio"] = np.log(rows["bias_ratio"].to_numpy())
        rows = rows.reset_index(drop=True)
        atomic_write_parquet(run.artifact("numbers.parquet"), rows)
        results["phase"] = 2
        run.save_results(results)

        # template control: the same prompt with non-number words
        template = template_control(lm, config, neutral, words)
        results["template_control"] = template
        results["prompts"]["template_example"] = template.pop("prompt_example")
        run.save_results(results)

    # ---- statistics per set and category
    template_group = _group("template", template["per_word"])
    with run.timed("statistics"):
        results["category_stats"] = {
            name: set_statistics(rows[rows["set"] == name], template_group, config)
            for name in categories
        }
        warnings.extend(rarity_warnings(results["category_stats"], set_info))
        results["template_control"]["stats"] = group_statistics(template_group, {}, config.seed)
        results["claims"] = study_claims(rows, categories, results["k"], config)
    run.save_results(results)

    # ---- cumulative priming
    if config.cumulative_orders:
        with run.timed("cumulative"):
            results["cumulative"] = cumulative_priming(
                lm, config, categories, template["words"], neutral, words
            )
        run.save_results(results)

    # ---- phase 3: by digit length
    results["lengths"] = length_statistics(set_info, results["category_stats"])
    results["phase"] = 3
    results["report"] = report_lines(results)
    results["partial"] = False
    with run.timed("figures"):
        results["figures"] = write_figures(results, rows, template_group, run)
    return results


def template_control(
    lm: LM, config: EntanglementConfig, neutral: dict[str, float], words: list[str]
) -> dict[str, Any]:
    tokenizer = _tokenizer(lm)
    p = config.prompts
    pool = config.template_words or shipped_template_words()
    bad = [w for w in pool if any(c.isdigit() for c in w) or not w.strip()]
    if bad:
        raise ConfigError(f"Template words must be non-empty and contain no digits: {bad[:5]}.")
    n = min(config.n_template_words or config.k, len(pool))
    rng = np.random.default_rng([config.seed, 7])
    chosen = [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
    system = p.template_system or p.number_system
    prompts = [
        make_prompt(tokenizer, p.animal_question, fill(system, num=w), p.animal_prefill)
        for w in chosen
    ]
    probs = animal_probabilities(lm, prompts, words, config.batch_size, "phase 2: template words")
    per_word = []
    for word, wp in zip(chosen, probs, strict=True):
        values = _probs(wp)
        per_word.append({"word": word, **values, **_ratios(values, neutral)})
    return {
        "words": chosen,
        "system_template": system,
        "per_word": per_word,
        "prompt_example": prompts[0].to_dict(),
    }


def set_statistics(
    rows: pd.DataFrame, template: GroupValues, config: EntanglementConfig
) -> dict[str, Any]:
    """Descriptive per-category statistics of one set (comparisons against the matched Random
    and the template control), and the rank correlations of the phase-1 shifts with the log
    bias ratio over every scored number. Verdicts come from study_claims, not from here."""
    groups = {c: _group(c, rows[rows["category"] == c].to_dict("records")) for c in CATEGORIES}
    refs = {"random": groups["random"], "template": template}
    out: dict[str, Any] = {
        c: group_statistics(g, refs, config.seed, config.permutations) for c, g in groups.items()
    }
    for c in CATEGORIES:
        members = rows[rows["category"] == c]
        out[c]["p_neutral_norm_median"] = float(members["p_neutral_norm"].median())
        out[c]["p_owl_context_norm_median"] = float(members["p_owl_context_norm"].median())
        out[c]["log_p_neutral_median"] = float(np.log(members["p_neutral_norm"]).median())
    categorised = rows[rows["category"].notna()]
    out["categorised"] = group_statistics(
        _group("categorised", categorised.to_dict("records")), {}, config.seed
    )
    if len(categorised) < len(rows):  # the whole (small) set was scored
        out["all_scored"] = group_statistics(
            _group("all", rows.to_dict("records")), {}, config.seed
        )
    out["correlation_prob_diff_log_bias_ratio"] = rank_correlation(
        rows["prob_diff"].tolist(), rows["log_bias_ratio"].tolist()
    )
    out["correlation_specific_shift_log_bias_ratio"] = rank_correlation(
        rows["specific_shift"].tolist(), rows["log_bias_ratio"].tolist()
    )
    return out


def study_claims(
    rows: pd.DataFrame,
    categories: dict[str, dict[str, list[str]]],
    k: dict[str, int],
    config: EntanglementConfig,
) -> dict[str, Any]:
    """Every set's claims (sublens.entanglement.set_claims) on the numbers' log bias ratios,
    recorded with their Holm-adjusted decisions (one family: every set x test)."""
    tests = []
    for name, cats in categories.items():
        subset = rows[rows["set"] == name]
        value = dict(zip(subset["number"], subset["log_bias_ratio"], strict=True))
        logs = {c: [float(value[n]) for n in cats[c]] for c in CATEGORIES}
        for test, (claim, estimate) in zip(
            TESTS, set_claims(name, logs, config.claims, config.bias), strict=True
        ):
            tests.append((name, test, claim, estimate))
    return claims_record(tests, config.claims, primary_set(k, config.primary_set))


def rarity_warnings(
    category_stats: dict[str, Any], set_info: dict[str, Any] | None = None, factor: float = 10.0
) -> list[str]:
    """Frequency caveats: Decreased or Unchanged numbers far rarer or commoner than Increased
    (median normalised neutral probability off by more than `factor`; their comparisons with
    Increased are not frequency-matched), and a Random null whose match to Increased is loose
    (pairs outside the caliper)."""
    out = []
    for name, stats in category_stats.items():
        reference = stats["increased"]["p_neutral_norm_median"]
        for c in ("decreased", "unchanged"):
            value = stats[c]["p_neutral_norm_median"]
            if reference > 0 and not 1 / factor <= value / reference <= factor:
                out.append(
                    f"set {name!r}: {LABELS[c]} numbers have median normalised neutral probability "
                    f"{value:.2g} against Increased's {reference:.2g}: the comparison of the two "
                    "categories also compares how common their numbers are."
                )
        matching = ((set_info or {}).get(name) or {}).get("matching") or {}
        if matching.get("n_outside_caliper"):
            out.append(
                f"set {name!r}: {matching['n_outside_caliper']} of {matching['n_pairs']} Random "
                f"numbers lie more than {matching['caliper']:g} nats of baseline log probability "
                f"from their Increased partner (largest {matching['max_abs_log_difference']:.2f}): "
                "the set has too few numbers of that frequency for a close match."
            )
    return out


def cumulative_priming(
    lm: LM,
    config: EntanglementConfig,
    categories: dict[str, dict[str, list[str]]],
    template_words: list[str],
    neutral: dict[str, float],
    words: list[str],
) -> dict[str, Any]:
    """All k items of each category (and the template words) in one prompt, in several orders."""
    tokenizer = _tokenizer(lm)
    p = config.prompts
    rng = np.random.default_rng([config.seed, 11])
    groups: list[tuple[str, str, list[str]]] = [
        (s, c, members) for s, cats in categories.items() for c, members in cats.items()
    ]
    groups.append(("template", "template", template_words))
    items: list[tuple[str, str, list[str]]] = []
    for s, c, members in groups:
        items.extend(
            (s, c, order) for order in distinct_orders(members, config.cumulative_orders, rng)
        )
    prompts = [
        make_prompt(
            tokenizer,
            p.animal_question,
            fill(p.cumulative_system, nums=", ".join(o)),
            p.animal_prefill,
        )
        for _, _, o in items
    ]
    probs = animal_probabilities(lm, prompts, words, config.batch_size, "cumulative priming")
    out: dict[str, Any] = {
        "orders": config.cumulative_orders,
        "system_template": p.cumulative_system,
        "prompt_example": prompts[0].to_dict(),
        "sets": {},
    }
    collected: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (s, c, order), wp in zip(items, probs, strict=True):
        values = _probs(wp)
        collected.setdefault((s, c), []).append(
            {"order": order, **values, **_ratios(values, neutral)}
        )
    for (s, c), per_order in collected.items():
        summary = {
            col: ratio_summary([o[col] for o in per_order], config.seed)
            for col in ("bias_ratio", "control_ratio", "relative_ratio")
        }
        out["sets"].setdefault(s, {})[c] = {
            "n_items": len(per_order[0]["order"]),
            **summary,
            "per_order": per_order,
        }
    return out


def distinct_orders(items: Sequence[str], n: int, rng: np.random.Generator) -> list[list[str]]:
    """The items in their own order, then seeded shuffles, all different while len(items)!
    allows (n orders in all, fewer when there are not that many)."""
    orders = [list(items)]
    limit = min(n, math.factorial(len(items)))
    tries = 0
    while len(orders) < limit and tries < 100 * n:
        tries += 1
        order = [items[int(i)] for i in rng.permutation(len(items))]
        if order not in orders:
            orders.append(order)
    return orders


def length_statistics(set_info: dict[str, Any], category_stats: dict[str, Any]) -> dict[str, Any]:
    """Phase 3: per digit length of the autoregressive set, the ratio summaries of its
    categorised numbers (the union of the four categories) and of each category; the strongest
    length. Reuses the per-set statistics (the same numbers, the same bootstrap)."""
    per_length: dict[str, Any] = {}
    for name, info in set_info.items():
        if info["kind"] != "autoregressive" or name not in category_stats:
            continue
        stats = category_stats[name]
        per_length[str(info["length"])] = {
            "set": name,
            "k": info["k"],
            "n": stats["categorised"]["n"],
            **{
                col: stats["categorised"][col]
                for col in ("bias_ratio", "control_ratio", "relative_ratio")
            },
            "categories": {c: stats[c]["bias_ratio"] for c in CATEGORIES},
        }
    return {"per_length": per_length, "strongest": strongest(per_length) if per_length else None}


# ---------------------------------------------------------------------------------------------
# report


def _fmt(summary: dict[str, float]) -> str:
    """Geometric mean with its CI; 'too few' instead of an interval below the claims' minimum."""
    n = summary.get("n", 0)
    if n < MIN_UNITS["number"] or not all(
        math.isfinite(summary.get(key, math.nan)) for key in ("geo_ci_low", "geo_ci_high")
    ):
        return f"{summary['geo_mean']:.2f}× (too few numbers for a CI, n = {n:g})"
    return f"{summary['geo_mean']:.2f}× [{summary['geo_ci_low']:.2f}, {summary['geo_ci_high']:.2f}]"


def _p(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def report_lines(results: dict[str, Any]) -> list[str]:
    """The terminal lines: per set, geometric-mean bias ratios, the Random null's frequency
    match, and every claim's verdict (sublens.claims, Holm over all sets and tests)."""
    bias, control = results["bias"], results["control"]
    neutral = results["neutral"]
    lines = [
        f"Neutral: P({bias}) = {neutral['p_bias']:.4g}, P({control}) = {neutral['p_control']:.4g} "
        "(bias ratios: geometric mean [95% t-interval on log ratios]; categories by the "
        f"{bias}-minus-{control} context shift; Random matched to Increased on baseline frequency)"
    ]
    template = results["template_control"]["stats"]["bias_ratio"]
    for name, stats in results["category_stats"].items():
        parts = [f"{LABELS[c]} {_fmt(stats[c]['bias_ratio'])}" for c in CATEGORIES]
        parts.append(f"template {_fmt(template)}")
        match = (results["sets"].get(name) or {}).get("matching") or {}
        matched = (
            f"; Random/Increased baseline frequency: median ×{match['median_frequency_ratio']:.2f}, "
            f"KS p = {_p(match['ks_p_value'])}"
            if match
            else ""
        )
        lines.append(f"{name} (k={results['k'][name]}): " + ", ".join(parts) + matched)
        rel = [f"{LABELS[c]} {_fmt(stats[c]['relative_ratio'])}" for c in CATEGORIES]
        lines.append(f"{name} relative ratio ({bias}/{control}): " + ", ".join(rel))
    claims = results.get("claims") or {}
    decisions = claims.get("decisions") or []
    if decisions:
        settings = claims.get("settings") or {}
        lines.append(
            f"Claims (unit: numbers; Holm over {len(decisions)} tests; margin "
            f"×{settings.get('margin', 1.25):g}):"
        )
        for d in decisions:
            lines.append(
                f"  {d['set']} {d['test']}: {d['verdict']} ({d['reason']}; raw p = "
                f"{_p(d['p_raw'])})" + (f"; to settle: {d['settle']}" if d["settle"] else "")
            )
        primary = claims.get("primary_set")
        main = next(
            (d for d in decisions if d["set"] == primary and d["test"] == "entangled_vs_null"),
            None,
        )
        if main:
            lines.append(
                f"Paper claim (entanglement does not explain the rise; primary set {primary}): "
                f"{main['verdict']}"
            )
    lengths = results.get("lengths") or {}
    if lengths.get("per_length"):
        parts = [f"{n}-digit {_fmt(e['bias_ratio'])}" for n, e in lengths["per_length"].items()]
        best = lengths["strongest"]
        sep = "separable" if best["separable"] else "not separable"
        runner = f" ({sep} from {best['runner_up']}-digit)" if best["runner_up"] else ""
        lines.append(
            "By digit length (categorised numbers, descriptive): "
            + ", ".join(parts)
            + f"; strongest: {best['best']}-digit{runner}"
        )
    cumulative = results.get("cumulative")
    if cumulative:
        for name, cats in cumulative["sets"].items():
            parts = [f"{LABELS.get(c, c)} {_fmt(v['bias_ratio'])}" for c, v in cats.items()]
            lines.append(
                f"Cumulative priming, {name} ({cumulative['orders']} orders): " + ", ".join(parts)
            )
    for warning in results["warnings"]:
        lines.append(f"warning: {warning}")
    return lines


def print_report(results: dict[str, Any]) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    for name, stats in results["category_stats"].items():
        table = Table(
            title=f"{name}: P({results['bias']}) under the number prompt / neutral "
            f"(k={results['k'][name]})"
        )
        for column in (
            "category",
            "n",
            "bias ratio (geo) [95% CI]",
            "mean",
            "median",
            "control ratio (geo)",
            "relative ratio (geo)",
            "p vs Random (perm.)",
            "mean specific shift",
        ):
            table.add_column(column)
        rows = [(c, stats[c]) for c in CATEGORIES]
        rows.append(("template", results["template_control"]["stats"]))
        for label, s in rows:
            vs = s.get("vs_random", {}).get("bias_ratio", {}).get("p_value")
            table.add_row(
                LABELS[label],
                str(s["n"]),
                _fmt(s["bias_ratio"]),
                f"{s['bias_ratio']['mean']:.2f}",
                f"{s['bias_ratio']['median']:.2f}",
                f"{s['control_ratio']['geo_mean']:.2f}",
                f"{s['relative_ratio']['geo_mean']:.2f}",
                _p(vs) if vs is not None else "-",
                f"{s['specific_shift_mean']:+.2f}" if "specific_shift_mean" in s else "-",
            )
        console.print(table)
    for line in results["report"]:
        console.print(line, markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------
# figures


def write_figures(
    results: dict[str, Any], rows: pd.DataFrame, template: GroupValues, run: Run
) -> dict[str, list[str]]:
    """Bias ratio by category (per set, with CIs and the individual numbers) and by digit length.
    PNG and PDF (TrueType fonts: pdf.fonttype 42)."""
    import matplotlib
    from matplotlib.figure import Figure

    written: dict[str, list[str]] = {}
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9}):
        names = list(results["category_stats"])
        if names:
            fig = Figure(figsize=(3.0 * len(names) + 0.5, 5.2), layout="constrained")
            axes = fig.subplots(2, len(names), squeeze=False, sharey="row")
            labels = [*CATEGORIES, "template"]
            for j, name in enumerate(names):
                stats = results["category_stats"][name]
                subset = rows[rows["set"] == name]
                for i, column in enumerate(("bias_ratio", "relative_ratio")):
                    ax = axes[i][j]
                    for x, label in enumerate(labels):
                        s = (
                            results["template_control"]["stats"]
                            if label == "template"
                            else stats[label]
                        )[column]
                        values = (
                            template.column(column)
                            if label == "template"
                            else subset[subset["category"] == label][column].tolist()
                        )
                        jitter = np.random.default_rng(x).uniform(-0.15, 0.15, len(values))
                        ax.scatter(x + jitter, values, s=6, alpha=0.35, color="grey", lw=0)
                        ax.errorbar(
                            [x],
                            [s["geo_mean"]],
                            yerr=[
                                [s["geo_mean"] - s["geo_ci_low"]],
                                [s["geo_ci_high"] - s["geo_mean"]],
                            ],
                            fmt="o",
                            color="C7" if label == "template" else f"C{x}",
                            capsize=3,
                        )
                    ax.axhline(1.0, color="black", lw=0.6, ls="--")
                    _log_axis(ax)
                    ax.set_xticks(range(len(labels)), [LABELS[c] for c in labels], rotation=35)
                    if i == 0:
                        ax.set_title(f"{name} (k={results['k'][name]})")
                    if j == 0:
                        ax.set_ylabel(f"{column.replace('_', ' ')} ({results['bias']})")
            written["bias_ratio_by_category"] = _save(fig, run, "bias_ratio_by_category")
        per_length = (results.get("lengths") or {}).get("per_length") or {}
        if per_length:
            fig = Figure(figsize=(4.2, 3.2), layout="constrained")
            ax = fig.subplots()
            xs = [int(n) for n in per_length]
            series = [("categorised", [per_length[str(n)]["bias_ratio"] for n in xs])]
            series += [(c, [per_length[str(n)]["categories"][c] for n in xs]) for c in CATEGORIES]
            for i, (label, summaries) in enumerate(series):
                offset = (i - 2) * 0.07
                means = [s["geo_mean"] for s in summaries]
                err = [
                    [s["geo_mean"] - s["geo_ci_low"] for s in summaries],
                    [s["geo_ci_high"] - s["geo_mean"] for s in summaries],
                ]
                ax.errorbar(
                    [x + offset for x in xs],
                    means,
                    yerr=err,
                    marker="o",
                    capsize=2,
                    lw=1.8 if label == "categorised" else 0.8,
                    color="black" if label == "categorised" else f"C{i - 1}",
                    label=LABELS.get(label, label),
                )
            ax.axhline(1.0, color="black", lw=0.6, ls="--")
            _log_axis(ax)
            ax.set_xticks(xs)
            ax.set_xlabel("digits")
            ax.set_ylabel(f"bias ratio ({results['bias']}), geometric mean")
            ax.legend(fontsize=7)
            written["bias_ratio_by_length"] = _save(fig, run, "bias_ratio_by_length")
    return written


def _log_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=6)


def _save(fig: Any, run: Run, stem: str) -> list[str]:
    paths = []
    for ext in ("png", "pdf"):
        path = run.artifact(f"figures/{stem}.{ext}")
        atomic_write_figure(fig, path, dpi=200)
        paths.append(str(path.relative_to(run.path)))
    return paths


# ---------------------------------------------------------------------------------------------


def execute(config: EntanglementConfig, run: Run) -> dict[str, Any]:
    with run.timed("load_model"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={"model": lm.describe()})
    results = run_study(lm, config, run)
    print_report(results)
    return results


EXPERIMENT = Experiment(
    "entanglement",
    "Token entanglement, phases 1-3: disjoint number categories, null controls, bias ratios",
    EntanglementConfig,
    execute,
)
