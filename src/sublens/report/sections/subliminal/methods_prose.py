"""The methods paragraph of the subliminal section: the biased teacher (prompted or
fine-tuned) and where the control numbers come from, the sampling and the filter, the students
of every freeze mode with their training and seeds, the trainable and frozen parameters, and
how preference is measured."""

from __future__ import annotations

from typing import Any

from sublens.experiments.subliminal.results import SubliminalResults
from sublens.report.latex import escape, noun_for, steps_text
from sublens.report.names import CONTROL_TEACHER, FINE_TUNED_TEACHER, display_name
from sublens.report.sections.common import (
    count,
    model_name,
    preference_methods,
    sampling_text,
    shown,
    train_text,
)
from sublens.report.sections.subliminal.reading import _with, arm_modes
from sublens.report.stages import StageRun


# ---- the section --------------------------------------------------------------------------------
def _fine_tuned(spec: Any) -> str:
    """A fine-tuned teacher by name: a teacher run's model is 'the fine-tuned teacher' (of the
    teacher stage), another checkpoint 'the fine-tuned teacher <name>'."""
    name = display_name(spec)
    return (
        FINE_TUNED_TEACHER + " made by context distillation"
        if name == FINE_TUNED_TEACHER
        else f"the fine-tuned teacher {escape(name)}"
    )


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
        caveat = (
            " Because the owl teacher is fine-tuned and the control source is not, the two data sets "
            "may differ by the fine-tuning as well as by the trait."
            if c.get("teacher", "prompted") != "prompted"
            else ""
        )
        return (
            f"the control data come from the base model {model_name(c.get('base'))} under "
            f"``{escape(system_used or '')}''.{caveat}"
        )
    name = model_name(spec)
    source = "the control teacher" if name == CONTROL_TEACHER else f"a control teacher, {name},"
    return (
        f"the control data come from {source} made by the same context "
        "distillation from a neutral system prompt shaped like the owl prompt, so the two data sets "
        "differ only by the trait."
    )


def _params_text(results: SubliminalResults | None) -> str:
    """Trainable and frozen parameters per freeze mode (the same for owl and control students)."""
    by_mode: dict[str, Any] = {}
    for p in ((results.parameters if results else None) or {}).values():
        by_mode.setdefault(p.mode or "full", p)
    parts = [
        f"{_with(mode)} {p.trainable / 1e6:.1f}M trainable / {p.frozen / 1e6:.1f}M frozen"
        for mode, p in by_mode.items()
    ]
    return ("Parameters: " + "; ".join(parts) + " (tied embeddings and LM head counted once).") if parts else ""


def _methods(run: StageRun, results: SubliminalResults | None) -> str:
    c = run.config
    data_cfg = c.get("data") or {}
    train = c.get("train") or {}
    system_used = results.system_prompt_used if results else c.get("system")
    steps = sorted({s.training.steps for s in ((results.students if results else None) or {}).values()})
    text = (
        f"Following \\citet{{cloud2025subliminal}}, a biased teacher, {_teacher_text(results, c)}, continues "
        f"{count(data_cfg.get('n_prompts'))} seeded number prompts, sampled at "
        f"{sampling_text(data_cfg.get('temperature'), data_cfg.get('top_k'), data_cfg.get('top_p'))}, "
        f"up to {shown(data_cfg.get('max_new_tokens'))} new tokens; {_control_source(c, system_used)}"
    )
    if data_cfg.get("constrained"):
        text += (
            " Sampling is format-constrained: only tokens that keep the answer a valid number list "
            "(digits, one separator, end of turn) are allowed, the teacher's probabilities "
            "renormalised over them."
        )
    data = results.data if results else None
    n_examples = data.n_examples_per_dataset if data else c.get("n_examples")
    text += (
        f" A strict filter rejects any answer that is not a plain number list; each data set is "
        f"subsampled (seeded) to {count(n_examples)} examples."
    )
    mode_list, control_list = arm_modes(results, c)
    seed_list = list(c.get("seeds") or (results.seeds if results else None) or [])
    seeds = ", ".join(str(s) for s in seed_list)
    matched = all(m in control_list for m in mode_list)
    embeddings = "frozen" if train.get("embeddings") == "frozen" else "trained"
    owl_modes = ", ".join(_with(m) for m in mode_list) or "--"
    control_modes = ", ".join(_with(m) for m in control_list) or "--"
    text += (
        f" Students start from the base model and are fine-tuned on the owl data {owl_modes} "
        f"and on the control data {control_modes} (the control students"
        + (
            "; each owl student is compared with the control student of the same freeze mode and seed"
            if matched
            else ""
        )
        + "), with the training system prompt above, never the owl prompt, and the loss on answer "
        f"tokens only: {train_text(train)}"
        + (f", {steps_text(steps)}" if steps else "")
        + f"; training {noun_for(seed_list, 'seed')} {seeds or '--'}"
        + (
            "; each seed re-samples the number prompts and the teachers' data, so intervals across "
            "seeds include data-sampling variance"
            if c.get("data_per_seed") and len(seed_list) > 1
            else ""
        )
        + ". Freezing a component holds its weights fixed (no gradient); the token embeddings and "
        f"the LM head (one tied tensor) are {embeddings} in every mode. " + _params_text(results)
    )
    base = (results.evaluations or {}).get("base") if results else None
    first = base.preference.model_dump(mode="json") if base else None
    return text + " " + preference_methods(c.get("preference") or {}, first)
