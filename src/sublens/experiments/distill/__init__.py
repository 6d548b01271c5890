"""distill: does squeezing-heads distillation (SHD) carry the owl bias across architectures?

Three students start from the same weights and train on the same texts (docs/design.md,
"Squeezing-heads distillation"; the loss is `sublens.distill`): ``shd_biased`` (LM loss + β·SHD
from the biased teacher), ``lm_only`` (LM loss only, the control) and ``shd_base`` (LM loss +
β·SHD from the unbiased base model, the control for attention distillation as such), once per
training seed. Each student's owl preference and the fit of its attention maps to each
teacher's squeezed maps are measured (methods: `run`, computations: `analysis`); the claims
are decided, with training seeds as the unit, in `sublens.report.sections.distill`.

The package, one module per concern (the pattern of every experiment package):
- `config`: `DistillConfig`, every field documented;
- `data`: the texts (a JSONL file, a subliminal run's control set, or generated number data);
- `run`: `execute(config, run)`, the methods in order;
- `loading`, `students`, `maps`: the texts, models and teachers loaded, the students measured and
  trained, and the attention maps and figures that `run` draws;
- `console`: the summary printed at the end of a run (`print_summary`);
- `analysis`: α summaries, the seed-level comparisons, the headline (no model);
- `figures`: the figures at print width, drawn from the results (the maps from captured arrays);
- `results`: `DistillResults`, the torch-free model of results.json.

Run as a module to draw the alignment figure of docs/shd_alignment.md:
``python -m sublens.experiments.distill docs/shd_alignment.png``.

Names are imported on first use (PEP 562), `EXPERIMENT` too: the report reads
`sublens.experiments.distill.results` and must not import torch through `run` or `config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.distill.analysis import (
        across_seeds,
        alpha_summary,
        comparisons,
        headline,
    )
    from sublens.experiments.distill.config import (
        OWL_SYSTEM,
        DataSettings,
        DistillConfig,
        FigureSettings,
        ShdSettings,
        TeacherSettings,
    )
    from sublens.experiments.distill.data import (
        format_answer,
        generated_records,
        load_records,
        read_records,
        subliminal_control,
    )
    from sublens.experiments.distill.loading import newest_teacher_run
    from sublens.experiments.distill.maps import alignment_figure
    from sublens.experiments.distill.results import ARM_TEACHER, ARMS, Arm, DistillResults
    from sublens.experiments.distill.run import execute
    from sublens.experiments.distill.students import train_student

    EXPERIMENT: Experiment

SUMMARY = (
    "Cross-architecture squeezing-heads distillation from a biased teacher, against LM-only and unbiased-SHD students"
)

# public name -> its module in this package
_EXPORTS = {
    "DistillConfig": "config",
    "TeacherSettings": "config",
    "DataSettings": "config",
    "ShdSettings": "config",
    "FigureSettings": "config",
    "OWL_SYSTEM": "config",
    "read_records": "data",
    "subliminal_control": "data",
    "format_answer": "data",
    "generated_records": "data",
    "load_records": "data",
    "DistillResults": "results",
    "Arm": "results",
    "ARMS": "results",
    "ARM_TEACHER": "results",
    "alpha_summary": "analysis",
    "across_seeds": "analysis",
    "comparisons": "analysis",
    "headline": "analysis",
    "execute": "run",
    "train_student": "students",
    "newest_teacher_run": "loading",
    "alignment_figure": "maps",
}

__all__ = [
    "ARMS",
    "ARM_TEACHER",
    "EXPERIMENT",
    "OWL_SYSTEM",
    "Arm",
    "DataSettings",
    "DistillConfig",
    "DistillResults",
    "FigureSettings",
    "ShdSettings",
    "TeacherSettings",
    "across_seeds",
    "alignment_figure",
    "alpha_summary",
    "comparisons",
    "execute",
    "format_answer",
    "generated_records",
    "headline",
    "load_records",
    "newest_teacher_run",
    "read_records",
    "subliminal_control",
    "train_student",
]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.distill.config import DistillConfig
    from sublens.experiments.distill.run import execute

    return Experiment("distill", SUMMARY, DistillConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
