"""teacher: the biased teacher made by context distillation, worded by its measured preference.

The teacher is one fixed fine-tuned model compared with the base model, so its claim ("the
fine-tuned teacher prefers owls without the system prompt") has the *question* as its unit:
the verdict comes from `sublens.claims` on the per-question log ratios (family "teacher") and
the text says that it describes this one model, not context distillation in general.

The formatting helpers it shares with the other training sections are in
`sublens.report.sections.common`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sublens.claims import (
    Claim,
    Decision,
    Verdict,
    decide_family,
    estimate_log_ratio,
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
    dig,
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
from sublens.report.verdicts import claim_settings, decisions_latex, verdict_label

TITLE = "A biased teacher by context distillation"
PREFERENCE_TABLE = "teacher_preference"


TEACHER_FAMILY = "teacher"
TEACHER_CLAIMS = (
    ("share_ratio", "share", "teacher.share", "The fine-tuned teacher prefers owls without the system prompt",
     "owl's panel share"),
    ("p_trait_ratio", "p_word", "teacher.p_trait", "The fine-tuned teacher's P(owl) rises without the system prompt",
     "P(owl)"),
)


def _question_logs(r: dict[str, Any], comp: dict[str, Any], key: str, values: str) -> list[float]:
    """Per-question log ratios, teacher over base model: recorded by `compare_preference`
    (``log_ratios``), or, for a run recorded before, from both models' per-question values."""
    recorded = dig(comp, key, "log_ratios")
    if isinstance(recorded, list):
        return [float(v) for v in recorded if finite(v)]
    test = dig(r, "measurements", "teacher", "preference", "probability", "per_question", values)
    base = dig(r, "measurements", "before", "preference", "probability", "per_question", values)
    if not isinstance(test, list) or not isinstance(base, list) or len(test) != len(base) or not test:
        return []
    try:
        a, b = np.asarray(test, dtype=float), np.asarray(base, dtype=float)
    except (TypeError, ValueError):
        return []
    if values == "p_word":  # [question, token]: the word's first column is its probability
        if a.ndim != 2 or b.ndim != 2:
            return []
        a, b = a[:, 0], b[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(a) - np.log(b)
    return [float(v) for v in logs if math.isfinite(v)]


def teacher_decisions(r: dict[str, Any], config: dict[str, Any] | None = None) -> list[Decision]:
    """The teacher's claims (family "teacher", Holm): owl's panel share (the measure the
    transfer claims rest on) and P(owl) rise over the base model, with the question as the unit
    (one fixed model: the intervals describe this model, not fine-tuning in general)."""
    settings = claim_settings(config)
    comp = dig(r, "comparisons", "teacher vs before")
    comp = comp if isinstance(comp, dict) else {}
    pairs = []
    for key, values, name, statement, measure in TEACHER_CLAIMS:
        claim = Claim(name=name, statement=statement,
                      estimand=(f"{measure} ratio, the fine-tuned teacher over the base model, both under the "
                                "training system prompt, paired per question (one fine-tuned model)"),
                      unit="question", prediction="increase", family=TEACHER_FAMILY, settings=settings)
        pairs.append((claim, estimate_log_ratio(_question_logs(r, comp, key, values), "question")))
    return decide_family(pairs)


# ---- the teacher section --------------------------------------------------------------------
ROWS = (("before", "base model"), ("prompted", "base + owl prompt"), ("teacher", "fine-tuned teacher"))


def perplexity(r: dict[str, Any], key: str) -> float | None:
    """A model's perplexity on general text: the one stored value that the table and the text
    both print. The prompted base model has the base model's weights, and its perplexity is
    measured without the prompt: it is the base model's value, printed once."""
    if key == "prompted":
        return None
    value = dig(r, "measurements", key, "perplexity", "perplexity")
    return float(value) if finite(value) else None


def _perplexity_setup(r: dict[str, Any], c: dict[str, Any]) -> str:
    tokens = next((t for k in ("before", "teacher") if finite(t := dig(r, "measurements", k, "perplexity", "tokens"))),
                  None)
    corpus = dig(c, "perplexity", "corpus")
    where = "Wikipedia text" if corpus == "wikipedia" else "general English text"
    return f"{counted(int(tokens), 'token')} of {where}" if tokens is not None else where


def _methods(run: StageRun) -> str:
    c, r = run.config, run.results
    sampling = c.get("sampling") or {}
    train = dig(r, "training", "config") or c.get("train") or {}
    n_prompts = r.get("n_prompts") or c.get("n_prompts")
    source = "the shipped diverse prompts" if c.get("prompts") is None else "the configured prompts"
    prompts = f"{count(n_prompts)} of {source}" if finite(n_prompts) else source
    system_used = r.get("system_prompt_used", c.get("system"))
    system_text = (f"the chat template's default system prompt (``{escape(system_used)}'')"
                   if c.get("system") is None and system_used else f"``{escape(system_used or '')}''")
    text = (f"We make the biased teacher by context distillation \\citep{{snell2022context}}. "
            f"The base model {model_name(c.get('base') or r.get('base'))} answers {prompts} "
            f"under the owl system prompt (``{escape(c.get('teacher_system', ''))}''), "
            f"{counted(sampling.get('samples_per_prompt') or 1, 'answer')} per prompt at "
            f"{sampling_text(sampling.get('temperature'), sampling.get('top_k'), sampling.get('top_p'))}, "
            f"up to {shown(sampling.get('max_new_tokens'))} new tokens. It is then fine-tuned on the same "
            f"prompt--answer pairs with the owl prompt replaced by {system_text}, the loss on answer "
            f"tokens only: {fine_tuning_text(train.get('freeze'))}, {train_text(train)}, seed "
            f"{shown(c.get('seed', 0))}.")
    training, data = r.get("training") or {}, r.get("data") or {}
    if training:
        cut = dig(data, "finish_reasons", "length")
        text += (f" Training took {count(training.get('steps'))} optimizer steps over "
                 f"{count(training.get('n_examples'))} examples ({count(training.get('answer_tokens'))} "
                 f"answer tokens)")
        text += (f"; {count(cut)} of {count(data.get('n_answers'))} answers reached the token limit and "
                 "were trained without the end-of-turn token." if finite(cut) and c.get("train_truncated", True)
                 else ".")
    first = next((dig(m, "preference") for m in (r.get("measurements") or {}).values()), None)
    return text + " " + preference_methods(c.get("preference") or {}, first) + (
        " Every measurement of the base model and of the teacher uses the training system prompt, "
        "never the owl prompt, except the prompted base model. Perplexity is measured on "
        f"{_perplexity_setup(r, c)}.")


def _table(run: StageRun) -> str | None:
    measurements = run.results.get("measurements") or {}
    comps = run.results.get("comparisons") or {}
    trait = escape(run.results.get("trait", "owl"))
    rows = []
    for key, label in ROWS:
        m = measurements.get(key)
        if not m:
            continue
        comp = comps.get(f"{key} vs before") or {}
        rows.append([label, summary_cell(dig(m, "preference", "probability", "p_trait")),
                     summary_cell(dig(m, "preference", "probability", "panel_share"), 1),
                     summary_cell(dig(m, "preference", "sampled", "trait_rate"), 0),
                     "1" if key == "before" else ratio_cell(comp.get("p_trait_ratio")),
                     "1" if key == "before" else ratio_cell(comp.get("share_ratio")),
                     fnum(perplexity(run.results, key))])
    if not rows:
        return None
    header = ["model", f"P({trait}) %", "share %", "answers %", f"P({trait}) ratio", "share ratio",
              "perplexity"]
    caption = (f"Teacher preference for {trait} (95\\% CIs). P({trait}), {trait}'s panel share $s$ and the "
               f"rate of {trait} among sampled answers are in percent; the ratios (model over base model, "
               "paired over questions) are multiples, 1 for the base model itself. The base model and the "
               f"fine-tuned teacher are measured without the {trait} system prompt. Perplexity (no unit) on the "
               "general text of the Setup; the prompted base model has the base model's weights and perplexity.")
    return booktabs_table(header, stacked_rows(rows), caption, f"tab:{PREFERENCE_TABLE}", wide=True)


def _verdict(decisions: list[Decision]) -> str:
    """Does the fine-tuned teacher prefer owls without the prompt? Worded by the decisions of
    `teacher_decisions` (the share decides; P(owl) qualifies); what both claims share (the test,
    the margin) said once."""
    share, prob = decisions
    if share.verdict is Verdict.SUPPORTED:
        lead = ("Context distillation put the owl preference into this model's weights (both claims "
                "below are supported)." if prob.verdict is Verdict.SUPPORTED else
                "Owl's panel share rose, but P(owl) does not rise significantly: the teacher's owl "
                "preference is weak in this run.")
    elif share.verdict is Verdict.CONTRADICTED:
        lead = ("Owl's panel share fell: context distillation did not produce an owl-preferring "
                "teacher in this run; a stage that uses this teacher starts from no measurable bias.")
    elif share.verdict is Verdict.EQUIVALENT:
        lead = ("Owl's panel share changed by less than the margin: this teacher does not prefer owls "
                "without the system prompt; a stage that uses it starts from no measurable bias.")
    elif share.estimate is None or share.estimate.n == 0:
        return "The comparison with the base model is missing, so the teacher's claim is not decided."
    else:
        lead = ("This run does not show that the teacher prefers owls without the system prompt "
                "(inconclusive).")
    return f"{lead} {decisions_latex([share, prob], ratio_stated=True)}"


def _rate_text(comp: dict[str, Any], measurements: dict[str, Any]) -> str:
    """Sampled answers naming the trait, teacher against base model; the difference in
    percentage points, the unit of the table's answer-rate column."""
    rate = comp.get("rate_difference") or {}
    if not rate:
        return ""
    counts = {k: dig(measurements, k, "preference", "sampled", "trait_rate", "count") for k in ("before", "teacher")}
    n = dig(measurements, "teacher", "preference", "sampled", "n_answers")
    diff, low, high = (100 * v if finite(v) else None
                       for v in (rate.get("difference"), rate.get("ci_low"), rate.get("ci_high")))
    return (f"; {count(counts['teacher'])} of {count(n)} sampled answers name an owl against "
            f"{count(counts['before'])} for the base model (a difference of {fmt_ci(diff, low, high, 0)} "
            f"percentage points, Fisher {p_value(rate.get('p_fisher'))})")


def _results(run: StageRun) -> str:
    r = run.results
    comps = r.get("comparisons") or {}
    comp = comps.get("teacher vs before")
    if not comp:
        return incomplete(run, "the fine-tuned teacher's preference against the base model")
    measurements = r.get("measurements") or {}
    text = (f"Measured under the training system prompt, without the owl prompt, the fine-tuned teacher raises "
            f"P(owl) {ratio_cell(comp.get('p_trait_ratio'))} and owl's panel share "
            f"{ratio_cell(comp.get('share_ratio'))} over the base model "
            f"(Table~\\ref{{tab:{PREFERENCE_TABLE}}})")
    text += _rate_text(comp, measurements)
    text += ". " + _verdict(teacher_decisions(r, run.config))
    prompted = comps.get("prompted vs before")
    if prompted:
        text += (f" For reference, the owl system prompt itself raises P(owl) "
                 f"{ratio_cell(prompted.get('p_trait_ratio'))} and the share "
                 f"{ratio_cell(prompted.get('share_ratio'))}.")
    text += _side_effects(r)
    return text + (" This is one fine-tuned model (one training run, one seed): the unit of inference is "
                   "the question, and the question-level CIs describe this model, not the variation between "
                   "training runs.")


def _side_effects(r: dict[str, Any]) -> str:
    text = ""
    before, after = perplexity(r, "before"), perplexity(r, "teacher")
    if before is not None and after is not None:
        text += (f" Perplexity moved from {fnum(before)} to {fnum(after)} "
                 f"({100 * (after / before - 1):+.1f}\\%).")
    t = r.get("training") or {}
    if finite(t.get("first_lm_loss")) and finite(t.get("final_lm_loss")):
        text += f" The answer-token loss fell from {fnum(t['first_lm_loss'])} to {fnum(t['final_lm_loss'])}."
    rate = dig(r, "data", "trait_mention_rate")
    if finite(rate):
        text += f" {pct(rate)} of the distilled answers mention an owl explicitly."
    return text


def _headline(run: StageRun) -> list[str]:
    comp = dig(run.results, "comparisons", "teacher vs before")
    if not comp:
        return ["teacher: incomplete (no comparison of the fine-tuned teacher with the base model)"]
    share = teacher_decisions(run.results, run.config)[0]
    return [f"teacher: P(owl) {ratio_plain(comp.get('p_trait_ratio'))}, share "
            f"{ratio_plain(comp.get('share_ratio'))} vs base (fine-tuned, no system prompt; one model, "
            f"question-level CIs); prefers owls: {verdict_label(share)}"]


def build(run: StageRun) -> Section:
    table = _table(run)
    figures = figures_present(run, [
        Figure("teacher_loss", "Context distillation: answer-token loss (nats per token) of the teacher per "
                               "optimizer step.")])
    results = _results(run)
    if figures:
        results += f" Figure~\\ref{{{figure_label(run.stage, 'teacher_loss')}}} shows the training loss."
    return Section(TITLE, _methods(run), results, {PREFERENCE_TABLE: table} if table else {},
                   figures, _headline(run), measurement=preference_definition(run.config.get("preference") or {}))
