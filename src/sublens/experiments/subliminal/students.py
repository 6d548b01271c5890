"""The students of the subliminal experiment: one per (data set, arm, seed), fine-tuned from the
base model on one data set (loss on answer tokens only, optionally masked by divergence
tokens), measured, and written to students/<name>/student.json, which marks it finished.

Students run one after another in this process, in ``parallel`` spawned worker processes
(which die with their parent and report progress through a file the parent's one bar reads),
or, under ``accelerate launch``, one after another, each trained data-parallel across the
launched processes (rank 0 alone measures and writes).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sublens.corpus import load_text
from sublens.experiments.subliminal.config import (
    SubliminalConfig,
    data_seed,
    student_arms,
    student_name,
)
from sublens.experiments.subliminal.data import divergence_file, student_examples
from sublens.experiments.subliminal.results import Student
from sublens.kv_budget import DEFAULT_SCORING_MEMORY_MB, scoring_memory
from sublens.malloc import release_freed_memory
from sublens.models import LoadedModel, load_model
from sublens.perplexity import measure_perplexity
from sublens.preference import evaluate_preference
from sublens.result_records import TrainingSummary
from sublens.runs import Team, atomic_write_json, read_json
from sublens.settings import PerplexitySettings, PreferenceSettings
from sublens.subliminal import read_jsonl, stable_hash
from sublens.trainable import split_arm
from sublens.training import TrainConfig, train, train_summary
from sublens.training_data import Example

STUDENT_FILE = "student.json"


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
    # The run's scoring memory budget: a worker process does not inherit the parent's.
    scoring_memory_mb: float = DEFAULT_SCORING_MEMORY_MB


def student_train_config(config: SubliminalConfig, mode: str, seed: int) -> TrainConfig:
    """The training config of one student: `config.train` with its freeze mode and seed; the
    final weights are saved only when they are kept (student.json marks a finished student)."""
    return config.train.model_copy(
        update={"seed": seed, "freeze": split_arm(mode)[0], "save_model": config.keep_models}
    )


def plan_students(
    config: SubliminalConfig, run_path: Path, system_used: str | None, data_files: dict[int, dict[str, str]]
) -> list[StudentJob]:
    """One job per (seed, data set, mode); `data_files` maps a data seed to its files."""
    threads = config.threads
    if threads is None and config.parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // config.parallel)
    jobs = []
    for seed in config.seeds:
        for dataset, mode in student_arms(config):
            name = student_name(dataset, mode, seed)
            train_cfg = student_train_config(config, mode, seed).model_dump(mode="json")
            data_file = run_path / data_files[data_seed(config, seed)][dataset]
            loss_tokens = split_arm(mode)[1]
            key = stable_hash(
                name,
                config.base,
                train_cfg,
                data_file.read_text(encoding="utf-8"),
                system_used,
                config.preference.model_dump(mode="json"),
                config.perplexity.model_dump(mode="json"),
                config.seed,
                *([config.evaluation_systems] if config.evaluation_systems else []),
            )
            jobs.append(
                StudentJob(
                    name=name,
                    dataset=dataset,
                    mode=mode,
                    seed=seed,
                    data_file=str(data_file),
                    out_dir=str(run_path / "students" / name),
                    base=config.base,
                    device=config.device,
                    dtype=config.dtype,
                    system=system_used,
                    train=train_cfg,
                    preference=config.preference.model_dump(mode="json"),
                    perplexity=config.perplexity.model_dump(mode="json"),
                    eval_seed=config.seed,
                    keep_model=config.keep_models,
                    threads=threads,
                    progress=config.parallel == 1,
                    key=key,
                    progress_file=str(run_path / "students" / f".{name}.progress.json")
                    if config.parallel > 1
                    else None,
                    evaluation_systems=dict(config.evaluation_systems) or None,
                    loss_tokens=loss_tokens,
                    divergence_file=None if loss_tokens == "all" else str(divergence_file(str(data_file))),
                    scoring_memory_mb=config.scoring_memory_mb,
                )
            )
    return jobs


def finished_student(job: StudentJob) -> Student | None:
    """The student of `job` as an earlier run finished it (its student.json, with the same key)."""
    path = Path(job.out_dir) / STUDENT_FILE
    if path.is_file():
        saved = read_json(path)
        if saved.get("key") == job.key:
            return Student.model_validate(saved)
    return None


def run_student(job: StudentJob, team: Team | None = None) -> Student:
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
    examples, dropped = training_examples(job, lm.tokenizer)
    report = StudentProgress(job.progress_file)
    result = train(
        lm.model,
        lm.tokenizer,
        examples,
        TrainConfig.model_validate(job.train),
        out,
        adapter=lm.adapter,
        progress=job.progress and team.is_main,
        callback=report.step,
    )
    if not team.is_main:  # rank 0 measures the student (its weights are the same on every rank)
        team.sync(f"student {job.name}: measured")
        return Student.model_validate(read_json(out / STUDENT_FILE))
    report.phase("measuring")
    with scoring_memory(job.scoring_memory_mb):
        student = measured_student(job, lm, train_summary(result), dropped)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # resume points of a finished student
    atomic_write_json(out / STUDENT_FILE, student.model_dump(mode="json"))
    report.phase("done")
    team.sync(f"student {job.name}: measured")
    return student


def training_examples(job: StudentJob, tokenizer: Any) -> tuple[list[Example], int]:
    """The student's training examples, masked by divergence tokens in a masked arm: (the
    examples, how many were dropped for having no token left in the loss)."""
    examples = student_examples(tokenizer, read_jsonl(Path(job.data_file)), job.system)
    if job.loss_tokens == "all":
        return examples, 0
    assert job.divergence_file is not None
    return masked_examples(examples, read_json(Path(job.divergence_file))["flags"], job.loss_tokens)


def measured_student(job: StudentJob, lm: LoadedModel, training: TrainingSummary, dropped: int) -> Student:
    """The trained student measured as the references are (same settings, same sampling seed:
    paired samples), under `system` and each further evaluation system prompt."""
    perplexity = PerplexitySettings.model_validate(job.perplexity)
    text = load_text(perplexity.corpus) if perplexity.enabled else ""
    settings = PreferenceSettings.model_validate(job.preference)
    preference = evaluate_preference(lm, settings, job.system, job.eval_seed)
    by_system = {
        name: evaluate_preference(lm, settings, system, job.eval_seed)
        for name, system in (job.evaluation_systems or {}).items()
    }
    return Student.model_validate(
        {
            "key": job.key,
            "name": job.name,
            "dataset": job.dataset,
            "mode": job.mode,
            "seed": job.seed,
            "system_prompt_used": job.system,
            "threads": torch.get_num_threads(),
            "loss_tokens": job.loss_tokens,
            "examples_without_loss_tokens": dropped,
            "training": training.model_dump(mode="json"),
            "preference": preference,
            **({"preference_by_system": by_system} if by_system else {}),
            "perplexity": measure_perplexity(lm, perplexity, text),
            "checkpoint": str(Path("students") / job.name / "model") if job.keep_model else None,
        }
    )


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
            armed = (
                libc.prctl(
                    PR_SET_PDEATHSIG,
                    ctypes.c_ulong(signal.SIGKILL),
                    ctypes.c_ulong(0),
                    ctypes.c_ulong(0),
                    ctypes.c_ulong(0),
                )
                == 0
            )
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


def run_students(
    jobs: list[StudentJob], parallel: int, on_done: Callable[[Student], None], team: Team | None = None
) -> None:
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
            release_freed_memory()  # the next student starts from its own weights, not this one's heap
        return
    with (
        ProcessPoolExecutor(
            max_workers=parallel, mp_context=get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool,
        tqdm(desc=f"students ({parallel} at a time)", unit="step", total=0) as bar,
    ):
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
