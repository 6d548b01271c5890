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
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sublens.claims import ClaimSettings
from sublens.distill import (
    OUTSIDE,
    AlignedExample,
    FitSet,
    ShdLoss,
    ShdTeacher,
    TextRecord,
    align_record,
    head_groups,
    measure_fit,
    student_encoding,
)
from sublens.errors import ConfigError, SublensError
from sublens.experiments import default_teacher_run
from sublens.experiments.distill.analysis import (
    alpha_summary,
    comparisons,
    headline,
    model_rows,
    preferences_by_seed,
    throughput,
)
from sublens.experiments.distill.config import DistillConfig, TeacherSettings
from sublens.experiments.distill.data import load_records
from sublens.experiments.distill.figures import MapPanel, make_figures, maps_figure
from sublens.experiments.distill.results import (
    ARM_TEACHER,
    ArmRecord,
    DataRecord,
    DistillResults,
    FitRecord,
    Initial,
    PreferenceRecord,
    SeedStudent,
    ShdRecord,
    TeacherRecord,
)
from sublens.hooks import capture, hook_names
from sublens.models import LoadedModel, load_model
from sublens.preference import comparison_line, evaluate_preference
from sublens.prompts import chat_prompt
from sublens.report.latex import counted
from sublens.report.names import arm_label
from sublens.report.sections.distill import decisions
from sublens.result_records import TrainingSummary
from sublens.runs import Run, Team
from sublens.runs import team as current_team
from sublens.settings import TeacherView
from sublens.tables import write_tables
from sublens.training import TrainResult, train, train_summary
from sublens.training_data import tokenizer_pad_id

FIGURES = "figures"
# The loss's own series kept in results.json: the per-layer KLs (kl_L<s>) of every step stay in
# the student's train_result.json beside its checkpoint; the fit gives them before and after.
SUMMARY_CURVES = ("shd", "alpha_mean")
FOLLOWER_RESULTS: dict[str, Any] = {"partial": True}  # what a rank > 0 returns; never written


@dataclass(frozen=True)
class Texts:
    train: list[TextRecord]
    fit: list[TextRecord]  # held out
    provenance: dict[str, Any]  # where they come from, how many (results: data)


@dataclass(frozen=True)
class Teacher:
    """One teacher as used: its spec and view, the model, the texts aligned to the student's
    tokens, and its squeezed maps (`ShdTeacher`)."""

    spec: str
    settings: TeacherSettings
    lm: LoadedModel
    train: list[AlignedExample]
    fit: list[AlignedExample]
    shd: ShdTeacher


@dataclass(frozen=True)
class Setup:
    """What every stage after loading needs: the config, the run, this process's rank among the
    ranks of a launch, and the teachers by role (biased, base)."""

    config: DistillConfig
    run: Run
    team: Team
    teachers: dict[str, Teacher]

    @property
    def texts(self) -> list[AlignedExample]:
        """The training texts as the student reads them (the same for every teacher)."""
        return next(iter(self.teachers.values())).train


@dataclass(frozen=True)
class MapExample:
    """The held-out text, student layer and head of the map figure, and whose maps it shows."""

    text: AlignedExample
    layer: int
    head: int
    teacher: Teacher
    student_tokenizer: Any


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
        gc.collect()
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


# ---- models --------------------------------------------------------------------------------
def newest_teacher_run(runs_root: str | Path) -> str:
    """The newest finished `teacher` run under runs_root that lists a checkpoint."""
    return default_teacher_run(
        runs_root, "biased teacher",
        "Run `sublens run teacher` first, or give one: --set teacher.model=SPEC (e.g. "
        "smollm2-135m-instruct with --set teacher.system=\"<owl system prompt>\": the prompted teacher).",
    )


def teacher_specs(config: DistillConfig) -> dict[str, str]:
    return {"biased": config.teacher.model or newest_teacher_run(config.runs_root),
            "base": str(config.base_teacher.model)}


def teacher_roles(config: DistillConfig) -> list[str]:
    """The teachers the arms distil from (the biased one alone when no arm distils)."""
    return [r for r in ("biased", "base") if any(ARM_TEACHER[a] == r for a in config.arms)] or ["biased"]


def teacher_settings(config: DistillConfig, role: str) -> TeacherSettings:
    return config.teacher if role == "biased" else config.base_teacher


def load(spec: str, config: DistillConfig, run: Run, eager: bool = False) -> LoadedModel:
    with run.timed(f"load:{spec}"):
        return load_model(spec, config.device, config.dtype, attn_implementation="eager" if eager else "sdpa")


def load_teachers(config: DistillConfig, run: Run, specs: dict[str, str], student: LoadedModel,
                  texts: Texts) -> dict[str, Teacher]:
    """The teachers with eager attention (their maps are read), one copy of a model both roles
    use; the texts aligned once per teacher (the student's examples are the same for every arm)."""
    loaded: dict[str, LoadedModel] = {}
    for role in teacher_roles(config):
        same = next((lm for r, lm in loaded.items() if specs[r] == specs[role]), None)
        loaded[role] = same or load(specs[role], config, run, eager=True)
    run.note(models={"student": student.describe(), **{f"teacher:{r}": lm.describe() for r, lm in loaded.items()}})
    with run.timed("align"):
        aligned = {role: align_texts(student, lm, teacher_settings(config, role).view(), texts)
                   for role, lm in loaded.items()}
        check_student_tokens(student, texts.train, [train for train, _ in aligned.values()])
    return {role: Teacher(specs[role], teacher_settings(config, role), lm, *aligned[role],
                          ShdTeacher(lm.model, lm.adapter, student.adapter, config.shd.layers, config.shd.fallback,
                                     tokenizer_pad_id(lm.tokenizer)))
            for role, lm in loaded.items()}


def align_texts(student: LoadedModel, teacher: LoadedModel, view: TeacherView,
                texts: Texts) -> tuple[list[AlignedExample], list[AlignedExample]]:
    def aligned(records: list[TextRecord], what: str) -> list[AlignedExample]:
        return [align_record(r, student.tokenizer, teacher.tokenizer, view, f"{what} #{i}")
                for i, r in enumerate(records)]

    return aligned(texts.train, "training text"), aligned(texts.fit, "fit text")


def check_student_tokens(student: LoadedModel, records: list[TextRecord],
                         aligned: list[list[AlignedExample]]) -> None:
    """Every teacher's alignment keeps the student's own tokenization of the texts, so that all
    arms train on the same student examples."""
    own = [tuple(ids) for ids, _, _ in (student_encoding(student.tokenizer, r, f"training text #{i}")
                                        for i, r in enumerate(records))]
    if any([a.student_ids for a in examples] != own for examples in aligned):
        raise SublensError("A teacher's alignment changed the student's tokens of the training texts.")


def system_in_effect(lm: LoadedModel, settings: TeacherSettings, record: TextRecord) -> dict[str, Any]:
    """What the teacher reads around the text (recorded)."""
    if settings.format == "plain":
        return {"format": "plain", "context": settings.system, "source": "given" if settings.system else "none"}
    prompt = chat_prompt(lm.tokenizer, record.prompt or "x", settings.system)
    return {"format": "chat", "system": prompt.system, "source": prompt.system_source}


# ---- the initial student -------------------------------------------------------------------
def fit_targets(setup: Setup, student: LoadedModel) -> dict[str, FitSet]:
    """Each teacher's squeezed maps on the fit texts, computed once for every student state."""
    config = setup.config
    with setup.run.timed("fit_targets"):
        return {role: FitSet.build(t.shd, t.fit, config.fit_batch_size, config.shd.temperature,
                                   tokenizer_pad_id(student.tokenizer), config.shd.kl_direction)
                for role, t in setup.teachers.items()}


def map_example(setup: Setup, student: LoadedModel) -> MapExample:
    """The map figure's text (the shortest fit text unless one is chosen), layer and head."""
    chosen = setup.config.figure
    teacher = next(iter(setup.teachers.values()))
    layers = teacher.shd.layers
    layer = chosen.layer if chosen.layer is not None else layers[len(layers) // 2]
    if layer not in layers:
        raise ConfigError(f"figure.layer {layer} is not a distilled layer ({layers}).")
    if chosen.head >= student.adapter.n_heads:
        raise ConfigError(f"figure.head {chosen.head}: the student has {student.adapter.n_heads} heads.")
    index = chosen.example if chosen.example is not None else int(np.argmin([a.n_student for a in teacher.fit]))
    if not 0 <= index < len(teacher.fit):
        raise ConfigError(f"figure.example {index} is outside the fit set (0..{len(teacher.fit) - 1}).")
    return MapExample(teacher.fit[index], layer, chosen.head, teacher, student.tokenizer)


def student_map(lm: LoadedModel, example: MapExample) -> np.ndarray:
    """The student's attention probabilities [n, n] on the example at its layer and head."""
    name = hook_names(["attn.hook_pattern"], [example.layer])
    ids = torch.tensor([example.text.student_ids], device=lm.device)
    with torch.no_grad(), capture(lm.model, lm.adapter, name) as cache:
        lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return cache[name[0]][0, example.head].float().cpu().numpy()


def measure(setup: Setup, lm: LoadedModel, fitsets: dict[str, FitSet], tag: str,
            seed: int) -> tuple[dict[str, FitRecord], PreferenceRecord]:
    """A student's KL to every teacher's squeezed maps on the fit texts, and its preference."""
    with setup.run.timed(f"fit:{tag}"):
        fit = measure_fit(lm.model, lm.adapter, fitsets)
    with setup.run.timed(f"preference:{tag}"):
        preference = evaluate_preference(lm, setup.config.preference, None, seed)
    return ({role: FitRecord.model_validate(f) for role, f in fit.items()},
            PreferenceRecord.model_validate(preference))


def first_results(setup: Setup, texts: Texts, specs: dict[str, str], fitsets: dict[str, FitSet],
                  fit: dict[str, FitRecord], preference: PreferenceRecord) -> DistillResults:
    """The results before any student is trained: the set-up, the α and the initial student."""
    config, teachers = setup.config, setup.teachers
    return DistillResults(
        partial=True,
        student=config.student,
        teachers={role: TeacherRecord.model_validate(
            {"spec": t.spec, **system_in_effect(t.lm, t.settings, texts.fit[0]), **t.shd.describe()})
            for role, t in teachers.items()},
        data=data_record(texts.provenance, teachers),
        shd=ShdRecord.model_validate(config.shd.model_dump(mode="json")),
        alphas={role: {str(s): alpha_summary(phases) for s, phases in fs.alphas().items()}
                for role, fs in fitsets.items()},
        fit={"initial": fit},
        arms={},
        checkpoints={},
        seeds=config.training_seeds,
        per_seed={},
        notes=same_teacher_note(config, specs),
        initial=Initial(preference=preference),
    )


def data_record(provenance: dict[str, Any], teachers: dict[str, Teacher]) -> DataRecord:
    train = next(iter(teachers.values())).train
    return DataRecord(
        **provenance,
        student_tokens=int(sum(a.n_student for a in train)),
        answer_tokens=int(sum(a.n_student - a.n_prompt for a in train)),
        mean_student_tokens=float(np.mean([a.n_student for a in train])),
        mean_teacher_tokens={r: float(np.mean([a.n_teacher for a in t.train])) for r, t in teachers.items()},
        identity_alignment={r: all(a.identity for a in t.train) for r, t in teachers.items()},
    )


def same_teacher_note(config: DistillConfig, specs: dict[str, str]) -> list[str]:
    if specs["biased"] == specs["base"] and config.teacher == config.base_teacher.model_copy(
            update={"model": config.teacher.model}):
        return ["The biased and base teachers are the same model read the same way: shd_biased and "
                "shd_base are the same experiment."]
    return []


# ---- the students ----------------------------------------------------------------------------
def arm_tag(config: DistillConfig, arm: str, seed: int) -> str:
    return arm if len(config.training_seeds) == 1 else f"{arm}:seed{seed}"


def train_student(setup: Setup, seed: int, arm: str) -> tuple[LoadedModel, TrainResult]:
    """One arm's student for one training seed, trained from the initial weights (every rank of
    a launch calls this for the same arm and seed: the steps are data parallel)."""
    config, run = setup.config, setup.run
    lm = load(config.student, config, run)
    train_config = config.train.model_copy(update={"seed": seed, "extra_loss_weight": config.shd.beta})
    one_seed = len(config.training_seeds) == 1
    out_dir = run.artifact(f"checkpoints/{arm}" if one_seed else f"checkpoints/{arm}/seed{seed}")
    role = ARM_TEACHER[arm]
    with run.timed(f"train:{arm_tag(config, arm, seed)}"):
        if role is None:
            result = train(lm.model, lm.tokenizer, [a.example() for a in setup.texts], train_config, out_dir,
                           adapter=lm.adapter)
        else:
            teacher = setup.teachers[role]
            loss = ShdLoss(teacher.shd, teacher.train, config.shd.temperature, config.shd.kl_direction)
            with loss.attached(lm.model, lm.adapter):
                result = train(lm.model, lm.tokenizer, [a.example() for a in teacher.train], train_config,
                               out_dir, extra_loss=loss, adapter=lm.adapter)
    return lm, result


def training_summary(result: TrainResult) -> TrainingSummary:
    """`train_summary`, with the loss's own series narrowed to SUMMARY_CURVES."""
    summary = train_summary(result)
    kept = {name: series for name, series in summary.extra_curves.items() if name in SUMMARY_CURVES}
    return summary.model_copy(update={"extra_curves": kept})


def train_and_measure(setup: Setup, fitsets: dict[str, FitSet], seed: int, arm: str, example: MapExample,
                      maps: dict[str, np.ndarray], results: DistillResults) -> DistillResults:
    """Train one arm's student for one seed, measure it, save; the first seed's students also
    give the map figure their maps (added to `maps`)."""
    tag = arm_tag(setup.config, arm, seed)
    lm, result = train_student(setup, seed, arm)
    fit, preference = measure(setup, lm, fitsets, tag, seed)
    first = seed == setup.config.training_seeds[0]
    if first:
        maps[arm] = student_map(lm, example)
    checkpoint = str(Path(result.model_dir).relative_to(setup.run.path)) if result.model_dir else None
    student = SeedStudent(train=training_summary(result), preference=preference, fit=fit)
    results = with_student(results, seed, arm, student, first, tag, checkpoint)
    setup.run.save_results(results)
    setup.team.sync(f"{tag} measured")
    del lm
    gc.collect()
    return results


def with_student(results: DistillResults, seed: int, arm: str, student: SeedStudent, first: bool,
                 name: str, checkpoint: str | None) -> DistillResults:
    """The results with one more trained student: under its seed, and where it is the first
    seed's also as the arm's student (the figures and the tables show those)."""
    by_seed = {**results.per_seed.get(str(seed), {}), arm: student}
    update: dict[str, Any] = {"per_seed": {**results.per_seed, str(seed): by_seed}}
    if first:
        update["fit"] = {**results.fit, arm: student.fit}
        update["arms"] = {**results.arms, arm: ArmRecord(teacher=ARM_TEACHER[arm], train=student.train,
                                                         preference=student.preference, seed=seed)}
    if checkpoint is not None:
        update["checkpoints"] = {**results.checkpoints, name: checkpoint}
    return results.model_copy(update=update)


def follow(setup: Setup) -> dict[str, Any]:
    """A rank > 0 of a launch: joins every student's training steps, in rank 0's order."""
    gc.collect()  # the student this rank loaded is rank 0's to measure
    setup.team.sync("initial student measured")
    for seed in setup.config.training_seeds:
        for arm in setup.config.arms:
            train_student(setup, seed, arm)
            setup.team.sync(f"{arm_tag(setup.config, arm, seed)} measured")
            gc.collect()
    return FOLLOWER_RESULTS


# ---- comparisons, tables and figures ---------------------------------------------------------
def compare_students(results: DistillResults, run: Run) -> DistillResults:
    """Every comparison of students (`analysis.comparisons`), the parquet tables, the headline."""
    compared = comparisons(preferences_by_seed(results), results.initial.preference.model_dump(mode="json"))
    tables = write_tables(run, model_rows(results), {k: c.model_dump(mode="json") for k, c in compared.items()})
    return results.model_copy(update={
        "comparisons": compared,
        "headline": headline(results.initial.preference, results.arms, compared),
        "tables": tables,
        "throughput": throughput(results.arms),
    })


def draw_figures(results: DistillResults, run: Run, example: MapExample, maps: dict[str, np.ndarray]) -> list[str]:
    """The figures, relative to the run; the map figure from the maps captured on the way."""
    labels = token_labels(example.student_tokenizer, example.text.student_ids)
    t = example.teacher
    panels = teacher_panels(t.shd, t.lm.tokenizer, example.student_tokenizer, example.text, example.layer,
                            example.head)
    panels += [MapPanel(_student_title(state), matrix, labels, labels) for state, matrix in maps.items()]
    title = f"student layer {example.layer}, head {example.head}"
    return [str(p.relative_to(run.path)) for p in make_figures(results, run.path / FIGURES, panels, title)]


def _student_title(state: str) -> str:
    """'initial student', 'LM-only student': the arm's label as a compound adjective."""
    return "initial student" if state == "initial" else f"{arm_label(state).replace(' ', '-')} student"


def token_labels(tokenizer: Any, ids: Any) -> list[str]:
    """Tokens as short axis labels (space and newline markers spelled out)."""
    if tokenizer is None:
        return [str(i) for i in ids]
    labels = []
    for token in tokenizer.convert_ids_to_tokens(list(ids)):
        text = str(token).replace("Ġ", "_").replace("▁", "_").replace("Ċ", "\\n").replace("\n", "\\n")
        labels.append(text[:8])
    return labels


def _heads(group: list[int]) -> str:
    """Merged teacher heads: 'H0–H3' for a run of adjacent heads, else 'H0+H5'."""
    if len(group) > 1 and group == list(range(group[0], group[-1] + 1)):
        return f"H{group[0]}–H{group[-1]}"
    return "+".join(f"H{h}" for h in group)


def teacher_panels(teacher: ShdTeacher, teacher_tok: Any, student_tok: Any, example: AlignedExample, layer: int,
                   head: int) -> list[MapPanel]:
    """The first teacher head merged into student head `head`, the squeezed map (both on the
    teacher's text tokens) and its projection onto the student's tokens."""
    targets = teacher.targets([example], keep_raw=True)
    raw = targets.raw[layer]
    group = head_groups(teacher.k, teacher.m, teacher.fallback)[head]
    inside = [i for i, span in enumerate(example.teacher_spans) if span != OUTSIDE and (span[1] > span[0] or i == 0)]
    idx = torch.tensor(inside)
    t_labels = token_labels(teacher_tok, [example.teacher_ids[i] for i in inside])
    s_labels = token_labels(student_tok, example.student_ids)
    first = raw["teacher"][0, group[0]][idx][:, idx].cpu().numpy()
    squeezed = raw["squeezed"][0, head][idx][:, idx].cpu().numpy()
    projected = targets.maps[layer][0, head].cpu().numpy()
    return [
        MapPanel(f"teacher L{teacher.teacher_layer[layer]}H{group[0]}", first, t_labels, t_labels),
        MapPanel(f"squeezed {_heads(group)}", squeezed, t_labels, t_labels),
        MapPanel("on student tokens", projected, s_labels, s_labels),
    ]


# ---- the terminal --------------------------------------------------------------------------
def print_summary(results: DistillResults, claims: ClaimSettings | None = None) -> None:
    """Every student's preference and fit as a table, the comparisons and the claims."""
    head = results.headline
    if head is None:
        return
    trait, seeds = head.trait, results.seeds
    table = Table(title=f"SHD students: preference for {trait!r} (95% CIs over questions"
                        + (f", seed {seeds[0]})" if seeds else ")"))
    for column in ("student", f"P({trait})", "panel share", "answer rate", "KL to biased (before→after)"):
        table.add_column(column)
    before = _kl_biased(results, "initial")
    for name, row in head.students.items():
        p, share, rate = row.p_trait, row.panel_share, row.answer_rate
        after = _kl_biased(results, name)
        table.add_row(
            name,
            f"{p.mean:.4f} [{p.ci_low:.4f}, {p.ci_high:.4f}]",
            f"{share.mean:.3f} [{share.ci_low:.3f}, {share.ci_high:.3f}]",
            f"{rate.rate:.3f} [{rate.ci_low:.3f}, {rate.ci_high:.3f}]" if rate else "-",
            f"{before:.3f} → {after:.3f}" if before is not None and after is not None else "",
        )
    console = Console()
    console.print(table)
    for key in ("shd_biased_vs_lm_only", "shd_biased_vs_shd_base"):
        compared = getattr(head, key)
        if compared is not None:
            console.print(comparison_line(key, compared.model_dump(mode="json"), trait)
                          + f" ({counted(len(seeds), 'seed')})")
    for decision in decisions(results, claims):
        console.print(decision.sentence())


def _kl_biased(results: DistillResults, state: str) -> float | None:
    fit = results.fit.get(state, {}).get("biased")
    kl = fit.kl() if fit is not None else None
    return kl.mean if kl is not None else None


# ---- the alignment figure of docs/shd_alignment.md ----------------------------------------
ALIGNMENT_TEXT = TextRecord("Subliminal owls extrapolate 142857.", "Nonetheless, 211")


def alignment_figure(stem: Path, teacher: str = "smollm2-135m-instruct", student: str = "gemma3-270m",
                     layer: int = 4, head: int = 0) -> list[Path]:
    """Teacher map, squeezed map and projection onto the student's tokens for one short text
    (plain teacher view), with the alignment matrix, as in docs/shd_alignment.md."""
    from sublens.figures import save_figure

    t = load_model(teacher, "cpu", attn_implementation="eager")
    s = load_model(student, "cpu")
    example = align_record(ALIGNMENT_TEXT, s.tokenizer, t.tokenizer, TeacherView("plain"))
    shd_teacher = ShdTeacher(t.model, t.adapter, s.adapter, [layer])
    panels = teacher_panels(shd_teacher, t.tokenizer, s.tokenizer, example, layer, head)
    Q, _ = example.matrices()
    panels.insert(2, MapPanel("alignment Q", Q.float().numpy(), token_labels(s.tokenizer, example.student_ids),
                              token_labels(t.tokenizer, example.teacher_ids), "teacher token", "student token"))
    return save_figure(maps_figure(panels, f"student layer {layer}, head {head}", columns=2), stem)
