"""distill: does squeezing-heads distillation (SHD) carry the owl bias across architectures?

1. Texts (`data`): unrelated number data (a `subliminal` run's control set, a JSONL file, or
   number prompts with seeded random answers), split with ``seed`` into training texts and
   held-out fit texts.
2. Models: the student (another family), the biased teacher (by default the newest finished
   `teacher` run; the quick preset uses the prompted teacher) and the unbiased base model as
   the second teacher. Each teacher reads the texts in its own view (chat or plain) and every
   teacher token is aligned to the student's tokens (`sublens.distill.align_record`).
3. On the fit texts each teacher's maps are squeezed to the student's heads once (the targets
   of the fit, and the squeezing weights α per layer, `analysis.alpha_summary`).
4. The initial student is measured: KL of its maps to each teacher's squeezed maps, and owl
   preference (`evaluate_preference`; completion prompts, the answer prefilled).
5. For every training seed, every arm is trained from the initial weights on the same texts:
   ``shd_biased`` (LM loss + β·SHD from the biased teacher), ``lm_only`` (LM loss only, the
   control) and ``shd_base`` (LM loss + β·SHD from the base model, the control for attention
   distillation as such); each student is measured as in 4.
6. The students are compared seed by seed and across seeds (`analysis.comparisons`); the
   claims are decided from these numbers in `sublens.report.sections.distill.decisions`.

Under accelerate launch every rank loads the models and aligns the texts (each training step
needs the teachers' maps); rank 0 alone measures, draws and writes, and the other ranks join
the training steps (`follow`, sublens.runs.Team).

This module holds `execute` and the comparison of the students; the texts, models and teachers
loaded (`loading`), the initial and trained students (`students`), the attention maps and the
figures (`maps`) and the summary on the terminal (`console`) are its sibling modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sublens.experiments.distill.analysis import (
    comparisons,
    headline,
    model_rows,
    preferences_by_seed,
    throughput,
)
from sublens.experiments.distill.config import DistillConfig
from sublens.experiments.distill.console import print_summary
from sublens.experiments.distill.data import load_records
from sublens.experiments.distill.loading import Setup, Texts, load, load_teachers, teacher_specs
from sublens.experiments.distill.maps import draw_figures, map_example, student_map
from sublens.experiments.distill.results import DistillResults
from sublens.experiments.distill.students import (
    first_results,
    fit_targets,
    follow,
    measure,
    train_and_measure,
)
from sublens.malloc import release_freed_memory
from sublens.runs import Run
from sublens.runs import team as current_team
from sublens.tables import write_tables


def execute(config: DistillConfig, run: Run) -> DistillResults | dict[str, Any]:
    """The methods of the module docstring, in order."""
    with torch_threads(config.threads, run):
        team = current_team()
        texts = Texts(*load_records(config.data, config.seed))
        # rank 0's choice: a teacher run finishing meanwhile must not give the ranks different teachers
        specs = team.share("teacher models", lambda: teacher_specs(config))
        student = load(config.student, config, run)
        setup = Setup(config, run, team, load_teachers(config, run, specs, student, texts))
        if not team.is_main:
            del student  # rank 0 measures it; this rank joins the training steps only
            return follow(setup)
        fitsets = fit_targets(setup, student)
        example = map_example(setup, student)
        maps = {"initial": student_map(student, example)}
        initial = measure(setup, student, fitsets, "initial", config.seed)
        results = first_results(setup, texts, specs, fitsets, *initial)
        run.save_results(results)
        del student  # every arm trains its own copy from the initial weights
        release_freed_memory()
        team.sync("initial student measured")
        for seed in config.training_seeds:
            for arm in config.arms:
                results = train_and_measure(setup, fitsets, seed, arm, example, maps, results)
        results = compare_students(results, run)
        with run.timed("figures"):
            figures = draw_figures(results, run, example, maps)
        results = results.model_copy(update={"figures": figures, "partial": False})
        print_summary(results, config.claims)
        return results


@contextmanager
def torch_threads(threads: int | None, run: Run) -> Iterator[None]:
    """torch's thread count for the run (recorded), restored afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    run.note(threads=torch.get_num_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- comparisons and tables ------------------------------------------------------------------
def compare_students(results: DistillResults, run: Run) -> DistillResults:
    """Every comparison of students (`analysis.comparisons`), the parquet tables, the headline."""
    compared = comparisons(preferences_by_seed(results), results.initial.preference.model_dump(mode="json"))
    tables = write_tables(run, model_rows(results), {k: c.model_dump(mode="json") for k, c in compared.items()})
    return results.model_copy(
        update={
            "comparisons": compared,
            "headline": headline(results.initial.preference, results.arms, compared),
            "tables": tables,
            "throughput": throughput(results.arms),
        }
    )
