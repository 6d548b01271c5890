"""Running a sweep through submitit: `run_sweep` validates every point's config, opens the
folder, skips the points whose run finished and submits the others to the ``local``, ``slurm``
or ``debug`` executor, at most ``parallel`` at a time, reporting each as it ends (a failure by
the error its run recorded), then combines the finished points. `run_point`, the job a worker
runs, is a module-level function so that submitit pickles it by reference and the worker
imports it by its qualified name."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sublens.claims import ClaimSettings
from sublens.config import Config
from sublens.runs import read_json
from sublens.sweep.combined import collect
from sublens.sweep.folder import finished, open_folder, point_dir
from sublens.sweep.points import Point, SweepSpec, point_configs

Executor = Literal["local", "slurm", "debug"]
EXECUTORS: tuple[str, ...] = ("local", "slurm", "debug")


# ---- running one point (in a worker process) ----------------------------------------------------
def run_point(experiment: str, config: Config, run_dir: str, threads: int) -> str:
    """The job submitit runs: one ordinary run of `experiment` into `run_dir` (resumed if it was
    started before). Module-level, so that it pickles by reference."""
    import torch  # here, so that planning and collecting a sweep never imports torch

    from sublens.experiments import run_experiment

    torch.set_num_threads(max(1, threads))
    outcome = run_experiment(experiment, config, Path(run_dir).parent, run_dir=Path(run_dir))
    return str(outcome.path)


def _claim_settings(configs: dict[str, Config]) -> ClaimSettings | None:
    """The margin, alpha and power of the sweep's verdicts: the points' own (`claims`), which
    every point shares unless the grid varies them (then the defaults, and the table says which)."""
    settings = {getattr(c, "claims", None) for c in configs.values()}
    only = settings.pop() if len(settings) == 1 else None
    return only if isinstance(only, ClaimSettings) else None


def _executor(kind: Executor, jobs_dir: Path, parallel: int, timeout_min: int, slurm: dict[str, Any]) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=str(jobs_dir), cluster=kind)
    executor.update_parameters(timeout_min=timeout_min)
    if kind == "slurm":
        executor.update_parameters(slurm_array_parallelism=parallel, **slurm)
    return executor


@dataclass
class SweepOutcome:
    folder: Path
    ran: list[str]  # point ids run now
    skipped: list[str]  # point ids that had already finished
    failed: dict[str, str]  # point id -> the error
    table: Path | None
    figure: list[Path]


def run_sweep(
    spec: SweepSpec,
    folder: Path,
    executor: Executor = "local",
    parallel: int = 1,
    timeout_min: int = 24 * 60,
    slurm: dict[str, Any] | None = None,
    comparison: str | None = None,
    say: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every unfinished point of `spec` into `folder`, then combine the finished ones."""
    from sublens.experiments import get

    configs = point_configs(spec, get(spec.experiment).config)
    open_folder(folder, spec)
    todo = [p for p in spec.points if not finished(point_dir(folder, p))]
    skipped = [p.id for p in spec.points if p not in todo]
    if skipped:
        say(f"{len(skipped)} of {len(spec.points)} points already finished; running the other {len(todo)}")
    threads = max(1, (os.cpu_count() or 1) // max(1, parallel)) if executor == "local" else (os.cpu_count() or 1)
    failed: dict[str, str] = {}
    if todo:
        runner = _executor(executor, folder / "jobs", parallel, timeout_min, slurm or {})
        limit = parallel if executor == "local" else len(todo)
        failed = _submit_all(runner, spec.experiment, todo, configs, folder, threads, limit, say)
    table, figure = collect(folder, spec, comparison, _claim_settings(configs))
    return SweepOutcome(folder, [p.id for p in todo], skipped, failed, table, figure)


def _submit_all(
    runner: Any,
    experiment: str,
    todo: list[Point],
    configs: dict[str, Config],
    folder: Path,
    threads: int,
    limit: int,
    say: Callable[[str], None],
) -> dict[str, str]:
    """Keep at most `limit` points running; report each as it ends. Returns the failures."""
    waiting, running, failed = list(todo), dict[str, Any](), dict[str, str]()
    done = 0
    while waiting or running:
        while waiting and len(running) < limit:
            point = waiting.pop(0)
            run_dir = point_dir(folder, point)
            running[point.id] = runner.submit(run_point, experiment, configs[point.id], str(run_dir), threads)
            say(f"started {point.id} (job {running[point.id].job_id})")
        for point_id, job in list(running.items()):
            if not job.done():
                continue
            del running[point_id]
            done += 1
            error = job.exception()
            if error is not None:
                failed[point_id] = _recorded_error(point_dir(folder, _by_id(todo, point_id))) or _first_line(error)
                say(f"[{done}/{len(todo)}] {point_id} failed: {failed[point_id]} (log: {job.paths.stderr})")
            else:
                say(f"[{done}/{len(todo)}] {point_id} finished")
        if running:
            time.sleep(0.5)
    return failed


def _by_id(points: list[Point], point_id: str) -> Point:
    return next(p for p in points if p.id == point_id)


def _recorded_error(run_dir: Path) -> str | None:
    """The error the point's run recorded (its record.json), the clearest account of a failure."""
    try:
        error = read_json(run_dir / "record.json").get("error")
    except (OSError, ValueError):
        return None
    return str(error) if error else None


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
