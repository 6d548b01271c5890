"""distill: squeezing-heads distillation from a biased teacher into a student of another family,
against an LM-only student and a student distilled from the unbiased base model; worded by the
measured ratios (transfer needs shd_biased to beat both controls)."""

from __future__ import annotations

import math
from typing import Any

from sublens.report.latex import booktabs_table, escape
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.teacher import (
    count,
    dig,
    direction,
    figures_present,
    finite,
    fnum,
    fpval,
    incomplete,
    model_name,
    p_value,
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

TITLE = "Cross-architecture squeezing-heads distillation"
TABLE, ALPHA_TABLE = "shd_transfer", "shd_alphas"
ARMS = ("shd_biased", "lm_only", "shd_base")
ROW_LABEL = {"initial": "initial student", "shd_biased": "shd\\_biased", "lm_only": "lm\\_only",
             "shd_base": "shd\\_base"}


# ---- looking things up ------------------------------------------------------------------------
def _preference(r: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = dig(r, "initial", "preference") if name == "initial" else dig(r, "arms", name, "preference")
    return found if isinstance(found, dict) else None


def _share(r: dict[str, Any], key: str, which: str = "share_ratio") -> dict[str, Any] | None:
    found = dig(r, "comparisons", key, which)
    return found if isinstance(found, dict) else None


def _kl(r: dict[str, Any], state: str, role: str) -> float | None:
    """Mean KL of a student's maps to a teacher's squeezed maps on the held-out fit set."""
    fit = dig(r, "fit", state, role) or {}
    key = next((k for k in fit if str(k).startswith("T=")), None)
    value = dig(fit, key, "mean") if key else None
    return value if finite(value) else None


def _seeds(r: dict[str, Any]) -> int:
    return len(r.get("seeds") or [0])


# ---- the claim ----------------------------------------------------------------------------------
def shd_verdict(vs_lm_only: str, vs_shd_base: str, n_seeds: int) -> str:
    """Transfer through SHD needs the biased-SHD student's owl share above BOTH controls (CIs
    excluding 1): above LM-only rules out the data, above base-SHD rules out attention
    distillation as such; with one seed the CIs cover question variation only."""
    if "unknown" in (vs_lm_only, vs_shd_base):
        return "untested"
    if vs_lm_only != "up":
        return "not_supported_lm_only"
    if vs_shd_base != "up":
        return "not_supported_shd_base"
    return "supported" if n_seeds > 1 else "not_established_one_seed"


VERDICT_TEXT = {
    "untested": "A comparison of shd\\_biased with one of its controls is missing, so transfer is not assessed.",
    "not_supported_lm_only": ("The biased-SHD student does not beat the LM-only student: this run shows "
                              "no transfer of the bias through SHD."),
    "not_supported_shd_base": ("The biased-SHD student does not beat the student distilled from the "
                               "unbiased base model: its rise over LM-only is attention distillation as "
                               "such, not the teacher's bias, so transfer through SHD is not supported."),
    "not_established_one_seed": ("The biased-SHD student exceeds both controls at question-level CIs, but "
                                 "with one training seed these CIs do not cover training variation: "
                                 "cross-architecture transfer of the bias is not established by this run."),
    "supported": ("The biased-SHD student beats both controls across seeds: the data support transfer of "
                  "the bias across architectures through SHD."),
}
HEADLINE_VERDICT = {
    "untested": "untested (comparison missing)",
    "not_supported_lm_only": "no transfer (not above lm_only)",
    "not_supported_shd_base": "not supported (not above shd_base)",
    "not_established_one_seed": "not established (one seed)",
    "supported": "supported",
}


def _attention_share(r: dict[str, Any]) -> str:
    """How much of the biased student's log-share rise over LM-only the base-SHD student also has."""
    biased, base = _share(r, "shd_biased_vs_lm_only"), _share(r, "shd_base_vs_lm_only")
    if not (biased and base and finite(biased.get("ratio")) and finite(base.get("ratio"))):
        return ""
    rise, shared = math.log(biased["ratio"]), math.log(base["ratio"])
    if rise <= 0:
        return ""
    fraction = shared / rise
    lead = (f"Distilling the unbiased base model's attention alone raises the share "
            f"{ratio_cell(base)} over LM-only, ")
    if fraction <= 0:
        return lead + "so none of the biased student's rise is shared by attention distillation as such."
    amount = "most" if fraction >= 0.5 else "part"
    return (lead + f"{fnum(100 * min(fraction, 1.0), 0)}\\% of the biased student's rise on the log scale: "
            f"{amount} of the rise is attention distillation as such.")


# ---- text -----------------------------------------------------------------------------------------
def _teacher_text(r: dict[str, Any], c: dict[str, Any]) -> str:
    biased, base = dig(r, "teachers", "biased") or {}, dig(r, "teachers", "base") or {}
    spec = biased.get("spec") or dig(c, "teacher", "model") or "?"
    system = biased.get("system", biased.get("context"))
    if spec == base.get("spec", dig(c, "base_teacher", "model")) and system:
        return (f"the base model {model_name(spec)} prompted with ``{escape(system)}'' "
                "(a prompted teacher, not the fine-tuned one)")
    return f"the fine-tuned teacher {model_name(spec)}"


def _heads_text(r: dict[str, Any]) -> str:
    t = dig(r, "teachers", "biased") or dig(r, "teachers", "base") or {}
    if not t:
        return ""
    schedule = t.get("merge_schedule") or []
    k, m = escape(t.get("teacher_heads", "?")), escape(t.get("student_heads", "?"))
    if t.get("fallback") == "repeat":  # a student with more heads than the teacher
        text = (f"The student's {m} heads per layer are matched to the teacher's {k} heads in turn "
                "(head $j$ to teacher head $j \\bmod k$, unsqueezed)")
    else:
        text = f"Each layer's {k} teacher heads are squeezed into the student's {m} by merging adjacent pairs"
    if schedule and t.get("fallback") != "repeat":
        text += f" in {len(schedule)} phase(s) ({', then '.join(str(s) for s in schedule)} pair(s))"
    layer_map = t.get("layer_map") or {}
    pairs = sorted((int(s), int(v)) for s, v in layer_map.items() if str(s).isdigit() and finite(v))
    if pairs:
        shown = [f"{s}$\\to${v}" for s, v in pairs]
        if len(shown) > 6:
            shown = [*shown[:3], "\\ldots", shown[-1]]
        text += (f"; the {len(pairs)} student layers map uniformly onto teacher layers "
                 f"({', '.join(shown)})")
    return text + "."


def _data_text(r: dict[str, Any], c: dict[str, Any]) -> str:
    d = r.get("data") or {}
    source = d.get("source", dig(c, "data", "source"))
    what = ("number prompts with seeded random answers" if source in (None, "generated")
            else f"the texts of {model_name(source)}")
    text = (f"All students train on the same {count(d.get('n_train', dig(c, 'data', 'n_train')))} texts, "
            f"{what} ({count(d.get('student_tokens'))} student tokens); "
            f"{count(d.get('n_fit', dig(c, 'data', 'n_fit')))} further texts are held out to measure the "
            "KL between the student's maps and each teacher's squeezed maps before and after training.")
    aligned = d.get("identity_alignment") or {}
    if aligned and not all(aligned.values()):
        text += (" Teacher and student tokenize differently, so the teacher's maps are projected onto "
                 "the student's tokens through character-span overlap.")
    return text


def _methods(run: StageRun) -> str:
    c, r = run.config, run.results
    shd = r.get("shd") or c.get("shd") or {}
    arms = [a for a in c.get("arms") or ARMS if a in ARMS]
    layers = shd.get("layers")
    steps = sorted({int(x) for a in (r.get("arms") or {}).values() if finite(x := dig(a, "train", "steps"))})
    text = (f"Squeezing-heads distillation (SHD) \\citep{{bing2025shd}} trains the student "
            f"{model_name(r.get('student', c.get('student', '?')))} to match the attention maps of a "
            f"teacher of another family: the total loss is the LM loss plus $\\beta$ = "
            f"{fnum(shd.get('beta'), 2) if finite(shd.get('beta')) else '--'} times the KL between the "
            f"teacher's squeezed maps and the student's, both softened at temperature "
            f"{fnum(shd.get('temperature'), 2) if finite(shd.get('temperature')) else '--'}, over "
            f"{'all layers' if layers is None else 'layers ' + ', '.join(str(x) for x in layers)}. "
            f"{_heads_text(r)} The biased teacher is {_teacher_text(r, c)}. Arms: ")
    described = {"shd_biased": "shd\\_biased (LM + SHD from the biased teacher)",
                 "lm_only": "lm\\_only (LM loss only, the control)",
                 "shd_base": (f"shd\\_base (LM + SHD from the unbiased base model "
                              f"{model_name(dig(r, 'teachers', 'base', 'spec') or dig(c, 'base_teacher', 'model') or '?')}, "
                              "the control for attention distillation as such)")}
    text += "; ".join(described[a] for a in arms) + ". " + _data_text(r, c)
    text += (f" Every arm starts from the same weights: {train_text(c.get('train') or {})}"
             + (f", {'/'.join(str(s) for s in steps)} optimizer steps" if steps else "")
             + f", seed {c.get('seed', 0)}. ")
    return text + preference_methods(c.get("preference") or {}, _preference(r, "initial"))


def _answers(r: dict[str, Any]) -> str:
    parts = []
    for name in ("shd_biased", "lm_only", "shd_base"):
        sampled = dig(_preference(r, name), "sampled") or {}
        if sampled:
            parts.append(f"{ROW_LABEL[name]} {count(dig(sampled, 'trait_rate', 'count'))}/"
                         f"{count(sampled.get('n_answers'))}")
    if not parts:
        return ""
    text = "Sampled answers naming an owl: " + ", ".join(parts)
    p_values = [dig(r, "comparisons", k, "rate_difference", "p_fisher")
                for k in ("shd_biased_vs_lm_only", "shd_biased_vs_shd_base")]
    if any(finite(p) for p in p_values):
        text += (f" (Fisher {p_value(p_values[0])} against lm\\_only, "
                 f"{fpval(p_values[1])} against shd\\_base)")
    return text + "."


def _prompted_note(run: StageRun) -> str:
    if "prompted teacher" not in _teacher_text(run.results, run.config):
        return ""
    return ("The biased teacher here is the prompted base model, whose maps carry the owl prompt in "
            "context; the fine-tuned teacher was not used.")


def _fit_text(r: dict[str, Any]) -> str:
    before, after = _kl(r, "initial", "biased"), _kl(r, "shd_biased", "biased")
    if before is None or after is None:
        return ""
    text = (f"SHD fitted the maps: the KL of the student's maps to the biased teacher's fell from "
            f"{fnum(before)} to {fnum(after)} in shd\\_biased")
    control = _kl(r, "lm_only", "biased")
    if control is not None:
        text += f" (lm\\_only: {fnum(control)})"
    return text + "."


def _results(run: StageRun) -> tuple[str, str]:
    r = run.results
    vs_lm, vs_base = _share(r, "shd_biased_vs_lm_only"), _share(r, "shd_biased_vs_shd_base")
    if not (vs_lm or vs_base):
        return incomplete(run, "the comparison of the biased-SHD student with its controls"), "incomplete"
    n_seeds = _seeds(r)
    verdict = shd_verdict(direction(vs_lm), direction(vs_base), n_seeds)
    text = (f"Against the LM-only student, the biased-SHD student's owl share is {ratio_cell(vs_lm)} "
            f"(P(owl) {ratio_cell(_share(r, 'shd_biased_vs_lm_only', 'p_trait_ratio'))}); against the "
            f"base-SHD student it is {ratio_cell(vs_base)} (P(owl) "
            f"{ratio_cell(_share(r, 'shd_biased_vs_shd_base', 'p_trait_ratio'))}; "
            f"Table~\\ref{{tab:{TABLE}}}). ")
    seeds = "" if verdict == "not_established_one_seed" else seeds_sentence(n_seeds)
    parts = [_attention_share(r), _answers(r), VERDICT_TEXT[verdict], seeds, _prompted_note(run), _fit_text(r)]
    text += " ".join(p for p in parts if p)
    for note in r.get("notes") or []:
        text += f" Note: {escape(note)}"
    return text, verdict


# ---- tables ---------------------------------------------------------------------------------------
def _row(r: dict[str, Any], name: str) -> list[str] | None:
    pref = _preference(r, name)
    if pref is None:
        return None
    kl = [_kl(r, name, role) for role in ("biased", "base")]
    key = f"shd_biased_vs_{name}"
    rate = dig(r, "comparisons", key, "rate_difference")
    compared = name != "shd_biased"
    return [ROW_LABEL[name], summary_cell(dig(pref, "probability", "p_trait")),
            summary_cell(dig(pref, "probability", "panel_share"), 1),
            summary_cell(dig(pref, "sampled", "trait_rate"), 0),
            " / ".join(fnum(v) for v in kl),
            ratio_cell(_share(r, key)) if compared else "--",
            ratio_cell(_share(r, key, "p_trait_ratio")) if compared else "--",
            fpval(rate.get("p_fisher")) if compared and isinstance(rate, dict) else "--"]


def _table(run: StageRun) -> str | None:
    r = run.results
    rows = [row for name in ("initial", *ARMS) if (row := _row(r, name)) is not None]
    if not rows:
        return None
    header = ["student", "P(owl) %", "share %", "answers %", "KL biased / base", "share ratio",
              "P(owl) ratio", "p"]
    caption = ("SHD students' preference for owl (95\\% CIs, one seed): P(owl), owl's panel share and the "
               "rate of owl among sampled answers in percent. KL: mean KL of the student's "
               "maps to the biased / base teacher's squeezed maps on held-out texts (initial: before "
               "training). The last three columns compare shd\\_biased with the row's student: share and "
               "P(owl) ratios (shd\\_biased over the row, paired over questions) and Fisher's test $p$ of "
               "the sampled owl-answer rates.")
    return tight(booktabs_table(header, stacked_rows(rows), caption, f"tab:{TABLE}", wide=True))


def _alpha_table(run: StageRun) -> str | None:
    alphas = run.results.get("alphas") or {}
    biased, base = alphas.get("biased") or {}, alphas.get("base") or {}
    layer_map = dig(run.results, "teachers", "biased", "layer_map") or dig(run.results, "teachers", "base",
                                                                           "layer_map") or {}
    layers = sorted({int(k) for k in (*biased, *base) if str(k).isdigit()})
    if not layers:
        return None
    rows = []
    for layer in layers:
        b, u = biased.get(str(layer)) or {}, base.get(str(layer)) or {}
        rows.append([str(layer), str(layer_map.get(str(layer), "--")), fnum(b.get("mean")), fnum(b.get("std")),
                     fnum(u.get("mean"))])
    caption = ("Squeezing weights $\\alpha$ on the held-out texts per student layer (and the teacher layer "
               "it is distilled from): mean and sd for the biased teacher, mean for the base teacher.")
    return tight(booktabs_table(["student", "teacher", "mean", "sd", "base"], rows, caption,
                                f"tab:{ALPHA_TABLE}"))


def _headline(run: StageRun, verdict: str) -> list[str]:
    r = run.results
    if verdict == "incomplete":
        return ["distill: incomplete (no comparison of shd_biased with its controls)"]
    return [f"distill: shd_biased share {ratio_plain(_share(r, 'shd_biased_vs_lm_only'))} vs lm_only, "
            f"{ratio_plain(_share(r, 'shd_biased_vs_shd_base'))} vs shd_base ({_seeds(r)} seed(s)); "
            f"transfer: {HEADLINE_VERDICT[verdict]}"]


def build(run: StageRun) -> Section:
    results, verdict = _results(run)
    tables = {stem: t for stem, t in ((TABLE, _table(run)), (ALPHA_TABLE, _alpha_table(run))) if t}
    if ALPHA_TABLE in tables:
        results += f" Table~\\ref{{tab:{ALPHA_TABLE}}} summarises the squeezing weights per layer."
    figures = figures_present(run, [
        Figure("distill_losses", "LM and SHD losses of the three students per optimizer step.", wide=True),
        Figure("distill_alphas", "Distribution of the squeezing weight $\\alpha$ per student layer.",
               wide=True),
        Figure("distill_maps", "One held-out text: a teacher head, the squeezed map, its projection onto "
                               "the student's tokens, and the student's map before and after training.",
               wide=True),
    ])
    if figures:
        results += " See " + ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures) + "."
    return Section(TITLE, _methods(run), results, tables, figures, _headline(run, verdict))
