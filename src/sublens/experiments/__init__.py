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
from sublens.results import Results
from sublens.runs import Run, newest_finished_run, open_run


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


def run_experiment(
    name: str, config: Config, out: Path = Path("runs"), run_dir: Path | None = None, fresh: bool = False
) -> RunOutcome:
    """Run (or, with run_dir, resume) an experiment; fresh=True never continues an earlier run."""
    experiment = get(name)
    if not isinstance(config, experiment.config):
        raise ConfigError(f"{name} needs a {experiment.config.__name__}, got {type(config).__name__}.")
    if run_dir is None and experiment.reuse is not None and not fresh:
        run_dir = experiment.reuse(config, out)
    with open_run(name, config, out, run_dir) as run:
        results = experiment.execute(config, run)
        run.save_results(results)
    return RunOutcome(run.path, results.model_dump(mode="json") if isinstance(results, Results) else results)


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
        f"No finished `teacher` run with a checkpoint under {str(runs_root)!r}, so there is no default "
        f"{what}. {remedy}"
    )
