"""entanglement: phases 1-3 of the token-entanglement study (docs/design.md, "Measurements").

1. Phase 1 (animal -> number): every candidate number (the vocabulary's number tokens, and
   every string of each digit length) is scored after a neutral prompt, after the same prompt
   with the bias-animal context and with the control-animal context. Each candidate set is
   normalised on its own and split by the owl-specific shift (owl-context shift minus
   control-context shift of the log probability) into disjoint Increased / Decreased /
   Unchanged categories of k numbers, plus a Random null matched to Increased on baseline
   (neutral) frequency (`categorising.categorise_set`).
2. Phase 2 (number -> animal): P(bias) and P(control) under the number-loving system prompt
   for every categorised number, ratios against the neutral prompt; a template control (the
   same prompt with non-number words).
3. The categories compared: per-category statistics and the claims (sublens.entanglement.set_claims)
   decided by sublens.claims with Holm over every set and test; cumulative priming (all k
   numbers of a category in one prompt), descriptive.
4. Phase 3: the description per digit length of the autoregressive set, and the strongest length.

With a teacher run (`tuned_teacher`), phase 1 also scores every candidate under the neutral prompt
in the run's fine-tuned owl teacher and in its fine-tuned control teacher (one loaded at a time)
and categorises each set once more by that fine-tuning shift, as `<set>@tuned`: the numbers the
teacher that wrote the subliminal data actually shifted. The tuned sets go through phase 2 and
the statistics like the others (phase 2 in `model`); their claims are their own Holm family.

Definitions: sublens.entanglement (module docstring); they are also written into
results.json under "definitions" (`analysis.DEFINITIONS`).

Run directory: results.json (`EntanglementResults`, saved after each phase), numbers.parquet
(one row per (set, number) scored in phase 2; the mechanistic experiment reads it),
phase1.parquet (every candidate of every set), figures/*.png|pdf.

This module holds `execute` and its stages; the prompts (`study_prompts`), the fine-tuned
teachers (`teachers`), the measuring helpers (`measuring`) and the console report (`console`)
are its sibling modules.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pandas as pd
import torch

from sublens.entanglement import CATEGORIES, fill, is_tuned_set, tuned_set_name
from sublens.errors import ConfigError
from sublens.experiments.entanglement.analysis import (
    DEFINITIONS,
    TUNED_DEFINITIONS,
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
from sublens.experiments.entanglement.categorising import (
    CandidateSet,
    ContextScores,
    categorise_set,
)
from sublens.experiments.entanglement.config import EntanglementConfig
from sublens.experiments.entanglement.console import _neutral, print_report, report_lines
from sublens.experiments.entanglement.figures import make_figures
from sublens.experiments.entanglement.measuring import (
    Phase1,
    PromptScores,
    animal_probabilities,
    candidate_sets,
    phase1_scores,
    template_words,
)
from sublens.experiments.entanglement.results import (
    AnswerWord,
    Cumulative,
    Design,
    EntanglementResults,
    ScoringWork,
    TemplateControl,
    TemplateWord,
    TunedTeacher,
)
from sublens.experiments.entanglement.study_prompts import (
    StudyPrompts,
    _prompt,
    animal_prompt,
    check_answer_words,
)
from sublens.experiments.entanglement.teachers import TunedTeachers, tuned_teachers
from sublens.models import LoadedModel, load_model
from sublens.prompts import PromptText, make_prompt
from sublens.runs import Run, atomic_write_parquet
from sublens.scoring import LM

PHASE1_FILE = "phase1.parquet"
NUMBERS_FILE = "numbers.parquet"


def execute(config: EntanglementConfig, run: Run, lm: LM | None = None) -> EntanglementResults:
    """The study on `config.model`, or on `lm` when a model is given already loaded."""
    teachers = tuned_teachers(config)  # a wrong teacher run fails here, before any model loads
    lm = lm if lm is not None else load(config, run)
    prompts = StudyPrompts.build(lm, config)
    answer_words = check_answer_words(lm, prompts.neutral_animal, prompts.words)
    run.note(prompts=prompts.record().model_dump(mode="json"))

    with run.timed("phase1"):  # animal -> number: every candidate scored, each set categorised
        phase1 = score_candidates(lm, config, prompts, teachers, run)
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


# ---- the model -----------------------------------------------------------------------------
def load(config: EntanglementConfig, run: Run) -> LoadedModel:
    with run.timed("load_model"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={"model": lm.describe()})
    return lm


def teacher_scores(
    teachers: TunedTeachers, config: EntanglementConfig, surfaces: list[str], run: Run | None
) -> tuple[dict[str, PromptScores], PromptText]:
    """Every surface's log P under the neutral number prompt in the owl teacher, then in the
    control teacher: one loaded at a time, each freed before the next loads."""
    p = config.prompts
    out: dict[str, PromptScores] = {}
    prompt: PromptText | None = None
    for name, spec in teachers.specs().items():
        teacher = load_model(spec, config.device, config.dtype)
        if run is not None:
            run.note(models={**run.record.get("models", {}), name: teacher.describe()})
        try:
            neutral = make_prompt(teacher.tokenizer, p.number_question, p.neutral_system, p.number_prefill)
            if prompt is not None and neutral.text != prompt.text:
                raise ConfigError(
                    f"The two teachers of {teachers.run!r} write the neutral number prompt differently "
                    "(their tokenizers or chat templates differ): they were not fine-tuned from one base."
                )
            prompt = neutral
            out[name] = phase1_scores(teacher, {name: neutral}, surfaces, config.batch_size)[name]
        finally:
            del teacher
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    assert prompt is not None
    return out, prompt


# ---- phase 1 ------------------------------------------------------------------------------------
def score_candidates(
    lm: LM,
    config: EntanglementConfig,
    prompts: StudyPrompts,
    teachers: TunedTeachers | None = None,
    run: Run | None = None,
) -> Phase1:
    """Every candidate's log P after the neutral prompt and the two animal contexts; each set
    normalised and categorised on its own (`categorising.categorise_set`). With `teachers`, every
    candidate also under the neutral prompt in the two fine-tuned teachers, and each set once
    more, as `<set>@tuned`, by their difference (after all the prompted sets)."""
    sets = candidate_sets(lm, config)

    def surface(number: str) -> str:
        return fill(config.prompts.number_surface, num=number)

    surfaces = sorted({surface(n) for s in sets for n in s.numbers})
    scores = phase1_scores(lm, prompts.phase1(), surfaces, config.batch_size)
    tuned_record = None
    if teachers is not None:
        tuned_scores, teacher_prompt = teacher_scores(teachers, config, surfaces, run)
        scores.update(tuned_scores)
        tuned_sets = {tuned_set_name(s.name): s.name for s in sets}
        tuned_record = TunedTeacher(
            run=teachers.run,
            teacher=teachers.teacher,
            control_teacher=teachers.control_teacher,
            base=teachers.base,
            prompt=_prompt(teacher_prompt),
            sets=tuned_sets,
        )
        sets = sets + [
            CandidateSet(tuned_set_name(s.name), s.kind, s.length, s.numbers, {**s.info, "tuned_from": s.name})
            for s in sets
        ]
    warnings = []
    model = getattr(lm, "spec", None)
    if teachers is not None and teachers.base is not None and model is not None and teachers.base != model:
        warnings.append(
            f"The tuned sets' teachers were fine-tuned from {teachers.base!r}, not from the model of "
            f"phases 1 and 2 ({model!r}): their Random numbers are matched, and their numbers measured "
            "in phase 2, in another model than the one the fine-tuning shifted."
        )
    split = [s for s in surfaces if not scores["neutral"].in_context[s]]
    if split:
        warnings.append(
            f"{len(split)} number surface(s) (e.g. {split[0]!r}) do not tokenize cleanly after "
            "the number prefill; they were scored as tokenized on their own."
        )
    frames, infos, categories = [], {}, {}
    for candidates in sets:
        own = [surface(n) for n in candidates.numbers]
        owl, control = ("owl_teacher", "control_teacher") if is_tuned_set(candidates.name) else ("bias", "control")
        context = ContextScores(
            neutral=np.array([scores["neutral"].logp[s] for s in own]),
            owl_context=np.array([scores[owl].logp[s] for s in own]),
            control_context=np.array([scores[control].logp[s] for s in own]),
            n_tokens=[len(scores["neutral"].tokens[s]) for s in own],
        )
        frame, cats, info = categorise_set(candidates, own, context, config)
        frames.append(frame)
        infos[candidates.name] = info
        if cats is not None:
            categories[candidates.name] = cats
        warnings.extend(message for message in (info.warning, info.skipped) if message)
    work = {name: ScoringWork.model_validate(vars(s.work)) for name, s in scores.items()}
    return Phase1(pd.concat(frames, ignore_index=True), infos, categories, work, warnings, tuned_record)


def first_results(
    lm: LM, config: EntanglementConfig, prompts: StudyPrompts, answer_words: dict[str, Any], phase1: Phase1
) -> EntanglementResults:
    """The results after phase 1: the set-up, the candidate sets and their categories."""
    results = EntanglementResults(
        model=getattr(lm, "spec", None),
        bias=config.bias,
        control=config.control,
        definitions=DEFINITIONS if phase1.tuned is None else {**DEFINITIONS, **TUNED_DEFINITIONS},
        design=Design(
            categories_by="owl_minus_control",
            owl_specific=True,
            random="matched_to_increased",
            match_caliper=config.match_caliper,
        ),
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
    if phase1.tuned is None:
        return results
    return results.model_copy(update={"tuned_teacher": phase1.tuned})


# ---- phase 2 ------------------------------------------------------------------------------------
def score_numbers(
    lm: LM, config: EntanglementConfig, prompts: StudyPrompts, phase1: pd.DataFrame, results: EntanglementResults
) -> tuple[pd.DataFrame, EntanglementResults]:
    """P(bias) and P(control) under the neutral prompt and under each number's prompt: the
    phase-2 table (numbers.parquet) and the results with the neutral probabilities."""
    neutral = animal_probabilities(lm, [prompts.neutral_animal], prompts.words, config.batch_size, "phase 2: neutral")[
        0
    ]
    scored = numbers_to_score(phase1, results.sets, list(results.categories), config.score_all_max)
    unique = list(dict.fromkeys(scored["number"]))
    number_prompts = [animal_prompt(lm, config, fill(config.prompts.number_system, num=n)) for n in unique]
    probabilities = animal_probabilities(lm, number_prompts, prompts.words, config.batch_size, "phase 2: numbers")
    numbers = with_ratios(scored, dict(zip(unique, probabilities, strict=True)), neutral)
    example = {"phase2_number_example": _prompt(number_prompts[0])} if unique else {}
    return numbers, results.model_copy(
        update={"neutral": neutral, "phase": 2, "prompts": results.prompts.model_copy(update=example)}
    )


def template_control(
    lm: LM, config: EntanglementConfig, prompts: StudyPrompts, results: EntanglementResults
) -> EntanglementResults:
    """The number prompt with non-number words in the number's slot: how much of the rise the
    prompt gives without any number."""
    words = template_words(config)
    system = config.prompts.template_system or config.prompts.number_system
    word_prompts = [animal_prompt(lm, config, fill(system, num=w)) for w in words]
    probabilities = animal_probabilities(lm, word_prompts, prompts.words, config.batch_size, "phase 2: template words")
    neutral = _neutral(results)
    per_word = [
        TemplateWord(word=w, **p.model_dump(), **ratios(p, neutral)) for w, p in zip(words, probabilities, strict=True)
    ]
    control = TemplateControl(words=words, system_template=system, per_word=per_word)
    example = results.prompts.model_copy(update={"template_example": _prompt(word_prompts[0])})
    return results.model_copy(update={"template_control": control, "prompts": example})


# ---- the comparison -------------------------------------------------------------------------
def compare_categories(
    numbers: pd.DataFrame, config: EntanglementConfig, results: EntanglementResults
) -> EntanglementResults:
    """Per set, each category's statistics against its matched Random and the template words,
    the frequency caveats, and every claim decided (Holm over every set and test)."""
    template = results.template_control
    if template is None:
        raise ValueError("the template control comes first (template_control)")
    words = group_values("template", [w.model_dump() for w in template.per_word])
    category_stats = {
        name: set_statistics(numbers[numbers["set"] == name], words, config) for name in results.categories
    }
    tuned = any(is_tuned_set(name) for name in results.categories)
    return results.model_copy(
        update={
            "category_stats": category_stats,
            "warnings": [*results.warnings, *rarity_warnings(category_stats, results.sets)],
            "template_control": template.model_copy(update={"stats": template_statistics(words, config.seed)}),
            "claims": study_claims(numbers, results.categories, results.k, config),
            **(
                {"tuned_claims": study_claims(numbers, results.categories, results.k, config, tuned=True)}
                if tuned
                else {}
            ),
        }
    )


def cumulative_priming(
    lm: LM, config: EntanglementConfig, prompts: StudyPrompts, results: EntanglementResults
) -> Cumulative:
    """All k items of each category (and the template words) in one prompt, in several orders."""
    rng = np.random.default_rng([config.seed, 11])
    groups: list[tuple[str, str, list[str]]] = [
        (name, c, getattr(cats, c)) for name, cats in results.categories.items() for c in CATEGORIES
    ]
    groups.append(("template", "template", results.template_control.words if results.template_control else []))
    items = [
        (name, c, order)
        for name, c, members in groups
        for order in distinct_orders(members, config.cumulative_orders, rng)
    ]
    primed = [
        animal_prompt(lm, config, fill(config.prompts.cumulative_system, nums=", ".join(order)))
        for _, _, order in items
    ]
    probabilities = animal_probabilities(lm, primed, prompts.words, config.batch_size, "cumulative priming")
    measured = [(name, c, order, p) for (name, c, order), p in zip(items, probabilities, strict=True)]
    return summarise_cumulative(measured, _neutral(results), config, _prompt(primed[0]))


def finish(results: EntanglementResults) -> EntanglementResults:
    """Phase 3 (the categorised numbers by digit length) and the report lines: the run is done."""
    done = results.model_copy(
        update={"lengths": length_statistics(results.sets, results.category_stats or {}), "phase": 3}
    )
    return done.model_copy(update={"report": report_lines(done), "partial": False})
