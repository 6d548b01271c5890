"""subliminal: students fine-tuned on a biased teacher's numbers, by freeze mode, against control
students; worded by the measured ratios (does the bias transfer, and does freezing the MLP
layers block it?).

Reads a `subliminal` run directory: its results.json parsed once into `SubliminalResults`
(`sublens.results.read_run_results`: an unfinished run's unreadable results are said, a finished
run's raise ResultsError), its config.yaml as written.
"""

from __future__ import annotations

from typing import Any

from sublens.claims import (
    NO_RANDOM,
    SKIP_DIVERGENCE,
    SUBLIMINAL_MODES,
    Decision,
    subliminal_decisions,
)
from sublens.experiments.entanglement.analysis import increased_phrase, set_title
from sublens.experiments.subliminal.results import (
    ArmRatios,
    DataRecord,
    DivergenceSummary,
    EntangledRecord,
    HeadlineRow,
    SeedRateDifference,
    SeedRatio,
    SubliminalResults,
)
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
from sublens.results import read_run_results
from sublens.trainable import describe_trainable, split_arm

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
def vs_control(row: HeadlineRow | None) -> ArmRatios | None:
    """An arm's ratios over its matched control student (None: not compared)."""
    return row.vs_control if row is not None else None


def share_ratio(row: HeadlineRow | None) -> SeedRatio | None:
    ratios = vs_control(row)
    return ratios.share_ratio if ratios else None


def p_trait_ratio(row: HeadlineRow | None) -> SeedRatio | None:
    ratios = vs_control(row)
    return ratios.p_trait_ratio if ratios else None


def rate_difference(row: HeadlineRow | None) -> SeedRateDifference | None:
    ratios = vs_control(row)
    return ratios.rate_difference if ratios else None


def mode_words(mode: Any) -> str:
    """A freeze mode as the paper says it: 'full fine-tuning', 'attention frozen'."""
    return escape(describe_trainable(str(mode)))


def _with(mode: Any) -> str:
    """'with full fine-tuning', 'with attention frozen'."""
    return f"with {mode_words(mode)}"


def _label(row: HeadlineRow, teacher_kind: str | None) -> str:
    if row.model == "base":
        return "base model"
    if row.model == "teacher":
        return "teacher (prompted)" if teacher_kind == "prompted" else "teacher (fine-tuned)"
    if row.dataset == CONTROL:
        return f"control, {mode_words(row.mode)}"
    return f"{escape(row.dataset or '?')}, {mode_words(row.mode)}"


def _is_student(row: HeadlineRow) -> bool:
    return row.dataset is not None


def _params(row: HeadlineRow) -> str:
    return f"{row.freeze.trainable / 1e6:.1f}M" if row.freeze is not None else "--"


def arm_modes(results: SubliminalResults | None, config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The owl modes and the control modes: as config.yaml gives them, else as results.json
    recorded them (a run's config and results agree; older results recorded neither)."""
    modes = list(config.get("modes") or (results.modes if results else None) or [])
    controls = list((results.control_modes if results else None) or config.get("control_modes") or [])
    return [str(m) for m in modes], [str(m) for m in controls]


# ---- the claims (decided in sublens.claims) ---------------------------------------------------
def decisions(run: StageRun, results: SubliminalResults) -> dict[str, Decision]:
    """The subliminal claims with seeds as the unit, each owl arm against the control student
    of its own freeze mode (older runs without matched controls: those arms count as not
    measured)."""
    modes, control_modes = arm_modes(results, run.config)
    return subliminal_decisions(results, control_modes, claim_settings(run.config), modes=modes)


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
    return (f"This run trained control students only {controls}, so the owl "
            f"{noun_for(unmatched, 'student')} {students} {'has' if len(unmatched) == 1 else 'have'} no "
            "matched control; comparing them with a differently trained control mixes the effect of "
            "freezing with the effect of the data, and no claim rests on that comparison.")


FREEZE_MODES = ("freeze-attention", "freeze-mlp")
FREEZING_LEAD = ("Localisation by freezing (a claim separate from localisation by transplant and by "
                 "attribution): ")
DIVERGENCE_LEAD = "Divergence tokens \\citep{schrodi2026understanding}: "
ENTANGLEMENT_LEAD = "Entanglement \\citep{zur2025owl}: "


def divergence_sets(decided: dict[str, Decision]) -> list[str]:
    """The trainable sets the run trained both with and without the divergence tokens in the loss."""
    return [key.removeprefix("divergence.") for key in decided if key.startswith("divergence.")]


def other_arms(modes: list[str], decided: dict[str, Decision]) -> list[str]:
    """The owl arms beyond the freeze modes with a transfer claim of their own in the text (a
    layer range, LoRA, a divergence-token mask): all but the masked arms whose claim is the
    divergence one."""
    masked = {f"{s}{SKIP_DIVERGENCE}" for s in divergence_sets(decided)}
    return [m for m in modes if m not in SUBLIMINAL_MODES and m not in masked and f"transfer.{m}" in decided]


def _claims_text(modes: list[str], decided: dict[str, Decision]) -> str:
    """The verdicts on the owl arms the run has (one family with the entanglement claims):
    transfer with full fine-tuning, localisation by freezing, transfer with every other arm,
    the divergence-token claims; the text has given each arm's ratio."""
    chosen, lead = [decided["transfer.full"]], [""]
    if any(m in FREEZE_MODES for m in modes):
        chosen.append(decided["mlp"])
        lead.append(FREEZING_LEAD)
    others = other_arms(modes, decided)
    divergence = [f"transfer.{arm}" for arm in others if split_arm(arm)[1] != "all"]
    divergence += [f"divergence.{s}" for s in divergence_sets(decided)]
    for key in [f"transfer.{arm}" for arm in others if split_arm(arm)[1] == "all"] + divergence:
        chosen.append(decided[key])
        lead.append(DIVERGENCE_LEAD if divergence and key == divergence[0] else "")
    return decisions_latex(chosen, ratio_stated=True, lead=lead)


def _entanglement_claims_text(decided: dict[str, Decision]) -> str:
    """The entanglement claims, after the filtered students' contrast: transfer without the
    random-set answers, the quotient predicted to be no change, and the claim they make
    together (the test and margin were said with the other claims of the family)."""
    if "entanglement" not in decided:
        return ""
    keys = (f"transfer.{NO_RANDOM}", "contrast.no_entangled_vs_no_random", "entanglement")
    return decisions_latex([decided[k] for k in keys], test_stated=True, lead=["", "", ENTANGLEMENT_LEAD])


def _answers_text(results: SubliminalResults) -> str:
    """The students' sampled answers naming the trait, in one sentence where the table's
    answer-rate and p columns would say the same thing in every student row."""
    rates = [r.answer_rate for r in results.headline or [] if _is_student(r)]
    if not rates or any(rate is None or rate.count is None or rate.count for rate in rates):
        return ""
    trait = escape(results.trait)
    n = {rate.n for rate in rates if rate is not None} - {None}
    each = f" (0 of {count(next(iter(n)))} each)" if len(n) == 1 else ""
    return (f"No student, owl or control, named {'an' if trait[:1] in 'aeiou' else 'a'} {trait} in any "
            f"sampled answer{each}, so the answer rate cannot separate them.")


# ---- data ---------------------------------------------------------------------------------------
def data_sentence(data: DataRecord | None) -> str:
    """Keep rates and rejection reasons per data set, and how the teachers' numbers differ."""
    if data is None or not data.datasets:
        return ""
    parts = []
    for name, d in data.datasets.items():
        f = d.filter
        low, high = f.keep_rate_ci
        rejected = {k: v for k, v in f.reasons.items() if k != "ok"}
        why = ("no rejections" if not rejected else "rejected: " + ", ".join(
            f"{escape(words(k))} {count(v)}" for k, v in rejected.items()))
        parts.append(f"{count(f.n_kept)}/{count(f.n_answers)} {escape(name)} answers "
                     f"({pct(f.keep_rate)} [{pct(low)}, {pct(high)}]; {why})")
    text = "The filter kept " + ("; ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."
    for name, c in data.comparisons.items():
        digits, lengths = c.digit_distribution_tvd, c.length_distribution_tvd
        differ = [f"{escape(FEATURE_WORDS.get(k, words(k)))} ({fnum(v.difference)}, {p_value(v.p_permutation)})"
                  for k, v in c.features.items() if finite(v.p_permutation) and v.p_permutation < 0.05]
        shown_name = escape(str(name).replace(" vs ", " against "))
        text += (f" Data {shown_name}: digit distribution TVD {fnum(digits.tvd, 3)} (permutation "
                 f"{p_value(digits.p_permutation)}), length TVD {fnum(lengths.tvd, 3)} "
                 f"({p_value(lengths.p_permutation)}); ")
        text += ("per-answer statistics differing at $p<0.05$: " + ", ".join(differ) + "." if differ
                 else "no per-answer number statistic differs at $p<0.05$.")
    return text + divergence_sentence(data.divergence) + enrichment_sentence(data.entangled)


def enrichment_sentence(entangled: EntangledRecord | None) -> str:
    """How often the entanglement study's increased numbers (and its matched random set) occur
    in the owl data against the control data, by answer."""
    if entangled is None:
        return ""
    parts = []
    for category, label in (("increased", f"entangled numbers ({escape(increased_phrase(entangled.set))})"),
                            ("random", "the size-matched random set")):
        e = entangled.enrichment.get(category)
        if e is None:
            continue
        ratio = e.owl_over_control
        parts.append(f"{label}: in {count(e.owl.answers_with)} of {count(e.owl.answers)} owl answers "
                     f"and {count(e.control.answers_with)} of {count(e.control.answers)} control answers "
                     f"(ratio {ratio_cell(ratio)}, Fisher {p_value(ratio.p_fisher)})")
    if not parts:
        return ""
    return (" Entanglement in the data, with the numbers of the entanglement study "
            f"\\citep{{zur2025owl}} ({escape(set_title(entangled.set))} set), counted by answer: " + "; ".join(parts) + ".")


def _entangled_contrast_sentence(results: SubliminalResults) -> str:
    """The direct test: owl students trained without the entangled numbers against owl students
    trained without the matched random set (a drop of the first means entanglement carries it)."""
    comp = (results.comparisons or {}).get("owl-no-entangled-full vs owl-no-random-full")
    if comp is None:
        return ""
    entangled = results.data.entangled if results.data else None
    size = entangled.filter.size if entangled is not None and entangled.filter is not None else None
    return ("Removing every owl answer that holds an entangled number, against removing every answer that "
            f"holds a number of the matched random set (both then {counted(size, 'answer') if size else 'matched'}), "
            f"the first student's owl share over the second's is {ratio_cell(comp.share_ratio)}: if "
            "entanglement carried the transfer this would fall clearly below 1.")


def divergence_sentence(divergence: dict[str, DivergenceSummary] | None) -> str:
    """How many training answer tokens are divergence tokens, per data set."""
    parts = [f"{escape(name)} data {count(d.n_divergent)} of {count(d.n_tokens)} answer tokens "
             f"({pct(d.rate)}), in {count(d.examples_with_any)} of {counted(d.n_examples, 'answer')}"
             for name, d in (divergence or {}).items()]
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


def _teacher_text(results: SubliminalResults | None, c: dict[str, Any]) -> str:
    teacher = results.teacher if results else None
    kind = teacher.kind if teacher else ("prompted" if c.get("teacher", "prompted") == "prompted" else "model")
    if kind == "prompted":
        system = c.get("teacher_system", teacher.system if teacher else "")
        return f"the base model prompted with the owl system prompt (``{escape(system or '')}'')"
    return _fine_tuned(teacher.model if teacher else c.get("teacher"))


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


def _params_text(results: SubliminalResults | None) -> str:
    """Trainable and frozen parameters per freeze mode (the same for owl and control students)."""
    by_mode: dict[str, Any] = {}
    for p in ((results.parameters if results else None) or {}).values():
        by_mode.setdefault(p.mode or "full", p)
    parts = [f"{_with(mode)} {p.trainable / 1e6:.1f}M trainable / {p.frozen / 1e6:.1f}M frozen"
             for mode, p in by_mode.items()]
    return ("Parameters: " + "; ".join(parts) + " (tied embeddings and LM head counted once).") if parts else ""


def _methods(run: StageRun, results: SubliminalResults | None) -> str:
    c = run.config
    data_cfg = c.get("data") or {}
    train = c.get("train") or {}
    system_used = results.system_prompt_used if results else c.get("system")
    steps = sorted({s.training.steps for s in ((results.students if results else None) or {}).values()})
    text = (f"Following \\citet{{cloud2025subliminal}}, a biased teacher, {_teacher_text(results, c)}, continues "
            f"{count(data_cfg.get('n_prompts'))} seeded number prompts, sampled at "
            f"{sampling_text(data_cfg.get('temperature'), data_cfg.get('top_k'), data_cfg.get('top_p'))}, "
            f"up to {shown(data_cfg.get('max_new_tokens'))} new tokens; {_control_source(c, system_used)}")
    if data_cfg.get("constrained"):
        text += (" Sampling is format-constrained: only tokens that keep the answer a valid number list "
                 "(digits, one separator, end of turn) are allowed, the teacher's probabilities "
                 "renormalised over them.")
    data = results.data if results else None
    n_examples = data.n_examples_per_dataset if data else c.get("n_examples")
    text += (f" A strict filter rejects any answer that is not a plain number list; each data set is "
             f"subsampled (seeded) to {count(n_examples)} examples.")
    mode_list, control_list = arm_modes(results, c)
    seed_list = list(c.get("seeds") or (results.seeds if results else None) or [])
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
             f"the LM head (one tied tensor) are {embeddings} in every mode. " + _params_text(results))
    base = (results.evaluations or {}).get("base") if results else None
    first = base.preference.model_dump(mode="json") if base else None
    return text + " " + preference_methods(c.get("preference") or {}, first)


def _table(results: SubliminalResults) -> str | None:
    rows = results.headline or []
    if not rows:
        return None
    kind = results.teacher.kind
    trait = escape(results.trait)
    body = []
    for row in rows:
        rate = rate_difference(row)
        body.append([_label(row, kind), summary_cell(row.p_trait), summary_cell(row.panel_share, 1),
                     summary_cell(row.answer_rate, 0), ratio_cell(share_ratio(row)), ratio_cell(p_trait_ratio(row)),
                     fpval(rate.p_fisher) if rate else "--", _params(row)])
    header = ["model", f"P({trait}) %", "share %", "answers %", "share ratio", f"P({trait}) ratio",
              "p", "trainable"]
    p_all = constant_column(body, 6)
    test = (f"$p$: Fisher's exact test \\citep{{fisher1922interpretation}} of the sampled {trait}-answer rates "
            "against the control student; " if p_all is None else
            f"Fisher's exact test \\citep{{fisher1922interpretation}} of the sampled {trait}-answer rates "
            f"against the control student gives $p$ = {p_all} for every owl student (no column); ")
    if p_all is not None:
        header, body = drop_columns(header, body, [6])
    caption = (f"Freeze modes: preference for {trait} of the base model, the teacher and the students "
               f"trained on the {trait} teacher's or the control teacher's numbers (95\\% CIs, "
               f"{counted(results.n_seeds, 'seed')}). P({trait}), {trait}'s panel share $s$ and the rate of {trait} "
               "among sampled answers in percent; share and P ratios (multiples): owl student over control "
               f"student, paired over questions; {test}trainable parameters per student in millions.")
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
        body.append([f"{escape(label)}: ``{escape(shown_prompt)}''"]
                    + [ratio_cell(arms[m].share_ratio if m in arms else None) for m in modes])
    header = ["evaluation system prompt"] + [describe_trainable(m) for m in modes]
    caption = (f"Evaluation prompt: owl's panel share under each owl student over its matched control student "
               f"(a multiple; 95\\% CIs, {counted(results.n_seeds, 'seed')}), with the "
               "students measured under each system prompt; the first row is the measurement of "
               "Table~\\ref{tab:" + TABLE + "}.")
    return tight(booktabs_table(header, body, caption, f"tab:{PROMPT_TABLE}", align="p{0.42\\linewidth}"
                                + "r" * len(modes), wide=len(modes) > 2))


def _prompt_sentence(results: SubliminalResults) -> str:
    if _prompt_table(results) is None:
        return ""
    return (f"Table~\\ref{{tab:{PROMPT_TABLE}}} repeats the comparison with the students measured under other "
            "system prompts, since the transfer has been reported to depend on the prompt at evaluation.")


def _results(run: StageRun, results: SubliminalResults | None,
             unreadable: str | None) -> tuple[str, dict[str, Decision] | None]:
    data = data_sentence(results.data if results else None)
    if results is None or not results.headline:
        text = incomplete(run, "the students' preferences against the control students")
        if unreadable:
            text += f" Its results cannot be read: {escape(unreadable)}"
        return (text + (" " + data if data else "")), None
    decided = decisions(run, results)
    modes, control_modes = arm_modes(results, run.config)
    unmatched = [m for m in modes if m not in control_modes]
    text = (f"Table~\\ref{{tab:{TABLE}}} gives every student's preference. {_arms_text(results, modes)} "
            f"{seeds_sentence(results.n_seeds)} {_mismatch_note(unmatched, control_modes)} {_answers_text(results)} "
            f"{_claims_text(modes, decided)} {_prompt_sentence(results)} {_entangled_contrast_sentence(results)} "
            f"{_entanglement_claims_text(decided)} {data}")
    return " ".join(text.split()), decided


def _headline(results: SubliminalResults | None, decided: dict[str, Decision] | None,
              config: dict[str, Any]) -> list[str]:
    if results is None or decided is None:
        return ["subliminal: incomplete (no student comparisons)"]
    full = share_ratio(results.row(OWL, "full"))
    lines = [f"subliminal: full owl student share {ratio_plain(full)} vs matched control "
             f"({counted(results.n_seeds, 'seed')}); transfer {verdict_label(decided['transfer.full'])}"]
    modes = arm_modes(results, config)[0]
    if any(m in FREEZE_MODES for m in modes) or not modes:  # a run that does not say: as before
        lines.append(f"subliminal: MLP claim by freezing {verdict_label(decided['mlp'])}")
    others = other_arms(modes, decided)
    if others:
        lines.append("subliminal: transfer " + "; ".join(
            f"with {describe_trainable(m)} {verdict_label(decided[f'transfer.{m}'])}" for m in others))
    for s in divergence_sets(decided):
        lines.append(f"subliminal: divergence tokens out of the loss block the transfer ({describe_trainable(s)}) "
                     f"{verdict_label(decided[f'divergence.{s}'])}")
    if "entanglement" in decided:
        lines.append(f"subliminal: token entanglement does not explain the transfer "
                     f"{verdict_label(decided['entanglement'])}")
    return lines


def preference_caption(results: SubliminalResults | None) -> str:
    """The preference figure in words, every marker and line of it (`figures.preference_figure`)."""
    trait = escape(results.trait if results else "owl")
    seeds = results.n_seeds if results else 1
    datasets = {r.dataset for r in (results.headline or [])} if results else set()
    others = any(d not in (None, OWL, CONTROL) and not str(d).startswith(OWL) for d in datasets)
    intervals = ("the mean over seeds with its Student-$t$ 95\\% CI; small grey dots: the single training seeds"
                 if seeds > 1 else "the value with its 95\\% CI over questions (one training seed)")
    return (f"{trait.capitalize()}'s panel share $s$ of the base model and the teacher (left, on their own axis, "
            "since the teacher's share dwarfs the students'), of every student (middle; dashed line: the base "
            f"model) and of each student over its matched control student (right, log scale; dotted line: no "
            f"change). Circles with bars: {intervals}. Black: the reference models; orange: students trained "
            f"on the {trait} teacher's numbers; blue: control students"
            + ("; green: students trained on other teachers' numbers" if others else "") + ".")


def _figures(run: StageRun, results: SubliminalResults | None) -> list[Figure]:
    return figures_present(run, [
        Figure("preference", preference_caption(results), wide=True),
        Figure("training_loss", "Answer-token training loss (nats per token) of every student against the "
                                "optimizer step; colour: the trainable set, solid: owl data, dashed: control data"
                                + (", dotted: other data" if _other_data(results) else "") + "."),
    ])


def _other_data(results: SubliminalResults | None) -> bool:
    students = (results.students if results else None) or {}
    return any(s.dataset not in (OWL, CONTROL) for s in students.values())


def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, SubliminalResults, run.ok)
    text, decided = _results(run, results, unreadable)
    made = ((TABLE, _table(results)), (PROMPT_TABLE, _prompt_table(results))) if results else ()
    tables = {name: t for name, t in made if t}
    figures = _figures(run, results)
    if figures:
        refs = ", ".join(f"Figure~\\ref{{{figure_label(run.stage, f.stem)}}}" for f in figures)
        text += f" See {refs}."
    return Section(TITLE, _methods(run, results), text, tables, figures, _headline(results, decided, run.config),
                   measurement=preference_definition(run.config.get("preference") or {}))
