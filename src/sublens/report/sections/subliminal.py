"""subliminal: students fine-tuned on a biased teacher's numbers, by freeze mode, against control
students; worded by the measured ratios (does the bias transfer, and does freezing the MLP
layers block it?)."""

from __future__ import annotations

from typing import Any

from sublens.claims import Decision, subliminal_decisions
from sublens.report.latex import booktabs_table, counted, escape, noun_for
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.teacher import (
    count,
    dig,
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
from sublens.report.verdicts import claim_settings, decision_latex, verdict_label
from sublens.trainable import describe_trainable

TITLE = "Subliminal transfer through number sequences"
TABLE = "freeze_modes"
PROMPT_TABLE = "evaluation_prompts"
OWL, CONTROL = "owl", "control"


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


# ---- the claims (decided in sublens.claims) ---------------------------------------------------
def decisions(run: StageRun) -> dict[str, Decision]:
    """The subliminal claims with seeds as the unit, each owl arm against the control student
    of its own freeze mode (older runs without matched controls: those arms count as not
    measured)."""
    r, c = run.results, run.config
    control_modes = r.get("control_modes") or c.get("control_modes") or []
    return subliminal_decisions(r, control_modes, claim_settings(c))


def _ratio_phrase(row: dict[str, Any] | None) -> str:
    return (f"share {ratio_cell(vs_control(row))}, P(owl) {ratio_cell(vs_control(row, 'p_trait_ratio'))}")


def _within_run(row: dict[str, Any] | None, mode: str, n_seeds: int, matched: bool) -> str:
    """What one arm measured, as description (question-level CIs with one seed)."""
    if row is None or not vs_control(row):
        return ""
    scope = ("Student-$t$ CIs across seeds" if n_seeds > 1
             else "question-level CIs of this one run, which do not cover training variation")
    control = "its matched control student" if matched else "the control student of another mode"
    return f"With {escape(describe_trainable(mode))}, owl student against {control}: owl's {_ratio_phrase(row)} ({scope})."


def _mismatch_note(unmatched: list[str], control_modes: list[str]) -> str:
    if not unmatched:
        return ""
    return (f"This run trained control students only in {noun_for(control_modes, 'mode')} "
            f"{', '.join(escape(m) for m in control_modes)}, so the owl {noun_for(unmatched, 'student')} with "
            f"{', '.join(escape(describe_trainable(m)) for m in unmatched)} {'has' if len(unmatched) == 1 else 'have'} no "
            "matched control; comparing them with a differently trained control mixes the effect of "
            "freezing with the effect of the data, and no claim rests on that comparison.")


def _claims_text(modes: list[str], decided: dict[str, Decision]) -> str:
    text = decision_latex(decided["transfer.full"])
    if any(m != "full" for m in modes):
        text += (" Localisation by freezing (a claim separate from localisation by transplant and by "
                 "attribution): " + decision_latex(decided["mlp"]))
    return text


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
    return text + divergence_sentence(data.get("divergence") or {})


def divergence_sentence(divergence: dict[str, Any]) -> str:
    """How many training answer tokens are divergence tokens, per data set."""
    parts = [f"{escape(name)} data {count(d.get('n_divergent'))} of {count(d.get('n_tokens'))} answer tokens "
             f"({pct(d.get('rate'))}), in {count(d.get('examples_with_any'))} of "
             f"{counted(int(d.get('n_examples') or 0), 'answer')}"
             for name, d in divergence.items() if isinstance(d, dict)]
    if not parts:
        return ""
    return (" Divergence tokens \citep{schrodi2026understanding}, the answer tokens at which the owl and the "
            "control teacher, reading the same prefix, would choose different most probable tokens: "
            + "; ".join(parts) + ".")


# ---- the section --------------------------------------------------------------------------------
def _teacher_text(r: dict[str, Any], c: dict[str, Any]) -> str:
    teacher = r.get("teacher") or {}
    kind = teacher.get("kind") or ("prompted" if c.get("teacher", "prompted") == "prompted" else "model")
    if kind == "prompted":
        return (f"the base model prompted with the owl system prompt "
                f"(``{escape(c.get('teacher_system', teacher.get('system', '')))}'')")
    return f"the fine-tuned teacher {model_name(teacher.get('model', c.get('teacher', '?')))}"


def _control_source(c: dict[str, Any], system_used: Any) -> str:
    """Where the control numbers come from, and whether that source is matched to the teacher."""
    spec = c.get("control_teacher", "base")
    if spec in (None, "base"):
        caveat = (" Because the owl teacher is fine-tuned and the control source is not, the two data sets "
                  "may differ by the fine-tuning as well as by the trait." if c.get("teacher", "prompted") != "prompted"
                  else "")
        return (f"the control data come from the base model {model_name(c.get('base', '?'))} under "
                f"``{escape(system_used)}''.{caveat}")
    return (f"the control data come from a control teacher, {model_name(spec)}, made by the same context "
            "distillation from a neutral system prompt shaped like the owl prompt, so the two data sets "
            "differ only by the trait.")


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
            f"up to {data_cfg.get('max_new_tokens', '--')} new tokens; {_control_source(c, system_used)}")
    if data_cfg.get("constrained"):
        text += (" Sampling is format-constrained: only tokens that keep the answer a valid number list "
                 "(digits, one separator, end of turn) are allowed, the teacher's probabilities "
                 "renormalised over them.")
    n_examples = dig(r, "data", "n_examples_per_dataset") or c.get("n_examples")
    text += (f" A strict filter rejects any answer that is not a plain number list; each data set is "
             f"subsampled (seeded) to {count(n_examples)} examples.")
    modes = ", ".join(escape(m) for m in c.get("modes") or [])
    control_list = list(c.get("control_modes") or [])
    control_modes = ", ".join(escape(m) for m in control_list)
    seed_list = list(c.get("seeds") or r.get("seeds") or [])
    seeds = ", ".join(str(s) for s in seed_list)
    matched = all(m in (c.get("control_modes") or []) for m in c.get("modes") or [])
    embeddings = "frozen" if train.get("embeddings") == "frozen" else "trained"
    text += (f" Students start from the base model and are fine-tuned on the owl data in "
             f"{noun_for(list(c.get('modes') or []), 'mode')} {modes} "
             f"and on the control data in {noun_for(control_list, 'mode')} {control_modes} (the control students"
             + ("; each owl student is compared with the control student of the same freeze mode and seed"
                if matched else "") +
             "), with the training system prompt above, never the owl prompt, and the loss on answer "
             f"tokens only: {train_text(train)}"
             + (f", {'/'.join(str(s) for s in steps)} optimizer steps" if steps else "")
             + f"; training {noun_for(seed_list, 'seed')} {seeds or '--'}"
             + ("; each seed re-samples the number prompts and the teachers' data, so intervals across "
                "seeds include data-sampling variance" if c.get("data_per_seed") and len(c.get("seeds") or []) > 1
                else "")
             + ". Freezing a component holds its weights fixed (no gradient); the token embeddings and "
             f"the LM head (one tied tensor) are {embeddings} in every mode. " + _params_text(r))
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
               f"trained on the {trait} teacher's or the control teacher's numbers (95\\% CIs, "
               f"{counted(n_seeds, 'seed')}). P({trait}), {trait}'s panel share and the rate of {trait} among sampled answers "
               "in percent; share and P ratios: owl student over control student, paired over "
               f"questions; $p$: Fisher's exact test \\citep{{fisher1922interpretation}} of the sampled {trait}-answer rates against the control "
               "student; trainable parameters per student.")
    return tight(booktabs_table(header, stacked_rows(body), caption, f"tab:{TABLE}", wide=True))


def _prompt_table(run: StageRun) -> str | None:
    """Each owl arm over its matched control under every evaluation system prompt."""
    prompts = run.results.get("evaluation_prompts") or {}
    measured = [m for e in prompts.values() for m in (e.get("arms") or {})]
    modes = list(dict.fromkeys(measured))  # in the order the run lists its arms
    if len(prompts) < 2 or not modes:
        return None
    body = []
    for name, entry in prompts.items():
        system = entry.get("system")
        shown = "(no system turn)" if system is None else "(empty)" if system == "" else system
        label = "template default" if name == "default" else name
        body.append([f"{escape(label)}: ``{escape(shown)}''"]
                    + [ratio_cell(((entry.get("arms") or {}).get(m) or {}).get("share_ratio")) for m in modes])
    header = ["evaluation system prompt"] + [escape(describe_trainable(m)) for m in modes]
    caption = (f"Evaluation prompt: owl's panel share under each owl student over its matched control student "
               f"(95\\% CIs, {counted(int(run.results.get('n_seeds') or 1), 'seed')}), with the students measured "
               "under each system prompt; the first row is the measurement of Table~\\ref{tab:" + TABLE + "}.")
    return tight(booktabs_table(header, body, caption, f"tab:{PROMPT_TABLE}", align="p{0.42\\linewidth}"
                                + "r" * len(modes), wide=len(modes) > 2))


def _prompt_sentence(run: StageRun) -> str:
    if _prompt_table(run) is None:
        return ""
    return (f"Table~\\ref{{tab:{PROMPT_TABLE}}} repeats the comparison with the students measured under other "
            "system prompts, since the transfer has been reported to depend on the prompt at evaluation.")


def _results(run: StageRun) -> tuple[str, dict[str, Decision] | None]:
    r, c = run.results, run.config
    n_seeds = int(r.get("n_seeds") or 1)
    data = data_sentence(r.get("data") or {})
    if not r.get("headline"):
        text = incomplete(run, "the students' preferences against the control students")
        return (text + (" " + data if data else "")), None
    decided = decisions(run)
    modes = list(c.get("modes") or r.get("modes") or [])
    control_modes = list(r.get("control_modes") or c.get("control_modes") or [])
    unmatched = [m for m in modes if m not in control_modes]
    described = " ".join(x for x in (_within_run(headline_row(r, OWL, m), m, n_seeds, m not in unmatched)
                                      for m in modes) if x)
    text = (f"Table~\\ref{{tab:{TABLE}}} gives every student's preference. {described} "
            f"{_mismatch_note(unmatched, control_modes)} {_claims_text(modes, decided)} "
            f"{seeds_sentence(n_seeds)} {_prompt_sentence(run)} {data}")
    return " ".join(text.split()), decided


def _headline(run: StageRun, decided: dict[str, Decision] | None) -> list[str]:
    r = run.results
    if decided is None:
        return ["subliminal: incomplete (no student comparisons)"]
    n = int(r.get("n_seeds") or 1)
    full = vs_control(headline_row(r, OWL, "full"))
    return [f"subliminal: full owl student share {ratio_plain(full)} vs matched control "
            f"({n} seed{'s' if n != 1 else ''}); transfer {verdict_label(decided['transfer.full'])}",
            f"subliminal: MLP claim by freezing {verdict_label(decided['mlp'])}"]


def build(run: StageRun) -> Section:
    results, decided = _results(run)
    tables = {name: t for name, t in ((TABLE, _table(run)), (PROMPT_TABLE, _prompt_table(run))) if t}
    figures = figures_present(run, [
        Figure("preference", "Owl's panel share of every model (left) and of each owl student over the "
                             "control student (right, log scale), 95\\% CIs.", wide=True),
        Figure("training_loss", "Answer-token training loss of every student."),
    ])
    if figures:
        refs = ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures)
        results += f" See {refs}."
    return Section(TITLE, _methods(run), results, tables, figures,
                   _headline(run, decided))
