"""distill: squeezing-heads distillation from a biased teacher into a student of another family,
against an LM-only student and a student distilled from the unbiased base model.

Reads a `distill` run directory: its results.json parsed once into `DistillResults`
(`sublens.experiments.distill.results`; an unfinished run's unreadable results are reported as
incomplete). Two claims, decided by `sublens.claims` with training seeds as the unit (family
"distill", Holm):

- ``distill.transfer``, "the owl bias crosses architectures through SHD": owl's panel-share
  ratio of the biased-SHD student over its matched control, the LM-loss-only student trained
  on the same texts with the same seed;
- ``distill.specific``, "the rise is the teacher's bias, not attention distillation as such":
  the same ratio over the student distilled from the unbiased base model.

The per-seed log ratios are the experiment's ``comparisons.<pair>.share_ratio.per_seed_log``;
a run recorded before they existed has one seed, whose log ratio is that of its ratio. One
seed never decides a claim ("inconclusive (1 seed)"); its question-level CIs are labelled as
describing that one run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sublens.claims import (
    Claim,
    ClaimSettings,
    Decision,
    Verdict,
    decide_family,
    estimate_log_ratio,
)
from sublens.experiments.distill.results import (
    ARMS,
    SPECIFIC,
    TRANSFER,
    DistillResults,
    PreferenceRecord,
    SeedRatio,
    TeacherRecord,
)
from sublens.report.latex import (
    booktabs_table,
    constant_column,
    counted,
    drop_columns,
    escape,
    steps_text,
)
from sublens.report.names import FINE_TUNED_TEACHER, data_source_name, display_name, words
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.common import (
    count,
    dig,
    fields_of,
    figures_present,
    finite,
    fnum,
    fpval,
    incomplete,
    model_name,
    p_value,
    preference_definition,
    preference_methods,
    ratio_cell,
    ratio_plain,
    seeds_sentence,
    stacked_rows,
    summary_cell,
    tight,
    train_text,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_settings, decisions_latex, verdict_label
from sublens.results import as_results, read_run_results

TITLE = "Cross-architecture squeezing-heads distillation"
TABLE, ALPHA_TABLE = "shd_transfer", "shd_alphas"
# What runs recorded before `shd.kl_direction` existed used (sublens.shd.LEGACY_KL_DIRECTION;
# not imported: the report is torch-free).
LEGACY_KL_DIRECTION = "teacher_student"
# The students as the paper names them (the arms' keys are config values, not words).
STUDENT = {"initial": "the initial student", "shd_biased": "the biased-SHD student",
           "lm_only": "the LM-only student", "shd_base": "the base-SHD student"}
ROW_LABEL = {"initial": "initial student", "shd_biased": "biased SHD", "lm_only": "LM only",
             "shd_base": "base SHD"}


# ---- looking things up ------------------------------------------------------------------------
Results = DistillResults | None  # None: no readable results (none written, or an unfinished run's)


def _preference(r: Results, name: str) -> PreferenceRecord | None:
    return r.preference(name) if r is not None else None


def _share(r: Results, key: str, which: str = "share_ratio") -> SeedRatio | None:
    comparison = r.comparison(key) if r is not None else None
    if comparison is None:
        return None
    ratio: SeedRatio = comparison.p_trait_ratio if which == "p_trait_ratio" else comparison.share_ratio
    return ratio


def _kl(r: Results, state: str, role: str) -> float | None:
    """Mean KL of a student's maps to a teacher's squeezed maps on the held-out fit set."""
    fit = r.fit.get(state, {}).get(role) if r is not None else None
    kl = fit.kl() if fit is not None else None
    return kl.mean if kl is not None and finite(kl.mean) else None


def _seeds(r: Results) -> int:
    return len(_seed_list(r))


def _seed_list(r: Results) -> list[int]:
    return list(r.seeds) if r is not None and r.seeds else [0]


# ---- the claims ----------------------------------------------------------------------------------
FAMILY = "distill"


def distill_claims(settings: ClaimSettings | None = None) -> list[tuple[str, Claim]]:
    """(comparison key, claim) of the distill family."""
    settings = settings or ClaimSettings()
    return [
        (TRANSFER, Claim(
            name="distill.transfer", statement="The owl bias crosses architectures through SHD",
            estimand=("owl's panel-share ratio of the student trained with LM loss + SHD from the biased "
                      "teacher over its matched control, the LM-loss-only student (same texts, same initial "
                      "weights, same training seed), geometric mean over questions per seed"),
            unit="seed", prediction="increase", family=FAMILY, settings=settings)),
        (SPECIFIC, Claim(
            name="distill.specific",
            statement="The rise is the teacher's bias, not attention distillation as such",
            estimand=("owl's panel-share ratio of the biased-SHD student over the student distilled from "
                      "the unbiased base model (same texts, same training seed), per seed"),
            unit="seed", prediction="increase", family=FAMILY, settings=settings)),
    ]


def per_seed_logs(r: Results, key: str) -> list[float]:
    """Per-seed log share ratios of one comparison (``per_seed_log``); a run recorded before
    they were stored has one seed, whose log ratio is the log of its (question-level) ratio."""
    entry = _share(r, key)
    if entry is None:
        return []
    if entry.per_seed_log is not None:
        return [float(v) for v in entry.per_seed_log if finite(v)]
    return [math.log(entry.ratio)] if finite(entry.ratio) and entry.ratio > 0 else []


def decisions(r: DistillResults | Mapping[str, Any] | None, settings: ClaimSettings | None = None) -> list[Decision]:
    """The distill claims' decisions (transfer, specificity), Holm-adjusted within the family;
    `r`: the results, or a results.json mapping (validated: ResultsError), or None (no results)."""
    results = as_results(r, DistillResults) if r is not None else None
    return decide_family([(claim, estimate_log_ratio(per_seed_logs(results, key), "seed"))
                          for key, claim in distill_claims(settings)])


def shd_verdict(r: DistillResults | Mapping[str, Any] | None, settings: ClaimSettings | None = None) -> str:
    """The transfer verdict word of the headline (a thin caller of `decisions`)."""
    return verdict_label(decisions(r, settings)[0])


def _conclusion(transfer: Decision, specific: Decision) -> str:
    """What the two decisions say together: transfer of the teacher's bias needs both."""
    if transfer.verdict is Verdict.SUPPORTED and specific.verdict is Verdict.SUPPORTED:
        return ("Both claims hold: the data support transfer of the teacher's bias across architectures "
                "through SHD.")
    if transfer.verdict is Verdict.SUPPORTED:
        return ("The rise over the LM-only student is not shown to come from the teacher's bias (the "
                "specificity claim is " + verdict_label(specific) + "), so transfer of the bias through "
                "SHD is not established.")
    if transfer.verdict is Verdict.CONTRADICTED:
        return "SHD from the biased teacher lowered owl's share against the LM-only student: no transfer."
    if transfer.verdict is Verdict.EQUIVALENT:
        return ("No rise as large as the margin over the LM-only student: the data indicate no transfer "
                "of the bias through SHD at this scale.")
    return "Transfer of the bias through SHD is neither shown nor excluded by these data."


def _attention_share(r: Results) -> str:
    """How much of the biased student's log-share rise over LM-only the base-SHD student also has."""
    biased, base = _share(r, TRANSFER), _share(r, "shd_base_vs_lm_only")
    if not (biased and base and finite(biased.ratio) and finite(base.ratio)):
        return ""
    rise, shared = math.log(biased.ratio), math.log(base.ratio)
    if rise <= 0:
        return ""
    fraction = shared / rise
    lead = (f"Distilling the unbiased base model's attention alone changes the share "
            f"{ratio_cell(base)} over LM-only")
    if fraction <= 0:
        return lead + ", none of the biased student's rise (point estimates; the second claim below tests it)."
    return (lead + f", {fnum(100 * min(fraction, 1.0), 0)}\\% of the biased student's rise on the log scale "
            "(point estimates; the second claim below tests whether the biased student exceeds it).")


# ---- text -----------------------------------------------------------------------------------------
def _teacher(r: Results, role: str) -> TeacherRecord | None:
    return r.teachers.get(role) if r is not None else None


def _teacher_text(r: Results, c: dict[str, Any]) -> str:
    biased, base = _teacher(r, "biased"), _teacher(r, "base")
    spec = (biased.spec if biased else None) or dig(c, "teacher", "model") or "?"
    # what the biased teacher read around the texts: a system prompt (chat) or a context paragraph (plain)
    system = (biased.system if biased.format == "chat" else biased.context) if biased else None
    if spec == (base.spec if base else dig(c, "base_teacher", "model")) and system:
        return (f"the base model {model_name(spec)} prompted with ``{escape(system)}'' "
                "(a prompted teacher, not the fine-tuned one)")
    name = display_name(spec)
    return (FINE_TUNED_TEACHER + " made by context distillation" if name == FINE_TUNED_TEACHER
            else f"the fine-tuned teacher {escape(name)}")


def _heads_text(r: Results) -> str:
    t = _teacher(r, "biased") or _teacher(r, "base")
    if t is None:
        return ""
    k, m = escape(t.teacher_heads), escape(t.student_heads)
    if t.fallback == "repeat":  # a student with more heads than the teacher
        text = (f"The student's {m} heads per layer are matched to the teacher's {k} heads in turn "
                "(head $j$ to teacher head $j \\bmod k$, unsqueezed)")
    else:
        text = f"Each layer's {k} teacher heads are squeezed into the student's {m} by merging adjacent pairs"
    if t.merge_schedule and t.fallback != "repeat":
        merges = ", then ".join(counted(int(s), "pair") for s in t.merge_schedule)
        text += f" in {counted(len(t.merge_schedule), 'phase')} ({merges})"
    pairs = sorted((int(s), int(v)) for s, v in t.layer_map.items() if str(s).isdigit())
    if pairs:
        shown = [f"{s}$\\to${v}" for s, v in pairs]
        if len(shown) > 6:
            shown = [*shown[:3], "\\ldots", shown[-1]]
        text += (f"; the {len(pairs)} student layers map uniformly onto teacher layers "
                 f"({', '.join(shown)})")
    return text + "."


def _data_text(r: Results, c: dict[str, Any]) -> str:
    d = r.data if r is not None else None
    source = d.source if d else dig(c, "data", "source")
    what = ("number prompts with seeded random answers" if source in (None, "generated")
            else data_source_name(source))
    n_train = d.n_train if d else dig(c, "data", "n_train")
    n_fit = d.n_fit if d else dig(c, "data", "n_fit")
    text = (f"All students train on the same {count(n_train)} texts, "
            f"{what} ({count(d.student_tokens if d else None)} student tokens); "
            f"{count(n_fit)} further texts are held out to measure the "
            "KL between the student's maps and each teacher's squeezed maps before and after training.")
    if d and d.identity_alignment and not all(d.identity_alignment.values()):
        text += (" Teacher and student tokenize differently, so the teacher's maps are projected onto "
                 "the student's tokens through character-span overlap.")
    return text


def _methods(run: StageRun, r: Results) -> str:
    c = run.config
    # as written (an old run has no kl_direction key), else as configured
    shd: Mapping[str, Any] = (fields_of(r.shd) if r is not None else c.get("shd")) or {}
    arms = [a for a in c.get("arms") or ARMS if a in ARMS]
    layers = shd.get("layers")
    steps = sorted({a.train.steps for a in r.arms.values()}) if r is not None else []
    text = (f"Squeezing-heads distillation (SHD) \\citep{{bing2025shd}} trains the student "
            f"{model_name(r.student if r is not None else c.get('student', '?'))} to match the attention maps of a "
            f"teacher of another family: the total loss is the LM loss plus $\\beta$ = "
            f"{fnum(shd.get('beta'), 2) if finite(shd.get('beta')) else '--'} times {_kl_text(shd)} "
            f"per query row, both maps softened at temperature "
            f"{fnum(shd.get('temperature'), 2) if finite(shd.get('temperature')) else '--'}, over "
            f"{'all layers' if layers is None else 'layers ' + ', '.join(str(x) for x in layers)}. "
            f"{_heads_text(r)} The biased teacher is {_teacher_text(r, c)}. ")
    base = _teacher(r, "base")
    described = {"shd_biased": f"{STUDENT['shd_biased']} (LM loss + SHD from the biased teacher)",
                 "lm_only": f"{STUDENT['lm_only']} (LM loss only, the control)",
                 "shd_base": (f"{STUDENT['shd_base']} (LM loss + SHD from the unbiased base model "
                              f"{model_name((base.spec if base else None) or dig(c, 'base_teacher', 'model'))}, "
                              "the control for attention distillation as such)")}
    listed = [described[a] for a in arms]
    joined = listed[0] if len(listed) == 1 else "; ".join(listed[:-1]) + "; and " + listed[-1]
    text += (f"We train {counted(len(listed), 'student')}: " + joined + ". " if listed else "") + _data_text(r, c)
    seeds = _seed_list(r)
    text += (f" Every student starts from the same weights: {train_text(c.get('train') or {})}"
             + (f", {steps_text(steps)}" if steps else "")
             + (f", training seed {seeds[0]}" if len(seeds) == 1 else
                f", once per training seed ({', '.join(str(x) for x in seeds)}; texts split with seed "
                f"{c.get('seed', 0)})")
             + "; the students of a seed are matched (same texts, same initial weights, same seed). ")
    initial = _preference(r, "initial")
    text += preference_methods(c.get("preference") or {}, initial.model_dump(mode="json") if initial else None)
    settings = claim_settings(c)
    return text + (
        " Claims are decided with training seeds as the unit of inference: a one-sample $t$-test on the "
        "per-seed log ratios of owl's panel share (biased-SHD student over a control student of the same "
        f"seed), two-sided, Holm-adjusted over the two claims of this section at $\\alpha$ = {settings.alpha:g}; "
        f"an effect counts only beyond the margin $\\times${settings.margin:g}, and every verdict states the "
        f"minimal detectable effect at the measured between-seed SD (power {settings.power:g}). One seed "
        "never decides a claim.")


def _kl_text(shd: Mapping[str, Any]) -> str:
    """The loss's KL direction; a run recorded before ``shd.kl_direction`` existed used the
    forward direction (LEGACY_KL_DIRECTION)."""
    chosen = shd.get("kl_direction", LEGACY_KL_DIRECTION)
    legacy = "kl_direction" not in shd  # recorded before the direction was configurable
    if chosen == "student_teacher":
        return ("the KL of the student's map from the teacher's squeezed map, KL(student $\\|$ teacher), "
                "the SHD paper's formulation (zero-forcing: student attention where the teacher's map has "
                "none is penalised)")
    if chosen == "teacher_student":
        return ("the KL of the teacher's squeezed map from the student's, KL(teacher $\\|$ student), the "
                "forward KL of attention-map distillation (mass-covering; "
                + ("the only direction when this run was recorded; " if legacy else "")
                + "the SHD paper uses KL(student $\\|$ teacher))")
    return f"the KL between the teacher's squeezed map and the student's (direction {escape(words(chosen))})"


def _answer_counts(r: Results) -> dict[str, tuple[int, int]]:
    """(owl answers, sampled answers) per student that sampled answers."""
    out = {}
    for name in ("initial", *ARMS):
        pref = _preference(r, name)
        if pref is not None and pref.sampled is not None:
            out[name] = (pref.sampled.trait_rate.count, pref.sampled.n_answers)
    return out


def _none_named(r: Results) -> bool:
    """Whether no student named an owl in any sampled answer (the answer-rate column all zero)."""
    counts = _answer_counts(r)
    return bool(counts) and all(k == 0 for k, _ in counts.values())


def _fisher_p(r: Results, key: str) -> float | None:
    comparison = r.comparison(key) if r is not None else None
    difference = comparison.rate_difference if comparison is not None else None
    return difference.p_fisher if difference is not None else None


def _answers(r: Results) -> str:
    counts = {k: v for k, v in _answer_counts(r).items() if k != "initial"}
    if not counts:
        return ""
    p_values = [_fisher_p(r, k) for k in (TRANSFER, SPECIFIC)]
    if _none_named(r):  # the table has no answer-rate column, and its caption gives Fisher's p once
        n = {total for _, total in _answer_counts(r).values()}
        each = f" (0 of {count(next(iter(n)))} each)" if len(n) == 1 else ""
        return (f"No student named an owl in any sampled answer{each}, so the answer rate cannot separate "
                f"them (Table~\\ref{{tab:{TABLE}}}).")
    parts = [f"{STUDENT[name]} {count(k)} of {count(total)}" for name, (k, total) in counts.items()]
    text = "Sampled answers naming an owl: " + ", ".join(parts)
    if any(finite(p) for p in p_values):
        text += (f" (Fisher {p_value(p_values[0])} against the LM-only student, "
                 f"{fpval(p_values[1])} against the base-SHD student)")
    return text + "."


def _prompted_note(run: StageRun, r: Results) -> str:
    if "prompted teacher" not in _teacher_text(r, run.config):
        return ""
    return ("The biased teacher here is the prompted base model, whose maps carry the owl prompt in "
            "context; the fine-tuned teacher was not used.")


def _fit_text(r: Results) -> str:
    before, after = _kl(r, "initial", "biased"), _kl(r, "shd_biased", "biased")
    if before is None or after is None:
        return ""
    text = (f"SHD fitted the maps: the KL of the student's maps to the biased teacher's fell from "
            f"{fnum(before)} to {fnum(after)} nats per query row in {STUDENT['shd_biased']}")
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
    text = (f"Against the LM-only student, the biased-SHD student's owl share is {ratio_cell(vs_lm)} "
            f"(P(owl) {ratio_cell(_share(r, TRANSFER, 'p_trait_ratio'))}); against the "
            f"base-SHD student it is {ratio_cell(vs_base)} (P(owl) "
            f"{ratio_cell(_share(r, SPECIFIC, 'p_trait_ratio'))}; Table~\\ref{{tab:{TABLE}}}). ")
    parts = [seeds_sentence(_seeds(r)), _attention_share(r), _answers(r),
             decisions_latex([transfer, specific], test_stated=True, ratio_stated=True),
             _conclusion(transfer, specific), _prompted_note(run, r), _fit_text(r)]
    text += " ".join(p for p in parts if p)
    for note in r.notes if r is not None else []:
        text += f" Note: {escape(words(note))}"
    return text, verdict_label(transfer)


# ---- tables ---------------------------------------------------------------------------------------
def _row(r: Results, name: str) -> list[str] | None:
    pref = _preference(r, name)
    if pref is None:
        return None
    kl = [_kl(r, name, role) for role in ("biased", "base")]
    key = f"shd_biased_vs_{name}"
    p_fisher = _fisher_p(r, key)
    compared = name != "shd_biased"
    return [ROW_LABEL[name], summary_cell(pref.probability.p_trait),
            summary_cell(pref.probability.panel_share, 1),
            summary_cell(pref.sampled.trait_rate if pref.sampled else None, 0),
            " / ".join(fnum(v) for v in kl),
            ratio_cell(_share(r, key)) if compared else "--",
            ratio_cell(_share(r, key, "p_trait_ratio")) if compared else "--",
            fpval(p_fisher) if compared and p_fisher is not None else "--"]


ANSWERS, P_COLUMN = 3, 7  # the table's answer-rate and Fisher p columns


def _table(r: Results) -> str | None:
    rows = [row for name in ("initial", *ARMS) if (row := _row(r, name)) is not None]
    if not rows:
        return None
    header = ["student", "P(owl) %", "share %", "answers %", "KL biased / base", "share ratio",
              "P(owl) ratio", "p"]
    seeds = _seed_list(r)
    ratios = ("paired over questions; one seed, so these CIs describe this run only" if len(seeds) == 1 else
              f"geometric mean over {len(seeds)} seeds of the per-seed ratios, Student-$t$ CI over seeds")
    # Columns that say the same in every row are one sentence of the caption instead.
    folded = [ANSWERS] if _none_named(r) else []
    p_all = constant_column(rows, P_COLUMN)
    if p_all is not None:
        folded.append(P_COLUMN)
    header, rows = drop_columns(header, rows, folded)
    answers = ("No student named an owl in any sampled answer (no answer-rate column). " if ANSWERS in folded
               else "")
    measures = "P(owl) and owl's panel share $s$" + ("" if ANSWERS in folded else " and the rate of owl among "
                                                     "sampled answers")
    test = (f"; Fisher's exact test of the sampled owl-answer rates gives $p$ = {p_all} in every row (first seed)"
            if p_all is not None else " and Fisher's test $p$ of the sampled owl-answer rates (first seed)")
    caption = (f"SHD students' preference for owl (95\\% CIs over questions, training seed {escape(seeds[0])}): "
               f"{measures} in percent. {answers}KL: mean KL of the student's maps to the biased / base "
               "teacher's squeezed maps on held-out texts, in nats per query row (initial: before training), "
               "in the direction of the training loss. The ratio columns compare the biased-SHD student with "
               f"the row's student: share and P(owl) ratios (multiples; biased SHD over the row, {ratios}){test}.")
    return tight(booktabs_table(header, stacked_rows(rows), caption, f"tab:{TABLE}", wide=True))


def _alpha_table(r: Results) -> str | None:
    if r is None:
        return None
    biased, base = r.alphas.get("biased") or {}, r.alphas.get("base") or {}
    teacher = _teacher(r, "biased") or _teacher(r, "base")
    layer_map = teacher.layer_map if teacher is not None else {}
    layers = sorted({int(k) for k in (*biased, *base) if str(k).isdigit()})
    if not layers:
        return None
    rows = []
    for layer in layers:
        b, u = biased.get(str(layer)), base.get(str(layer))
        rows.append([str(layer), str(layer_map.get(str(layer), "--")), fnum(b.mean if b else None),
                     fnum(b.std if b else None), fnum(u.mean if u else None)])
    caption = ("Squeezing weights $\\alpha$ (between 0 and 1) on the held-out texts per student layer (and the "
               "teacher layer it is distilled from): mean and sd for the biased teacher, mean for the base teacher.")
    return tight(booktabs_table(["student", "teacher", "mean", "sd", "base"], rows, caption,
                                f"tab:{ALPHA_TABLE}"))


def _headline(run: StageRun, r: Results, verdict: str) -> list[str]:
    if verdict == "incomplete":
        return ["distill: incomplete (no comparison of the biased-SHD student with its controls)"]
    specific = decisions(r, claim_settings(run.config))[1]
    return [f"distill: biased-SHD student share {ratio_plain(_share(r, TRANSFER))} vs LM-only, "
            f"{ratio_plain(_share(r, SPECIFIC))} vs base-SHD ({counted(_seeds(r), 'seed')}); "
            f"transfer: {verdict}; not attention distillation as such: {verdict_label(specific)}"]


# The figures the paper shows, with captions that name every line and marker.
FIGURES = [
    Figure("distill_losses", "LM loss (nats per answer token) and SHD loss (KL, nats per query row, mean over the "
                             "distilled layers) of each student per optimizer step; one line per student (legend).",
           wide=True),
    Figure("distill_alphas", "Squeezing weight $\\alpha$ of the merged head pairs per student layer on the held-out "
                             "texts (all merge phases), for the biased teacher (orange) and the base teacher (blue): "
                             "open circle, median; thick bar, interquartile range; thin line, 10th to 90th "
                             "percentile; dotted line, $\\alpha$ = 0.5 (both heads of a pair weighted equally).",
           wide=True),
    Figure("distill_maps", "One held-out text: a teacher head, the squeezed map, its projection onto "
                           "the student's tokens, and the student's map before and after training.",
           wide=True),
]


def build(run: StageRun) -> Section:
    r, unreadable = read_run_results(run.results, DistillResults, run.ok)
    results, verdict = _results(run, r, unreadable)
    tables = {stem: t for stem, t in ((TABLE, _table(r)), (ALPHA_TABLE, _alpha_table(r))) if t}
    if ALPHA_TABLE in tables:
        results += f" Table~\\ref{{tab:{ALPHA_TABLE}}} summarises the squeezing weights per layer."
    figures = figures_present(run, FIGURES)
    if figures:
        results += " See " + ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures) + "."
    return Section(TITLE, _methods(run, r), results, tables, figures, _headline(run, r, verdict),
                   measurement=preference_definition(run.config.get("preference") or {}))
