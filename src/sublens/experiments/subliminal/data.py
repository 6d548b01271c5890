"""The number data of the subliminal experiment: every teacher's answers to the number prompts,
sampled (sharded, resumable), filtered, subsampled to one size and written as the students'
training sets; their statistics and the comparison of each teacher's numbers with the
control's; the entanglement run's numbers in them; and their divergence tokens."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sublens.divergence import Teacher, divergence_flags, divergence_summary
from sublens.entangled_numbers import (
    ENTANGLED,
    MATCHED,
    enrichment,
    filtered_pair,
    read_number_sets,
)
from sublens.experiments.subliminal.config import (
    CONTROL,
    NO_ENTANGLED,
    NO_RANDOM,
    OWL,
    SubliminalConfig,
    data_folder,
    needs_divergence,
)
from sublens.experiments.subliminal.results import DataRecord, TeacherKind, TeacherRecord
from sublens.models import LoadedModel, load_model
from sublens.number_data import make_number_prompts
from sublens.prompts import make_prompt
from sublens.runs import Run, cached_json
from sublens.scoring import default_stop_token_ids
from sublens.subliminal import (
    GRAMMAR,
    NumberFormat,
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
    training_example,
    write_jsonl,
)
from sublens.training_data import Example

Records = list[dict[str, Any]]  # data lines (sublens.subliminal.sample_sharded), one per answer


# ---- teachers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherSource:
    """A teacher of number data: which model answers, under which system prompt."""

    name: str
    model: str  # "base" or a model spec
    system: str | None  # the system prompt its answers are sampled under
    kind: TeacherKind

    def model_spec(self, base: str) -> str:
        return base if self.model == "base" else self.model

    def provenance(self, base: str) -> dict[str, Any]:
        """What every one of its data lines records of it (and its divergence flags' key)."""
        return {
            "teacher": {"name": self.name, "kind": self.kind, "model": self.model_spec(base), "system": self.system}
        }

    def record(self, base: str) -> TeacherRecord:
        """As results.json's ``teacher`` describes the biased teacher."""
        return TeacherRecord(name=self.name, model=self.model_spec(base), system=self.system, kind=self.kind)


def teacher_sources(config: SubliminalConfig, system_used: str | None) -> list[TeacherSource]:
    if config.teacher == "prompted":
        owl = TeacherSource(OWL, "base", config.teacher_system, "prompted")
    else:
        owl = TeacherSource(OWL, config.teacher, system_used, "model")
    sources = [owl, TeacherSource(CONTROL, config.control_teacher, system_used, "control")]
    sources += [TeacherSource(name, "base", system, "prompted") for name, system in config.extra_teachers.items()]
    return sources


# ---- one data seed's number data ----------------------------------------------------------------
def number_data(
    config: SubliminalConfig,
    run: Run,
    base: LoadedModel,
    sources: list[TeacherSource],
    system_used: str | None,
    seed: int,
) -> tuple[DataRecord, dict[str, str]]:
    """One data seed's number data, sampled, filtered, subsampled and written (with the
    entanglement filter's data sets where asked), described, and its divergence tokens
    measured where needed: (its record, data set -> run-relative training file)."""
    folder = data_folder(config, seed)
    with run.timed(f"generate:{seed}"):
        data = generate_data(config, base, sources, run.path / folder / "shards", seed=seed)
    chosen, size = subsample(data, config.n_examples, seed)
    entangled, filtered = (
        entangled_data(config, data, chosen, size, seed) if config.entangled.run is not None else (None, {})
    )
    files = write_training_sets(run.path, folder, {**chosen, **filtered})
    divergence = None
    if needs_divergence(config):
        with run.timed(f"divergence:{seed}"):
            divergence = measure_divergence(config, base, sources, system_used, run.path, files)
    record = data_results(config, data, chosen, size, files, seed, entangled, divergence)
    return record, files


def write_training_sets(run_path: Path, folder: str, chosen: dict[str, Records]) -> dict[str, str]:
    """Each data set's training answers as <folder>/<name>.train.jsonl; their run-relative paths."""
    files = {name: f"{folder}/{name}.train.jsonl" for name in chosen}
    for name, records in chosen.items():
        write_jsonl(run_path / files[name], records)
    return files


def data_results(
    config: SubliminalConfig,
    data: dict[str, Records],
    chosen: dict[str, Records],
    size: int,
    files: dict[str, str],
    seed: int | None = None,
    entangled: dict[str, Any] | None = None,
    divergence: dict[str, Any] | None = None,
) -> DataRecord:
    """What results.json says of one data seed's data: per teacher, its filter report and the
    statistics of its training answers (and of all it kept); each teacher's numbers against
    the control's (permutation tests)."""
    seed = config.seed if seed is None else seed
    datasets = {
        name: dataset_record(config, name, records, chosen[name], files[name], seed) for name, records in data.items()
    }
    comparisons = {
        f"{name} vs {CONTROL}": compare_number_stats(chosen[name], chosen[CONTROL], config.stats_resamples, seed)
        for name in data
        if name != CONTROL
    }
    return DataRecord.model_validate(
        {
            "seed": seed,
            "n_prompts": config.data.n_prompts,
            "sampling": config.data.model_dump(mode="json"),
            "constrained": config.data.constrained,
            "grammar": GRAMMAR if config.data.constrained else None,
            "n_examples_per_dataset": size,
            "datasets": datasets,
            "comparisons": comparisons,
            **({"entangled": entangled} if entangled is not None else {}),
            **({"divergence": divergence} if divergence is not None else {}),
        }
    )


def dataset_record(
    config: SubliminalConfig, name: str, records: Records, chosen: Records, train_file: str, seed: int
) -> dict[str, Any]:
    """One teacher's data set: its provenance (every line records it; the first one speaks for
    all), files, filter report and number statistics."""
    first = records[0] if records else {}
    return {
        "teacher": first.get("teacher"),
        "system_prompt_used": first.get("system_prompt"),
        "system_source": first.get("system_source"),
        "shards": f"{data_folder(config, seed)}/shards/{name}",
        "train_file": train_file,
        "filter": filter_report(records),
        "stats": number_stats(chosen),
        "stats_all_kept": number_stats([r for r in records if r["kept"]]),
    }


# ---- sampling -----------------------------------------------------------------------------------
def generate_data(
    config: SubliminalConfig,
    base: LoadedModel,
    sources: list[TeacherSource],
    out: Path,
    on_shard: Callable[[str, int], None] | None = None,
    progress: bool = True,
    seed: int | None = None,
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
            lm,
            texts,
            meta,
            config.data,
            seed=sampling_seed,
            out_dir=out / source.name,
            name=source.name,
            provenance=source.provenance(config.base),
            allowed=allowed,
            annotate=filter_record,
            on_shard=on_shard,
            progress=progress,
        )
        if lm is not base:
            del lm
            gc.collect()
    return data


# ---- the entanglement run's numbers -------------------------------------------------------------
def entangled_data(
    config: SubliminalConfig,
    data: dict[str, list[dict[str, Any]]],
    chosen: dict[str, list[dict[str, Any]]],
    size: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Enrichment of the entanglement run's numbers in the owl vs control training data, and
    (when asked) the two filtered owl data sets, matched in size."""
    assert config.entangled.run is not None
    number_sets = read_number_sets(config.entangled.run, config.entangled.set)
    report: dict[str, Any] = {
        "run": config.entangled.run,
        "set": config.entangled.set,
        "enrichment": enrichment(chosen[OWL], chosen[CONTROL], number_sets),
    }
    extra: dict[str, list[dict[str, Any]]] = {}
    if config.entangled.filter_students:
        kept = [r for r in data[OWL] if r["kept"]]
        pair, report["filter"] = filtered_pair(kept, number_sets, size, seed)
        extra = {NO_ENTANGLED: pair[ENTANGLED], NO_RANDOM: pair[MATCHED]}
    return report, extra


# ---- divergence tokens ----------------------------------------------------------------------------
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


def measure_divergence(
    config: SubliminalConfig,
    base: LoadedModel,
    sources: list[TeacherSource],
    system_used: str | None,
    run_path: Path,
    files: dict[str, str],
) -> dict[str, Any]:
    """Flag every training answer token of the owl and control data at which the owl teacher and
    the control teacher would choose differently (sublens.divergence); flags saved per data set,
    reused when data and teachers are unchanged. Returns the per-data-set summaries."""
    owl, control = sources[0], sources[1]
    loaded = {
        s.name: base if s.model == "base" else load_model(s.model, config.device, config.dtype) for s in (owl, control)
    }
    biased = Teacher(loaded[owl.name].model, loaded[owl.name].tokenizer, owl.system)
    unbiased = Teacher(loaded[control.name].model, loaded[control.name].tokenizer, control.system)
    allowed = NumberFormat(base.tokenizer, default_stop_token_ids(base)) if config.data.constrained else None
    summaries: dict[str, Any] = {}
    for name in (OWL, CONTROL):
        records = read_jsonl(run_path / files[name])
        examples = student_examples(base.tokenizer, records, system_used)
        answers = [answer_token_ids(base.tokenizer, e) for e in examples]
        path = run_path / divergence_file(files[name])
        prompts = [r["prompt"] for r in records]
        key = stable_hash(
            answers, prompts, owl.provenance(config.base), control.provenance(config.base), config.data.constrained
        )
        flags = cached_json(
            path,
            key,
            partial(
                divergence_flags,
                biased,
                unbiased,
                prompts,
                answers,
                base.tokenizer,
                allowed=allowed,
                stop_token_ids=default_stop_token_ids(base),
                batch_size=config.divergence.batch_size,
                desc=f"divergence tokens ({name})",
            ),
            field="flags",
        )
        summaries[name] = divergence_summary(flags) | {"file": divergence_file(files[name])}
    return summaries
