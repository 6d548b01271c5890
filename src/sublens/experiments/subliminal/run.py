"""subliminal: does a student pick up the teacher's owl preference from numbers alone, and which
components carry it (full vs attention-frozen vs MLP-frozen fine-tuning)?

1. Number data. Prompts from `make_number_prompts` (seeded). Answers sampled at explicit settings
   (temperature 1 by default) from the biased teacher (``teacher: prompted`` = the base model
   under ``teacher_system``; or a model spec, e.g. a `teacher` run directory, prompted with
   ``system``) and, for the control data, from the unbiased base model under ``system``.
   ``extra_teachers`` adds prompted teachers of other animals (name -> system prompt): their
   students (in ``extra_mode``, full by default) give the teacher-animal x measured-animal specificity matrix. Optional
   format-constrained sampling (`sublens.subliminal.NumberFormat`), recorded in every line's
   provenance. Sharded JSONL, atomic, resumable (`sample_sharded`). Each training seed has its
   own data seed unless ``data_per_seed`` is off (`data`).
2. Filter. `filter_answer` on every answer (cut-off answers rejected as truncated); every
   rejection's reason kept; keep rates reported; all data sets subsampled (seeded) to one size
   and written to data/<name>.train.jsonl.
3. Data statistics of each teacher's kept numbers (digits, lengths, copy rate of the prompt's
   numbers, increasing steps) and permutation tests of each teacher against the control; the
   divergence tokens of the owl and control data where asked or needed.
4. Students, from the base model, one per (data set, arm, seed): owl data in ``modes``
   (full / freeze-attention / freeze-mlp, any trainable set), control data in ``control_modes``,
   extra teachers' data in full. Training prompt: ``system`` resolved to its text (SmolLM2's
   template default when null) and passed explicitly; never the owl prompt. Loss on answer
   tokens only (`sublens.training.train`, checkpointed, resumable); trainable / frozen parameter
   counts per arm recorded (`students`).
5. Evaluation. The base model, the teacher and every student with `evaluate_preference` under
   ``system`` (the same sampling seed for all: paired samples) and perplexity; each owl student
   against the control student of the same seed and trainable set with `compare_preference`,
   aggregated across seeds (`analysis`). A transfer claim needs the panel share to rise, not only
   P(owl); the claims are decided by `sublens.claims.subliminal_decisions`.

Rerunning into the same run directory (`run_experiment(..., run_dir=PATH)`) skips finished
shards, students and measurements and resumes an interrupted student from its checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sublens.claims import subliminal_decisions
from sublens.corpus import load_text
from sublens.errors import ConfigError
from sublens.experiments.subliminal.analysis import aggregate, model_rows
from sublens.experiments.subliminal.config import SubliminalConfig, data_seeds
from sublens.experiments.subliminal.data import TeacherSource, number_data, teacher_sources
from sublens.experiments.subliminal.figures import make_figures
from sublens.experiments.subliminal.results import (
    DataRecord,
    Evaluation,
    Level,
    SeedRatio,
    Student,
    SubliminalResults,
    TeacherProvenance,
)
from sublens.experiments.subliminal.students import StudentJob, plan_students, run_students
from sublens.malloc import release_freed_memory
from sublens.models import LoadedModel, load_model
from sublens.perplexity import measure_perplexity
from sublens.preference import evaluate_preference
from sublens.prompts import resolve_system
from sublens.report.latex import counted
from sublens.results import Record
from sublens.runs import Run, Team
from sublens.runs import team as current_team
from sublens.subliminal import stable_hash
from sublens.tables import write_tables

SYSTEM_NOTE = (
    "control teacher, students' training prompts and every measurement use system_prompt_used; "
    "the owl system prompt only ever reaches the prompted teacher"
)
DataFiles = dict[int, dict[str, str]]  # data seed -> data set -> run-relative training file


def execute(config: SubliminalConfig, run: Run) -> SubliminalResults:
    """The experiment. Under accelerate launch (several processes) rank 0 alone loads the
    teachers, measures, samples and writes the number data, measures every student and writes
    results and figures; the other ranks wait for it (sublens.runs.Team) and join every
    student's training (data parallel), so the data and measurements are a single process's."""
    team = current_team()
    check_parallel(config, team)
    # The references measured and the teachers' number data (with its divergence tokens)
    # written by rank 0; the other ranks wait here for its files.
    results, files = team.share("references and number data", lambda: teacher_data(config, run))
    # One student per data set, arm and seed, trained and measured (finished ones reused).
    jobs = plan_students(config, run.path, results.system_prompt_used, files)
    with run.timed("students"):
        results = train_students(config, run, jobs, results, team)
    if not team.is_main:  # rank 0 compares, decides and writes
        return results
    results = compare(config, results)  # every arm over its matched control, across seeds
    results = decide(config, results)
    results = save_outputs(run, results)
    print_summary(results)
    return results


def check_parallel(config: SubliminalConfig, team: Team) -> None:
    """Under accelerate launch the students train data-parallel across the processes, one after
    another: worker processes of their own (parallel > 1) would each need the whole launch."""
    if team.distributed and config.parallel > 1:
        raise ConfigError(
            f"parallel: {config.parallel} trains students in worker processes, but this run already has "
            f"{team.world} processes (accelerate launch), across which every student trains data-parallel. "
            "Set parallel: 1 (--set parallel=1), or run without accelerate launch."
        )


# ---- the references and the number data ---------------------------------------------------------
def teacher_data(config: SubliminalConfig, run: Run) -> tuple[SubliminalResults, DataFiles]:
    """The base model and the teacher measured, and every data seed's number data sampled,
    filtered and written, results saved after each: (the results so far, the data files)."""
    with run.timed("load_model"):
        base = load_model(config.base, config.device, config.dtype)
    run.note(models={"base": base.describe()})
    system_used = resolve_system(base.tokenizer, config.system)
    sources = teacher_sources(config, system_used)
    results = first_results(config, sources, system_used)
    run.save_results(results)
    with run.timed("measure:references"):
        evaluations = measure_references(config, run, base, sources[0], system_used)
    results = results.model_copy(update={"evaluations": evaluations})
    run.save_results(results)
    files: DataFiles = {}
    per_seed: dict[str, DataRecord] = {}
    for seed in data_seeds(config):
        per_seed[str(seed)], files[seed] = number_data(config, run, base, sources, system_used, seed)
        results = with_data(results, per_seed)
        run.save_results(results)
    del base
    release_freed_memory()
    return results, files


def first_results(config: SubliminalConfig, sources: list[TeacherSource], system_used: str | None) -> SubliminalResults:
    """What a run records before it measures anything: the design and the prompts in use."""
    return SubliminalResults(
        base=config.base,
        trait=config.preference.trait,
        teacher=sources[0].record(config.base),
        teachers={s.name: TeacherProvenance.model_validate(s.provenance(config.base)["teacher"]) for s in sources},
        system=config.system,
        system_prompt_used=system_used,
        system_note=SYSTEM_NOTE,
        seeds=list(config.seeds),
        n_seeds=len(config.seeds),
        partial=True,
        modes=list(config.modes),
        control_modes=list(config.control_modes),
        claims_settings=config.claims,
    )


def with_data(results: SubliminalResults, per_seed: dict[str, DataRecord]) -> SubliminalResults:
    """The first data seed's data, described in full; every seed's, when there are several."""
    first = next(iter(per_seed.values()))
    return results.model_copy(
        update={"data": first, **({"data_per_seed": dict(per_seed)} if len(per_seed) > 1 else {})}
    )


def measure_references(
    config: SubliminalConfig, run: Run, base: LoadedModel, owl: TeacherSource, system_used: str | None
) -> dict[str, Evaluation]:
    """The base model under `system` and the teacher (the prompted one under its own system
    prompt, a model-spec teacher under `system`), each saved once measured."""
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    key = stable_hash(config.preference.model_dump(mode="json"), config.perplexity.model_dump(mode="json"), config.seed)
    evaluations = {
        "base": run.step(
            "measurements/base",
            stable_hash(key, config.base, system_used),
            lambda: measure(base, config, system_used, text),
        )
    }
    if owl.model == "base":
        evaluations["teacher"] = run.step(
            "measurements/teacher",
            stable_hash(key, config.base, owl.system),
            lambda: measure(base, config, owl.system, text),
        )
    else:

        def teacher_measure() -> dict[str, Any]:
            return measure(load_model(owl.model, config.device, config.dtype), config, system_used, text)

        evaluations["teacher"] = run.step(
            "measurements/teacher", stable_hash(key, owl.model, system_used), teacher_measure
        )
    return {name: Evaluation.model_validate(e) for name, e in evaluations.items()}


def measure(lm: LoadedModel, config: SubliminalConfig, system: str | None, text: str) -> dict[str, Any]:
    return {
        "preference": evaluate_preference(lm, config.preference, system, config.seed),
        "perplexity": measure_perplexity(lm, config.perplexity, text),
        "system": system,
    }


# ---- the students -------------------------------------------------------------------------------
def train_students(
    config: SubliminalConfig, run: Run, jobs: list[StudentJob], results: SubliminalResults, team: Team
) -> SubliminalResults:
    """Every student of `jobs`, results saved as each finishes; in the planned order at the end."""
    finished: dict[str, Student] = {}

    def on_done(student: Student) -> None:
        finished[student.name] = student
        run.save_results(results.model_copy(update={"students": dict(finished)}))

    run_students(jobs, config.parallel, on_done, team)
    return results.model_copy(update={"students": {job.name: finished[job.name] for job in jobs}})


# ---- comparisons, claims, outputs ---------------------------------------------------------------
def as_json(records: Mapping[str, Record] | None) -> dict[str, Any]:
    """Typed records as results.json holds them: what `analysis` and `sublens.tables` read."""
    return {name: record.model_dump(mode="json") for name, record in (records or {}).items()}


def updated(results: SubliminalResults, **parts: Any) -> SubliminalResults:
    """`results` with `parts` (in the shape of results.json, as `analysis` returns them) validated in."""
    return SubliminalResults.model_validate({**results.model_dump(mode="json"), **parts})


def compare(config: SubliminalConfig, results: SubliminalResults) -> SubliminalResults:
    """Headline rows, comparisons, specificity (and the evaluation-prompt table) across seeds;
    each arm's trainable set, and where the kept students' weights lie."""
    students = results.students or {}
    parts = aggregate(config, as_json(students), as_json(results.evaluations), results.system_prompt_used)
    parts["parameters"] = {f"{s.dataset}-{s.mode}": s.training.freeze for s in students.values()}
    checkpoints = {name: s.checkpoint for name, s in students.items() if s.checkpoint}
    if checkpoints:
        parts["checkpoints"] = checkpoints
    return updated(results, **parts)


def decide(config: SubliminalConfig, results: SubliminalResults) -> SubliminalResults:
    """The claims, decided with seeds as the unit (`sublens.claims.subliminal_decisions`)."""
    decided = subliminal_decisions(results, config.control_modes, config.claims)
    return updated(results, claims={key: d.model_dump(mode="json") for key, d in decided.items()})


def save_outputs(run: Run, results: SubliminalResults) -> SubliminalResults:
    """The flat tables (models.parquet, comparisons.parquet) and the figures; the run finished."""
    rows = model_rows(as_json(results.students), as_json(results.evaluations))
    tables = write_tables(run, rows, as_json(results.comparisons))
    with run.timed("figures"):
        figures = [str(p.relative_to(run.path)) for p in make_figures(results, run.path / "figures")]
    return results.model_copy(update={"tables": tables, "figures": figures, "partial": False})


# ---- the terminal summary -----------------------------------------------------------------------
def _level(s: Level | None, digits: int = 4) -> str:
    if s is None:
        return "-"
    bounds = "" if math.isnan(s.ci_low) else f" [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"
    return f"{s.mean:.{digits}f}{bounds}"


def _ratio(r: SeedRatio | None) -> str:
    if r is None:
        return "-"
    bounds = f" [{r.ci_low:.2f}, {r.ci_high:.2f}]" if r.ci_low is not None and r.ci_high is not None else ""
    return f"×{r.ratio:.2f}{bounds}" + (" (underpowered)" if r.underpowered else "")


def print_summary(results: SubliminalResults) -> None:
    console = Console()
    console.print(headline_table(results))
    if results.n_seeds == 1:
        console.print(
            "One training seed: the CIs cover question (prompt) variation only, not the "
            "variation between training runs; no transfer claim rests on them (docs/design.md, Verdicts)."
        )
    decided = subliminal_decisions(results, results.control_modes or [], results.claims_settings, modes=results.modes)
    for decision in decided.values():  # every claim the run's arms support, in the family's order
        console.print(escape(decision.sentence()), soft_wrap=True)
    for line in data_lines(results.data):
        console.print(line)
    for arm, p in (results.parameters or {}).items():
        console.print(f"{arm}: {p.trainable / 1e6:.2f}M trainable, {p.frozen / 1e6:.2f}M frozen")
    spec = results.specificity
    if spec is not None and len(spec.rows) > 1:
        console.print(
            f"specificity ({spec.mode} students, share vs {spec.reference}): "
            + "; ".join(f"{d}: " + ", ".join(f"{a} ×{v:.2f}" for a, v in row.items()) for d, row in spec.rows.items())
        )


def headline_table(results: SubliminalResults) -> Table:
    trait = results.trait
    table = Table(
        title=f"Subliminal transfer of {trait!r} (95% CIs; {counted(results.n_seeds, 'seed')}); "
        f"system prompt {results.system_prompt_used!r}"
    )
    for column in (
        "model",
        "n seeds",
        f"P({trait})",
        "panel share",
        "answer rate",
        "share vs control",
        f"P({trait}) vs control",
        "perplexity",
    ):
        table.add_column(column)
    for row in results.headline or []:
        vs = row.vs_control
        table.add_row(
            row.model,
            str(row.n_seeds),
            _level(row.p_trait),
            _level(row.panel_share, 3),
            _level(row.answer_rate, 3),
            _ratio(vs.share_ratio if vs else None),
            _ratio(vs.p_trait_ratio if vs else None),
            f"{row.perplexity:.2f}" if row.perplexity else "-",
        )
    return table


def data_lines(data: DataRecord | None) -> list[str]:
    """Keep rates and copy rate per data set, and each teacher's numbers against the control's."""
    if data is None:
        return []
    lines = [
        f"data {name}: kept {d.filter.n_kept}/{d.filter.n_answers} ({d.filter.keep_rate:.1%}); "
        f"reasons {d.filter.reasons}; copy rate {d.stats.features['copy_fraction'].mean:.3f}"
        for name, d in data.datasets.items()
    ]
    for name, c in data.comparisons.items():
        features = ", ".join(f"{k} {v.difference:+.3g} (p={v.p_permutation:.3g})" for k, v in c.features.items())
        lines.append(
            f"{name}: digits TVD {c.digit_distribution_tvd.tvd:.3f} "
            f"(p={c.digit_distribution_tvd.p_permutation:.3g}); {features}"
        )
    return lines
