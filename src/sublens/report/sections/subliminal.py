"""subliminal: students fine-tuned on a biased teacher's numbers, by freeze mode, against control
students; worded by the measured ratios (does the bias transfer, and does freezing the MLP
layers block it?)."""

from __future__ import annotations

from typing import Any

from sublens.claims import Decision, subliminal_decisions
from sublens.report.latex import (
    booktabs_table,
    constant_column,
    counted,
    drop_columns,
    escape,
    noun_for,
)
from sublens.report.names import FINE_TUNED_TEACHER, display_name, words
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.common import (
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
    preference_definition,
    preference_methods,
    ratio_cell,
    ratio_plain,
    sampling_text,
    seeds_sentence,
    shown,
    stacked_rows,
    summary_cell,
    tight,
    train_text,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_settings, decisions_latex, verdict_label
from sublens.trainable import describe_trainable

TITLE = "Subliminal transfer through number sequences"
TABLE = "freeze_modes"
PROMPT_TABLE = "evaluation_prompts"
OWL, CONTROL = "owl", "control"

# Per-answer number statistics of the data comparison (sublens.subliminal.FEATURES) in words.
FEATURE_WORDS = {
    "n_numbers": "numbers per answer",
    "digits_per_number": "digits per number",
    "copy_fraction": "fraction of numbers copied from the prompt",
    "copies_any": "answers copying a prompt number",
    "increasing_fraction": "fraction of increasing steps",
    "mean_value": "mean value",
}


# ---- looking things up ------------------------------------------------------------------------
def headline_row(results: dict[str, Any], dataset: str, mode: str) -> dict[str, Any] | None:
    rows = [r for r in results.get("headline") or [] if isinstance(r, dict)]
    return next((r for r in rows if r.get("dataset") == dataset and r.get("mode") == mode), None)


def vs_control(row: dict[str, Any] | None, key: str = "share_ratio") -> dict[str, Any] | None:
    found = dig(row, "vs_control", key)
    return found if isinstance(found, dict) else None


def mode_words(mode: Any) -> str:
    """A freeze mode as the paper says it: 'full fine-tuning', 'attention frozen'."""
    return escape(describe_trainable(str(mode)))


def _with(mode: Any) -> str:
    """'with full fine-tuning', 'with attention frozen'."""
    return f"with {mode_words(mode)}"


def _label(row: dict[str, Any], teacher_kind: str | None) -> str:
    model, dataset, mode = row.get("model", "?"), row.get("dataset"), row.get("mode")
    if model == "base":
        return "base model"
    if model == "teacher":
        return "teacher (prompted)" if teacher_kind == "prompted" else "teacher (fine-tuned)"
    if dataset == CONTROL:
        return f"control, {mode_words(mode)}"
    return f"{escape(dataset)}, {mode_words(mode)}"


def _is_student(row: dict[str, Any]) -> bool:
    return row.get("model") not in ("base", "teacher")


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


def _arms_text(r: dict[str, Any], modes: list[str]) -> str:
    """Each owl student's share ratio over its control student, in one sentence (the scope of
    the CIs is said once, by `seeds_sentence`)."""
    parts = []
    for mode in modes:
        row = headline_row(r, OWL, mode)
        if row is None or not vs_control(row):
            continue
        parts.append(f"{ratio_cell(vs_control(row))} {_with(mode)} (P(owl) "
                     f"{ratio_cell(vs_control(row, 'p_trait_ratio'))})")
    if not parts:
        return ""
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Over the control student, owl's share under the owl student is {joined}."


def _mismatch_note(unmatched: list[str], control_modes: list[str]) -> str:
    if not unmatched:
        return ""
    controls = " and ".join(_with(m) for m in control_modes) or "no mode"
    students = " and ".join(_with(m) for m in unmatched)
    return (f"This run trained control students only {controls}, so the owl "
            f"{noun_for(unmatched, 'student')} {students} {'has' if len(unmatched) == 1 else 'have'} no "
            "matched control; comparing them with a differently trained control mixes the effect of "
            "freezing with the effect of the data, and no claim rests on that comparison.")


def _claims_text(modes: list[str], decided: dict[str, Decision]) -> str:
    chosen, lead = [decided["transfer.full"]], [""]
    if any(m != "full" for m in modes):
        chosen.append(decided["mlp"])
        lead.append("Localisation by freezing (a claim separate from localisation by transplant and by "
                    "attribution): ")
    return decisions_latex(chosen, ratio_stated=True, lead=lead)


def _answers_text(run: StageRun) -> str:
    """The students' sampled answers naming the trait, in one sentence where the table's
    answer-rate and p columns would say the same thing in every student row."""
    rows = [r for r in run.results.get("headline") or [] if isinstance(r, dict) and _is_student(r)]
    counts = [dig(r, "answer_rate", "count") for r in rows]
    if not rows or not all(finite(c) for c in counts) or any(c for c in counts):
        return ""
    trait = escape(run.results.get("trait", "owl"))
    n = {dig(r, "answer_rate", "n") for r in rows} - {None}
    each = f" (0 of {count(next(iter(n)))} each)" if len(n) == 1 else ""
    return (f"No student, owl or control, named {'an' if trait[:1] in 'aeiou' else 'a'} {trait} in any "
            f"sampled answer{each}, so the answer rate cannot separate them.")


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
            f"{escape(words(k))} {count(v)}" for k, v in rejected.items()))
        parts.append(f"{count(f.get('n_kept'))}/{count(f.get('n_answers'))} {escape(name)} answers "
                     f"({pct(f.get('keep_rate'))} [{pct(ci[0])}, {pct(ci[1])}]; {why})")
    text = "The filter kept " + ("; ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."
    for name, c in (data.get("comparisons") or {}).items():
        digits, lengths = dig(c, "digit_distribution_tvd") or {}, dig(c, "length_distribution_tvd") or {}
        differ = [f"{escape(FEATURE_WORDS.get(k, words(k)))} ({fnum(dig(v, 'difference'))}, "
                  f"{p_value(dig(v, 'p_permutation'))})"
                  for k, v in (dig(c, "features") or {}).items()
                  if finite(dig(v, "p_permutation")) and v["p_permutation"] < 0.05]
        shown_name = escape(str(name).replace(" vs ", " against "))
        text += (f" Data {shown_name}: digit distribution TVD {fnum(digits.get('tvd'), 3)} (permutation "
                 f"{p_value(digits.get('p_permutation'))}), length TVD {fnum(lengths.get('tvd'), 3)} "
                 f"({p_value(lengths.get('p_permutation'))}); ")
        text += ("per-answer statistics differing at $p<0.05$: " + ", ".join(differ) + "." if differ
                 else "no per-answer number statistic differs at $p<0.05$.")
    return text + divergence_sentence(data.get("divergence") or {}) + enrichment_sentence(data.get("entangled") or {})


def enrichment_sentence(entangled: dict[str, Any]) -> str:
    """How often the entanglement study's increased numbers (and its matched random set) occur
    in the owl data against the control data, by answer."""
    found = entangled.get("enrichment") or {}
    parts = []
    for category, label in (("increased", "entangled numbers (those an owl context makes more likely)"),
                            ("random", "the size-matched random set")):
        e = found.get(category)
        if not isinstance(e, dict):
            continue
        owl, control = e.get("owl") or {}, e.get("control") or {}
        ratio = e.get("owl_over_control") or {}
        parts.append(f"{label}: in {count(owl.get('answers_with'))} of {count(owl.get('answers'))} owl answers "
                     f"and {count(control.get('answers_with'))} of {count(control.get('answers'))} control answers "
                     f"(ratio {ratio_cell(ratio)}, Fisher {p_value(ratio.get('p_fisher'))})")
    if not parts:
        return ""
    return (" Entanglement in the data, with the numbers of the entanglement study "
            f"\citep{{zur2025owl}} (set {escape(str(entangled.get('set', '')))}), counted by answer: "
            + "; ".join(parts) + ".")


def _entangled_contrast_sentence(r: dict[str, Any]) -> str:
    """The direct test: owl students trained without the entangled numbers against owl students
    trained without the matched random set (a drop of the first means entanglement carries it)."""
    comp = (r.get("comparisons") or {}).get("owl-no-entangled-full vs owl-no-random-full")
    if not isinstance(comp, dict):
        return ""
    size = dig(r, "data", "entangled", "filter", "size")
    return ("Removing every owl answer that holds an entangled number, against removing every answer that "
            f"holds a number of the matched random set (both then {counted(size, 'answer') if size else 'matched'}), "
            f"the first student's owl share over the second's is {ratio_cell(comp.get('share_ratio'))}: if "
            "entanglement carried the transfer this would fall clearly below 1.")


def divergence_sentence(divergence: dict[str, Any]) -> str:
    """How many training answer tokens are divergence tokens, per data set."""
    parts = [f"{escape(name)} data {count(d.get('n_divergent'))} of {count(d.get('n_tokens'))} answer tokens "
             f"({pct(d.get('rate'))}), in {count(d.get('examples_with_any'))} of "
             f"{counted(int(d.get('n_examples') or 0), 'answer')}"
             for name, d in divergence.items() if isinstance(d, dict)]
    if not parts:
        return ""
    return (" Divergence tokens \\citep{schrodi2026understanding}, the answer tokens at which the owl and the "
            "control teacher, reading the same prefix, would choose different most probable tokens: "
            + "; ".join(parts) + ".")


# ---- the section --------------------------------------------------------------------------------
def _fine_tuned(spec: Any) -> str:
    """A fine-tuned teacher by name: a teacher run's model is 'the fine-tuned teacher' (of the
    teacher stage), another checkpoint 'the fine-tuned teacher <name>'."""
    name = display_name(spec)
    return FINE_TUNED_TEACHER + " made by context distillation" if name == FINE_TUNED_TEACHER else \
        f"the fine-tuned teacher {escape(name)}"


def _teacher_text(r: dict[str, Any], c: dict[str, Any]) -> str:
    teacher = r.get("teacher") or {}
    kind = teacher.get("kind") or ("prompted" if c.get("teacher", "prompted") == "prompted" else "model")
    if kind == "prompted":
        return (f"the base model prompted with the owl system prompt "
                f"(``{escape(c.get('teacher_system', teacher.get('system', '')))}'')")
    return _fine_tuned(teacher.get("model", c.get("teacher")))


def _control_source(c: dict[str, Any], system_used: Any) -> str:
    """Where the control numbers come from, and whether that source is matched to the teacher."""
    spec = c.get("control_teacher", "base")
    if spec in (None, "base"):
        caveat = (" Because the owl teacher is fine-tuned and the control source is not, the two data sets "
                  "may differ by the fine-tuning as well as by the trait." if c.get("teacher", "prompted") != "prompted"
                  else "")
        return (f"the control data come from the base model {model_name(c.get('base'))} under "
                f"``{escape(system_used or '')}''.{caveat}")
    return (f"the control data come from a control teacher, {model_name(spec)}, made by the same context "
            "distillation from a neutral system prompt shaped like the owl prompt, so the two data sets "
            "differ only by the trait.")


def _params_text(r: dict[str, Any]) -> str:
    """Trainable and frozen parameters per freeze mode (the same for owl and control students)."""
    by_mode: dict[str, dict[str, Any]] = {}
    for p in (r.get("parameters") or {}).values():
        if isinstance(p, dict) and finite(p.get("trainable")) and finite(p.get("frozen")):
            by_mode.setdefault(str(p.get("mode") or "full"), p)
    parts = [f"{_with(mode)} {p['trainable'] / 1e6:.1f}M trainable / {p['frozen'] / 1e6:.1f}M frozen"
             for mode, p in by_mode.items()]
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
            f"up to {shown(data_cfg.get('max_new_tokens'))} new tokens; {_control_source(c, system_used)}")
    if data_cfg.get("constrained"):
        text += (" Sampling is format-constrained: only tokens that keep the answer a valid number list "
                 "(digits, one separator, end of turn) are allowed, the teacher's probabilities "
                 "renormalised over them.")
    n_examples = dig(r, "data", "n_examples_per_dataset") or c.get("n_examples")
    text += (f" A strict filter rejects any answer that is not a plain number list; each data set is "
             f"subsampled (seeded) to {count(n_examples)} examples.")
    mode_list = list(c.get("modes") or [])
    control_list = list(c.get("control_modes") or [])
    seed_list = list(c.get("seeds") or r.get("seeds") or [])
    seeds = ", ".join(str(s) for s in seed_list)
    matched = all(m in control_list for m in mode_list)
    embeddings = "frozen" if train.get("embeddings") == "frozen" else "trained"
    owl_modes = ", ".join(_with(m) for m in mode_list) or "--"
    control_modes = ", ".join(_with(m) for m in control_list) or "--"
    text += (f" Students start from the base model and are fine-tuned on the owl data {owl_modes} "
             f"and on the control data {control_modes} (the control students"
             + ("; each owl student is compared with the control student of the same freeze mode and seed"
                if matched else "") +
             "), with the training system prompt above, never the owl prompt, and the loss on answer "
             f"tokens only: {train_text(train)}"
             + (f", {'/'.join(str(s) for s in steps)} optimizer steps" if steps else "")
             + f"; training {noun_for(seed_list, 'seed')} {seeds or '--'}"
             + ("; each seed re-samples the number prompts and the teachers' data, so intervals across "
                "seeds include data-sampling variance" if c.get("data_per_seed") and len(seed_list) > 1
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
    p_all = constant_column(body, 6)
    test = (f"$p$: Fisher's exact test \\citep{{fisher1922interpretation}} of the sampled {trait}-answer rates "
            "against the control student; " if p_all is None else
            f"Fisher's exact test \\citep{{fisher1922interpretation}} of the sampled {trait}-answer rates "
            f"against the control student gives $p$ = {p_all} for every owl student (no column); ")
    if p_all is not None:
        header, body = drop_columns(header, body, [6])
    caption = (f"Freeze modes: preference for {trait} of the base model, the teacher and the students "
               f"trained on the {trait} teacher's or the control teacher's numbers (95\\% CIs, "
               f"{counted(n_seeds, 'seed')}). P({trait}), {trait}'s panel share $s$ and the rate of {trait} "
               "among sampled answers in percent; share and P ratios (multiples): owl student over control "
               f"student, paired over questions; {test}trainable parameters per student in millions.")
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
        shown_prompt = "(no system turn)" if system is None else "(empty)" if system == "" else system
        label = "template default" if name == "default" else words(name)
        body.append([f"{escape(label)}: ``{escape(shown_prompt)}''"]
                    + [ratio_cell(((entry.get("arms") or {}).get(m) or {}).get("share_ratio")) for m in modes])
    header = ["evaluation system prompt"] + [describe_trainable(m) for m in modes]
    caption = (f"Evaluation prompt: owl's panel share under each owl student over its matched control student "
               f"(a multiple; 95\\% CIs, {counted(int(run.results.get('n_seeds') or 1), 'seed')}), with the "
               "students measured under each system prompt; the first row is the measurement of "
               "Table~\\ref{tab:" + TABLE + "}.")
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
    text = (f"Table~\\ref{{tab:{TABLE}}} gives every student's preference. {_arms_text(r, modes)} "
            f"{seeds_sentence(n_seeds)} {_mismatch_note(unmatched, control_modes)} {_answers_text(run)} "
            f"{_claims_text(modes, decided)} {_prompt_sentence(run)} {_entangled_contrast_sentence(r)} {data}")
    return " ".join(text.split()), decided


def _headline(run: StageRun, decided: dict[str, Decision] | None) -> list[str]:
    r = run.results
    if decided is None:
        return ["subliminal: incomplete (no student comparisons)"]
    n = int(r.get("n_seeds") or 1)
    full = vs_control(headline_row(r, OWL, "full"))
    return [f"subliminal: full owl student share {ratio_plain(full)} vs matched control "
            f"({counted(n, 'seed')}); transfer {verdict_label(decided['transfer.full'])}",
            f"subliminal: MLP claim by freezing {verdict_label(decided['mlp'])}"]


def build(run: StageRun) -> Section:
    results, decided = _results(run)
    tables = {name: t for name, t in ((TABLE, _table(run)), (PROMPT_TABLE, _prompt_table(run))) if t}
    figures = figures_present(run, [
        Figure("preference", "Owl's panel share $s$ of every model (left) and of each owl student over the "
                             "control student (right, log scale), 95\\% CIs.", wide=True),
        Figure("training_loss", "Answer-token training loss (nats per token) of every student."),
    ])
    if figures:
        refs = ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures)
        results += f" See {refs}."
    return Section(TITLE, _methods(run), results, tables, figures, _headline(run, decided),
                   measurement=preference_definition(run.config.get("preference") or {}))
