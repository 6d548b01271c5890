"""The results paragraph and the headline line: the share ratios, the sampled answers, the
verdicts and how well SHD fitted the maps."""

from __future__ import annotations

import math

from sublens.experiments.distill.results import SPECIFIC, TRANSFER
from sublens.report.latex import counted, escape
from sublens.report.names import words
from sublens.report.sections.common import (
    count,
    finite,
    fnum,
    fpval,
    incomplete,
    p_value,
    ratio_cell,
    ratio_plain,
    seeds_sentence,
)
from sublens.report.sections.distill.deciding import _conclusion, decisions
from sublens.report.sections.distill.methods_prose import _teacher_text
from sublens.report.sections.distill.reading import (
    STUDENT,
    TABLE,
    Results,
    _answer_counts,
    _kl,
    _none_named,
    _rate_test,
    _seeds,
    _share,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_settings, decisions_latex, scope_words, verdict_label


def _attention_share(r: Results) -> str:
    """How much of the biased student's log-share rise over LM-only the base-SHD student also has."""
    biased, base = _share(r, TRANSFER), _share(r, "shd_base_vs_lm_only")
    if not (biased and base and finite(biased.ratio) and finite(base.ratio)):
        return ""
    rise, shared = math.log(biased.ratio), math.log(base.ratio)
    if rise <= 0:
        return ""
    fraction = shared / rise
    lead = f"Distilling the unbiased base model's attention alone changes the share {ratio_cell(base)} over LM-only"
    if fraction <= 0:
        return lead + ", none of the biased student's rise (point estimates; the second claim below tests it)."
    return (
        lead + f", {fnum(100 * min(fraction, 1.0), 0)}\\% of the biased student's rise on the log scale "
        "(point estimates; the second claim below tests whether the biased student exceeds it)."
    )


def _answers(r: Results) -> str:
    counts = {k: v for k, v in _answer_counts(r).items() if k != "initial"}
    if not counts:
        return ""
    tests = [_rate_test(r, k) for k in (TRANSFER, SPECIFIC)]
    p_values = [t.p if t else None for t in tests]
    if _none_named(r):  # the table has no answer-rate column, and its caption gives the answer-rate p once
        n = {total for _, total in _answer_counts(r).values()}
        each = f" (0 of {count(next(iter(n)))} each)" if len(n) == 1 else ""
        return (
            f"No student named an owl in any sampled answer{each}, so the answer rate cannot separate "
            f"them (Table~\\ref{{tab:{TABLE}}})."
        )
    parts = [f"{STUDENT[name]} {count(k)} of {count(total)}" for name, (k, total) in counts.items()]
    text = "Sampled answers naming an owl: " + ", ".join(parts)
    tested = next((t for t in tests if t is not None), None)
    if tested is not None and any(finite(p) for p in p_values):
        text += (
            f" ({tested.name}, {tested.scope}: {p_value(p_values[0])} against the LM-only student, "
            f"{fpval(p_values[1])} against the base-SHD student)"
        )
    return text + "."


def _prompted_note(run: StageRun, r: Results) -> str:
    if "prompted teacher" not in _teacher_text(r, run.config):
        return ""
    return (
        "The biased teacher here is the prompted base model, whose maps carry the owl prompt in "
        "context; the fine-tuned teacher was not used."
    )


def _fit_text(r: Results) -> str:
    before, after = _kl(r, "initial", "biased"), _kl(r, "shd_biased", "biased")
    if before is None or after is None:
        return ""
    text = (
        f"SHD fitted the maps: the KL of the student's maps to the biased teacher's fell from "
        f"{fnum(before)} to {fnum(after)} nats per query row in {STUDENT['shd_biased']}"
    )
    control = _kl(r, "lm_only", "biased")
    if control is not None:
        text += f" ({STUDENT['lm_only']}: {fnum(control)})"
    return text + "."


def _results(run: StageRun, r: Results, unreadable: str | None) -> tuple[str, str]:
    vs_lm, vs_base = _share(r, TRANSFER), _share(r, SPECIFIC)
    if not (vs_lm or vs_base):
        text = incomplete(run, "the comparison of the biased-SHD student with its controls")
        if unreadable:
            text += f" Its results cannot be read: {escape(unreadable)}"
        return text, "incomplete"
    transfer, specific = decisions(r, claim_settings(run.config))
    text = (
        f"Against the LM-only student, the biased-SHD student's owl share is {ratio_cell(vs_lm)} "
        f"(P(owl) {ratio_cell(_share(r, TRANSFER, 'p_trait_ratio'))}); against the "
        f"base-SHD student it is {ratio_cell(vs_base)} (P(owl) "
        f"{ratio_cell(_share(r, SPECIFIC, 'p_trait_ratio'))}; Table~\\ref{{tab:{TABLE}}}). "
    )
    parts = [
        seeds_sentence(_seeds(r)),
        _attention_share(r),
        _answers(r),
        decisions_latex([transfer, specific], test_stated=True, ratio_stated=True),
        _conclusion(transfer, specific),
        _prompted_note(run, r),
        _fit_text(r),
    ]
    text += " ".join(p for p in parts if p)
    for note in r.notes if r is not None else []:
        text += f" Note: {escape(words(note))}"
    return text, verdict_label(transfer)


def _headline(run: StageRun, r: Results, verdict: str) -> list[str]:
    if verdict == "incomplete":
        return ["distill: incomplete (no comparison of the biased-SHD student with its controls)"]
    specific = decisions(r, claim_settings(run.config))[1]
    return [
        f"distill: biased-SHD student share {ratio_plain(_share(r, TRANSFER))} vs LM-only, "
        f"{ratio_plain(_share(r, SPECIFIC))} vs base-SHD ({counted(_seeds(r), 'seed')}); "
        f"transfer: {verdict}; not attention distillation as such: {verdict_label(specific)}{scope_words(specific)}"
    ]
