"""subliminal: does a student pick up the teacher's owl preference from numbers alone, and which
components carry it (full vs attention-frozen vs MLP-frozen fine-tuning)?

A biased teacher (the base model under an owl system prompt, or a fine-tuned teacher) and an
unbiased control teacher continue seeded number prompts; the answers that pass a strict filter
become the owl and the control data. Students are fine-tuned from the base model on each data
set, one per (arm, seed), and measured for owl preference; every owl student is compared with
the control student of the same trainable set and seed (methods: `run`, statistics:
`analysis`); the claims are decided in `sublens.claims.subliminal_decisions`.

The package, one module per concern (the pattern of every experiment package):
- `config`: `SubliminalConfig`, every field documented, and the names of data sets and students;
- `run`: `execute(config, run)`, the methods in order, and the reference measurements;
- `data`: the teachers' number data, its statistics and its divergence tokens;
- `students`: one student's training and measurement, and running them all (in parallel);
- `analysis`: aggregation across seeds and the comparisons (numpy, no model);
- `figures`: the figures, drawn from the results alone;
- `results`: `SubliminalResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too: the report reads
`sublens.experiments.subliminal.results` and must not import torch through `run` or `config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.subliminal.analysis import (
        aggregate,
        by_evaluation_prompt,
        compare_arm,
        entangled_contrast,
        level_summary,
        model_rows,
        seed_ratio,
        specificity,
    )
    from sublens.experiments.subliminal.config import (
        CONTROL,
        NO_ENTANGLED,
        NO_RANDOM,
        OWL,
        DivergenceSettings,
        EntangledSettings,
        NumberData,
        SubliminalConfig,
        check_teacher_name,
        data_folder,
        data_seed,
        data_seeds,
        filtered_datasets,
        needs_divergence,
        reference_mode,
        student_arms,
        student_name,
    )
    from sublens.experiments.subliminal.data import (
        TeacherSource,
        data_results,
        entangled_data,
        generate_data,
        measure_divergence,
        teacher_sources,
    )
    from sublens.experiments.subliminal.results import SubliminalResults
    from sublens.experiments.subliminal.run import execute
    from sublens.experiments.subliminal.students import (
        StudentJob,
        StudentProgress,
        die_with_parent,
        masked_examples,
        plan_students,
        read_progress,
        run_student,
        run_students,
        show_progress,
        student_train_config,
    )

    EXPERIMENT: Experiment

SUMMARY = (
    "Subliminal learning: students fine-tuned on a biased teacher's numbers (full / freeze-attention / "
    "freeze-mlp) against control students"
)

# public name -> its module in this package
_EXPORTS = {
    "SubliminalConfig": "config",
    "NumberData": "config",
    "EntangledSettings": "config",
    "DivergenceSettings": "config",
    "OWL": "config",
    "CONTROL": "config",
    "NO_ENTANGLED": "config",
    "NO_RANDOM": "config",
    "check_teacher_name": "config",
    "data_seed": "config",
    "data_seeds": "config",
    "data_folder": "config",
    "filtered_datasets": "config",
    "needs_divergence": "config",
    "reference_mode": "config",
    "student_arms": "config",
    "student_name": "config",
    "SubliminalResults": "results",
    "execute": "run",
    "TeacherSource": "data",
    "teacher_sources": "data",
    "generate_data": "data",
    "entangled_data": "data",
    "data_results": "data",
    "measure_divergence": "data",
    "StudentJob": "students",
    "StudentProgress": "students",
    "plan_students": "students",
    "run_student": "students",
    "run_students": "students",
    "student_train_config": "students",
    "masked_examples": "students",
    "read_progress": "students",
    "show_progress": "students",
    "die_with_parent": "students",
    "aggregate": "analysis",
    "level_summary": "analysis",
    "seed_ratio": "analysis",
    "compare_arm": "analysis",
    "specificity": "analysis",
    "entangled_contrast": "analysis",
    "by_evaluation_prompt": "analysis",
    "model_rows": "analysis",
}

__all__ = [
    "CONTROL",
    "EXPERIMENT",
    "NO_ENTANGLED",
    "NO_RANDOM",
    "OWL",
    "DivergenceSettings",
    "EntangledSettings",
    "NumberData",
    "StudentJob",
    "StudentProgress",
    "SubliminalConfig",
    "SubliminalResults",
    "TeacherSource",
    "aggregate",
    "by_evaluation_prompt",
    "check_teacher_name",
    "compare_arm",
    "data_folder",
    "data_results",
    "data_seed",
    "data_seeds",
    "die_with_parent",
    "entangled_contrast",
    "entangled_data",
    "execute",
    "filtered_datasets",
    "generate_data",
    "level_summary",
    "masked_examples",
    "measure_divergence",
    "model_rows",
    "needs_divergence",
    "plan_students",
    "read_progress",
    "reference_mode",
    "run_student",
    "run_students",
    "seed_ratio",
    "show_progress",
    "specificity",
    "student_arms",
    "student_name",
    "student_train_config",
    "teacher_sources",
]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.subliminal.config import SubliminalConfig
    from sublens.experiments.subliminal.run import execute

    return Experiment("subliminal", SUMMARY, SubliminalConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
