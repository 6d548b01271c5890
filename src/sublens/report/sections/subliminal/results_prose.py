"""The results paragraph of the subliminal section and its terminal headline: each owl
arm's share ratio over its control student, arms without a matched control, the students'
sampled answers, the verdicts, the evaluation prompts, the entangled-numbers contrast and the
data; an unfinished or unreadable run says what is missing."""

from __future__ import annotations

from typing import Any

from sublens.claims import Decision
from sublens.experiments.subliminal.results import SubliminalResults
from sublens.report.latex import counted, escape, noun_for
from sublens.report.sections.common import (
    count,
    incomplete,
    ratio_cell,
    ratio_plain,
    seeds_sentence,
)
from sublens.report.sections.subliminal.data_prose import data_sentence
from sublens.report.sections.subliminal.deciding import (
    FREEZE_MODES,
    _claims_text,
    _entanglement_claims_text,
    _specificity_claims_text,
    decisions,
    divergence_sets,
    other_arms,
)
from sublens.report.sections.subliminal.floats import _prompt_table
from sublens.report.sections.subliminal.reading import (
    OWL,
    PROMPT_TABLE,
    TABLE,
    _is_student,
    _with,
    arm_modes,
    p_trait_ratio,
    share_ratio,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import verdict_label
from sublens.trainable import describe_trainable


def _arms_text(results: SubliminalResults, modes: list[str]) -> str:
    """Each owl student's share ratio over its control student, in one sentence (the scope of
    the CIs is said once, by `seeds_sentence`)."""
    parts = []
    for mode in modes:
        row = results.row(OWL, mode)
        if share_ratio(row) is None:
            continue
        parts.append(f"{ratio_cell(share_ratio(row))} {_with(mode)} (P(owl) {ratio_cell(p_trait_ratio(row))})")
    if not parts:
        return ""
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Over the control student, owl's share under the owl student is {joined}."


def _mismatch_note(unmatched: list[str], control_modes: list[str]) -> str:
    if not unmatched:
        return ""
    controls = " and ".join(_with(m) for m in control_modes) or "no mode"
    students = " and ".join(_with(m) for m in unmatched)
    return (
        f"This run trained control students only {controls}, so the owl "
        f"{noun_for(unmatched, 'student')} {students} {'has' if len(unmatched) == 1 else 'have'} no "
        "matched control; comparing them with a differently trained control mixes the effect of "
        "freezing with the effect of the data, and no claim rests on that comparison."
    )


def _answers_text(results: SubliminalResults) -> str:
    """The students' sampled answers naming the trait, in one sentence where the table's
    answer-rate and p columns would say the same thing in every student row."""
    rates = [r.answer_rate for r in results.headline or [] if _is_student(r)]
    if not rates or any(rate is None or rate.count is None or rate.count for rate in rates):
        return ""
    trait = escape(results.trait)
    n = {rate.n for rate in rates if rate is not None} - {None}
    each = f" (0 of {count(next(iter(n)))} each)" if len(n) == 1 else ""
    return (
        f"No student, owl or control, named {'an' if trait[:1] in 'aeiou' else 'a'} {trait} in any "
        f"sampled answer{each}, so the answer rate cannot separate them."
    )


def _entangled_contrast_sentence(results: SubliminalResults) -> str:
    """The direct test: owl students trained without the entangled numbers against owl students
    trained without the matched random set (a drop of the first means entanglement carries it)."""
    comp = (results.comparisons or {}).get("owl-no-entangled-full vs owl-no-random-full")
    if comp is None:
        return ""
    entangled = results.data.entangled if results.data else None
    size = entangled.filter.size if entangled is not None and entangled.filter is not None else None
    return (
        "Removing every owl answer that holds an entangled number, against removing every answer that "
        f"holds a number of the matched random set (both then {counted(size, 'answer') if size else 'matched'}), "
        f"the first student's owl share over the second's is {ratio_cell(comp.share_ratio)}; the "
        "entanglement claim decides what this quotient shows, against the transfer it could lower."
    )


def _prompt_sentence(results: SubliminalResults) -> str:
    if _prompt_table(results) is None:
        return ""
    return (
        f"Table~\\ref{{tab:{PROMPT_TABLE}}} repeats the comparison with the students measured under other "
        "system prompts, since the transfer has been reported to depend on the prompt at evaluation."
    )


def _results(
    run: StageRun, results: SubliminalResults | None, unreadable: str | None
) -> tuple[str, dict[str, Decision] | None]:
    data = data_sentence(results.data if results else None)
    if results is None or not results.headline:
        text = incomplete(run, "the students' preferences against the control students")
        if unreadable:
            text += f" Its results cannot be read: {escape(unreadable)}"
        return (text + (" " + data if data else "")), None
    decided = decisions(run, results)
    modes, control_modes = arm_modes(results, run.config)
    unmatched = [m for m in modes if m not in control_modes]
    text = (
        f"Table~\\ref{{tab:{TABLE}}} gives every student's preference. {_arms_text(results, modes)} "
        f"{seeds_sentence(results.n_seeds)} {_mismatch_note(unmatched, control_modes)} {_answers_text(results)} "
        f"{_claims_text(modes, decided)} {_specificity_claims_text(decided)} {_prompt_sentence(results)} "
        f"{_entangled_contrast_sentence(results)} "
        f"{_entanglement_claims_text(decided)} {data}"
    )
    return " ".join(text.split()), decided


def _headline(
    results: SubliminalResults | None, decided: dict[str, Decision] | None, config: dict[str, Any]
) -> list[str]:
    if results is None or decided is None:
        return ["subliminal: incomplete (no student comparisons)"]
    full = share_ratio(results.row(OWL, "full"))
    lines = [
        f"subliminal: full owl student share {ratio_plain(full)} vs matched control "
        f"({counted(results.n_seeds, 'seed')}); transfer {verdict_label(decided['transfer.full'])}"
    ]
    modes = arm_modes(results, config)[0]
    if any(m in FREEZE_MODES for m in modes) or not modes:  # a run that does not say: as before
        lines.append(f"subliminal: MLP claim by freezing {verdict_label(decided['mlp'])}")
    others = other_arms(modes, decided)
    if others:
        lines.append(
            "subliminal: transfer "
            + "; ".join(f"with {describe_trainable(m)} {verdict_label(decided[f'transfer.{m}'])}" for m in others)
        )
    for s in divergence_sets(decided):
        lines.append(
            f"subliminal: divergence tokens out of the loss block the transfer ({describe_trainable(s)}) "
            f"{verdict_label(decided[f'divergence.{s}'])}"
        )
    if "entanglement" in decided:
        lines.append(
            f"subliminal: token entanglement does not explain the transfer {verdict_label(decided['entanglement'])}"
        )
    return lines
