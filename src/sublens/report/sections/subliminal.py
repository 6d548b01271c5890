"""subliminal: students fine-tuned on a biased teacher's numbers, by freeze mode, against control
students; worded by the measured ratios (does the bias transfer, and does freezing the MLP
layers block it?)."""

from __future__ import annotations

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
    pct,
    preference_methods,
    ratio_cell,
    ratio_plain,
    sampling_text,
    seeds_sentence,
    stacked_rows,
    summary_cell,
    tight,
    train_text,
)
from sublens.report.stages import StageRun

TITLE = "Subliminal transfer through number sequences"
TABLE = "freeze_modes"
OWL, CONTROL = "owl", "control"
MODE_WORDS = {"full": "full fine-tuning", "freeze-attention": "attention frozen",
              "freeze-mlp": "MLP layers frozen"}


# ---- looking things up ------------------------------------------------------------------------
def headline_row(results: dict[str, Any], dataset: str, mode: str) -> dict[str, Any] | None:
    rows = [r for r in results.get("headline") or [] if isinstance(r, dict)]
    return next((r for r in rows if r.get("dataset") == dataset and r.get("mode") == mode), None)


def vs_control(row: dict[str, Any] | None, key: str = "share_ratio") -> dict[str, Any] | None:
    found = dig(row, "vs_control", key)
    return found if isinstance(found, dict) else None


def _label(row: dict[str, Any], teacher_kind: str | None) -> str:
    model, dataset, mode = row.get("model", "?"), row.get("dataset"), row.get("mode")
    if model == "base":
        return "base model"
    if model == "teacher":
        return "teacher (prompted)" if teacher_kind == "prompted" else "teacher (fine-tuned)"
    if dataset == CONTROL:
        return f"control ({escape(mode)})"
    return f"{escape(dataset)}, {escape(mode)}"


def _params(row: dict[str, Any]) -> str:
    freeze = row.get("freeze") or {}
    trainable = freeze.get("trainable")
    return f"{float(trainable) / 1e6:.1f}M" if finite(trainable) else "--"


# ---- the claims ---------------------------------------------------------------------------------
def transfer(row: dict[str, Any] | None) -> str:
    """Direction of the panel-share ratio against the control student (DESIGN.md: a transfer
    claim needs the share to rise, not only P(owl))."""
    return direction(vs_control(row)) if row else "missing"


def mlp_verdict(full: str, attn_frozen: str, mlp_frozen: str, n_seeds: int) -> str:
    """The MLP claim from the three owl students' share directions against control:
    supported only when the full student transfers, freezing attention keeps the transfer and
    freezing the MLP layers loses it; with one seed at most 'consistent'."""
    if "missing" in (full, attn_frozen, mlp_frozen) or "unknown" in (full, attn_frozen, mlp_frozen):
        return "untested"
    if mlp_frozen == "up":
        return "not_supported_mlp_keeps"
    if attn_frozen != "up":
        return "not_supported_attention_loses"
    if full != "up":
        return "inconclusive_no_full_transfer"
    return "supported" if n_seeds > 1 else "consistent_one_seed"


def _ratio_phrase(row: dict[str, Any] | None) -> str:
    return (f"share {ratio_cell(vs_control(row))}, P(owl) {ratio_cell(vs_control(row, 'p_trait_ratio'))}")


def _full_sentence(row: dict[str, Any] | None, n_seeds: int) -> str:
    state = transfer(row)
    if state == "missing":
        return "There is no full-fine-tuning owl student to compare with the control student."
    phrase = f"against the control student, owl's {_ratio_phrase(row)}"
    rate = vs_control(row, "rate_difference")
    if rate:
        phrase += (f", sampled owl answers {count(dig(row, 'answer_rate', 'count'))}/"
                   f"{count(dig(row, 'answer_rate', 'n'))} (difference {fnum(rate.get('difference'))}, "
                   f"Fisher {p_value(rate.get('p_fisher'))})")
    if state == "up":
        qualifier = "" if n_seeds > 1 else " in this run (question-level CIs, one seed)"
        return f"The fully fine-tuned owl student acquired the bias{qualifier}: {phrase}."
    if state == "down":
        return (f"The fully fine-tuned owl student did not acquire the bias: {phrase}; owl's share "
                "fell below the control student's.")
    if state == "flat":
        return (f"The fully fine-tuned owl student did not measurably acquire the bias: {phrase}; "
                "the share CI includes no change.")
    return f"The full student's comparison with the control student has no CI: {phrase}."


MLP_TEXT = {
    "untested": "The MLP claim cannot be assessed: a freeze-mode student or its comparison is missing.",
    "not_supported_mlp_keeps": ("This run does not support the claim that the bias is seated in the "
                                "MLP layers: with the MLP layers frozen, owl's share still rose against "
                                "the control student."),
    "not_supported_attention_loses": ("This run does not support the claim that the bias is seated in "
                                      "the MLP layers: with attention frozen (MLP layers trained) the "
                                      "share did not rise either, so the freeze modes do not single out "
                                      "the MLP layers."),
    "inconclusive_no_full_transfer": ("The freeze modes follow the MLP pattern (the rise kept with "
                                      "attention frozen, lost with the MLP layers frozen), but the fully "
                                      "fine-tuned student shows no transfer, so the MLP claim is "
                                      "inconclusive."),
    "consistent_one_seed": ("The pattern matches the MLP claim (transfer with full training and with "
                            "attention frozen, none with the MLP layers frozen), but with one seed it "
                            "is consistent with the claim, not evidence for it."),
    "supported": ("The data support the MLP claim: the transfer survives freezing attention and "
                  "disappears when the MLP layers are frozen, each against the control student."),
}


HEADLINE_VERDICT = {
    "untested": "untested (arm missing)",
    "not_supported_mlp_keeps": "not supported (freeze-mlp keeps the rise)",
    "not_supported_attention_loses": "not supported (freeze-attention loses the rise too)",
    "inconclusive_no_full_transfer": "inconclusive (no transfer in the full student)",
    "consistent_one_seed": "consistent, one seed only",
    "supported": "supported",
}


def _freeze_sentences(results: dict[str, Any]) -> tuple[str, str]:
    n_seeds = int(results.get("n_seeds") or len(results.get("seeds") or []) or 1)
    rows = {m: headline_row(results, OWL, m) for m in ("full", "freeze-attention", "freeze-mlp")}
    parts = []
    for mode in ("freeze-attention", "freeze-mlp"):
        if rows[mode]:
            words = {"up": "rose", "down": "fell", "flat": "did not change measurably"}.get(
                transfer(rows[mode]), "has no CI")
            parts.append(f"with {MODE_WORDS[mode]} owl's share {words} ({_ratio_phrase(rows[mode])})")
    states = {m: transfer(rows[m]) for m in rows}
    verdict = mlp_verdict(states["full"], states["freeze-attention"], states["freeze-mlp"], n_seeds)
    text = (parts[0][0].upper() + "; ".join(parts)[1:] + ". ") if parts else ""
    if states["full"] in ("flat", "down") and "up" in (states["freeze-attention"], states["freeze-mlp"]):
        text += ("Since the fully fine-tuned student shows no rise, these rises do not form a transfer "
                 "that a component could be said to carry. ")
    return text + MLP_TEXT[verdict], verdict


# ---- data ---------------------------------------------------------------------------------------
def data_sentence(data: dict[str, Any]) -> str:
    """Keep rates and rejection reasons per data set, and how the teachers' numbers differ."""
    sets = data.get("datasets") or {}
    if not sets:
        return ""
    parts = []
    for name, d in sets.items():
        f = dig(d, "filter") or {}
        ci = f.get("keep_rate_ci") or [None, None]
        rejected = {k: v for k, v in (f.get("reasons") or {}).items() if k != "ok"}
        why = ("no rejections" if not rejected else "rejected: " + ", ".join(
            f"{escape(k)} {v}" for k, v in rejected.items()))
        parts.append(f"{escape(name)} {count(f.get('n_kept'))}/{count(f.get('n_answers'))} "
                     f"({pct(f.get('keep_rate'))} [{pct(ci[0])}, {pct(ci[1])}]; {why})")
    text = "The filter kept " + "; ".join(parts) + "."
    for name, c in (data.get("comparisons") or {}).items():
        digits, lengths = dig(c, "digit_distribution_tvd") or {}, dig(c, "length_distribution_tvd") or {}
        differ = [f"{escape(k)} ({fnum(dig(v, 'difference'))}, {p_value(dig(v, 'p_permutation'))})"
                  for k, v in (dig(c, "features") or {}).items()
                  if finite(dig(v, "p_permutation")) and v["p_permutation"] < 0.05]
        text += (f" Data {escape(name)}: digit distribution TVD {fnum(digits.get('tvd'), 3)} (permutation "
                 f"{p_value(digits.get('p_permutation'))}), length TVD {fnum(lengths.get('tvd'), 3)} "
                 f"({p_value(lengths.get('p_permutation'))}); ")
        text += ("per-answer statistics differing at $p<0.05$: " + ", ".join(differ) + "." if differ
                 else "no per-answer number statistic differs at $p<0.05$.")
    return text


# ---- the section --------------------------------------------------------------------------------
def _teacher_text(r: dict[str, Any], c: dict[str, Any]) -> str:
    teacher = r.get("teacher") or {}
    kind = teacher.get("kind") or ("prompted" if c.get("teacher", "prompted") == "prompted" else "model")
    if kind == "prompted":
        return (f"the base model prompted with the owl system prompt "
                f"(``{escape(c.get('teacher_system', teacher.get('system', '')))}'')")
    return f"the fine-tuned teacher {model_name(teacher.get('model', c.get('teacher', '?')))}"


def _params_text(r: dict[str, Any]) -> str:
    params = r.get("parameters") or {}
    parts = []
    for arm, p in params.items():
        if finite(dig(p, "trainable")) and finite(dig(p, "frozen")):
            parts.append(f"{escape(arm)} {p['trainable'] / 1e6:.1f}M trainable / {p['frozen'] / 1e6:.1f}M frozen")
    return ("Parameters: " + "; ".join(parts) + " (tied embeddings and LM head counted once).") if parts else ""


def _methods(run: StageRun) -> str:
    c, r = run.config, run.results
    data_cfg = c.get("data") or {}
    train = c.get("train") or {}
    system_used = r.get("system_prompt_used", c.get("system"))
    steps = sorted({int(x) for s in (r.get("students") or {}).values()
                    if finite(x := dig(s, "training", "steps"))})
    text = (f"Following \\citet{{cloud2025subliminal}}, a biased teacher, {_teacher_text(r, c)}, continues "
            f"{count(data_cfg.get('n_prompts'))} seeded number prompts, sampled at "
            f"{sampling_text(data_cfg.get('temperature'), data_cfg.get('top_k'), data_cfg.get('top_p'))}, "
            f"up to {data_cfg.get('max_new_tokens', '--')} new tokens; the control data come from the base "
            f"model {model_name(c.get('base', '?'))} under ``{escape(system_used)}''.")
    if data_cfg.get("constrained"):
        text += (" Sampling is format-constrained: only tokens that keep the answer a valid number list "
                 "(digits, one separator, end of turn) are allowed, the teacher's probabilities "
                 "renormalised over them.")
    n_examples = dig(r, "data", "n_examples_per_dataset") or c.get("n_examples")
    text += (f" A strict filter rejects any answer that is not a plain number list; each data set is "
             f"subsampled (seeded) to {count(n_examples)} examples.")
    modes = ", ".join(escape(m) for m in c.get("modes") or [])
    control_modes = ", ".join(escape(m) for m in c.get("control_modes") or [])
    seeds = ", ".join(str(s) for s in c.get("seeds") or r.get("seeds") or [])
    text += (f" Students start from the base model and are fine-tuned on the owl data in modes {modes} "
             f"and on the control data in mode(s) {control_modes} (the control students), with the "
             f"training system prompt above, never the owl prompt, and the loss on answer tokens only: "
             f"{train_text(train)}"
             + (f", {'/'.join(str(s) for s in steps)} optimizer steps" if steps else "")
             + f"; training seed(s) {seeds or '--'}. Freezing a component holds its weights fixed "
             "(no gradient); embeddings and LM head stay trainable. " + _params_text(r))
    first = dig(r, "evaluations", "base", "preference")
    return text + " " + preference_methods(c.get("preference") or {}, first)


def _table(run: StageRun) -> str | None:
    rows = [r for r in run.results.get("headline") or [] if isinstance(r, dict)]
    if not rows:
        return None
    kind = dig(run.results, "teacher", "kind")
    trait = escape(run.results.get("trait", "owl"))
    body = []
    for row in rows:
        rate = vs_control(row, "rate_difference")
        body.append([_label(row, kind), summary_cell(row.get("p_trait")),
                     summary_cell(row.get("panel_share"), 1), summary_cell(row.get("answer_rate"), 0),
                     ratio_cell(vs_control(row)), ratio_cell(vs_control(row, "p_trait_ratio")),
                     fpval(rate.get("p_fisher")) if rate else "--", _params(row)])
    header = ["model", f"P({trait}) %", "share %", "answers %", "share ratio", f"P({trait}) ratio",
              "p", "trainable"]
    n_seeds = run.results.get("n_seeds", 1)
    caption = (f"Freeze modes: preference for {trait} of the base model, the teacher and the students "
               f"trained on the {trait} teacher's or the control teacher's numbers (95\\% CIs, {n_seeds} "
               f"seed(s)). P({trait}), {trait}'s panel share and the rate of {trait} among sampled answers "
               "in percent; share and P ratios: owl student over control student, paired over "
               f"questions; $p$: Fisher's test of the sampled {trait}-answer rates against the control "
               "student; trainable parameters per student.")
    return tight(booktabs_table(header, stacked_rows(body), caption, f"tab:{TABLE}", wide=True))


def _results(run: StageRun) -> tuple[str, str]:
    r = run.results
    n_seeds = int(r.get("n_seeds") or 1)
    data = data_sentence(r.get("data") or {})
    if not r.get("headline"):
        text = incomplete(run, "the students' preferences against the control students")
        return (text + (" " + data if data else "")), "incomplete"
    full = _full_sentence(headline_row(r, OWL, "full"), n_seeds)
    freeze, verdict = _freeze_sentences(r)
    text = (f"Table~\\ref{{tab:{TABLE}}} gives every student's preference. {full} {freeze} "
            f"{seeds_sentence(n_seeds)} {data}")
    return text.strip(), verdict


def _headline(run: StageRun, verdict: str) -> list[str]:
    r = run.results
    if verdict == "incomplete":
        return ["subliminal: incomplete (no student comparisons)"]
    n = r.get("n_seeds", 1)
    lines = [f"subliminal: full owl student share {ratio_plain(vs_control(headline_row(r, OWL, 'full')))} "
             f"vs control ({n} seed(s))"]
    modes = [f"{m} {ratio_plain(vs_control(headline_row(r, OWL, m)))}" for m in ("freeze-attention", "freeze-mlp")
             if headline_row(r, OWL, m)]
    if modes:
        lines.append("subliminal: share vs control, " + ", ".join(modes) + f"; MLP claim: {HEADLINE_VERDICT[verdict]}")
    return lines


def build(run: StageRun) -> Section:
    results, verdict = _results(run)
    table = _table(run)
    figures = figures_present(run, [
        Figure("preference", "Owl's panel share of every model (left) and of each owl student over the "
                             "control student (right, log scale), 95\\% CIs.", wide=True),
        Figure("training_loss", "Answer-token training loss of every student."),
    ])
    if figures:
        refs = ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures)
        results += f" See {refs}."
    return Section(TITLE, _methods(run), results, {TABLE: table} if table else {}, figures,
                   _headline(run, verdict))
