"""teacher: the biased teacher, made by context distillation.

The base model answers diverse prompts under the owl system prompt and is fine-tuned on those
answers without it, so the preference moves from the prompt into the weights; the teacher is
then measured against the base model under the same (training) system prompt. Optionally a
control teacher is made the same way from a neutral prompt (methods: `run`). The claim (the
teacher prefers owls without the prompt) is decided in `sublens.report.sections.teacher`.

The package, one module per concern (the pattern of every experiment package):
- `config`: `TeacherConfig`, every field documented;
- `run`: `execute(config, run)`, the methods in order, and the sampling, training and
  measuring helpers;
- `analysis`: what the sampled answers hold, and the models table's rows (no model);
- `figures`: the loss figure, drawn from the results alone;
- `results`: `TeacherResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too: the report reads
`sublens.experiments.teacher.results` and must not import torch through `run` or `config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.teacher.analysis import data_summary, model_rows
    from sublens.experiments.teacher.config import (
        NEUTRAL_TEACHER_SYSTEM,
        TeacherConfig,
        shipped_teacher_prompts,
    )
    from sublens.experiments.teacher.figures import loss_figure, make_figures
    from sublens.experiments.teacher.results import TeacherResults
    from sublens.experiments.teacher.run import (
        CHECKPOINT,
        CONTROL_CHECKPOINT,
        distil_teacher,
        execute,
        teacher_examples,
    )

    EXPERIMENT: Experiment

SUMMARY = "Biased teacher by context distillation (owl system prompt distilled into the weights)"

# public name -> its module in this package
_EXPORTS = {
    "TeacherConfig": "config",
    "NEUTRAL_TEACHER_SYSTEM": "config",
    "shipped_teacher_prompts": "config",
    "TeacherResults": "results",
    "execute": "run",
    "distil_teacher": "run",
    "teacher_examples": "run",
    "CHECKPOINT": "run",
    "CONTROL_CHECKPOINT": "run",
    "data_summary": "analysis",
    "model_rows": "analysis",
    "loss_figure": "figures",
    "make_figures": "figures",
}

__all__ = [
    "CHECKPOINT",
    "CONTROL_CHECKPOINT",
    "EXPERIMENT",
    "NEUTRAL_TEACHER_SYSTEM",
    "TeacherConfig",
    "TeacherResults",
    "data_summary",
    "distil_teacher",
    "execute",
    "loss_figure",
    "make_figures",
    "model_rows",
    "shipped_teacher_prompts",
    "teacher_examples",
]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.teacher.config import TeacherConfig
    from sublens.experiments.teacher.run import execute

    return Experiment("teacher", SUMMARY, TeacherConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
