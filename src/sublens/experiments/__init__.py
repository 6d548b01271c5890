"""The experiment registry: one table, one entry point per experiment.

Each experiment module defines a frozen Config subclass and `execute(config, run)`, which
returns the results: a `sublens.results.Results` model (typed results) or a plain dict.
`run_experiment` opens the run directory, records everything, and calls it; the CLI and
Python use the same function.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublens.config import Config
from sublens.errors import ConfigError
from sublens.kv_budget import scoring_memory
from sublens.malloc import release_freed_memory
from sublens.results import Results
from sublens.runs import (
    FollowerRun,
    RankFailedError,
    Run,
    failed_run_dir,
    launch_world,
    mark_failed_run,
    new_run_dir,
    newest_finished_run,
    open_run,
    read_json,
    terminate_as_interrupt,
    wants_cpu,
)
from sublens.runs import team as ranks


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    config: type[Config]
    execute: Callable[[Any, Run], dict[str, Any] | Results]
    # An earlier run directory under `out` to continue instead of starting afresh (paper: the
    # newest run with the same config, whose finished stages are reused).
    reuse: Callable[[Any, Path], Path | None] | None = None


@dataclass(frozen=True)
class RunOutcome:
    path: Path
    results: dict[str, Any]  # as in results.json (a Results model dumped to JSON)


def _registry() -> dict[str, Experiment]:
    """Every module (or subpackage) of sublens.experiments that defines EXPERIMENT.

    Imported lazily so that `import sublens.experiments` stays cheap; adding an experiment
    is adding one module, with no table to edit.
    """
    registry: dict[str, Experiment] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        experiment = getattr(module, "EXPERIMENT", None)
        if isinstance(experiment, Experiment):
            registry[experiment.name] = experiment
    return registry


def get(name: str) -> Experiment:
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"Unknown experiment {name!r}. Available: {', '.join(sorted(registry))}.")
    return registry[name]


def all_experiments() -> list[Experiment]:
    return list(_registry().values())


# Experiments that run under `accelerate launch --num_processes N` (several processes): rank 0
# owns the run and every rank joins their training steps (data parallel). The others refuse.
DATA_PARALLEL = frozenset({"teacher", "subliminal", "distill"})


def check_launch(name: str, config: Config | None = None) -> None:
    """Refuse, before any folder exists, an experiment that cannot run under a multi-process
    launch, or a config that would start worker processes of its own (parallel > 1)."""
    world = launch_world()
    if world <= 1:
        return
    if name not in DATA_PARALLEL:
        raise ConfigError(
            f"{name} runs in one process only, but this is one of {world} processes (accelerate launch / "
            f"torchrun). Run it without a launcher; {', '.join(sorted(DATA_PARALLEL))} train data-parallel."
        )
    parallel = getattr(config, "parallel", 1)
    if isinstance(parallel, int) and parallel > 1:
        raise ConfigError(
            f"parallel: {parallel} trains in worker processes of its own, but this run already has {world} "
            "processes (accelerate launch), across which every model trains data-parallel. Set parallel: 1 "
            "(--set parallel=1), or run without a launcher."
        )


def run_experiment(
    name: str, config: Config, out: Path = Path("runs"), run_dir: Path | None = None, fresh: bool = False
) -> RunOutcome:
    """Run (or, with run_dir, resume) an experiment; fresh=True never continues an earlier run.

    Under a multi-process launch (WORLD_SIZE > 1; DATA_PARALLEL experiments only) rank 0 makes
    (or reopens) the run folder, holds its lock and writes everything; the other ranks get the
    folder from rank 0, run the same `execute` with a `FollowerRun` (no record, no results; each
    experiment leaves rank 0's work to rank 0) and return rank 0's results. A failure on any rank
    fails every rank (`Team`); rank 0 records it, naming the rank that failed first."""
    experiment = get(name)
    if not isinstance(config, experiment.config):
        raise ConfigError(f"{name} needs a {experiment.config.__name__}, got {type(config).__name__}.")
    check_launch(name, config)
    release_freed_memory()  # a stage of the paper chain starts without the last one's heap (sublens.malloc)
    with scoring_memory(config.scoring_memory_mb):
        return _run_or_resume(experiment, name, config, out, run_dir, fresh)


def _run_or_resume(
    experiment: Experiment, name: str, config: Config, out: Path, run_dir: Path | None, fresh: bool
) -> RunOutcome:
    if run_dir is None and experiment.reuse is not None and not fresh:
        run_dir = experiment.reuse(config, out)
    if launch_world() <= 1:
        with open_run(name, config, out, run_dir) as run:
            results = experiment.execute(config, run)
            run.save_results(results)
        return RunOutcome(run.path, results.model_dump(mode="json") if isinstance(results, Results) else results)
    team = ranks(cpu=wants_cpu(config))
    path: Path | None = None
    with terminate_as_interrupt():
        try:
            path = team.share("run folder", lambda: run_dir if run_dir is not None else new_run_dir(name, out))
            if team.is_main:
                with open_run(name, config, out, path) as run:
                    try:
                        team.sync("run opened")  # the lock is held and config.yaml matches
                        results = experiment.execute(config, run)
                        team.barrier("executed")  # a failure on another rank fails the run here
                        run.save_results(results)
                    except BaseException as exc:
                        failed = team.failure()
                        if failed is not None and not isinstance(exc, RankFailedError):
                            raise team.failed_error(*failed) from exc  # the cause, not its echo
                        raise
            else:
                team.sync("run opened")
                experiment.execute(config, FollowerRun(path, name, config))
                team.barrier("executed")
            team.barrier("finished")  # rank 0's record and results are written
        except BaseException as exc:
            team.fail(exc)
            if path is not None and failed_run_dir(exc) is None:
                mark_failed_run(exc, path)  # the CLI then points at rank 0's record
            raise
    return RunOutcome(path, read_json(path / "results.json"))


def default_teacher_run(runs_root: str | Path, what: str, remedy: str) -> str:
    """The default biased model of distill, hybrid and pruning: the newest finished `teacher` run
    under runs_root that lists a checkpoint (a run directory is a model spec).

    With none, a ConfigError says there is no default `what` and then `remedy`: how to make
    one or which setting gives one, which differs per experiment.
    """
    found = newest_finished_run(runs_root, "teacher")
    if found is not None:
        return str(found)
    raise ConfigError(
        f"No finished `teacher` run with a checkpoint under {str(runs_root)!r}, so there is no default {what}. {remedy}"
    )
