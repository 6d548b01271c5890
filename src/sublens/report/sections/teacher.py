"""teacher: the biased teacher made by context distillation, worded by its measured preference.

Reads a `teacher` run directory: its results.json parsed once into `TeacherResults`
(`sublens.experiments.teacher.results`), read by attribute; the config stays a mapping.

The teacher is one fixed fine-tuned model compared with the base model, so its claim ("the
fine-tuned teacher prefers owls without the system prompt") has the *question* as its unit:
the verdict comes from `sublens.claims` on the per-question log ratios (family "teacher") and
the text says that it describes this one model, not context distillation in general.

The formatting helpers it shares with the other training sections are in
`sublens.report.sections.common`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from sublens.claims import (
    Claim,
    Decision,
    Verdict,
    decide_family,
    estimate_log_ratio,
)
from sublens.experiments.teacher.results import (
    Measurement,
    Measurements,
    TeacherResults,
)
from sublens.report.latex import (
    booktabs_table,
    counted,
    escape,
    fmt_ci,
)
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.common import (
    count,
    figures_present,
    fine_tuning_text,
    finite,
    fnum,
    incomplete,
    model_name,
    p_value,
    pct,
    preference_definition,
    preference_methods,
    ratio_cell,
    ratio_plain,
    sampling_text,
    shown,
    stacked_rows,
    summary_cell,
    train_text,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import POOLED_ANSWERS, answer_rate_test, claim_settings, decisions_latex, verdict_label
from sublens.result_records import Comparison
from sublens.results import ResultsError, as_results, load_results

TITLE = "A biased teacher by context distillation"
PREFERENCE_TABLE = "teacher_preference"
LOSS_FIGURE = "teacher_loss"  # the stem sublens.experiments.teacher.figures writes (kept free of matplotlib)
TEACHER_VS_BASE = "teacher vs before"  # the comparison the claims rest on

MetricKey = Literal["share_ratio", "p_trait_ratio"]
PerQuestionValues = Literal["share", "p_word"]

TEACHER_FAMILY = "teacher"
TEACHER_CLAIMS: tuple[tuple[MetricKey, PerQuestionValues, str, str, str], ...] = (
    (
        "share_ratio",
        "share",
        "teacher.share",
        "The fine-tuned teacher prefers owls without the system prompt",
        "owl's panel share",
    ),
    (
        "p_trait_ratio",
        "p_word",
        "teacher.p_trait",
        "The fine-tuned teacher's P(owl) rises without the system prompt",
        "P(owl)",
    ),
)


def read_results(run: StageRun) -> tuple[TeacherResults | None, str | None]:
    """The run's results parsed once: (None, None) without any; (None, why) where they cannot
    be read. Never raised: the section is built from whatever a run left, an interrupted run's
    or one cut short, and says what it cannot report."""
    if not run.results:
        return None, None
    try:
        return load_results(run.results, TeacherResults), None
    except ResultsError as exc:
        return None, str(exc)


def _question_logs(results: TeacherResults, key: MetricKey, values: PerQuestionValues) -> list[float]:
    """Per-question log ratios, teacher over base model: recorded by `compare_preference`
    (``log_ratios``), or, for a run recorded before, from both models' per-question values."""
    comparison = results.comparisons.get(TEACHER_VS_BASE)
    recorded = getattr(comparison, key).log_ratios if comparison is not None else None
    if recorded is not None:
        return [float(v) for v in recorded if finite(v)]
    teacher, before = results.measurements.teacher, results.measurements.before
    if teacher is None:
        return []
    test = getattr(teacher.preference.probability.per_question, values)
    base = getattr(before.preference.probability.per_question, values)
    if len(test) != len(base) or not test:
        return []
    a, b = np.asarray(test, dtype=float), np.asarray(base, dtype=float)
    if values == "p_word":  # [question, animal]: the trait's column (the first) is its probability
        a, b = a[:, 0], b[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(a) - np.log(b)
    return [float(v) for v in logs if math.isfinite(v)]


def teacher_decisions(
    results: TeacherResults | Mapping[str, Any], config: dict[str, Any] | None = None
) -> list[Decision]:
    """The teacher's claims (family "teacher", Holm): owl's panel share (the measure the
    transfer claims rest on) and P(owl) rise over the base model, with the question as the unit
    (one fixed model: the intervals describe this model, not fine-tuning in general)."""
    results = as_results(results, TeacherResults)
    settings = claim_settings(config)
    pairs = []
    for key, values, name, statement, measure in TEACHER_CLAIMS:
        claim = Claim(
            name=name,
            statement=statement,
            estimand=(
                f"{measure} ratio, the fine-tuned teacher over the base model, both under the "
                "training system prompt, paired per question (one fine-tuned model)"
            ),
            unit="question",
            prediction="increase",
            family=TEACHER_FAMILY,
            settings=settings,
        )
        pairs.append((claim, estimate_log_ratio(_question_logs(results, key, values), "question")))
    return decide_family(pairs)


# ---- the teacher section --------------------------------------------------------------------
ROWS = (("before", "base model"), ("prompted", "base + owl prompt"), ("teacher", "fine-tuned teacher"))


def _measured(measurements: Measurements, key: str) -> Measurement | None:
    return measurements.named().get(key)


def perplexity(results: TeacherResults, key: str) -> float | None:
    """A model's perplexity on general text: the one stored value that the table and the text
    both print. The prompted base model has the base model's weights, and its perplexity is
    measured without the prompt: it is the base model's value, printed once."""
    measured = _measured(results.measurements, key)
    if key == "prompted" or measured is None or measured.perplexity is None:
        return None
    value = measured.perplexity.perplexity
    return float(value) if finite(value) else None


def _perplexity_setup(results: TeacherResults | None, c: dict[str, Any]) -> str:
    measured = [results.measurements.before, results.measurements.teacher] if results else []
    tokens = next((m.perplexity.tokens for m in measured if m is not None and m.perplexity is not None), None)
    corpus = (c.get("perplexity") or {}).get("corpus")
    where = "Wikipedia text" if corpus == "wikipedia" else "general English text"
    return f"{counted(int(tokens), 'token')} of {where}" if tokens is not None else where


def _methods(run: StageRun, results: TeacherResults | None) -> str:
    c = run.config
    sampling = c.get("sampling") or {}
    train = (results.training.config if results and results.training else None) or c.get("train") or {}
    n_prompts = (results.n_prompts if results else None) or c.get("n_prompts")
    source = "the shipped diverse prompts" if c.get("prompts") is None else "the configured prompts"
    prompts = f"{count(n_prompts)} of {source}" if finite(n_prompts) else source
    system_used = results.system_prompt_used if results else c.get("system")
    system_text = (
        f"the chat template's default system prompt (``{escape(system_used)}'')"
        if c.get("system") is None and system_used
        else f"``{escape(system_used or '')}''"
    )
    text = (
        f"We make the biased teacher by context distillation \\citep{{snell2022context}}. "
        f"The base model {model_name(c.get('base') or (results.base if results else None))} answers "
        f"{prompts} under the owl system prompt (``{escape(c.get('teacher_system', ''))}''), "
        f"{counted(sampling.get('samples_per_prompt') or 1, 'answer')} per prompt at "
        f"{sampling_text(sampling.get('temperature'), sampling.get('top_k'), sampling.get('top_p'))}, "
        f"up to {shown(sampling.get('max_new_tokens'))} new tokens. It is then fine-tuned on the same "
        f"prompt--answer pairs with the owl prompt replaced by {system_text}, the loss on answer "
        f"tokens only: {fine_tuning_text(train.get('freeze'))}, {train_text(train)}, seed "
        f"{shown(c.get('seed', 0))}."
    )
    if results is not None:
        text += _training_text(results, c)
    first = next(iter(results.measurements.named().values()), None) if results else None
    return (
        text
        + " "
        + preference_methods(c.get("preference") or {}, first.preference.model_dump() if first else None)
        + (
            " Every measurement of the base model and of the teacher uses the training system prompt, "
            "never the owl prompt, except the prompted base model. Perplexity is measured on "
            f"{_perplexity_setup(results, c)}."
        )
    )


def _training_text(results: TeacherResults, c: dict[str, Any]) -> str:
    """How long training took, and how many answers were cut off (trained without end-of-turn)."""
    training, data = results.training, results.data
    if training is None:
        return ""
    text = (
        f" Training took {counted(training.steps, 'optimizer step')} over "
        f"{counted(training.n_examples, 'example')} ({counted(training.answer_tokens, 'answer token')})"
    )
    cut = data.finish_reasons.get("length") if data else None
    if data is not None and cut is not None and c.get("train_truncated", True):
        return text + (
            f"; {count(cut)} of {count(data.n_answers)} answers reached the token limit and "
            "were trained without the end-of-turn token."
        )
    return text + "."


def _table(results: TeacherResults) -> str | None:
    trait = escape(results.trait)
    rows = []
    for key, label in ROWS:
        m = _measured(results.measurements, key)
        if m is None:
            continue
        comparison = results.comparisons.get(f"{key} vs before")
        probability, sampled = m.preference.probability, m.preference.sampled
        rows.append(
            [
                label,
                summary_cell(probability.p_trait),
                summary_cell(probability.panel_share, 1),
                summary_cell(sampled.trait_rate if sampled else None, 0),
                "1" if key == "before" else ratio_cell(comparison.p_trait_ratio if comparison else None),
                "1" if key == "before" else ratio_cell(comparison.share_ratio if comparison else None),
                fnum(perplexity(results, key)),
            ]
        )
    if not rows:
        return None
    header = ["model", f"P({trait}) %", "share %", "answers %", f"P({trait}) ratio", "share ratio", "perplexity"]
    caption = (
        f"Teacher preference for {trait} (95\\% CIs). P({trait}), {trait}'s panel share $s$ and the "
        f"rate of {trait} among sampled answers are in percent; the ratios (model over base model, "
        "paired over questions) are multiples, 1 for the base model itself. The base model and the "
        f"fine-tuned teacher are measured without the {trait} system prompt. Perplexity (no unit) on the "
        "general text of the Setup; the prompted base model has the base model's weights and perplexity."
    )
    return booktabs_table(header, stacked_rows(rows), caption, f"tab:{PREFERENCE_TABLE}", wide=True)


def _verdict(decisions: list[Decision]) -> str:
    """Does the fine-tuned teacher prefer owls without the prompt? Worded by the decisions of
    `teacher_decisions` (the share decides; P(owl) qualifies); what both claims share (the test,
    the margin) said once."""
    share, prob = decisions
    if share.verdict is Verdict.SUPPORTED:
        lead = (
            "Without the system prompt this model prefers owls more than the base model (both claims below "
            "are supported): the preference is in its weights."
            if prob.verdict is Verdict.SUPPORTED
            else f"Owl's panel share rose, but the rise of P(owl) is {prob.verdict.value}: the teacher's owl "
            "preference is shown on the panel share alone in this run."
        )
    elif share.verdict is Verdict.CONTRADICTED:
        lead = (
            "Owl's panel share fell: context distillation did not produce an owl-preferring "
            "teacher in this run; a stage that uses this teacher starts from a lowered owl preference, not a raised one."
        )
    elif share.verdict is Verdict.EQUIVALENT:
        lead = (
            "Owl's panel share changed by less than the margin: without the system prompt this teacher "
            "shows no owl preference as large as the margin; a stage that uses it starts from at most a "
            "small bias."
        )
    elif share.estimate is None or share.estimate.n == 0:
        return "The comparison with the base model is missing, so the teacher's claim is not decided."
    else:
        lead = "This run does not show that the teacher prefers owls without the system prompt (inconclusive)."
    return f"{lead} {decisions_latex([share, prob], ratio_stated=True)}"


def _rate_text(comparison: Comparison, measurements: Measurements) -> str:
    """Sampled answers naming the trait, teacher against base model; the difference in
    percentage points, the unit of the table's answer-rate column."""
    rate = comparison.rate_difference
    teacher = measurements.teacher.preference.sampled if measurements.teacher else None
    before = measurements.before.preference.sampled
    if rate is None or teacher is None or before is None:
        return ""
    teacher_n, base_n = count(teacher.n_answers), count(before.n_answers)
    if teacher.trait_rate.count == 0 and before.trait_rate.count == 0:  # nothing to compare: one clause
        return f"; no sampled answer names an owl ({teacher_n} from the teacher, {base_n} from the base model)"
    diff, low, high = (100 * v if finite(v) else None for v in (rate.difference, rate.ci_low, rate.ci_high))
    interval = fmt_ci(diff, low, high, 0) if low is not None and high is not None else fnum(diff, 0)
    test = answer_rate_test(rate)
    assert test is not None
    tested = (
        f"Fisher {p_value(test.p)} over {POOLED_ANSWERS}"  # an older record
        if test.scope == POOLED_ANSWERS
        else f"{p_value(test.p)} by {test.name} {test.scope}"
    )
    return (
        f"; {count(teacher.trait_rate.count)} of {teacher_n} sampled answers name an owl "
        f"against {count(before.trait_rate.count)} of {base_n} for the base model (a difference of "
        f"{interval} percentage points, {tested})"
    )


def _incomplete(run: StageRun, unreadable: str | None) -> str:
    text = incomplete(run, "the fine-tuned teacher's preference against the base model")
    return text + (f" Its results cannot be read: {escape(unreadable)}" if unreadable else "")


def _results(run: StageRun, results: TeacherResults | None, unreadable: str | None) -> str:
    comparison = results.comparisons.get(TEACHER_VS_BASE) if results else None
    if results is None or comparison is None:
        return _incomplete(run, unreadable)
    text = (
        f"Measured under the training system prompt, without the owl prompt, the fine-tuned teacher's "
        f"P(owl) is {ratio_cell(comparison.p_trait_ratio)} and owl's panel share "
        f"{ratio_cell(comparison.share_ratio)} the base model's "
        f"(Table~\\ref{{tab:{PREFERENCE_TABLE}}})"
    )
    text += _rate_text(comparison, results.measurements)
    text += ". " + _verdict(teacher_decisions(results, run.config))
    prompted = results.comparisons.get("prompted vs before")
    if prompted is not None:
        text += (
            f" For reference, under the owl system prompt itself P(owl) is "
            f"{ratio_cell(prompted.p_trait_ratio)} and the share {ratio_cell(prompted.share_ratio)} the base model's."
        )
    text += _side_effects(results)
    return text + (
        " This is one fine-tuned model (one training run, one seed): the unit of inference is "
        "the question, and the question-level CIs describe this model, not the variation between "
        "training runs."
    )


def _moved(before: float, after: float) -> str:
    """'fell from 1.78 to 1.52', with the decimals (up to 4) that tell the two apart: never
    'fell from 1.78 to 1.78'."""
    digits = next((d for d in (2, 3, 4) if fnum(before, d) != fnum(after, d)), None)
    if digits is None:
        return f"stayed at {fnum(after)}"
    verb = "fell" if after < before else "rose"
    return f"{verb} from {fnum(before, digits)} to {fnum(after, digits)}"


def _side_effects(results: TeacherResults) -> str:
    text = ""
    before, after = perplexity(results, "before"), perplexity(results, "teacher")
    if before is not None and after is not None:
        change = 100 * (after / before - 1)
        text += f" Perplexity {_moved(before, after)} ({'+' if change >= 0 else '$-$'}{fnum(abs(change), 1)}\\%)."
    t = results.training
    if t is not None and finite(t.first_lm_loss) and finite(t.final_lm_loss):
        text += f" The answer-token loss {_moved(t.first_lm_loss, t.final_lm_loss)}."
    rate = results.data.trait_mention_rate if results.data else None
    if finite(rate):
        text += f" {pct(rate)} of the distilled answers mention an owl explicitly."
    return text


def _headline(run: StageRun, results: TeacherResults | None) -> list[str]:
    comparison = results.comparisons.get(TEACHER_VS_BASE) if results else None
    if results is None or comparison is None:
        return ["teacher: incomplete (no comparison of the fine-tuned teacher with the base model)"]
    share = teacher_decisions(results, run.config)[0]
    return [
        f"teacher: P(owl) {ratio_plain(comparison.p_trait_ratio)}, share "
        f"{ratio_plain(comparison.share_ratio)} vs base (fine-tuned, without the owl prompt; one model, "
        f"question-level CIs); prefers owls: {verdict_label(share)}"
    ]


def build(run: StageRun) -> Section:
    results, unreadable = read_results(run)
    table = _table(results) if results is not None else None
    figures = figures_present(
        run,
        [
            Figure(
                LOSS_FIGURE,
                "Context distillation: answer-token loss (nats per token) of the teacher per "
                "optimizer step (and of the control teacher, where one was made).",
            )
        ],
    )
    text = _results(run, results, unreadable)
    if figures:
        text += f" Figure~\\ref{{{figure_label(run.stage, LOSS_FIGURE)}}} shows the training loss."
    return Section(
        TITLE,
        _methods(run, results),
        text,
        {PREFERENCE_TABLE: table} if table else {},
        figures,
        _headline(run, results),
        measurement=preference_definition(run.config.get("preference") or {}),
    )
