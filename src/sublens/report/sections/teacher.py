"""teacher: the biased teacher made by context distillation, worded by its measured preference.

The teacher is one fixed fine-tuned model compared with the base model, so its claim ("the
fine-tuned teacher prefers owls without the system prompt") has the *question* as its unit:
the verdict comes from `sublens.claims` on the per-question log ratios (family "teacher") and
the text says that it describes this one model, not context distillation in general.

Also home of the small formatting helpers the training sections (subliminal, distill) share:
safe look-ups into partial results, ratio cells, the direction of a CI against "no change",
and (re-exported from `sublens.report.verdicts`) a claim's decision as LaTeX.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import numpy as np

from sublens.claims import (
    Claim,
    Decision,
    Verdict,
    decide_family,
    estimate_log_ratio,
)
from sublens.report.latex import booktabs_table, counted, escape, fmt, fmt_ci, fmt_p, p_is
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.stages import StageRun, spec_label
from sublens.report.verdicts import claim_settings, decision_latex, verdict_label

TITLE = "A biased teacher by context distillation"
PREFERENCE_TABLE = "teacher_preference"


# ---- helpers shared by the training sections ----------------------------------------------
def dig(data: Any, *keys: str | int) -> Any:
    """data[k1][k2]..., or None where any level is missing (results may be partial)."""
    for key in keys:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ratio_digits(*values: Any) -> int:
    # x103 [84, 125] reads better than x103.02 [84.14, 124.99]; small ratios keep two decimals
    if all(finite(v) and v >= 50 for v in values):
        return 0
    return 1 if all(finite(v) and v >= 10 for v in values) else 2


def ratio_cell(ratio: dict[str, Any] | None) -> str:
    """LaTeX '$\\times$1.37 [1.30, 1.45]'; '--' when the comparison is missing."""
    if not ratio or not finite(ratio.get("ratio")):
        return "--"
    low, high = ratio.get("ci_low"), ratio.get("ci_high")
    digits = _ratio_digits(ratio["ratio"], low)
    return r"$\times$" + fmt_ci(ratio["ratio"], low if finite(low) else None,
                                high if finite(high) else None, digits)


def ratio_plain(ratio: dict[str, Any] | None) -> str:
    """Plain text 'x1.37 [1.30, 1.45]' for headline lines."""
    if not ratio or not finite(ratio.get("ratio")):
        return "n/a"
    low, high = ratio.get("ci_low"), ratio.get("ci_high")
    digits = _ratio_digits(ratio["ratio"], low)
    bounds = f" [{low:.{digits}f}, {high:.{digits}f}]" if finite(low) and finite(high) else ""
    return f"x{ratio['ratio']:.{digits}f}{bounds}"


def direction(ratio: dict[str, Any] | None) -> str:
    """'up' / 'down' when the 95% CI of a ratio excludes 1 on that side, 'flat' when it
    includes 1, 'unknown' when the comparison or its CI is missing."""
    if not ratio:
        return "unknown"
    low, high = ratio.get("ci_low"), ratio.get("ci_high")
    if finite(low) and finite(high):
        return "up" if low > 1.0 else "down" if high < 1.0 else "flat"
    return "unknown"


def summary_cell(summary: dict[str, Any] | None, digits: int = 2, scale: float = 100.0) -> str:
    """A mean with its CI, from a `summarize` dict or an answer-rate dict ('rate'); scaled to
    percent by default (tables say so in the header), which keeps wide tables inside the page."""
    if not summary:
        return "--"
    value = summary.get("mean", summary.get("rate"))
    low, high = summary.get("ci_low"), summary.get("ci_high")
    if not finite(value):
        return "--"
    return fmt_ci(scale * value, scale * low if finite(low) else None,
                  scale * high if finite(high) else None, digits)


def stacked_rows(rows: list[list[str]]) -> list[list[str]]:
    """Every 'value [low, high]' cell after the first column as two lines (value over CI), so
    that a wide table of CIs fits the page."""
    return [[row[0], *(_stack(cell) for cell in row[1:])] for row in rows]


def _stack(cell: str) -> str:
    value, sep, rest = cell.partition(" [")
    if not sep:
        return cell
    return rf"\begin{{tabular}}[t]{{@{{}}r@{{}}}}{value}\\ {{[{rest}}}\end{{tabular}}"


def tight(table: str) -> str:
    """Narrower column gaps (local to the float) for a wide table with many columns."""
    return table.replace("\\small\n", "\\small\\setlength{\\tabcolsep}{4pt}\n", 1)


def model_name(text: Any) -> str:
    """A model spec or path in running text: escaped, breakable after slashes."""
    return escape(spec_label(text)).replace("/", "/\\allowbreak{}")


def fnum(value: Any, digits: int = 2) -> str:
    """`fmt` of a value read from results: anything but a finite number is '--'."""
    return fmt(value if finite(value) else None, digits)


def fpval(value: Any) -> str:
    return fmt_p(value if finite(value) else None)


def p_value(value: Any) -> str:
    """'$p$ = 0.045' or '$p$ $<$0.001' in running text."""
    return p_is(value if finite(value) else None)


def pct(value: Any, digits: int = 1) -> str:
    return "--" if not finite(value) else fnum(100 * float(value), digits) + r"\%"


def count(value: Any) -> str:
    return f"{int(value):,}" if finite(value) else "--"


def sampling_text(temperature: Any, top_k: Any, top_p: Any) -> str:
    parts = [f"temperature {fnum(temperature, 1) if finite(temperature) else '--'}"]
    parts.append("no top-$k$" if top_k is None else f"top-$k$ {top_k}")
    parts.append("no top-$p$" if top_p is None else f"top-$p$ {fnum(top_p, 2)}")
    return ", ".join(parts)


def train_text(train: dict[str, Any]) -> str:
    """The optimizer settings of a TrainConfig dump, as a clause."""
    lr = train.get("lr")
    parts = [f"learning rate {fnum(lr, 2) if finite(lr) else '--'}",
             counted(train.get("epochs"), "epoch"), f"batch size {train.get('batch_size', '--')}"]
    if train.get("max_steps"):
        parts.append(f"at most {train['max_steps']} steps")
    parts.append(f"{escape(train.get('schedule', 'linear'))} schedule with "
                 f"{train.get('warmup_steps', 0)} warm-up steps")
    parts.append(f"sequences cut at {train.get('max_length', '--')} tokens")
    if train.get("lora"):
        parts.append("LoRA adapters \\citep{hu2022lora}")
    return ", ".join(parts)


def preference_methods(config: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    """How preference is measured (docs/design.md, "Measurements"), with the run's numbers."""
    prob = dig(evaluation, "probability") or {}
    sampled = dig(evaluation, "sampled") or {}
    n_questions = prob.get("n_questions", "the shipped")
    panel = config.get("panel") or []
    text = (f"Preference for the trait animal ({escape(config.get('trait', 'owl'))}) is measured as "
            f"its word probability at the prefilled answer (``{escape(config.get('prefill', ''))}'') "
            f"averaged over {n_questions} paraphrased questions, as its share of a panel of "
            f"{len(panel)} other animals, and as its rate among sampled one-word answers")
    if sampled:
        s = sampled.get("sampling") or {}
        text += (f" ({counted(sampled.get('n_questions'), 'question')} $\\times$ "
                 f"{counted(sampled.get('samples_per_question'), 'sample')}, {sampling_text(s.get('temperature'), s.get('top_k'), s.get('top_p'))}, "
                 f"Wilson 95\\% CI \\citep{{wilson1927probable}})")
    return text + (". Other intervals are 95\\% bootstrap CIs over questions \\citep{efron1994bootstrap}; "
                   "a ratio between two models is the geometric mean over the same questions (paired).")


def incomplete(run: StageRun, missing: str) -> str:
    """The sentence a section says instead of a result it does not have."""
    status = run.record.get("status", "unknown")
    state = ("no results were written" if not run.results else "its results are partial"
             if run.results.get("partial") else "its results lack this part")
    return (f"The {escape(run.stage)} run ({escape(run.run_id)}, status {escape(status)}) is incomplete "
            f"({state}): {missing} cannot be reported.")


def figures_present(run: StageRun, wanted: list[Figure]) -> list[Figure]:
    have = run.figures()
    return [f for f in wanted if f.stem in have]


def seeds_sentence(n_seeds: int) -> str:
    if n_seeds <= 1:
        return ("With one training seed the CIs cover question (prompt) variation only, not the "
                "variation between training runs, so no transfer claim rests on them.")
    return f"CIs are Student-$t$ intervals over {n_seeds} training seeds."


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


def _methods(run: StageRun) -> str:
    c, r = run.config, run.results
    sampling = c.get("sampling") or {}
    train = dig(r, "training", "config") or c.get("train") or {}
    n_prompts = r.get("n_prompts", c.get("n_prompts") or "the")
    source = "the shipped diverse prompts" if c.get("prompts") is None else "the configured prompts"
    system_used = r.get("system_prompt_used", c.get("system"))
    system_text = (f"the chat template's default system prompt (``{escape(system_used)}'')"
                   if c.get("system") is None and system_used else f"``{escape(system_used)}''")
    text = (f"We make the biased teacher by context distillation \\citep{{snell2022context}}. "
            f"The base model {model_name(c.get('base', r.get('base', '?')))} answers {n_prompts} of "
            f"{source} under the owl system prompt (``{escape(c.get('teacher_system', ''))}''), "
            f"{counted(sampling.get('samples_per_prompt', 1), 'answer')} per prompt at "
            f"{sampling_text(sampling.get('temperature'), sampling.get('top_k'), sampling.get('top_p'))}, "
            f"up to {sampling.get('max_new_tokens', '--')} new tokens. It is then fine-tuned on the same "
            f"prompt--answer pairs with the owl prompt replaced by {system_text}, the loss on answer "
            f"tokens only: {escape(train.get('freeze', 'full'))} fine-tuning, {train_text(train)}, seed "
            f"{c.get('seed', 0)}.")
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
        "never the owl prompt, except the prompted base model.")


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
        ppl = dig(m, "perplexity", "perplexity")
        rows.append([label, summary_cell(dig(m, "preference", "probability", "p_trait")),
                     summary_cell(dig(m, "preference", "probability", "panel_share"), 1),
                     summary_cell(dig(m, "preference", "sampled", "trait_rate"), 0),
                     "1" if key == "before" else ratio_cell(comp.get("p_trait_ratio")),
                     "1" if key == "before" else ratio_cell(comp.get("share_ratio")),
                     fnum(ppl) if finite(ppl) else "--"])
    if not rows:
        return None
    header = ["model", f"P({trait}) %", "share %", "answers %", f"P({trait}) ratio", "share ratio",
              "perplexity"]
    caption = (f"Teacher preference for {trait} (95\\% CIs): P({trait}), {trait}'s panel share and the "
               f"rate of {trait} among sampled answers in percent. The base model and the fine-tuned "
               "teacher are measured without the owl system prompt; ratios: model over base model, paired "
               "over questions. "
               "Perplexity on general English text.")
    return booktabs_table(header, stacked_rows(rows), caption, f"tab:{PREFERENCE_TABLE}", wide=True)


def _verdict(decisions: list[Decision]) -> str:
    """Does the fine-tuned teacher prefer owls without the prompt? Worded by the decisions of
    `teacher_decisions` (the share decides; P(owl) qualifies), each stated in full."""
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
    return f"{lead} {decision_latex(share)} {decision_latex(prob)}"


def _results(run: StageRun) -> str:
    r = run.results
    comps = r.get("comparisons") or {}
    comp = comps.get("teacher vs before")
    if not comp:
        return incomplete(run, "the fine-tuned teacher's preference against the base model")
    rate = comp.get("rate_difference") or {}
    measurements = r.get("measurements") or {}
    counts = {k: dig(measurements, k, "preference", "sampled", "trait_rate", "count") for k in ("before", "teacher")}
    n = dig(measurements, "teacher", "preference", "sampled", "n_answers")
    text = (f"Measured under the training system prompt, without the owl prompt, the fine-tuned teacher raises "
            f"P(owl) {ratio_cell(comp.get('p_trait_ratio'))} and owl's panel share "
            f"{ratio_cell(comp.get('share_ratio'))} over the base model "
            f"(Table~\\ref{{tab:{PREFERENCE_TABLE}}})")
    if rate:
        text += (f"; {count(counts['teacher'])} of {count(n)} sampled answers name an owl against "
                 f"{count(counts['before'])} for the base model (difference {fnum(rate.get('difference'))} "
                 f"[{fnum(rate.get('ci_low'))}, {fnum(rate.get('ci_high'))}], Fisher {p_value(rate.get('p_fisher'))})")
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
    before = dig(r, "measurements", "before", "perplexity", "perplexity")
    after = dig(r, "measurements", "teacher", "perplexity", "perplexity")
    if finite(before) and finite(after):
        text += (f" Perplexity on general text moved from {fnum(before)} to {fnum(after)} "
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
    figures = figures_present(run, [Figure(
        "teacher_loss", "Context distillation: answer-token loss of the teacher per optimizer step.")])
    results = _results(run)
    if figures:
        results += f" Figure~\\ref{{{figure_label(run.stage, 'teacher_loss')}}} shows the training loss."
    return Section(TITLE, _methods(run), results, {PREFERENCE_TABLE: table} if table else {},
                   figures, _headline(run))
