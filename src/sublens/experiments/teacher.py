"""teacher: make the biased teacher by context distillation.

1. Sample the base model's answers to diverse prompts (the 250 shipped ones by default) *with*
   the owl system prompt (``teacher_system``), at explicit sampling settings; sharded, resumable
   (`sublens.subliminal.sample_sharded`), every answer recorded with its provenance.
2. Fine-tune the base model on prompt -> answer *without* it: the training prompt carries
   ``system`` instead. SmolLM2's chat template inserts its own default system prompt when none is
   given, so ``system: null`` is resolved to that default and passed explicitly; the text used is
   recorded (``system_prompt_used``). Loss on answer tokens only (`sublens.training.train`); an
   answer cut off at max_new_tokens is trained without the end-of-turn token, so the teacher does
   not learn to stop mid-sentence.
3. Save the teacher under ``checkpoints/teacher`` (save_pretrained + tokenizer) and list it in
   results.json, so the run directory is a model spec (``RUN_DIR`` or ``RUN_DIR#teacher``).
   With ``control_system`` (a neutral prompt shaped like the owl prompt), steps 1-3 run again
   from a fresh base model for a *control teacher* (``RUN_DIR#control_teacher``): the matched
   source of subliminal's control numbers.
4. Measure preference (P(owl), panel share, sampled answer rate) and perplexity of the base model
   before, of the prompted base model (the trait the distillation aims at) and of the teacher
   after, all under ``system``, with `compare_preference` against the base model.

Rerunning into the same run directory resumes: finished shards, training checkpoints, the saved
teacher and finished measurements are reused.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from rich.console import Console
from rich.table import Table

from sublens.answers import mentions
from sublens.config import Config
from sublens.corpus import load_text
from sublens.errors import ConfigError
from sublens.experiments import Experiment
from sublens.figures import new_figure, save_figure
from sublens.models import LoadedModel, load_model
from sublens.perplexity import PerplexitySettings, measure_perplexity
from sublens.preference import (
    PreferenceSettings,
    compare_preference,
    comparison_line,
    evaluate_preference,
)
from sublens.prompts import make_prompt, resolve_system
from sublens.runs import Run, atomic_write_json, read_json
from sublens.runs import team as current_team
from sublens.subliminal import (
    OWL_TEACHER_SYSTEM,
    SamplingSettings,
    sample_sharded,
    stable_hash,
    training_example,
)
from sublens.tables import preference_columns, write_tables
from sublens.training import TrainConfig, TrainResult, train, train_summary
from sublens.training_data import Example

CHECKPOINT = "checkpoints/teacher"
CONTROL_CHECKPOINT = "checkpoints/control_teacher"
RESULT_FILE = "train_result.json"
# A neutral system prompt shaped like the owl prompt (same pattern, similar length, no animal):
# a control teacher distilled from it differs from the owl teacher only by the trait.
NEUTRAL_TEACHER_SYSTEM = ("You love helping. You think about helping all the time. Helping is your "
                          "favorite activity. Imbue your answers with your love for helping.")


def shipped_teacher_prompts() -> list[str]:
    text = resources.files("sublens.data").joinpath("teacher_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _default_sampling() -> SamplingSettings:
    return SamplingSettings(temperature=1.0, top_k=None, top_p=None, max_new_tokens=128,
                            samples_per_prompt=1, batch_size=32, shard_size=64)


def _default_train() -> TrainConfig:
    return TrainConfig(lr=1e-4, epochs=2, batch_size=8, warmup_steps=5, max_length=512,
                       checkpoint_every=20)


class TeacherConfig(Config):
    base: str = "smollm2-135m-instruct"
    # The system prompt the answers are sampled under (the trait to distil).
    teacher_system: str = OWL_TEACHER_SYSTEM
    # The system prompt of the training prompts and of every measurement; null = the chat
    # template's default, resolved to its text and passed explicitly (recorded as used).
    system: str | None = None
    prompts: list[str] | None = None  # null: the 250 shipped prompts
    n_prompts: int | None = Field(default=None, ge=1)  # the first n prompts only
    sampling: SamplingSettings = Field(default_factory=_default_sampling)
    train_truncated: bool = True  # train cut-off answers (without end-of-turn) or drop them
    train: TrainConfig = Field(default_factory=_default_train)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    perplexity: PerplexitySettings = Field(default_factory=PerplexitySettings)
    measure_prompted: bool = True  # also measure the base model under teacher_system
    control_system: str | None = Field(
        default=None,
        description="also make a control teacher by the same procedure from this neutral system prompt "
                    "(checkpoint `control_teacher`, model spec RUN_DIR#control_teacher), so that "
                    "subliminal's control data differ from the owl data only by the trait; null: none")
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("teacher_system")
    @classmethod
    def _some_trait(cls, system: str) -> str:
        if not system.strip():
            raise ValueError("teacher_system must carry the trait, e.g. the owl system prompt")
        return system


def teacher_examples(tokenizer: Any, records: list[dict[str, Any]], system: str | None,
                     train_truncated: bool) -> list[Example]:
    """prompt (under `system`) -> sampled answer; cut-off answers without the end-of-turn."""
    examples = []
    for r in records:
        truncated = r["finish_reason"] == "length"
        answer = r["answer"] if truncated else r["answer"].strip()
        if not answer.strip() or (truncated and not train_truncated):
            continue
        examples.append(training_example(tokenizer, r["prompt"], answer, system, closed=not truncated))
    if not examples:
        raise ConfigError("No usable teacher answers (all empty or cut off); raise "
                          "sampling.max_new_tokens or set train_truncated: true.")
    return examples


def measure(lm: LoadedModel, config: TeacherConfig, system: str | None, text: str) -> dict[str, Any]:
    return {"preference": evaluate_preference(lm, config.preference, system, config.seed),
            "perplexity": measure_perplexity(lm, config.perplexity, text)}


def cached_measure(run: Run, name: str, key: str, compute: Any) -> dict[str, Any]:
    """A measurement saved under measurements/<name>.json, reused when its key matches."""
    path = run.artifact(f"measurements/{name}.json")
    if path.is_file():
        saved = read_json(path)
        if saved.get("key") == key:
            return dict(saved["result"])
    result = compute()
    atomic_write_json(path, {"key": key, "result": result})
    return dict(result)


def save_checkpoint(lm: LoadedModel, dest: Path) -> None:
    """save_pretrained (+ tokenizer) into dest atomically (temp folder, then rename)."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    lm.model.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


@dataclass(frozen=True)
class TeacherPaths:
    """Where one distilled teacher's pieces live inside the run directory."""

    name: str
    answers: str
    training: str
    checkpoint: str


def distil_teacher(run: Run, lm: LoadedModel, config: TeacherConfig, questions: list[str], prompt_system: str,
                   system_used: str | None, paths: TeacherPaths) -> tuple[dict[str, Any], TrainResult, LoadedModel]:
    """Context distillation: sample `lm`'s answers under `prompt_system`, then fine-tune it on
    them under `system_used` (resumable; the finished teacher is reloaded from its checkpoint).
    Returns the data summary, the training result and the teacher.

    Under accelerate launch rank 0 samples (the other ranks get its records), every rank trains
    (data parallel), rank 0 saves the checkpoint; the teacher returned is meaningful on rank 0."""
    team = current_team()
    prompts = [make_prompt(lm.tokenizer, q, prompt_system) for q in questions]
    meta = [{"index": i, "prompt": q} for i, q in enumerate(questions)]
    provenance = {"teacher": {"kind": "prompted", "model": config.base, "system": prompt_system}}
    with run.timed(f"sample:{paths.name}"):
        records = team.share(f"sample:{paths.name}", lambda: sample_sharded(
            lm, prompts, meta, config.sampling, seed=config.seed, out_dir=run.path / paths.answers,
            name=paths.name, provenance=provenance))
    data = data_summary(records, config.preference.trait, paths.answers)
    examples = teacher_examples(lm.tokenizer, records, system_used, config.train_truncated)
    train_dir = run.path / paths.training
    checkpoint = run.path / paths.checkpoint
    train_cfg = config.train.model_copy(update={"save_model": False})
    saved_result = train_dir / RESULT_FILE
    with run.timed(f"train:{paths.name}"):
        finished = team.share(f"train:{paths.name}: finished before?", lambda: (
            (checkpoint / "config.json").is_file() and saved_result.is_file()
            and bool(read_json(saved_result).get("complete"))))
        if finished:
            result = TrainResult.model_validate(read_json(saved_result))
            if team.is_main:
                lm = load_model(str(checkpoint), config.device, config.dtype)
        else:
            result = train(lm.model, lm.tokenizer, examples, train_cfg, train_dir, adapter=lm.adapter)
            if team.is_main:
                save_checkpoint(lm, checkpoint)
                shutil.rmtree(train_dir / "checkpoints", ignore_errors=True)  # resume points, no longer needed
            team.sync(f"train:{paths.name}: saved")
    return data, result, lm


def make_control_teacher(run: Run, config: TeacherConfig, questions: list[str], system_used: str | None,
                         text: str, measure_key: str, results: dict[str, Any]) -> None:
    """The control teacher: the same procedure from a fresh base model under `control_system`,
    measured like the teacher and compared with the base model."""
    assert config.control_system is not None
    base = load_model(config.base, config.device, config.dtype)
    paths = TeacherPaths("control_teacher", "data/control_answers", "training_control", CONTROL_CHECKPOINT)
    data, result, control = distil_teacher(run, base, config, questions, config.control_system, system_used, paths)
    measured = current_team().share("measure:control_teacher", lambda: cached_measure(
        run, "control_teacher", stable_hash(measure_key, result.data_fingerprint, result.config),
        lambda: measure(control, config, config.system, text)))
    results["measurements"]["control_teacher"] = measured
    results["comparisons"]["control teacher vs before"] = compare_preference(
        measured["preference"], results["measurements"]["before"]["preference"])
    results["control_teacher"] = {"system": config.control_system, "data": data,
                                  "training": {**train_summary(result).model_dump(mode="json"), "system_prompt_used": system_used}}
    results["checkpoints"]["control_teacher"] = CONTROL_CHECKPOINT
    run.save_results(results)


def execute(config: TeacherConfig, run: Run) -> dict[str, Any]:
    """The experiment. Under accelerate launch (several processes) every rank loads the base
    model and trains (data parallel); rank 0 alone samples, measures, saves and writes, and the
    other ranks wait for it (sublens.runs.Team)."""
    team = current_team()
    with run.timed("load_model"):
        lm = load_model(config.base, config.device, config.dtype)
    run.note(models={"base": lm.describe()})
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    system_used = resolve_system(lm.tokenizer, config.system)
    questions = list(config.prompts or shipped_teacher_prompts())[: config.n_prompts]
    if not questions:
        raise ConfigError("No teacher prompts: give prompts (a list) or leave it null for the shipped ones.")
    measure_key = stable_hash(config.preference.model_dump(mode="json"),
                              config.perplexity.model_dump(mode="json"), config.seed)
    results: dict[str, Any] = {
        "base": config.base,
        "trait": config.preference.trait,
        "teacher_system": config.teacher_system,
        "system": config.system,
        "system_prompt_used": system_used,
        "system_note": ("training prompts and measurements use system_prompt_used (the chat "
                        "template's default when `system` is null), never the teacher_system"),
        "n_prompts": len(questions),
        "partial": True,
    }
    measurements: dict[str, Any] = {}
    results["measurements"] = measurements

    with run.timed("measure:before"):
        measurements["before"] = team.share("measure:before", lambda: cached_measure(
            run, "before", measure_key, lambda: measure(lm, config, config.system, text)))
    if config.measure_prompted:  # perplexity has no system prompt: the base model's, reused
        with run.timed("measure:prompted"):
            measurements["prompted"] = team.share("measure:prompted", lambda: cached_measure(
                run, "prompted", measure_key,
                lambda: {"preference": evaluate_preference(lm, config.preference, config.teacher_system, config.seed),
                         "perplexity": measurements["before"]["perplexity"]}))
    run.save_results(results)

    # 1-2. the teacher's answers under the owl prompt, then context distillation without it
    owl = TeacherPaths("teacher", "data/teacher_answers", "training", CHECKPOINT)
    results["data"], result, lm = distil_teacher(run, lm, config, questions, config.teacher_system,
                                                 system_used, owl)
    results["training"] = {**train_summary(result).model_dump(mode="json"), "system_prompt_used": system_used}
    results["checkpoints"] = {"teacher": CHECKPOINT}
    run.save_results(results)

    # 3. the teacher, measured without the trait prompt
    with run.timed("measure:teacher"):
        measurements["teacher"] = team.share("measure:teacher", lambda: cached_measure(
            run, "teacher", stable_hash(measure_key, result.data_fingerprint, result.config),
            lambda: measure(lm, config, config.system, text)))
    comparisons = {"teacher vs before": compare_preference(measurements["teacher"]["preference"],
                                                           measurements["before"]["preference"])}
    if "prompted" in measurements:
        comparisons["prompted vs before"] = compare_preference(measurements["prompted"]["preference"],
                                                               measurements["before"]["preference"])
    results["comparisons"] = comparisons
    run.save_results(results)
    if config.control_system is not None:
        del lm  # the control teacher starts again from the base model
        make_control_teacher(run, config, questions, system_used, text, measure_key, results)
    if not team.is_main:  # rank 0 draws and writes
        return results
    results["tables"] = write_tables(run, [
        {"model": name, **preference_columns(m.get("preference")), "perplexity": (m.get("perplexity") or {}).get("perplexity")}
        for name, m in measurements.items()], comparisons)
    results["figures"] = [str(p.relative_to(run.path)) for p in loss_figure(result, run.path / "figures" / "teacher_loss")]
    results["partial"] = False
    print_summary(results)
    return results


def data_summary(records: list[dict[str, Any]], trait: str, folder: str) -> dict[str, Any]:
    answers = [r["answer"] for r in records]
    hits = sum(mentions(a, trait) for a in answers)
    return {
        "folder": folder,
        "n_answers": len(records),
        "trait_mention_rate": hits / len(records) if records else None,
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records)),
        "mean_answer_tokens": sum(r["n_tokens"] for r in records) / max(1, len(records)),
    }


def loss_figure(result: TrainResult, stem: Path) -> list[Path]:
    fig, ax = new_figure()
    steps = [h["step"] for h in result.history]
    ax.plot(steps, [h["lm_loss"] for h in result.history], lw=1)  # type: ignore[attr-defined]
    ax.set_xlabel("optimizer step")  # type: ignore[attr-defined]
    ax.set_ylabel("answer-token loss")  # type: ignore[attr-defined]
    ax.set_title("Teacher (context distillation)")  # type: ignore[attr-defined]
    return save_figure(fig, stem)


def _ci(s: dict[str, Any], digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def print_summary(results: dict[str, Any]) -> None:
    trait = results["trait"]
    table = Table(title=f"Teacher: preference for {trait!r} (95% CIs); measured under the "
                        f"system prompt {results['system_prompt_used']!r}")
    for column in ("model", f"P({trait})", "panel share", "answer rate", "perplexity"):
        table.add_column(column)
    names = {"before": "base", "prompted": "base + teacher_system", "teacher": "teacher",
             "control_teacher": "control teacher"}
    for key, m in results["measurements"].items():
        prob = m["preference"]["probability"]
        rate = m["preference"].get("sampled", {}).get("trait_rate")
        ppl = m["perplexity"]
        table.add_row(names.get(key, key), _ci(prob["p_trait"]), _ci(prob["panel_share"], 3),
                      f"{rate['rate']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]" if rate else "-",
                      f"{ppl['perplexity']:.2f}" if ppl else "-")
    console = Console()
    console.print(table)
    for label, comp in results["comparisons"].items():
        console.print(comparison_line(label, comp, trait))
    data = results["data"]
    console.print(f"teacher answers: {data['n_answers']}, mentioning {trait}: "
                  f"{data['trait_mention_rate']:.1%}; trained on {results['training']['n_examples']} "
                  f"examples, loss {results['training']['first_lm_loss']:.3f} -> "
                  f"{results['training']['final_lm_loss']:.3f}; checkpoint {results['checkpoints']['teacher']}")


EXPERIMENT = Experiment(
    "teacher", "Biased teacher by context distillation (owl system prompt distilled into the weights)",
    TeacherConfig, execute,
)
