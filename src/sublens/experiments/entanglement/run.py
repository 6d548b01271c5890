"""entanglement: phases 1-3 of the token-entanglement study (docs/design.md, "Measurements").

1. Phase 1 (animal -> number): every candidate number (the vocabulary's number tokens, and
   every string of each digit length) is scored after a neutral prompt, after the same prompt
   with the bias-animal context and with the control-animal context. Each candidate set is
   normalised on its own and split by the owl-specific shift (owl-context shift minus
   control-context shift of the log probability) into disjoint Increased / Decreased /
   Unchanged categories of k numbers, plus a Random null matched to Increased on baseline
   (neutral) frequency (`analysis.categorise_set`).
2. Phase 2 (number -> animal): P(bias) and P(control) under the number-loving system prompt
   for every categorised number, ratios against the neutral prompt; a template control (the
   same prompt with non-number words).
3. The categories compared: per-category statistics and the claims (sublens.entanglement.set_claims)
   decided by sublens.claims with Holm over every set and test; cumulative priming (all k
   numbers of a category in one prompt), descriptive.
4. Phase 3: the description per digit length of the autoregressive set, and the strongest length.

Definitions: sublens.entanglement (module docstring); they are also written into
results.json under "definitions" (`analysis.DEFINITIONS`).

Run directory: results.json (`EntanglementResults`, saved after each phase), numbers.parquet
(one row per (set, number) scored in phase 2; the mechanistic experiment reads it),
phase1.parquet (every candidate of every set), figures/*.png|pdf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from sublens.claims import MIN_UNITS
from sublens.entanglement import (
    CATEGORIES,
    animal_context,
    autoregressive_numbers,
    fill,
    vocabulary_numbers,
)
from sublens.errors import ConfigError
from sublens.experiments.entanglement.analysis import (
    DEFINITIONS,
    LABELS,
    CandidateSet,
    ContextScores,
    categorise_set,
    distinct_orders,
    group_values,
    length_statistics,
    numbers_to_score,
    rarity_warnings,
    ratios,
    set_statistics,
    study_claims,
    summarise_cumulative,
    template_statistics,
    with_ratios,
)
from sublens.experiments.entanglement.config import EntanglementConfig
from sublens.experiments.entanglement.figures import make_figures
from sublens.experiments.entanglement.results import (
    AnimalProbabilities,
    AnswerWord,
    Categories,
    Cumulative,
    Design,
    EntanglementResults,
    Prompts,
    RatioSummary,
    ScoringWork,
    SetInfo,
    TemplateControl,
    TemplateWord,
)
from sublens.models import LoadedModel, load_model
from sublens.prompts import PromptText, make_prompt
from sublens.result_records import PromptRecord
from sublens.runs import Run, atomic_write_parquet
from sublens.scoring import (
    LM,
    ScoringError,
    ScoringStats,
    score_strings,
    tokenize_continuations,
    word_probability_many,
)

PHASE1_FILE = "phase1.parquet"
NUMBERS_FILE = "numbers.parquet"


def execute(config: EntanglementConfig, run: Run, lm: LM | None = None) -> EntanglementResults:
    """The study on `config.model`, or on `lm` when a model is given already loaded."""
    lm = lm if lm is not None else load(config, run)
    prompts = StudyPrompts.build(lm, config)
    answer_words = check_answer_words(lm, prompts.neutral_animal, prompts.words)
    run.note(prompts=prompts.record().model_dump(mode="json"))

    with run.timed("phase1"):  # animal -> number: every candidate scored, each set categorised
        phase1 = score_candidates(lm, config, prompts)
        atomic_write_parquet(run.artifact(PHASE1_FILE), phase1.table)
    results = first_results(lm, config, prompts, answer_words, phase1)
    run.save_results(results)

    with run.timed("phase2"):  # number -> animal: P(bias) under each number, then under words
        numbers, results = score_numbers(lm, config, prompts, phase1.table, results)
        atomic_write_parquet(run.artifact(NUMBERS_FILE), numbers)
        run.save_results(results)
        results = template_control(lm, config, prompts, results)
        run.save_results(results)

    with run.timed("statistics"):  # the categories compared: descriptive statistics, claims
        results = compare_categories(numbers, config, results)
    run.save_results(results)

    if config.cumulative_orders:
        with run.timed("cumulative"):  # all numbers of a category in one prompt
            cumulative = cumulative_priming(lm, config, prompts, results)
            results = results.model_copy(update={"cumulative": cumulative})
        run.save_results(results)

    results = finish(results)  # phase 3 by digit length, the report lines
    with run.timed("figures"):
        results = results.model_copy(update={"figures": make_figures(results, numbers, run.path)})
    print_report(results)
    return results


def run_study(lm: LM, config: EntanglementConfig, run: Run) -> EntanglementResults:
    """Phases 1-3 on a model already loaded (a toy model in the tests): `execute`."""
    return execute(config, run, lm)


# ---- the model and the prompts --------------------------------------------------------------
def load(config: EntanglementConfig, run: Run) -> LoadedModel:
    with run.timed("load_model"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={"model": lm.describe()})
    return lm


def _tokenizer(lm: LM) -> Any:
    return lm[1] if isinstance(lm, tuple) else lm.tokenizer


def bias_system(config: EntanglementConfig, plural: str | None = None) -> str:
    """The animal context of phase 1: the bias animal's, or (plural given) another animal's."""
    plural = plural or config.plural
    return animal_context(config.prompts.bias_system, plural)


@dataclass(frozen=True)
class StudyPrompts:
    """The fixed prompts: phase 1 asks for a number, phase 2 for an animal."""

    neutral_number: PromptText
    owl_number: PromptText  # under the bias animal's context
    control_number: PromptText  # under the control animal's context
    neutral_animal: PromptText
    words: list[str]  # the answer words measured in phase 2: [bias, control]

    @classmethod
    def build(cls, lm: LM, config: EntanglementConfig) -> StudyPrompts:
        tokenizer, p = _tokenizer(lm), config.prompts

        def number(system: str | None) -> PromptText:
            return make_prompt(tokenizer, p.number_question, system, p.number_prefill)

        return cls(
            neutral_number=number(p.neutral_system),
            owl_number=number(bias_system(config)),
            control_number=number(bias_system(config, config.control_plural_word)),
            neutral_animal=make_prompt(tokenizer, p.animal_question, p.neutral_system, p.animal_prefill),
            words=[config.bias, config.control],
        )

    def phase1(self) -> dict[str, PromptText]:
        """By the names phase1_work records them under."""
        return {"neutral": self.neutral_number, "bias": self.owl_number, "control": self.control_number}

    def record(self) -> Prompts:
        return Prompts(
            phase1_neutral=_prompt(self.neutral_number),
            phase1_owl_context=_prompt(self.owl_number),
            phase1_control_context=_prompt(self.control_number),
            phase2_neutral=_prompt(self.neutral_animal),
        )


def _prompt(prompt: PromptText) -> PromptRecord:
    return PromptRecord.model_validate(prompt.to_dict())


def animal_prompt(lm: LM, config: EntanglementConfig, system: str) -> PromptText:
    """The phase-2 question under `system` (a number prompt, a template word's, ...)."""
    p = config.prompts
    return make_prompt(_tokenizer(lm), p.animal_question, system, p.animal_prefill)


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


# ---- phase 1 ------------------------------------------------------------------------------------
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


def score_candidates(lm: LM, config: EntanglementConfig, prompts: StudyPrompts) -> Phase1:
    """Every candidate's log P after the neutral prompt and the two animal contexts; each set
    normalised and categorised on its own (`analysis.categorise_set`)."""
    sets = candidate_sets(lm, config)

    def surface(number: str) -> str:
        return fill(config.prompts.number_surface, num=number)

    surfaces = sorted({surface(n) for s in sets for n in s.numbers})
    scores = phase1_scores(lm, prompts.phase1(), surfaces, config.batch_size)
    warnings = []
    split = [s for s in surfaces if not scores["neutral"].in_context[s]]
    if split:
        warnings.append(
            f"{len(split)} number surface(s) (e.g. {split[0]!r}) do not tokenize cleanly after "
            "the number prefill; they were scored as tokenized on their own."
        )
    frames, infos, categories = [], {}, {}
    for candidates in sets:
        own = [surface(n) for n in candidates.numbers]
        context = ContextScores(
            neutral=np.array([scores["neutral"].logp[s] for s in own]),
            owl_context=np.array([scores["bias"].logp[s] for s in own]),
            control_context=np.array([scores["control"].logp[s] for s in own]),
            n_tokens=[len(scores["neutral"].tokens[s]) for s in own],
        )
        frame, cats, info = categorise_set(candidates, own, context, config)
        frames.append(frame)
        infos[candidates.name] = info
        if cats is not None:
            categories[candidates.name] = cats
        warnings.extend(message for message in (info.warning, info.skipped) if message)
    work = {name: ScoringWork.model_validate(vars(s.work)) for name, s in scores.items()}
    return Phase1(pd.concat(frames, ignore_index=True), infos, categories, work, warnings)


def first_results(lm: LM, config: EntanglementConfig, prompts: StudyPrompts,
                  answer_words: dict[str, Any], phase1: Phase1) -> EntanglementResults:
    """The results after phase 1: the set-up, the candidate sets and their categories."""
    return EntanglementResults(
        model=getattr(lm, "spec", None),
        bias=config.bias,
        control=config.control,
        definitions=DEFINITIONS,
        design=Design(categories_by="owl_minus_control", owl_specific=True,
                      random="matched_to_increased", match_caliper=config.match_caliper),
        answer_words={word: AnswerWord.model_validate(t) for word, t in answer_words.items()},
        prompts=prompts.record(),
        warnings=phase1.warnings,
        partial=True,
        phase=1,
        sets=phase1.sets,
        k={name: info.k for name, info in phase1.sets.items()},
        categories=phase1.categories,
        phase1_work=phase1.work,
    )


# ---- phase 2 ------------------------------------------------------------------------------------
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
                out.append(AnimalProbabilities(
                    p_bias=bias.p_word, p_control=control.p_word,
                    p_bias_first=bias.p_first_token, p_control_first=control.p_first_token))
            bar.update(len(chunk))
    return out


def score_numbers(lm: LM, config: EntanglementConfig, prompts: StudyPrompts, phase1: pd.DataFrame,
                  results: EntanglementResults) -> tuple[pd.DataFrame, EntanglementResults]:
    """P(bias) and P(control) under the neutral prompt and under each number's prompt: the
    phase-2 table (numbers.parquet) and the results with the neutral probabilities."""
    neutral = animal_probabilities(lm, [prompts.neutral_animal], prompts.words, config.batch_size,
                                   "phase 2: neutral")[0]
    scored = numbers_to_score(phase1, results.sets, list(results.categories), config.score_all_max)
    unique = list(dict.fromkeys(scored["number"]))
    number_prompts = [animal_prompt(lm, config, fill(config.prompts.number_system, num=n)) for n in unique]
    probabilities = animal_probabilities(lm, number_prompts, prompts.words, config.batch_size,
                                         "phase 2: numbers")
    numbers = with_ratios(scored, dict(zip(unique, probabilities, strict=True)), neutral)
    example = {"phase2_number_example": _prompt(number_prompts[0])} if unique else {}
    return numbers, results.model_copy(update={
        "neutral": neutral, "phase": 2, "prompts": results.prompts.model_copy(update=example)})


def _neutral(results: EntanglementResults) -> AnimalProbabilities:
    if results.neutral is None:
        raise ValueError("the neutral probabilities come first (score_numbers)")
    return results.neutral


def template_words(config: EntanglementConfig) -> list[str]:
    """The template control's words: n_template_words (default k) drawn with the seed."""
    pool = config.template_words or shipped_template_words()
    bad = [w for w in pool if any(c.isdigit() for c in w) or not w.strip()]
    if bad:
        raise ConfigError(f"Template words must be non-empty and contain no digits: {bad[:5]}.")
    n = min(config.n_template_words or config.k, len(pool))
    rng = np.random.default_rng([config.seed, 7])
    return [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]


def template_control(lm: LM, config: EntanglementConfig, prompts: StudyPrompts,
                     results: EntanglementResults) -> EntanglementResults:
    """The number prompt with non-number words in the number's slot: how much of the rise the
    prompt gives without any number."""
    words = template_words(config)
    system = config.prompts.template_system or config.prompts.number_system
    word_prompts = [animal_prompt(lm, config, fill(system, num=w)) for w in words]
    probabilities = animal_probabilities(lm, word_prompts, prompts.words, config.batch_size,
                                         "phase 2: template words")
    neutral = _neutral(results)
    per_word = [TemplateWord(word=w, **p.model_dump(), **ratios(p, neutral))
                for w, p in zip(words, probabilities, strict=True)]
    control = TemplateControl(words=words, system_template=system, per_word=per_word)
    example = results.prompts.model_copy(update={"template_example": _prompt(word_prompts[0])})
    return results.model_copy(update={"template_control": control, "prompts": example})


# ---- the comparison -------------------------------------------------------------------------
def compare_categories(numbers: pd.DataFrame, config: EntanglementConfig,
                       results: EntanglementResults) -> EntanglementResults:
    """Per set, each category's statistics against its matched Random and the template words,
    the frequency caveats, and every claim decided (Holm over every set and test)."""
    template = results.template_control
    if template is None:
        raise ValueError("the template control comes first (template_control)")
    words = group_values("template", [w.model_dump() for w in template.per_word])
    category_stats = {name: set_statistics(numbers[numbers["set"] == name], words, config)
                      for name in results.categories}
    return results.model_copy(update={
        "category_stats": category_stats,
        "warnings": [*results.warnings, *rarity_warnings(category_stats, results.sets)],
        "template_control": template.model_copy(
            update={"stats": template_statistics(words, config.seed)}),
        "claims": study_claims(numbers, results.categories, results.k, config),
    })


def cumulative_priming(lm: LM, config: EntanglementConfig, prompts: StudyPrompts,
                       results: EntanglementResults) -> Cumulative:
    """All k items of each category (and the template words) in one prompt, in several orders."""
    rng = np.random.default_rng([config.seed, 11])
    groups: list[tuple[str, str, list[str]]] = [
        (name, c, getattr(cats, c)) for name, cats in results.categories.items() for c in CATEGORIES]
    groups.append(("template", "template", results.template_control.words
                   if results.template_control else []))
    items = [(name, c, order) for name, c, members in groups
             for order in distinct_orders(members, config.cumulative_orders, rng)]
    primed = [animal_prompt(lm, config, fill(config.prompts.cumulative_system, nums=", ".join(order)))
              for _, _, order in items]
    probabilities = animal_probabilities(lm, primed, prompts.words, config.batch_size,
                                         "cumulative priming")
    measured = [(name, c, order, p) for (name, c, order), p in zip(items, probabilities, strict=True)]
    return summarise_cumulative(measured, _neutral(results), config, _prompt(primed[0]))


def finish(results: EntanglementResults) -> EntanglementResults:
    """Phase 3 (the categorised numbers by digit length) and the report lines: the run is done."""
    done = results.model_copy(update={
        "lengths": length_statistics(results.sets, results.category_stats or {}), "phase": 3})
    return done.model_copy(update={"report": report_lines(done), "partial": False})


# ---- console ------------------------------------------------------------------------------------
def _fmt(summary: RatioSummary) -> str:
    """Geometric mean with its CI; 'too few' instead of an interval below the claims' minimum."""
    n = summary.n
    if n < MIN_UNITS["number"] or not all(
        math.isfinite(v) for v in (summary.geo_ci_low, summary.geo_ci_high)
    ):
        return f"{summary.geo_mean:.2f}× (too few numbers for a CI, n = {n:g})"
    return f"{summary.geo_mean:.2f}× [{summary.geo_ci_low:.2f}, {summary.geo_ci_high:.2f}]"


def _p(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def report_lines(results: EntanglementResults) -> list[str]:
    """The terminal lines: per set, geometric-mean bias ratios, the Random null's frequency
    match, and every claim's verdict (sublens.claims, Holm over all sets and tests)."""
    bias, control = results.bias, results.control
    neutral = _neutral(results)
    lines = [
        f"Neutral: P({bias}) = {neutral.p_bias:.4g}, P({control}) = {neutral.p_control:.4g} "
        "(bias ratios: geometric mean [95% t-interval on log ratios]; categories by the "
        f"{bias}-minus-{control} context shift; Random matched to Increased on baseline frequency)"
    ]
    template = results.template_control.stats if results.template_control else None
    for name, stats in (results.category_stats or {}).items():
        parts = [f"{LABELS[c]} {_fmt(getattr(stats, c).bias_ratio)}" for c in CATEGORIES]
        if template is not None:
            parts.append(f"template {_fmt(template.bias_ratio)}")
        info = results.sets.get(name)
        match = info.matching if info is not None else None
        matched = (
            f"; Random/Increased baseline frequency: median ×{match.median_frequency_ratio:.2f}, "
            f"KS p = {_p(match.ks_p_value)}"
            if match is not None
            else ""
        )
        lines.append(f"{name} (k={results.k[name]}): " + ", ".join(parts) + matched)
        rel = [f"{LABELS[c]} {_fmt(getattr(stats, c).relative_ratio)}" for c in CATEGORIES]
        lines.append(f"{name} relative ratio ({bias}/{control}): " + ", ".join(rel))
    claims = results.claims
    if claims is not None and claims.decisions:
        lines.append(
            f"Claims (unit: numbers; Holm over {len(claims.decisions)} tests; margin "
            f"×{claims.settings.margin:g}):"
        )
        for d in claims.decisions:
            lines.append(
                f"  {d.set} {d.test}: {d.verdict.value} ({d.reason}; raw p = {_p(d.p_raw)})"
                + (f"; to settle: {d.settle}" if d.settle else "")
            )
        main = next((d for d in claims.decisions
                     if d.set == claims.primary_set and d.test == "entangled_vs_null"), None)
        if main:
            lines.append(
                f"Paper claim (entanglement does not explain the rise; primary set "
                f"{claims.primary_set}): {main.verdict.value}"
            )
    lengths = results.lengths
    if lengths is not None and lengths.per_length and lengths.strongest is not None:
        parts = [f"{n}-digit {_fmt(e.bias_ratio)}" for n, e in lengths.per_length.items()]
        best = lengths.strongest
        sep = "separable" if best.separable else "not separable"
        runner = f" ({sep} from {best.runner_up}-digit)" if best.runner_up else ""
        lines.append(
            "By digit length (categorised numbers, descriptive): "
            + ", ".join(parts)
            + f"; strongest: {best.best}-digit{runner}"
        )
    if results.cumulative is not None:
        for name, cats in results.cumulative.sets.items():
            parts = [f"{LABELS.get(c, c)} {_fmt(v.bias_ratio)}" for c, v in cats.items()]
            lines.append(
                f"Cumulative priming, {name} ({results.cumulative.orders} orders): "
                + ", ".join(parts)
            )
    lines.extend(f"warning: {warning}" for warning in results.warnings)
    return lines


def print_report(results: EntanglementResults) -> None:
    """Per set a table of the categories (and the template words), then the report lines."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    template = results.template_control.stats if results.template_control else None
    for name, stats in (results.category_stats or {}).items():
        table = Table(
            title=f"{name}: P({results.bias}) under the number prompt / neutral "
            f"(k={results.k[name]})"
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
        rows = [(c, getattr(stats, c)) for c in CATEGORIES]
        if template is not None:
            rows.append(("template", template))
        for label, s in rows:
            vs = s.vs_random.bias_ratio.p_value if s.vs_random is not None else None
            table.add_row(
                LABELS[label],
                str(s.n),
                _fmt(s.bias_ratio),
                f"{s.bias_ratio.mean:.2f}",
                f"{s.bias_ratio.median:.2f}",
                f"{s.control_ratio.geo_mean:.2f}",
                f"{s.relative_ratio.geo_mean:.2f}",
                _p(vs) if vs is not None else "-",
                f"{s.specific_shift_mean:+.2f}" if s.specific_shift_mean is not None else "-",
            )
        console.print(table)
    for line in results.report or []:
        console.print(line, markup=False, highlight=False)
