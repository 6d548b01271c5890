"""The subliminal section's tables and figures: the freeze-modes table (every model's
preference with the owl students' ratios over their matched control students), the
evaluation-prompt table (each owl arm's share ratio under every evaluation system prompt), and
the preference and training-loss figures with captions that say every marker and line."""

from __future__ import annotations

from sublens.experiments.subliminal.results import HeadlineRow, SubliminalResults
from sublens.report.latex import booktabs_table, constant_column, counted, drop_columns, escape
from sublens.report.names import words
from sublens.report.sections import Figure
from sublens.report.sections.common import (
    figures_present,
    fpval,
    ratio_cell,
    stacked_rows,
    summary_cell,
    tight,
)
from sublens.report.sections.subliminal.reading import (
    CONTROL,
    OWL,
    PROMPT_TABLE,
    TABLE,
    mode_words,
    p_trait_ratio,
    rate_difference,
    share_ratio,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import answer_rate_test
from sublens.trainable import describe_trainable


def _label(row: HeadlineRow, teacher_kind: str | None) -> str:
    if row.model == "base":
        return "base model"
    if row.model == "teacher":
        return "teacher (prompted)" if teacher_kind == "prompted" else "teacher (fine-tuned)"
    if row.dataset == CONTROL:
        return f"control, {mode_words(row.mode)}"
    return f"{escape(row.dataset or '?')}, {mode_words(row.mode)}"


def _params(row: HeadlineRow) -> str:
    return f"{row.freeze.trainable / 1e6:.1f}M" if row.freeze is not None else "--"


def _table(results: SubliminalResults) -> str | None:
    rows = results.headline or []
    if not rows:
        return None
    kind = results.teacher.kind
    trait = escape(results.trait)
    body = []
    for row in rows:
        rate_test = answer_rate_test(rate_difference(row))
        body.append(
            [
                _label(row, kind),
                summary_cell(row.p_trait),
                summary_cell(row.panel_share, 1),
                summary_cell(row.answer_rate, 0),
                ratio_cell(share_ratio(row)),
                ratio_cell(p_trait_ratio(row)),
                fpval(rate_test.p) if rate_test else "--",
                _params(row),
            ]
        )
    header = ["model", f"P({trait}) %", "share %", "answers %", "share ratio", f"P({trait}) ratio", "p", "trainable"]
    p_all = constant_column(body, 6)
    tested = next((t for row in rows if (t := answer_rate_test(rate_difference(row))) is not None), None)
    named = (
        f"{tested.name} of the sampled {trait}-answer rates against the control student ({tested.scope})"
        if tested
        else "no sampled answers compared"
    )
    test = f"$p$: {named}; " if p_all is None else f"{named} gives $p$ = {p_all} for every owl student (no column); "
    if p_all is not None:
        header, body = drop_columns(header, body, [6])
    caption = (
        f"Freeze modes: preference for {trait} of the base model, the teacher and the students "
        f"trained on the {trait} teacher's or the control teacher's numbers (95\\% CIs, "
        f"{counted(results.n_seeds, 'seed')}). P({trait}), {trait}'s panel share $s$ and the rate of {trait} "
        "among sampled answers in percent; share and P ratios (multiples): owl student over control "
        f"student, paired over questions; {test}trainable parameters per student in millions."
    )
    return tight(booktabs_table(header, stacked_rows(body), caption, f"tab:{TABLE}", wide=True))


def _prompt_table(results: SubliminalResults) -> str | None:
    """Each owl arm over its matched control under every evaluation system prompt."""
    prompts = results.evaluation_prompts or {}
    modes = list(dict.fromkeys(m for e in prompts.values() for m in e.arms))  # in the order the run lists its arms
    if len(prompts) < 2 or not modes:
        return None
    body = []
    for name, entry in prompts.items():
        system = entry.system
        shown_prompt = "(no system turn)" if system is None else "(empty)" if system == "" else system
        label = "template default" if name == "default" else words(name)
        arms = entry.arms
        body.append(
            [f"{escape(label)}: ``{escape(shown_prompt)}''"]
            + [ratio_cell(arms[m].share_ratio if m in arms else None) for m in modes]
        )
    header = ["evaluation system prompt"] + [describe_trainable(m) for m in modes]
    caption = (
        f"Evaluation prompt: owl's panel share under each owl student over its matched control student "
        f"(a multiple; 95\\% CIs, {counted(results.n_seeds, 'seed')}), with the "
        "students measured under each system prompt; the first row is the measurement of "
        "Table~\\ref{tab:" + TABLE + "}."
    )
    return tight(
        booktabs_table(
            header,
            body,
            caption,
            f"tab:{PROMPT_TABLE}",
            align="p{0.42\\linewidth}" + "r" * len(modes),
            wide=len(modes) > 2,
        )
    )


def preference_caption(results: SubliminalResults | None) -> str:
    """The preference figure in words, every marker and line of it (`figures.preference_figure`)."""
    trait = escape(results.trait if results else "owl")
    seeds = results.n_seeds if results else 1
    datasets = {r.dataset for r in (results.headline or [])} if results else set()
    others = any(d not in (None, OWL, CONTROL) and not str(d).startswith(OWL) for d in datasets)
    intervals = (
        "the mean over seeds with its Student-$t$ 95\\% CI; small grey dots: the single training seeds"
        if seeds > 1
        else "the value with its 95\\% CI over questions (one training seed)"
    )
    return (
        f"{trait.capitalize()}'s panel share $s$ of the base model and the teacher (left, on their own axis, "
        "since the teacher's share dwarfs the students'), of every student (middle; dashed line: the base "
        f"model) and of each student over its matched control student (right, log scale; dotted line: no "
        f"change). Circles with bars: {intervals}. Black: the reference models; orange: students trained "
        f"on the {trait} teacher's numbers; blue: control students"
        + ("; green: students trained on other teachers' numbers" if others else "")
        + "."
    )


def _figures(run: StageRun, results: SubliminalResults | None) -> list[Figure]:
    return figures_present(
        run,
        [
            Figure("preference", preference_caption(results), wide=True),
            Figure(
                "training_loss",
                "Answer-token training loss (nats per token) of every student against the "
                "optimizer step; colour: the trainable set, solid: owl data, dashed: control data"
                + (", dotted: other data" if _other_data(results) else "")
                + ".",
            ),
        ],
    )


def _other_data(results: SubliminalResults | None) -> bool:
    students = (results.students if results else None) or {}
    return any(s.dataset not in (OWL, CONTROL) for s in students.values())
