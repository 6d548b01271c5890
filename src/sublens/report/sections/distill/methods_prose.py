"""The methods paragraph: the SHD loss and its KL direction, how heads are squeezed and layers
mapped, the teacher, the data, the students and how the claims are decided."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sublens.experiments.distill.results import ARMS
from sublens.report.latex import counted, escape, steps_text
from sublens.report.names import FINE_TUNED_TEACHER, data_source_name, display_name, words
from sublens.report.sections.common import (
    count,
    dig,
    fields_of,
    finite,
    fnum,
    model_name,
    preference_methods,
    train_text,
)
from sublens.report.sections.distill.reading import (
    LEGACY_KL_DIRECTION,
    STUDENT,
    Results,
    _preference,
    _seed_list,
    _teacher,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_settings


def _teacher_text(r: Results, c: dict[str, Any]) -> str:
    biased, base = _teacher(r, "biased"), _teacher(r, "base")
    spec = (biased.spec if biased else None) or dig(c, "teacher", "model") or "?"
    # what the biased teacher read around the texts: a system prompt (chat) or a context paragraph (plain)
    system = (biased.system if biased.format == "chat" else biased.context) if biased else None
    if spec == (base.spec if base else dig(c, "base_teacher", "model")) and system:
        return (
            f"the base model {model_name(spec)} prompted with ``{escape(system)}'' "
            "(a prompted teacher, not the fine-tuned one)"
        )
    name = display_name(spec)
    return (
        FINE_TUNED_TEACHER + " made by context distillation"
        if name == FINE_TUNED_TEACHER
        else f"the fine-tuned teacher {escape(name)}"
    )


def _heads_text(r: Results) -> str:
    t = _teacher(r, "biased") or _teacher(r, "base")
    if t is None:
        return ""
    k, m = escape(t.teacher_heads), escape(t.student_heads)
    if t.fallback == "repeat":  # a student with more heads than the teacher
        text = (
            f"The student's {m} heads per layer are matched to the teacher's {k} heads in turn "
            "(head $j$ to teacher head $j \\bmod k$, unsqueezed)"
        )
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
        text += f"; the {len(pairs)} student layers map uniformly onto teacher layers ({', '.join(shown)})"
    return text + "."


def _data_text(r: Results, c: dict[str, Any]) -> str:
    d = r.data if r is not None else None
    source = d.source if d else dig(c, "data", "source")
    what = "number prompts with seeded random answers" if source in (None, "generated") else data_source_name(source)
    n_train = d.n_train if d else dig(c, "data", "n_train")
    n_fit = d.n_fit if d else dig(c, "data", "n_fit")
    text = (
        f"All students train on the same {count(n_train)} texts, "
        f"{what} ({count(d.student_tokens if d else None)} student tokens); "
        f"{count(n_fit)} further texts are held out to measure the "
        "KL between the student's maps and each teacher's squeezed maps before and after training."
    )
    if d and d.identity_alignment and not all(d.identity_alignment.values()):
        text += (
            " Teacher and student tokenize differently, so the teacher's maps are projected onto "
            "the student's tokens through character-span overlap."
        )
    return text


def _methods(run: StageRun, r: Results) -> str:
    c = run.config
    # as written (an old run has no kl_direction key), else as configured
    shd: Mapping[str, Any] = (fields_of(r.shd) if r is not None else c.get("shd")) or {}
    arms = [a for a in c.get("arms") or ARMS if a in ARMS]
    layers = shd.get("layers")
    steps = sorted({a.train.steps for a in r.arms.values()}) if r is not None else []
    text = (
        f"Squeezing-heads distillation (SHD) \\citep{{bing2025shd}} trains the student "
        f"{model_name(r.student if r is not None else c.get('student', '?'))} to match the attention maps of a "
        f"teacher of another family: the total loss is the LM loss plus $\\beta$ = "
        f"{fnum(shd.get('beta'), 2) if finite(shd.get('beta')) else '--'} times {_kl_text(shd)} "
        f"per query row, both maps softened at temperature "
        f"{fnum(shd.get('temperature'), 2) if finite(shd.get('temperature')) else '--'}, over "
        f"{'all layers' if layers is None else 'layers ' + ', '.join(str(x) for x in layers)}. "
        f"{_heads_text(r)} The biased teacher is {_teacher_text(r, c)}. "
    )
    base = _teacher(r, "base")
    described = {
        "shd_biased": f"{STUDENT['shd_biased']} (LM loss + SHD from the biased teacher)",
        "lm_only": f"{STUDENT['lm_only']} (LM loss only, the control)",
        "shd_base": (
            f"{STUDENT['shd_base']} (LM loss + SHD from the unbiased base model "
            f"{model_name((base.spec if base else None) or dig(c, 'base_teacher', 'model'))}, "
            "the control for attention distillation as such)"
        ),
    }
    listed = [described[a] for a in arms]
    joined = listed[0] if len(listed) == 1 else "; ".join(listed[:-1]) + "; and " + listed[-1]
    text += (f"We train {counted(len(listed), 'student')}: " + joined + ". " if listed else "") + _data_text(r, c)
    seeds = _seed_list(r)
    text += (
        f" Every student starts from the same weights: {train_text(c.get('train') or {})}"
        + (f", {steps_text(steps)}" if steps else "")
        + (
            f", training seed {seeds[0]}"
            if len(seeds) == 1
            else f", once per training seed ({', '.join(str(x) for x in seeds)}; texts split with seed "
            f"{c.get('seed', 0)})"
        )
        + "; the students of a seed are matched (same texts, same initial weights, same seed). "
    )
    initial = _preference(r, "initial")
    text += preference_methods(c.get("preference") or {}, initial.model_dump(mode="json") if initial else None)
    settings = claim_settings(c)
    return text + (
        " Claims are decided with training seeds as the unit of inference: a one-sample $t$-test on the "
        "per-seed log ratios of owl's panel share (biased-SHD student over a control student of the same "
        f"seed), two-sided, Holm-adjusted over the two claims of this section at $\\alpha$ = {settings.alpha:g}; "
        f"an effect counts only beyond the margin $\\times${settings.margin:g}, and every verdict states the "
        f"minimal detectable effect at the measured between-seed SD (power {settings.power:g}). One seed "
        "never decides a claim."
    )


def _kl_text(shd: Mapping[str, Any]) -> str:
    """The loss's KL direction; a run recorded before ``shd.kl_direction`` existed used the
    forward direction (LEGACY_KL_DIRECTION)."""
    chosen = shd.get("kl_direction", LEGACY_KL_DIRECTION)
    legacy = "kl_direction" not in shd  # recorded before the direction was configurable
    if chosen == "student_teacher":
        return (
            "the KL of the student's map from the teacher's squeezed map, KL(student $\\|$ teacher), "
            "the SHD paper's formulation (zero-forcing: student attention where the teacher's map has "
            "none is penalised)"
        )
    if chosen == "teacher_student":
        return (
            "the KL of the teacher's squeezed map from the student's, KL(teacher $\\|$ student), the "
            "forward KL of attention-map distillation (mass-covering; "
            + ("the only direction when this run was recorded; " if legacy else "")
            + "the SHD paper uses KL(student $\\|$ teacher))"
        )
    return f"the KL between the teacher's squeezed map and the student's (direction {escape(words(chosen))})"
