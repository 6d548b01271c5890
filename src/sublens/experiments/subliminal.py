"""subliminal: does a student pick up the teacher's owl preference from numbers alone, and which
components carry it (full vs attention-frozen vs MLP-frozen fine-tuning)?

1. Number data. Prompts from `make_number_prompts` (seeded). Answers sampled at explicit settings
   (temperature 1 by default) from the biased teacher (``teacher: prompted`` = the base model
   under ``teacher_system``; or a model spec, e.g. a `teacher` run directory, prompted with
   ``system``) and, for the control data, from the unbiased base model under ``system``.
   ``extra_teachers`` adds prompted teachers of other animals (name -> system prompt): their
   full students give the teacher-animal x measured-animal specificity matrix. Optional
   format-constrained sampling (`sublens.subliminal.NumberFormat`), recorded in every line's
   provenance. Sharded JSONL, atomic, resumable (`sample_sharded`).
2. Filter. `filter_answer` on every answer (cut-off answers rejected as truncated); every
   rejection's reason kept; keep rates reported; all data sets subsampled (seeded) to one size
   and written to data/<name>.train.jsonl.
3. Data statistics of each teacher's kept numbers (digits, lengths, copy rate of the prompt's
   numbers, increasing steps) and permutation tests of each teacher against the control.
4. Students, from the base model, one per (data set, mode, seed): owl data in ``modes``
   (full / freeze-attention / freeze-mlp), control data in ``control_modes``, extra teachers'
   data in full. Training prompt: ``system`` resolved to its text (SmolLM2's template default
   when null) and passed explicitly; never the owl prompt. Loss on answer tokens only
   (`sublens.training.train`, checkpointed, resumable); trainable / frozen parameter counts per
   mode recorded. Students may run as ``parallel`` separate processes (two single-thread
   processes beat one two-thread process on 2 cores); under ``accelerate launch`` they run one
   after another instead, each trained data-parallel across the launched processes (rank 0
   alone samples, measures and writes; `execute`).
5. Evaluation. The base model, the teacher and every student with `evaluate_preference` under
   ``system`` (the same sampling seed for all: paired samples) and perplexity; each owl student
   against the control student of the same seed (the same freeze mode when there is one) with
   `compare_preference`. Across seeds: the mean of per-seed log ratios with a Student-t 95% CI
   (with one seed, the CI covers question variation only, and says so). A comparison whose CI
   includes no change is marked underpowered. A transfer claim needs the panel share to rise,
   not only P(owl).

Rerunning into the same run directory (`run_experiment(..., run_dir=PATH)`) skips finished
shards, students and measurements and resumes an interrupted student from its checkpoint.
"""

from __future__ import annotations

import gc
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm.auto import tqdm

from sublens.claims import ClaimSettings, subliminal_decisions
from sublens.config import Config, ReadAs
from sublens.corpus import load_text
from sublens.divergence import Teacher, divergence_flags, divergence_summary
from sublens.entangled_numbers import (
    ENTANGLED,
    MATCHED,
    enrichment,
    filtered_pair,
    read_number_sets,
)
from sublens.errors import ConfigError
from sublens.experiments import Experiment
from sublens.figures import PAPER_RC, save_figure
from sublens.models import LoadedModel, load_model
from sublens.number_data import make_number_prompts
from sublens.perplexity import PerplexitySettings, measure_perplexity
from sublens.preference import PreferenceSettings, compare_preference, evaluate_preference
from sublens.prompts import make_prompt, resolve_system
from sublens.report.latex import counted
from sublens.runs import Run, Team, atomic_write_json, read_json
from sublens.runs import team as current_team
from sublens.scoring import default_stop_token_ids
from sublens.subliminal import (
    GRAMMAR,
    OWL_TEACHER_SYSTEM,
    NumberFormat,
    SamplingSettings,
    compare_number_stats,
    derived_seed,
    filter_record,
    filter_report,
    number_prompt_meta,
    number_stats,
    read_jsonl,
    sample_sharded,
    stable_hash,
    subsample,
    t_interval,
    training_example,
    write_jsonl,
)
from sublens.tables import preference_columns, write_tables
from sublens.trainable import check_arm, split_arm
from sublens.training import TrainConfig, train, train_summary
from sublens.training_data import Example

OWL = "owl"
CONTROL = "control"
STUDENT_FILE = "student.json"
# Names the run already gives its data sets and measurements (data/<name>.train.jsonl,
# measurements/<name>.json): an extra teacher under one of them would overwrite their files.
BUILTIN_DATASETS = (OWL, CONTROL, "base", "teacher")
# An extra teacher's name becomes part of file and folder names (data/<name>.train.jsonl,
# students/<name>-full-seed<k>/), so it may not hold a path separator, "..", or anything a
# shell or another file system would read differently.
TEACHER_NAME = re.compile(r"[A-Za-z0-9_-]+")
# A student arm (sublens.trainable): a trainable set, optionally ~skip-divergence or
# ~divergence-only (which answer tokens are in the loss).
StudentArm = Annotated[str, AfterValidator(check_arm), ReadAs("student arm")]


# ---- config --------------------------------------------------------------------------------
class NumberData(SamplingSettings):
    """Number prompts and how the teachers answer them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_prompts: int = Field(default=600, ge=1, description="number prompts (seeded by the data seed); every "
                           "teacher answers each one samples_per_prompt times")
    # Common random numbers: every teacher samples with the same seeds, so the data sets differ
    # only where the teachers' distributions do (less noise, but paired data: the data-level
    # permutation tests then assume an independence they do not have). Off: each teacher has
    # its own seeds, as in independent sampling.
    common_random_numbers: bool = Field(
        default=False, description="every teacher samples with the same seeds (paired data: less noise, but the "
                                   "data-level permutation tests assume independence); false: each teacher has "
                                   "its own seeds")
    # Format-constrained sampling: only tokens that keep the answer valid (digits, one separator,
    # brackets, period) and end-of-turn where it may end; probabilities renormalised over them.
    constrained: bool = Field(
        default=True, description="format-constrained sampling: only tokens that keep the answer valid (digits, "
                                  "one separator, brackets, period) and end-of-turn where it may end, "
                                  "probabilities renormalised over them")


def _default_data() -> NumberData:
    return NumberData(temperature=1.0, top_k=None, top_p=None, max_new_tokens=64,
                      samples_per_prompt=1, batch_size=32, shard_size=128)


def _default_train() -> TrainConfig:
    return TrainConfig(lr=5e-5, epochs=1, batch_size=8, warmup_steps=5, max_length=256,
                       checkpoint_every=25)


def _default_modes() -> list[StudentArm]:
    return ["full", "freeze-attention", "freeze-mlp"]


class EntangledSettings(BaseModel):
    """Entanglement tied to transfer (sublens.entangled_numbers): an entanglement run's numbers
    in the owl and control data, and owl students trained without them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str | None = Field(default=None, description="run directory of a finished entanglement run; null: "
                                                      "no entanglement test (the paper chain wires its own)")
    set: str = Field(default="ar2", description="the entanglement run's categorised set whose increased and "
                                                "random numbers are counted (ar2: two-digit numbers)")
    filter_students: bool = Field(default=True, description="also train full owl students on the owl data "
                                                            "without answers holding an increased number, and "
                                                            "without answers holding a random-set number "
                                                            "(size-matched), each with every seed")


class DivergenceSettings(BaseModel):
    """Divergence tokens of the owl and control data (sublens.divergence)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measure: bool = Field(default=False, description="flag every training answer token at which the owl and "
                                                     "the control teacher would choose differently; on by "
                                                     "itself when an arm masks by divergence")
    batch_size: int = Field(default=16, ge=1, description="examples per teacher forward pass")


def _default_control_modes() -> list[StudentArm]:
    return _default_modes()  # a matched control student for every owl mode


def check_teacher_name(name: str) -> None:
    """Refuse an extra teacher name that is not a safe file name or that a built-in data set uses."""
    if not TEACHER_NAME.fullmatch(name):
        raise ValueError(f"extra teacher name {name!r} is not allowed: use only ASCII letters, digits, "
                         "'-' and '_' (e.g. eagle, red_fox); the name becomes part of file and folder "
                         "names in the run folder")
    if name.lower() in BUILTIN_DATASETS:
        raise ValueError(f"extra teacher name {name!r} is taken by a built-in data set "
                         f"({', '.join(BUILTIN_DATASETS)}, in any case) and would overwrite its files; "
                         "choose another name, e.g. eagle")


class SubliminalConfig(Config):
    base: str = Field(default="smollm2-135m-instruct",
                      description="model spec every student is fine-tuned from; also the prompted teachers' "
                                  "model and the control teacher when control_teacher is base")
    # The biased teacher: "prompted" = the base model under teacher_system; or a model spec (a
    # `teacher` run directory, a checkpoint folder...), which is prompted with `system`.
    teacher: str = Field(default="prompted",
                         description="the biased teacher: prompted = the base model under teacher_system; else a "
                                     "model spec (e.g. a `teacher` run directory), prompted with `system`")
    teacher_system: str = Field(default=OWL_TEACHER_SYSTEM,
                                description="system prompt of the prompted teacher (the trait to transfer), "
                                            "also when it is measured; unused with a model-spec teacher")
    # The control teacher: "base" = the unbiased base model under `system`; or a model spec of a
    # teacher made by the same procedure as the owl teacher from a neutral prompt (a `teacher`
    # run with control_system: RUN_DIR#control_teacher), so the data differ only by the trait.
    control_teacher: str = Field(
        default="base", description="the control teacher, prompted with `system`: base = the unbiased base model; "
                                    "else a model spec of a teacher made from a neutral prompt (e.g. "
                                    "RUN_DIR#control_teacher of a `teacher` run with control_system)")
    # The system prompt of the control teacher, of a model-spec teacher, of every student's
    # training prompts and of every measurement; null = the chat template's default, resolved to
    # its text and passed explicitly (recorded as system_prompt_used).
    system: str | None = Field(
        default=None, description="system prompt of the control teacher, of a model-spec teacher, of every "
                                  "student's training prompts and of every measurement; null: the chat "
                                  "template's default, resolved to its text and passed explicitly")
    # More prompted control teachers, name -> system prompt (e.g. eagle: "You love eagles...");
    # each gets full students: the specificity matrix.
    extra_teachers: dict[str, str] = Field(
        default_factory=dict, description="more prompted teachers of the base model, name -> system prompt (e.g. "
                                          "eagle: \"You love eagles...\"); each gets full students: the "
                                          "specificity matrix")
    data: NumberData = Field(default_factory=_default_data,
                             description="the number prompts and how every teacher samples its answers")
    n_examples: int | None = Field(
        default=500, ge=1, description="training examples per data set: every data set's kept answers are "
                                       "subsampled (seeded) to this one size, or to the smallest kept count when "
                                       "that is fewer; null: the smallest kept count")
    modes: list[StudentArm] = Field(default_factory=_default_modes,
                                    description="arms of the owl students (sublens.trainable): a trainable "
                                                "set (full, freeze-attention, freeze-mlp, layers.N[-M][.mlp|"
                                                ".attention], each optionally +loraR), optionally "
                                                "~skip-divergence or ~divergence-only (divergence tokens "
                                                "out of the loss, or the loss on them alone)")
    control_modes: list[StudentArm] = Field(
        default_factory=_default_control_modes,
        description="trainable sets of the control students; every owl set needs its matched "
                    "control (an owl student trained on set X is compared with the control student of set X)")
    seeds: list[int] = Field(default_factory=lambda: [0], description="student training seeds")
    evaluation_systems: dict[str, str] = Field(
        default_factory=dict,
        description="further system prompts every student is also measured under (name -> text; '' is an "
                    "empty system turn), each owl arm against its matched control side by side with the main "
                    "measurement under `system`; e.g. {empty: '', neutral: 'You are a helpful assistant.'}")
    entangled: EntangledSettings = Field(default_factory=EntangledSettings,
                                         description="entanglement tied to transfer: enrichment of an "
                                                     "entanglement run's numbers in the data, and filtered students")
    divergence: DivergenceSettings = Field(default_factory=DivergenceSettings,
                                           description="divergence tokens of the owl and control data")
    data_per_seed: bool = Field(
        default=True, description="each training seed s re-samples the number prompts and every "
                                  "teacher's data (with seed `seed` + s), so intervals across seeds "
                                  "include data-sampling variance; false: one data set for all seeds")
    train: TrainConfig = Field(default_factory=_default_train,
                               description="how every student is fine-tuned; its seed and freeze are set per "
                                           "student (from seeds and modes), its save_model from keep_models")
    parallel: int = Field(default=1, ge=1, description="students trained at once, each in its own process; "
                                                       "1: one after another in this process")
    threads: int | None = Field(default=None, ge=1, description="torch threads per student; null: cores / "
                                                                "parallel when parallel > 1, else torch's default")
    keep_models: bool = Field(default=False, description="save every student's fine-tuned weights "
                                                         "(students/<name>/model); false: none are kept")
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings,
        description="how the trait preference of the base model, the teacher and every student is measured")
    perplexity: PerplexitySettings = Field(default_factory=PerplexitySettings,
                                           description="perplexity of the same models on a text corpus")
    stats_resamples: int = Field(default=5000, ge=100,
                                 description="permutations of each test of a teacher's numbers against the "
                                             "control's (digits, lengths, copy rate, increasing steps)")
    claims: ClaimSettings = Field(default_factory=ClaimSettings,
                                  description="margin, alpha and power of the verdicts (sublens.claims)")
    device: str = Field(default="auto", description="where the models run: auto (cuda, else mps, else cpu), "
                                                    "cpu, cuda, cuda:N or mps")
    dtype: str = Field(default="auto", description="dtype of the models' weights: auto (float32 on CPU, "
                                                   "bfloat16 on accelerators), float32, bfloat16 or float16")

    @field_validator("modes", "control_modes")
    @classmethod
    def _modes(cls, modes: list[str]) -> list[str]:
        if len(set(modes)) != len(modes):
            raise ValueError("modes must be distinct")
        return modes

    @field_validator("extra_teachers")
    @classmethod
    def _extra_teacher_names(cls, teachers: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}  # lower-cased -> as given: "Eagle" and "eagle" share a file on macOS
        for name in teachers:
            check_teacher_name(name)
            folded = name.lower()
            if folded in seen:
                raise ValueError(f"extra teacher names {seen[folded]!r} and {name!r} differ only by case; "
                                 "they would share files on a case-insensitive file system: rename one")
            seen[folded] = name
        return teachers

    @field_validator("evaluation_systems")
    @classmethod
    def _evaluation_names(cls, systems: dict[str, str]) -> dict[str, str]:
        for name in systems:
            if not TEACHER_NAME.fullmatch(name) or name == "default":
                raise ValueError(f"evaluation prompt name {name!r}: use letters, digits, _ or - (and not "
                                 "'default', the name of the main measurement)")
        return systems

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("give one or more distinct seeds, e.g. [0, 1, 2]")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> SubliminalConfig:
        if self.entangled.run is not None and self.entangled.filter_students and "full" not in self.control_modes:
            raise ValueError("entangled.filter_students trains full owl students: add full to control_modes "
                             "(their matched control)")
        if not self.control_modes:
            raise ValueError("control_modes needs at least one mode (the control student, e.g. [full])")
        unmatched = [m for m in self.modes if m not in self.control_modes]
        if unmatched:
            raise ValueError(
                f"owl modes {unmatched} have no matched control student: add them to control_modes "
                f"(e.g. control_modes={self.modes}); comparing a frozen owl student with a fully "
                "fine-tuned control would mix the effect of freezing with the effect of the data")
        if self.extra_teachers and "full" not in self.control_modes:
            raise ValueError("extra_teachers train full students: add full to control_modes (their matched control)")
        if any(not s.strip() for s in self.extra_teachers.values()):
            raise ValueError("every extra teacher needs a system prompt")
        return self


# ---- teachers and data ---------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherSource:
    name: str
    model: str  # "base" or a model spec
    system: str | None  # the system prompt its answers are sampled under
    kind: str  # "prompted", "model" or "control"

    def provenance(self, base: str) -> dict[str, Any]:
        return {"teacher": {"name": self.name, "kind": self.kind,
                            "model": base if self.model == "base" else self.model,
                            "system": self.system}}


def teacher_sources(config: SubliminalConfig, system_used: str | None) -> list[TeacherSource]:
    if config.teacher == "prompted":
        owl = TeacherSource(OWL, "base", config.teacher_system, "prompted")
    else:
        owl = TeacherSource(OWL, config.teacher, system_used, "model")
    sources = [owl, TeacherSource(CONTROL, config.control_teacher, system_used, "control")]
    sources += [TeacherSource(name, "base", system, "prompted") for name, system in config.extra_teachers.items()]
    return sources


# The owl data without the entanglement run's increased numbers / without its random set.
NO_ENTANGLED, NO_RANDOM = f"{OWL}-no-entangled", f"{OWL}-no-random"


def filtered_datasets(config: SubliminalConfig) -> list[str]:
    """Data sets of the entanglement filter's students (none unless asked for)."""
    return [NO_ENTANGLED, NO_RANDOM] if config.entangled.run is not None and config.entangled.filter_students else []


def entangled_data(config: SubliminalConfig, data: dict[str, list[dict[str, Any]]],
                   chosen: dict[str, list[dict[str, Any]]], size: int, seed: int
                   ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Enrichment of the entanglement run's numbers in the owl vs control training data, and
    (when asked) the two filtered owl data sets, matched in size."""
    assert config.entangled.run is not None
    number_sets = read_number_sets(config.entangled.run, config.entangled.set)
    report: dict[str, Any] = {"run": config.entangled.run, "set": config.entangled.set,
                              "enrichment": enrichment(chosen[OWL], chosen[CONTROL], number_sets)}
    extra: dict[str, list[dict[str, Any]]] = {}
    if config.entangled.filter_students:
        kept = [r for r in data[OWL] if r["kept"]]
        pair, report["filter"] = filtered_pair(kept, number_sets, size, seed)
        extra = {NO_ENTANGLED: pair[ENTANGLED], NO_RANDOM: pair[MATCHED]}
    return report, extra


def data_seed(config: SubliminalConfig, training_seed: int) -> int:
    """The seed of the prompts and teacher samples that the students of `training_seed` learn from."""
    return config.seed + training_seed if config.data_per_seed else config.seed


def data_seeds(config: SubliminalConfig) -> list[int]:
    """The distinct data seeds of a run, in the order of its training seeds."""
    return list(dict.fromkeys(data_seed(config, s) for s in config.seeds))


def data_folder(config: SubliminalConfig, seed: int) -> str:
    """Run-relative folder of one data seed's files: data/ for the run's own seed (the layout of
    single-seed runs), data/seed<k>/ for the others."""
    return "data" if seed == config.seed else f"data/seed{seed}"


def generate_data(
    config: SubliminalConfig, base: LoadedModel, sources: list[TeacherSource], out: Path,
    on_shard: Callable[[str, int], None] | None = None, progress: bool = True, seed: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every teacher's answers to the number prompts (seeded by `seed`, default config.seed),
    filtered; sharded under out/<name>/."""
    seed = config.seed if seed is None else seed
    prompts = make_number_prompts(config.data.n_prompts, seed)
    meta = number_prompt_meta(prompts)
    data: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        lm = base if source.model == "base" else load_model(source.model, config.device, config.dtype)
        texts = [make_prompt(lm.tokenizer, p.text, source.system) for p in prompts]
        allowed = NumberFormat(lm.tokenizer, default_stop_token_ids(lm)) if config.data.constrained else None
        sampling_seed = seed if config.data.common_random_numbers else derived_seed("teacher", seed, source.name)
        data[source.name] = sample_sharded(
            lm, texts, meta, config.data, seed=sampling_seed, out_dir=out / source.name,
            name=source.name, provenance=source.provenance(config.base), allowed=allowed,
            annotate=filter_record, on_shard=on_shard, progress=progress)
        if lm is not base:
            del lm
            gc.collect()
    return data


# ---- divergence tokens ---------------------------------------------------------------------
def needs_divergence(config: SubliminalConfig) -> bool:
    """Divergence tokens are measured when asked for or when an arm masks the loss by them."""
    arms = [*config.modes, *config.control_modes]
    return config.divergence.measure or any(split_arm(arm)[1] != "all" for arm in arms)


def divergence_file(train_file: str) -> str:
    """data/<name>.train.jsonl -> data/<name>.divergence.json (flags, one list per example)."""
    return train_file.removesuffix(".train.jsonl") + ".divergence.json"


def student_examples(tokenizer: Any, records: list[dict[str, Any]], system: str | None) -> list[Example]:
    """The examples a student is trained on, one per kept record."""
    return [training_example(tokenizer, r["prompt"], r["answer"].strip(), system) for r in records]


def answer_token_ids(tokenizer: Any, example: Example) -> list[int]:
    """The answer tokens as training tokenizes them (the positions the loss and its mask cover)."""
    if isinstance(example.answer, str):
        return list(tokenizer(example.answer, add_special_tokens=False)["input_ids"])
    return [int(i) for i in example.answer]


def measure_divergence(config: SubliminalConfig, base: LoadedModel, sources: list[TeacherSource],
                       system_used: str | None, run_path: Path, files: dict[str, str]) -> dict[str, Any]:
    """Flag every training answer token of the owl and control data at which the owl teacher and
    the control teacher would choose differently (sublens.divergence); flags saved per data set,
    reused when data and teachers are unchanged. Returns the per-data-set summaries."""
    owl, control = sources[0], sources[1]
    loaded = {s.name: base if s.model == "base" else load_model(s.model, config.device, config.dtype)
              for s in (owl, control)}
    biased = Teacher(loaded[owl.name].model, loaded[owl.name].tokenizer, owl.system)
    unbiased = Teacher(loaded[control.name].model, loaded[control.name].tokenizer, control.system)
    allowed = NumberFormat(base.tokenizer, default_stop_token_ids(base)) if config.data.constrained else None
    summaries: dict[str, Any] = {}
    for name in (OWL, CONTROL):
        records = read_jsonl(run_path / files[name])
        examples = student_examples(base.tokenizer, records, system_used)
        answers = [answer_token_ids(base.tokenizer, e) for e in examples]
        path = run_path / divergence_file(files[name])
        key = stable_hash(answers, [r["prompt"] for r in records], owl.provenance(config.base),
                          control.provenance(config.base), config.data.constrained)
        saved = read_json(path) if path.is_file() else {}
        if saved.get("key") != key:
            flags = divergence_flags(biased, unbiased, [r["prompt"] for r in records], answers, base.tokenizer,
                                     allowed=allowed, stop_token_ids=default_stop_token_ids(base),
                                     batch_size=config.divergence.batch_size, desc=f"divergence tokens ({name})")
            saved = {"key": key, "flags": flags}
            atomic_write_json(path, saved)
        summaries[name] = divergence_summary(saved["flags"]) | {"file": divergence_file(files[name])}
    return summaries


def masked_examples(examples: list[Example], flags: list[list[bool]], loss: str) -> tuple[list[Example], int]:
    """Examples with a loss mask by divergence (`skip-divergence`: those tokens out of the loss;
    `divergence-only`: only those in it); examples left with no token in the loss are dropped
    (returned: the examples kept and how many were dropped)."""
    kept = []
    for example, flagged in zip(examples, flags, strict=True):
        mask = [not f for f in flagged] if loss == "skip-divergence" else list(flagged)
        if any(mask):
            kept.append(replace(example, loss_mask=mask))
    return kept, len(examples) - len(kept)


# ---- students ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentJob:
    """Everything one student needs, as plain data (it may run in another process)."""

    name: str
    dataset: str
    mode: str
    seed: int
    data_file: str
    out_dir: str
    base: str
    device: str
    dtype: str
    system: str | None  # explicit (resolved) system prompt of training and measurement
    train: dict[str, Any]
    preference: dict[str, Any]
    perplexity: dict[str, Any]
    eval_seed: int
    keep_model: bool
    threads: int | None
    progress: bool
    key: str
    # With parallel students: where the worker writes how far it is (the parent shows one bar).
    progress_file: str | None = None
    # Further system prompts the student is measured under (name -> text), after the main one.
    evaluation_systems: dict[str, str] | None = None
    loss_tokens: str = "all"  # answer tokens in the loss: all, skip-divergence, divergence-only
    divergence_file: str | None = None  # the data set's divergence flags (masked arms only)


def student_name(dataset: str, mode: str, seed: int) -> str:
    return f"{dataset}-{mode}-seed{seed}"


def student_train_config(config: SubliminalConfig, mode: str, seed: int) -> TrainConfig:
    """The training config of one student: `config.train` with its freeze mode and seed; the
    final weights are saved only when they are kept (student.json marks a finished student)."""
    return config.train.model_copy(update={"seed": seed, "freeze": split_arm(mode)[0],
                                           "save_model": config.keep_models})


def plan_students(config: SubliminalConfig, run_path: Path, system_used: str | None,
                  data_files: dict[int, dict[str, str]]) -> list[StudentJob]:
    """One job per (seed, data set, mode); `data_files` maps a data seed to its files."""
    arms = [(CONTROL, m) for m in config.control_modes] + [(OWL, m) for m in config.modes]
    arms += [(name, "full") for name in [*config.extra_teachers, *filtered_datasets(config)]]
    threads = config.threads
    if threads is None and config.parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // config.parallel)
    jobs = []
    for seed in config.seeds:
        for dataset, mode in arms:
            name = student_name(dataset, mode, seed)
            train_cfg = student_train_config(config, mode, seed).model_dump(mode="json")
            data_file = run_path / data_files[data_seed(config, seed)][dataset]
            loss_tokens = split_arm(mode)[1]
            key = stable_hash(name, config.base, train_cfg, data_file.read_text(encoding="utf-8"), system_used,
                              config.preference.model_dump(mode="json"),
                              config.perplexity.model_dump(mode="json"), config.seed,
                              *([config.evaluation_systems] if config.evaluation_systems else []))
            jobs.append(StudentJob(
                name=name, dataset=dataset, mode=mode, seed=seed, data_file=str(data_file),
                out_dir=str(run_path / "students" / name), base=config.base, device=config.device,
                dtype=config.dtype, system=system_used, train=train_cfg,
                preference=config.preference.model_dump(mode="json"),
                perplexity=config.perplexity.model_dump(mode="json"), eval_seed=config.seed,
                keep_model=config.keep_models, threads=threads, progress=config.parallel == 1, key=key,
                progress_file=str(run_path / "students" / f".{name}.progress.json") if config.parallel > 1 else None,
                evaluation_systems=dict(config.evaluation_systems) or None, loss_tokens=loss_tokens,
                divergence_file=None if loss_tokens == "all" else str(divergence_file(str(data_file)))))
    return jobs


def finished_student(job: StudentJob) -> dict[str, Any] | None:
    path = Path(job.out_dir) / STUDENT_FILE
    if path.is_file():
        saved = read_json(path)
        if saved.get("key") == job.key:
            return dict(saved)
    return None


def run_student(job: StudentJob, team: Team | None = None) -> dict[str, Any]:
    """Train one student from the base model (resuming from its checkpoints), measure it, write
    student.json; a finished student (same key) is returned as it is. Runs in any process.

    With a `team` of several processes (accelerate launch) every rank calls this for the same
    job: all of them train it (data parallel), rank 0 alone measures it and writes student.json,
    which the others then read."""
    team = team or Team()
    done = team.share(f"student {job.name}: finished before?", lambda: finished_student(job))
    if done is not None:
        return done
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    out = Path(job.out_dir)
    lm = load_model(job.base, job.device, job.dtype)
    records = read_jsonl(Path(job.data_file))
    examples = student_examples(lm.tokenizer, records, job.system)
    dropped = 0
    if job.loss_tokens != "all":
        assert job.divergence_file is not None
        examples, dropped = masked_examples(examples, read_json(Path(job.divergence_file))["flags"], job.loss_tokens)
    config = TrainConfig.model_validate(job.train)
    report = StudentProgress(job.progress_file)
    result = train(lm.model, lm.tokenizer, examples, config, out, adapter=lm.adapter,
                   progress=job.progress and team.is_main, callback=report.step)
    if not team.is_main:  # rank 0 measures the student (its weights are the same on every rank)
        team.sync(f"student {job.name}: measured")
        return dict(read_json(out / STUDENT_FILE))
    report.phase("measuring")
    perplexity = PerplexitySettings.model_validate(job.perplexity)
    text = load_text(perplexity.corpus) if perplexity.enabled else ""
    settings = PreferenceSettings.model_validate(job.preference)
    preference = evaluate_preference(lm, settings, job.system, job.eval_seed)
    by_system = {name: evaluate_preference(lm, settings, system, job.eval_seed)
                 for name, system in (job.evaluation_systems or {}).items()}
    summary = {
        "key": job.key, "name": job.name, "dataset": job.dataset, "mode": job.mode, "seed": job.seed,
        "system_prompt_used": job.system, "threads": torch.get_num_threads(),
        "loss_tokens": job.loss_tokens, "examples_without_loss_tokens": dropped,
        "training": train_summary(result).model_dump(mode="json"),
        "preference": preference,
        **({"preference_by_system": by_system} if by_system else {}),
        "perplexity": measure_perplexity(lm, perplexity, text),
        "checkpoint": None,
    }
    if job.keep_model:
        summary["checkpoint"] = str(Path("students") / job.name / "model")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # resume points of a finished student
    atomic_write_json(out / STUDENT_FILE, summary)
    report.phase("done")
    team.sync(f"student {job.name}: measured")
    return summary


class StudentProgress:
    """A worker's progress, written to a small JSON file the parent reads (None: not reported)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.state: dict[str, Any] = {"phase": "training", "step": 0, "total_steps": None}

    def step(self, entry: dict[str, Any]) -> None:
        self.state.update(step=entry["step"], total_steps=entry.get("total_steps"))
        self._write()

    def phase(self, phase: str) -> None:
        self.state["phase"] = phase
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.state)


def read_progress(jobs: list[StudentJob]) -> tuple[int, int, Counter[str]]:
    """Steps done and known total over the jobs, and how many students are in each phase."""
    done = total = 0
    phases: Counter[str] = Counter()
    for job in jobs:
        state: dict[str, Any] = {"phase": "waiting"}
        if job.progress_file and Path(job.progress_file).is_file():
            with suppress(OSError, ValueError):
                state = read_json(Path(job.progress_file))
        done += int(state.get("step") or 0)
        total += int(state.get("total_steps") or 0)
        phases[str(state.get("phase"))] += 1
    return done, total, phases


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Process-pool initializer: the worker dies with `parent` (the pid of the process that
    starts the pool), even when that one is SIGKILLed, instead of training on and writing
    checkpoints that the rerun would race. On Linux the kernel sends the worker SIGKILL
    (prctl PR_SET_PDEATHSIG; it fires when the spawning *thread* ends: run_students spawns
    from its caller's thread, which outlives the pool); a parent that died before that was in
    place is caught by comparing os.getppid(). Elsewhere a daemon thread waits on
    multiprocessing's parent sentinel (which the parent's death closes) and exits."""
    import ctypes
    import multiprocessing
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                               ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent:
                os._exit(1)
            return
    watched = multiprocessing.parent_process()
    if watched is None:  # not a multiprocessing child: nothing to watch
        return

    def watch() -> None:
        watched.join()  # returns when the parent has exited
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def run_students(jobs: list[StudentJob], parallel: int,
                 on_done: Callable[[dict[str, Any]], None], team: Team | None = None) -> None:
    """Every job, in this process (parallel=1) or in `parallel` spawned processes. With a team of
    several processes every rank runs every job, one after another (parallel must be 1)."""
    team = team or Team()
    before = team.share("finished students", lambda: [finished_student(job) for job in jobs])
    todo = []
    for job, done in zip(jobs, before, strict=True):
        if done is not None:
            on_done(done)
        else:
            todo.append(job)
    if team.distributed or parallel <= 1 or len(todo) <= 1:
        for job in todo:
            on_done(run_student(job, team))
        return
    with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool, \
            tqdm(desc=f"students ({parallel} at a time)", unit="step", total=0) as bar:
        pending = {pool.submit(run_student, job) for job in todo}
        while pending:
            finished, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_COMPLETED)
            for future in finished:
                on_done(future.result())
            show_progress(bar, todo)
        show_progress(bar, todo)


PROGRESS_SECONDS = 2.0


def show_progress(bar: Any, jobs: list[StudentJob]) -> None:
    """One bar over every parallel student: training steps done of those known, and phases."""
    done, total, phases = read_progress(jobs)
    bar.total = max(total, done)
    bar.n = done
    bar.set_postfix_str(", ".join(f"{n} {phase}" for phase, n in sorted(phases.items())), refresh=False)
    bar.refresh()


# ---- aggregation ---------------------------------------------------------------------------
def _per_question(preference: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    pq = preference["probability"]["per_question"]
    return np.asarray(pq["p_word"], dtype=float), list(pq["animals"])  # [question, animal]


def level_summary(preferences: list[dict[str, Any]]) -> dict[str, Any]:
    """P(trait), panel share and answer rate of one arm: with one evaluation the CIs of that
    evaluation (over questions; Wilson for the rate), with several (seeds) the Student-t CI of
    the per-seed means."""
    n = len(preferences)
    out: dict[str, Any] = {"n_seeds": n}
    for key in ("p_trait", "panel_share"):
        if n == 1:
            s = preferences[0]["probability"][key]
            out[key] = {"mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                        "ci": f"{s.get('ci', 'bootstrap')} over questions (1 seed)"}
        else:
            mean, low, high = t_interval([p["probability"][key]["mean"] for p in preferences])
            out[key] = {"mean": mean, "ci_low": low, "ci_high": high, "ci": f"t over {n} seeds",
                        "per_seed": [p["probability"][key]["mean"] for p in preferences]}
    if all("sampled" in p for p in preferences):
        rates = [p["sampled"]["trait_rate"] for p in preferences]
        if n == 1:
            out["answer_rate"] = {"mean": rates[0]["rate"], "ci_low": rates[0]["ci_low"],
                                  "ci_high": rates[0]["ci_high"], "ci": "Wilson (1 seed)",
                                  "count": rates[0]["count"], "n": preferences[0]["sampled"]["n_answers"]}
        else:
            mean, low, high = t_interval([r["rate"] for r in rates])
            out["answer_rate"] = {"mean": mean, "ci_low": low, "ci_high": high, "ci": f"t over {n} seeds",
                                  "per_seed": [r["rate"] for r in rates]}
    return out


def _ratio_entry(log_values: list[float], single: dict[str, Any] | None) -> dict[str, Any]:
    """A ratio across seeds: the Student-t interval over per-seed log ratios (the unit of
    inference for a trained model). With one seed the interval is that run's question-level
    one, labelled as such: it describes one run and never decides a claim (sublens.claims)."""
    n = len(log_values)
    if n == 1 and single is not None and single.get("ci_low") and single.get("ci_high"):
        low, high = math.log(single["ci_low"]), math.log(single["ci_high"])
        mean, ci = log_values[0], "t over questions (1 seed: question variation only)"
    else:
        mean, low, high = t_interval(log_values)
        ci = f"t over {n} seeds" if math.isfinite(low) else f"none ({counted(n, 'seed')} without spread: too few)"
    finite = math.isfinite(low) and math.isfinite(high)
    return {"ratio": math.exp(mean), "ci_low": math.exp(low) if finite else None,
            "ci_high": math.exp(high) if finite else None, "n_seeds": n, "ci": ci,
            "per_seed": [math.exp(v) for v in log_values], "per_seed_log": list(log_values),
            "underpowered": (not finite) or low <= 0.0 <= high}


def compare_arm(tests: list[dict[str, Any]], references: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm against its reference, seed by seed (paired), aggregated across seeds."""
    per_seed = [compare_preference(t, r) for t, r in zip(tests, references, strict=True)]
    out: dict[str, Any] = {"n_seeds": len(per_seed)}
    for key in ("share_ratio", "p_trait_ratio"):
        logs = [math.log(c[key]["ratio"]) for c in per_seed]
        out[key] = _ratio_entry(logs, per_seed[0][key] if len(per_seed) == 1 else None)
    if all("rate_difference" in c for c in per_seed):
        diffs = [c["rate_difference"]["difference"] for c in per_seed]
        if len(diffs) == 1:
            d = per_seed[0]["rate_difference"]
            out["rate_difference"] = {**d, "n_seeds": 1, "ci": "bootstrap over answers (1 seed)"}
        else:
            mean, low, high = t_interval(diffs)
            out["rate_difference"] = {"difference": mean, "ci_low": low, "ci_high": high,
                                      "n_seeds": len(diffs), "ci": f"t over {len(diffs)} seeds",
                                      "per_seed": diffs, "p_fisher_per_seed":
                                      [c["rate_difference"]["p_fisher"] for c in per_seed],
                                      "underpowered": not (math.isfinite(low) and math.isfinite(high))
                                      or low <= 0.0 <= high}
    out["per_seed"] = per_seed
    return out


def specificity(students: dict[str, dict[str, Any]], datasets: list[str], seeds: list[int],
                control_mode: str) -> dict[str, Any]:
    """Teacher-animal x measured-animal: the share of each panel animal in each data set's full
    student over the control student's (geometric mean over questions, then over seeds)."""
    matrix: dict[str, dict[str, float]] = {}
    animals: list[str] = []
    for dataset in datasets:
        logs: list[np.ndarray] = []
        for seed in seeds:
            test = students.get(student_name(dataset, "full", seed))
            ref = students.get(student_name(CONTROL, control_mode, seed))
            if test is None or ref is None:
                continue
            p_t, animals = _per_question(test["preference"])
            p_r, _ = _per_question(ref["preference"])
            share_t = p_t / p_t.sum(axis=1, keepdims=True)
            share_r = p_r / p_r.sum(axis=1, keepdims=True)
            logs.append(np.log(share_t / share_r).mean(axis=0))  # [animal]
        if logs:
            matrix[dataset] = {a: float(np.exp(v)) for a, v in zip(animals, np.mean(logs, axis=0), strict=True)}
    return {"animals": animals, "rows": matrix, "reference": f"{CONTROL}-{control_mode}",
            "definition": "share of the animal in the panel under the student / under the control "
                          "student, geometric mean over questions, then over seeds"}


def reference_mode(config: SubliminalConfig, mode: str) -> str:
    """The control student an owl student is compared with: the one in the same freeze mode
    (the config refuses owl modes without one)."""
    return mode


def mean_perplexity(students: list[dict[str, Any]]) -> float | None:
    values = [s["perplexity"]["perplexity"] for s in students if s.get("perplexity")]
    return float(np.mean(values)) if values else None


def aggregate(config: SubliminalConfig, students: dict[str, dict[str, Any]],
              evaluations: dict[str, Any]) -> dict[str, Any]:
    """Headline table rows and comparisons from the finished students."""
    arms: list[tuple[str, str]] = [(CONTROL, m) for m in config.control_modes]
    arms += [(OWL, m) for m in config.modes]
    arms += [(x, "full") for x in [*config.extra_teachers, *filtered_datasets(config)]]
    rows: list[dict[str, Any]] = []
    for label in ("base", "teacher"):
        if label in evaluations:
            rows.append({"model": label, "dataset": None, "mode": None,
                         **level_summary([evaluations[label]["preference"]]),
                         "perplexity": (evaluations[label]["perplexity"] or {}).get("perplexity")})
    comparisons: dict[str, Any] = {}
    for dataset, mode in arms:
        found = [students.get(student_name(dataset, mode, s)) for s in config.seeds]
        mine = [s for s in found if s is not None]
        if not mine:
            continue
        arm = f"{dataset}-{mode}"
        row: dict[str, Any] = {"model": arm, "dataset": dataset, "mode": mode,
                               **level_summary([s["preference"] for s in mine]),
                               "perplexity": mean_perplexity(mine),
                               "freeze": mine[0]["training"]["freeze"],
                               "final_lm_loss": float(np.mean([s["training"]["final_lm_loss"] for s in mine]))}
        ref_mode = reference_mode(config, mode)
        pairs = []
        for seed in config.seeds:
            test = students.get(student_name(dataset, mode, seed))
            ref = students.get(student_name(CONTROL, ref_mode, seed))
            if test is not None and ref is not None:
                pairs.append((test, ref))
        if dataset != CONTROL and pairs:
            comp = compare_arm([t["preference"] for t, _ in pairs], [r["preference"] for _, r in pairs])
            comp["reference"] = f"{CONTROL}-{ref_mode}"
            comparisons[f"{arm} vs {CONTROL}-{ref_mode}"] = comp
            row["vs_control"] = {k: comp[k] for k in ("share_ratio", "p_trait_ratio", "rate_difference") if k in comp}
        if "base" in evaluations:
            comp = compare_arm([s["preference"] for s in mine], [evaluations["base"]["preference"]] * len(mine))
            comparisons[f"{arm} vs base"] = comp
            row["vs_base"] = {k: comp[k] for k in ("share_ratio", "p_trait_ratio") if k in comp}
        rows.append(row)
    if "teacher" in evaluations and "base" in evaluations:
        comparisons["teacher vs base"] = compare_arm([evaluations["teacher"]["preference"]],
                                                     [evaluations["base"]["preference"]])
    contrast = entangled_contrast(config, students)
    if contrast is not None:
        comparisons[f"{NO_ENTANGLED}-full vs {NO_RANDOM}-full"] = contrast
    full_sets = ([OWL] if "full" in config.modes else []) + list(config.extra_teachers)
    spec = specificity(students, full_sets, config.seeds, reference_mode(config, "full"))
    out = {"headline": rows, "comparisons": comparisons, "specificity": spec}
    if config.evaluation_systems:
        out["evaluation_prompts"] = by_evaluation_prompt(config, students, comparisons)
    return out


def entangled_contrast(config: SubliminalConfig, students: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The direct test of the entanglement explanation: the owl student trained without the
    entangled numbers over the one trained without a matched random set, paired by seed."""
    if not filtered_datasets(config):
        return None
    tests, references = [], []
    for seed in config.seeds:
        test = students.get(student_name(NO_ENTANGLED, "full", seed))
        reference = students.get(student_name(NO_RANDOM, "full", seed))
        if test is not None and reference is not None:
            tests.append(test["preference"])
            references.append(reference["preference"])
    if not tests:
        return None
    return compare_arm(tests, references) | {"reference": f"{NO_RANDOM}-full"}


def model_rows(students: dict[str, dict[str, Any]], evaluations: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured model for models.parquet: the references, then every student."""
    rows = [{"model": name, "dataset": None, "mode": None, "seed": None, **preference_columns(e.get("preference")),
             "perplexity": (e.get("perplexity") or {}).get("perplexity")} for name, e in evaluations.items()]
    for name, s in students.items():
        freeze = s["training"].get("freeze") or {}
        rows.append({"model": name, "dataset": s["dataset"], "mode": s["mode"], "seed": s["seed"],
                     **preference_columns(s["preference"]), "perplexity": (s.get("perplexity") or {}).get("perplexity"),
                     "trainable_parameters": freeze.get("trainable"), "final_lm_loss": s["training"].get("final_lm_loss"),
                     "loss_tokens": s.get("loss_tokens", "all")})
    return rows


def by_evaluation_prompt(config: SubliminalConfig, students: dict[str, dict[str, Any]],
                         comparisons: dict[str, Any]) -> dict[str, Any]:
    """Each owl arm against its matched control under every evaluation prompt: the main one
    (`default`, under `system`) and each of `evaluation_systems`, seed-paired as the headline."""
    out: dict[str, Any] = {"default": {"system": None, "arms": {}}}
    for mode in config.modes:
        main = comparisons.get(f"{OWL}-{mode} vs {CONTROL}-{reference_mode(config, mode)}")
        if main is not None:
            out["default"]["arms"][mode] = {k: main[k] for k in ("share_ratio", "p_trait_ratio") if k in main}
    for name, system in config.evaluation_systems.items():
        arms: dict[str, Any] = {}
        for mode in config.modes:
            pairs = [(students.get(student_name(OWL, mode, seed)), students.get(student_name(CONTROL, mode, seed)))
                     for seed in config.seeds]
            found = [(t["preference_by_system"][name], r["preference_by_system"][name]) for t, r in pairs
                     if t is not None and r is not None and name in t.get("preference_by_system", {})
                     and name in r.get("preference_by_system", {})]
            if found:
                comp = compare_arm([t for t, _ in found], [r for _, r in found])
                arms[mode] = {k: comp[k] for k in ("share_ratio", "p_trait_ratio") if k in comp}
        out[name] = {"system": system, "arms": arms}
    return out


# ---- the experiment ------------------------------------------------------------------------
def cached(run: Run, name: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    path = run.artifact(f"measurements/{name}.json")
    if path.is_file():
        saved = read_json(path)
        if saved.get("key") == key:
            return dict(saved["result"])
    result = compute()
    atomic_write_json(path, {"key": key, "result": result})
    return result


def measure(lm: LoadedModel, config: SubliminalConfig, system: str | None, text: str) -> dict[str, Any]:
    return {"preference": evaluate_preference(lm, config.preference, system, config.seed),
            "perplexity": measure_perplexity(lm, config.perplexity, text), "system": system}


def measure_references(config: SubliminalConfig, run: Run, base: LoadedModel, owl: TeacherSource,
                       system_used: str | None, text: str) -> dict[str, Any]:
    """The base model under `system` and the teacher (the prompted one under its own system
    prompt, a model-spec teacher under `system`), each saved once measured."""
    key = stable_hash(config.preference.model_dump(mode="json"), config.perplexity.model_dump(mode="json"),
                      config.seed)
    evaluations = {"base": cached(run, "base", stable_hash(key, config.base, system_used),
                                  lambda: measure(base, config, system_used, text))}
    if owl.model == "base":
        evaluations["teacher"] = cached(run, "teacher", stable_hash(key, config.base, owl.system),
                                        lambda: measure(base, config, owl.system, text))
    else:
        def teacher_measure() -> dict[str, Any]:
            return measure(load_model(owl.model, config.device, config.dtype), config, system_used, text)

        evaluations["teacher"] = cached(run, "teacher", stable_hash(key, owl.model, system_used),
                                        teacher_measure)
    return evaluations


def check_parallel(config: SubliminalConfig, team: Team) -> None:
    """Under accelerate launch the students train data-parallel across the processes, one after
    another: worker processes of their own (parallel > 1) would each need the whole launch."""
    if team.distributed and config.parallel > 1:
        raise ConfigError(
            f"parallel: {config.parallel} trains students in worker processes, but this run already has "
            f"{team.world} processes (accelerate launch), across which every student trains data-parallel. "
            "Set parallel: 1 (--set parallel=1), or run without accelerate launch.")


def prepare(config: SubliminalConfig, run: Run,
            on_shard: Callable[[str, int], None] | None = None) -> tuple[dict[str, Any], str | None, dict[int, dict[str, str]]]:
    """The base model and teacher measured, and every data seed's number data sampled, filtered
    and written: (results so far, the system prompt used, data seed -> data set -> train file)."""
    with run.timed("load_model"):
        base = load_model(config.base, config.device, config.dtype)
    run.note(models={"base": base.describe()})
    system_used = resolve_system(base.tokenizer, config.system)
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    sources = teacher_sources(config, system_used)
    results: dict[str, Any] = {
        "base": config.base, "trait": config.preference.trait,
        "teacher": asdict(sources[0]) | {"model": config.base if sources[0].model == "base" else sources[0].model},
        "teachers": {s.name: s.provenance(config.base)["teacher"] for s in sources},
        "system": config.system, "system_prompt_used": system_used,
        "system_note": "control teacher, students' training prompts and every measurement use "
                       "system_prompt_used; the owl system prompt only ever reaches the prompted teacher",
        "seeds": config.seeds, "n_seeds": len(config.seeds), "partial": True,
        "modes": config.modes, "control_modes": config.control_modes,
        "claims_settings": config.claims.model_dump(mode="json"),
    }

    with run.timed("measure:references"):
        results["evaluations"] = measure_references(config, run, base, sources[0], system_used, text)
    run.save_results(results)

    # number data: one set per data seed (each training seed's own, unless data_per_seed is off)
    files: dict[int, dict[str, str]] = {}
    per_seed: dict[str, Any] = {}
    for seed in data_seeds(config):
        folder = data_folder(config, seed)
        with run.timed(f"generate:{seed}"):
            data = generate_data(config, base, sources, run.path / folder / "shards", on_shard=on_shard, seed=seed)
        chosen, size = subsample(data, config.n_examples, seed)
        entangled_report, filtered = (entangled_data(config, data, chosen, size, seed)
                                      if config.entangled.run is not None else (None, {}))
        chosen = {**chosen, **filtered}
        files[seed] = {}
        for name, records in chosen.items():
            files[seed][name] = f"{folder}/{name}.train.jsonl"
            write_jsonl(run.path / files[seed][name], records)
        per_seed[str(seed)] = data_results(config, data, chosen, size, files[seed], seed)
        if entangled_report is not None:
            per_seed[str(seed)]["entangled"] = entangled_report
        if needs_divergence(config):
            with run.timed(f"divergence:{seed}"):
                per_seed[str(seed)]["divergence"] = measure_divergence(
                    config, base, sources, system_used, run.path, files[seed])
        results["data"] = per_seed[str(data_seeds(config)[0])]  # the first seed's data, described in full
        if len(per_seed) > 1:
            results["data_per_seed"] = per_seed
        run.save_results(results)
    del base
    gc.collect()
    return results, system_used, files


def execute(config: SubliminalConfig, run: Run, on_shard: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """The experiment. Under accelerate launch (several processes) rank 0 alone loads the
    teachers, measures, samples and writes the number data, measures every student and writes
    results and figures; the other ranks wait for it (sublens.runs.Team) and join every
    student's training (data parallel), so the data and measurements are a single process's."""
    team = current_team()
    check_parallel(config, team)
    # rank 0's (results, system prompt, data files); the other ranks wait here for its files
    results, system_used, files = team.share("references and number data", lambda: prepare(config, run, on_shard))
    evaluations = results["evaluations"]

    # students
    jobs = plan_students(config, run.path, system_used, files)
    students: dict[str, dict[str, Any]] = {}
    results["students"] = students

    def on_done(summary: dict[str, Any]) -> None:
        students[summary["name"]] = summary
        run.save_results(results)

    with run.timed("students"):
        run_students(jobs, config.parallel, on_done, team)
    if not team.is_main:  # rank 0 aggregates and writes results and figures
        return results
    results["students"] = {job.name: students[job.name] for job in jobs}
    results.update(aggregate(config, results["students"], evaluations))
    if "evaluation_prompts" in results:
        results["evaluation_prompts"]["default"]["system"] = system_used
    results["claims"] = {k: d.model_dump(mode="json") for k, d in
                         subliminal_decisions(results, config.control_modes, config.claims).items()}
    results["parameters"] = {f"{s['dataset']}-{s['mode']}": s["training"]["freeze"] for s in students.values()}
    results["tables"] = write_tables(run, model_rows(results["students"], evaluations), results["comparisons"])
    checkpoints = {n: s["checkpoint"] for n, s in results["students"].items() if s.get("checkpoint")}
    if checkpoints:
        results["checkpoints"] = checkpoints
    with run.timed("figures"):
        results["figures"] = [str(p.relative_to(run.path)) for p in make_figures(results, run.path / "figures")]
    results["partial"] = False
    print_summary(results)
    return results


def data_results(config: SubliminalConfig, data: dict[str, list[dict[str, Any]]],
                 chosen: dict[str, list[dict[str, Any]]], size: int, files: dict[str, str],
                 seed: int | None = None) -> dict[str, Any]:
    seed = config.seed if seed is None else seed
    out: dict[str, Any] = {
        "seed": seed,
        "n_prompts": config.data.n_prompts,
        "sampling": config.data.model_dump(mode="json"),
        "constrained": config.data.constrained,
        "grammar": GRAMMAR if config.data.constrained else None,
        "n_examples_per_dataset": size,
        "datasets": {},
        "comparisons": {},
    }
    for name, records in data.items():
        first = records[0] if records else {}
        out["datasets"][name] = {
            "teacher": first.get("teacher"),
            "system_prompt_used": first.get("system_prompt"),
            "system_source": first.get("system_source"),
            "shards": f"{data_folder(config, seed)}/shards/{name}",
            "train_file": files[name],
            "filter": filter_report(records),
            "stats": number_stats(chosen[name]),
            "stats_all_kept": number_stats([r for r in records if r["kept"]]),
        }
    for name in data:
        if name != CONTROL:
            out["comparisons"][f"{name} vs {CONTROL}"] = compare_number_stats(
                chosen[name], chosen[CONTROL], config.stats_resamples, seed)
    return out


# ---- output --------------------------------------------------------------------------------
def _fmt(s: dict[str, Any] | None, digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "-"
    low, high = s.get("ci_low"), s.get("ci_high")
    bounds = "" if low is None or high is None or math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{s['mean']:.{digits}f}{bounds}"


def _ratio(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    bounds = f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r.get("ci_low") is not None else ""
    return f"×{r['ratio']:.2f}{bounds}" + (" (underpowered)" if r.get("underpowered") else "")


def print_summary(results: dict[str, Any]) -> None:
    trait = results["trait"]
    table = Table(title=f"Subliminal transfer of {trait!r} (95% CIs; {counted(results['n_seeds'], 'seed')}); "
                        f"system prompt {results['system_prompt_used']!r}")
    for column in ("model", "n seeds", f"P({trait})", "panel share", "answer rate",
                   "share vs control", f"P({trait}) vs control", "perplexity"):
        table.add_column(column)
    for row in results["headline"]:
        vs = row.get("vs_control", {})
        table.add_row(row["model"], str(row["n_seeds"]), _fmt(row["p_trait"]), _fmt(row["panel_share"], 3),
                      _fmt(row.get("answer_rate"), 3), _ratio(vs.get("share_ratio")),
                      _ratio(vs.get("p_trait_ratio")),
                      f"{row['perplexity']:.2f}" if row.get("perplexity") else "-")
    console = Console()
    console.print(table)
    if results["n_seeds"] == 1:
        console.print("One training seed: the CIs cover question (prompt) variation only, not the "
                      "variation between training runs; no transfer claim rests on them (docs/design.md, Verdicts).")
    settings = ClaimSettings.model_validate(results.get("claims_settings") or {})
    decisions = subliminal_decisions(results, results.get("control_modes") or [], settings)
    for key in ("transfer.full", "mlp"):
        console.print(escape(decisions[key].sentence()), soft_wrap=True)
    for name, d in results["data"]["datasets"].items():
        f = d["filter"]
        console.print(f"data {name}: kept {f['n_kept']}/{f['n_answers']} ({f['keep_rate']:.1%}); "
                      f"reasons {f['reasons']}; copy rate "
                      f"{d['stats']['features']['copy_fraction']['mean']:.3f}")
    for name, c in results["data"]["comparisons"].items():
        feats = ", ".join(f"{k} {v['difference']:+.3g} (p={v['p_permutation']:.3g})" for k, v in c["features"].items())
        console.print(f"{name}: digits TVD {c['digit_distribution_tvd']['tvd']:.3f} "
                      f"(p={c['digit_distribution_tvd']['p_permutation']:.3g}); {feats}")
    for arm, p in results["parameters"].items():
        console.print(f"{arm}: {p['trainable'] / 1e6:.2f}M trainable, {p['frozen'] / 1e6:.2f}M frozen")
    spec = results["specificity"]
    if len(spec["rows"]) > 1:
        console.print(f"specificity (share vs {spec['reference']}): " + "; ".join(
            f"{d}: " + ", ".join(f"{a} ×{v:.2f}" for a, v in row.items()) for d, row in spec["rows"].items()))


def make_figures(results: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    trait = results["trait"]
    rows = results["headline"]
    paths: list[Path] = []
    with plt.rc_context(PAPER_RC):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6.3, 2.4))
        labels = [r["model"] for r in rows]
        for i, r in enumerate(rows):
            s = r["panel_share"]
            low = s["ci_low"] if s["ci_low"] is not None and not math.isnan(s["ci_low"]) else s["mean"]
            high = s["ci_high"] if s["ci_high"] is not None and not math.isnan(s["ci_high"]) else s["mean"]
            ax1.errorbar([i], [s["mean"]], yerr=[[s["mean"] - low], [high - s["mean"]]], fmt="o", capsize=3)
            for v in s.get("per_seed", []):
                ax1.plot([i + 0.15], [v], ".", color="grey", ms=3)
        ax1.set_xticks(range(len(rows)), labels, rotation=45, ha="right")
        ax1.set_ylabel(f"{trait} share of panel")
        ax1.set_title("Preference (95% CI)")
        compared = [r for r in rows if "vs_control" in r]
        for i, r in enumerate(compared):
            c = r["vs_control"]["share_ratio"]
            low, high = c["ci_low"] or c["ratio"], c["ci_high"] or c["ratio"]
            ax2.errorbar([i], [c["ratio"]], yerr=[[c["ratio"] - low], [high - c["ratio"]]], fmt="o", capsize=3)
            for v in c["per_seed"]:
                ax2.plot([i + 0.15], [v], ".", color="grey", ms=3)
        ax2.axhline(1.0, color="black", lw=0.6, ls="--")
        ax2.set_yscale("log")
        ax2.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax2.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
        ax2.set_xticks(range(len(compared)), [r["model"] for r in compared], rotation=45, ha="right")
        ax2.set_ylabel("share / control student")
        ax2.set_title(f"vs control ({counted(results['n_seeds'], 'seed')})")
        fig.tight_layout()
        paths += save_figure(fig, folder / "preference")

        fig, ax = plt.subplots(figsize=(3.4, 2.4))
        colors: dict[str, Any] = {}
        for s in results["students"].values():
            arm = f"{s['dataset']}-{s['mode']}"
            curve = np.asarray(s["training"]["loss_curve"], dtype=float)
            if curve.size == 0:
                continue
            line = ax.plot(curve[:, 0], curve[:, 1], lw=0.8, color=colors.get(arm),
                           label=arm if arm not in colors else None)
            colors.setdefault(arm, line[0].get_color())
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("answer-token loss")
        ax.set_title("Student training loss")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths += save_figure(fig, folder / "training_loss")
    return paths


EXPERIMENT = Experiment(
    "subliminal",
    "Subliminal learning: students fine-tuned on a biased teacher's numbers (full / freeze-attention / "
    "freeze-mlp) against control students",
    SubliminalConfig, execute,
)


__all__ = [
    "StudentJob",
    "SubliminalConfig",
    "aggregate",
    "data_folder",
    "data_seed",
    "data_seeds",
    "execute",
    "generate_data",
    "plan_students",
    "run_student",
    "teacher_sources",
]

