"""Formatting helpers the training sections (teacher, subliminal, distill) share: safe look-ups
into results that may be partial, ratio and CI cells, numbers in running text, and the
preference measures (`preference_definition`, which the bundle prints once).

Every look-up takes a results.json mapping or a typed results record (`sublens.results`), so a
section can move to typed results without a second set of helpers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from pydantic import BaseModel

from sublens.report.latex import counted, escape, fmt, fmt_ci, fmt_p, p_is, ratio_digits
from sublens.report.names import display_name
from sublens.report.sections import Figure
from sublens.report.stages import StageRun
from sublens.trainable import describe_trainable

Fields = Mapping[str, Any] | BaseModel | None  # a part of the results: as read, or typed


def fields_of(record: Fields) -> Mapping[str, Any] | None:
    """A typed record as the mapping it is written as; a mapping (or None) unchanged."""
    return record.model_dump(mode="json") if isinstance(record, BaseModel) else record


def dig(data: Any, *keys: str | int) -> Any:
    """data[k1][k2]..., or None where any level is missing (results may be partial). A typed
    record is read by attribute."""
    for key in keys:
        if isinstance(data, BaseModel):
            data = getattr(data, key, None) if isinstance(key, str) else None
        elif isinstance(data, Mapping):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def ratio_cell(record: Fields) -> str:
    """LaTeX '$\\times$1.37 [1.30, 1.45]'; '--' when the comparison is missing."""
    ratio = fields_of(record)
    if not ratio or not finite(ratio.get("ratio")):
        return "--"
    low, high = ratio.get("ci_low"), ratio.get("ci_high")
    digits = ratio_digits(ratio["ratio"], low)
    return r"$\times$" + fmt_ci(ratio["ratio"], low if finite(low) else None, high if finite(high) else None, digits)


def ratio_plain(record: Fields) -> str:
    """Plain text 'x1.37 [1.30, 1.45]' for headline lines."""
    ratio = fields_of(record)
    if not ratio or not finite(ratio.get("ratio")):
        return "n/a"
    low, high = ratio.get("ci_low"), ratio.get("ci_high")
    digits = ratio_digits(ratio["ratio"], low)
    bounds = f" [{low:.{digits}f}, {high:.{digits}f}]" if finite(low) and finite(high) else ""
    return f"x{ratio['ratio']:.{digits}f}{bounds}"


def summary_cell(record: Fields, digits: int = 2, scale: float = 100.0) -> str:
    """A mean with its CI, from a `summarize` dict or an answer-rate dict ('rate'); scaled to
    percent by default (tables say so in the header), which keeps wide tables inside the page."""
    summary = fields_of(record)
    if not summary:
        return "--"
    value = summary.get("mean", summary.get("rate"))
    low, high = summary.get("ci_low"), summary.get("ci_high")
    if not finite(value):
        return "--"
    return fmt_ci(scale * value, scale * low if finite(low) else None, scale * high if finite(high) else None, digits)


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


def model_name(spec: Any) -> str:
    """A model spec in running text: the name a paper uses (`sublens.report.names.display_name`),
    escaped."""
    return escape(display_name(spec))


def shown(x: Any) -> str:
    """A config value in running text: '--' for a missing one (never 'None' or 'True')."""
    return "--" if x is None or isinstance(x, bool) else escape(x)


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
    parts.append("no top-$k$" if top_k is None else f"top-$k$ {shown(top_k)}")
    parts.append("no top-$p$" if top_p is None else f"top-$p$ {fnum(top_p, 2)}")
    return ", ".join(parts)


def train_text(record: Fields) -> str:
    """The optimizer settings of a TrainConfig dump, as a clause."""
    train = fields_of(record) or {}
    lr = train.get("lr")
    parts = [
        f"learning rate {fnum(lr, 2) if finite(lr) else '--'}",
        counted(train.get("epochs"), "epoch"),
        f"batch size {shown(train.get('batch_size'))}",
    ]
    if train.get("max_steps"):
        parts.append(f"at most {counted(train['max_steps'], 'step')}")
    parts.append(
        f"{escape(train.get('schedule') or 'linear')} schedule with "
        f"{counted(train.get('warmup_steps') or 0, 'warm-up step')}"
    )
    parts.append(f"sequences cut at {shown(train.get('max_length'))} tokens")
    if train.get("lora"):
        parts.append("LoRA adapters \\citep{hu2022lora}")
    return ", ".join(parts)


def fine_tuning_text(freeze: Any) -> str:
    """'full fine-tuning', 'fine-tuning with attention frozen' for a freeze mode."""
    words = describe_trainable(str(freeze or "full"))
    return escape(words) if words == "full fine-tuning" else f"fine-tuning with {escape(words)}"


def preference_definition(config: dict[str, Any]) -> str:
    """What the preference measures are, the panel share defined by its formula: the paragraph
    the bundle prints once, in the first section that measures preference (`Section.measurement`),
    and replaces by a reference in the sections after it."""
    trait = escape(config.get("trait") or "owl")
    return (
        f"P({trait}) is the probability of the word ``{trait}'' (all its tokens) at the prefilled "
        f"answer, averaged over the questions. {trait.capitalize()}'s panel share, \\emph{{share}} for "
        f"short, is per question $s = P(\\mathrm{{{trait}}}) / \\sum_{{a}} P(a)$, the sum running over "
        f"{trait} and the panel animals, averaged over the questions. The answer rate is the fraction of "
        f"sampled one-word answers that name {'an' if trait[:1] in 'aeiou' else 'a'} {trait}, with a "
        "Wilson 95\\% CI \\citep{wilson1927probable}. Other intervals are 95\\% bootstrap CIs over "
        "questions \\citep{efron1994bootstrap}; a ratio between two models (written $\\times$) is the "
        "geometric mean over the same questions of the per-question ratios (paired)."
    )


def preference_methods(config: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    """How this run measured preference: its questions, panel and samples (the measures
    themselves are defined once, by `preference_definition`)."""
    prob = dig(evaluation, "probability") or {}
    sampled = dig(evaluation, "sampled") or {}
    trait = escape(config.get("trait") or prob.get("trait") or "owl")
    n_questions = prob.get("n_questions")
    questions = (
        counted(n_questions, "paraphrased question")
        if isinstance(n_questions, int)
        else "the shipped paraphrased questions"
    )
    panel = [escape(a) for a in config.get("panel") or []]
    panel_text = (
        f"a panel of {counted(len(panel), 'other animal')} ({', '.join(panel)})"
        if panel
        else "a panel of other animals"
    )
    prefill = config.get("prefill") or prob.get("prefill")
    text = (
        f"Preference for {trait} is measured on {questions} with the answer prefilled "
        f"(``{escape(prefill or '')}''), against {panel_text}"
    )
    if sampled:
        s = sampled.get("sampling") or {}
        text += (
            f", and from {counted(sampled.get('n_questions'), 'question')} $\\times$ "
            f"{counted(sampled.get('samples_per_question'), 'sampled answer')} "
            f"({sampling_text(s.get('temperature'), s.get('top_k'), s.get('top_p'))})"
        )
    return text + "."


def incomplete(run: StageRun, missing: str) -> str:
    """The sentence a section says instead of a result it does not have."""
    status = run.record.get("status", "unknown")
    state = (
        "no results were written"
        if not run.results
        else "its results are partial"
        if run.results.get("partial")
        else "its results lack this part"
    )
    return (
        f"The {escape(run.stage)} run (\\texttt{{{escape(run.run_id)}}}, status {escape(status)}) is "
        f"incomplete ({state}): {missing} cannot be reported."
    )


def figures_present(run: StageRun, wanted: list[Figure]) -> list[Figure]:
    have = run.figures()
    return [f for f in wanted if f.stem in have]


def seeds_sentence(n_seeds: int) -> str:
    if n_seeds <= 1:
        return (
            "With one training seed these CIs cover question (prompt) variation only, not the "
            "variation between training runs, so no transfer claim rests on them."
        )
    return f"CIs are Student-$t$ intervals over {n_seeds} training seeds."
