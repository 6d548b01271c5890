"""`sublens run EXPERIMENT`: check the inputs, then print the plan (--plan) or open the run
folder, run the experiment and say how it ended (each kind of failure its own exit status)."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Table

from sublens.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_PARTIAL,
    EXIT_RUN_FAILED,
    _fail,
    _plain,
    _print_table,
    _say,
)
from sublens.errors import RunLockedError, SublensError

if TYPE_CHECKING:
    from sublens.config import Config
    from sublens.experiments import Experiment, RunOutcome
    from sublens.runs import Team

PLAN_TFLOPS = 296.7  # sublens.plan.DEFAULT_TFLOPS (not imported here: `sublens --help` stays fast)
PLAN_BANDWIDTH = 4.8  # sublens.plan.DEFAULT_BANDWIDTH_TBS

Say = Callable[..., None]  # _say's signature: (label, message, style="green", err=False)


def run(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `sublens experiments`).")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override: key=value (YAML; string keys keep the text).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Parent folder of run directories.")] = Path("runs"),
    resume: Annotated[
        Path | None, typer.Option(help="Continue an interrupted run in this run directory (same config).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="A shipped preset: configs/<experiment>/<preset>.yaml (e.g. quick, paper).")
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="paper: start a new run instead of continuing the newest one with this config.")
    ] = False,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Validate the config and print each stage's models, tokens, FLOPs, GPU "
            "memory and time (estimates; nothing is loaded, downloaded or written), then exit.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --plan: print the plan as JSON.")] = False,
    tflops: Annotated[
        float,
        typer.Option(help="With --plan: sustained bf16 TFLOP/s of the GPU (default: H100/H200 peak 989 x MFU 0.3)."),
    ] = PLAN_TFLOPS,
    bandwidth: Annotated[
        float, typer.Option(help="With --plan: GPU memory bandwidth in TB/s (bounds sampling speed; default: H200).")
    ] = PLAN_BANDWIDTH,
) -> None:
    """Run an experiment; its run directory holds config, record, results and artifacts."""
    exp, cfg, config = _checked_inputs(experiment, config, overrides, resume, preset, fresh, plan, as_json)
    if plan:  # before any run folder exists or any model loads
        _print_plan(experiment, cfg, str(config) if config else "defaults", tflops, bandwidth, as_json)
        return
    # Under accelerate launch / torchrun, rank 0 makes the folder and the others get its path
    # (sublens.runs.Team); only rank 0 prints where the run goes and how it ended.
    ranks = _team(cfg)

    def say(label: str, message: str, style: str = "green", err: bool = False) -> None:
        if ranks.is_main:
            _say(label, message, style, err)

    run_dir = _run_folder(experiment, exp, cfg, out, resume, fresh, ranks, say)
    outcome = _launch(experiment, cfg, out, run_dir, fresh, ranks, say)
    say("done:", f"results in {outcome.path}")


def _checked_inputs(
    experiment: str,
    config: Path | None,
    overrides: list[str] | None,
    resume: Path | None,
    preset: str | None,
    fresh: bool,
    plan: bool,
    as_json: bool,
) -> tuple[Experiment, Config, Path | None]:
    """The experiment, its loaded config and the config file (a preset's path): usage errors and
    bad configs stop here (exit 2), before any folder exists or any model loads."""
    from sublens.config import check_model_specs, load_config, preset_path
    from sublens.experiments import check_launch, get

    try:
        if preset is not None and config is not None:
            raise SublensError("Give --config or --preset, not both.")
        if resume is not None and fresh:
            raise SublensError("Give --resume or --fresh, not both.")
        if as_json and not plan:
            raise SublensError("--json prints a plan: give it with --plan.")
        exp = get(experiment)
        if resume is not None:
            _check_resumable(resume, experiment)
        if preset is not None:
            config = preset_path(f"{experiment}/{preset}.yaml")
        cfg = load_config(exp.config, config, overrides or [])
        check_model_specs(cfg)  # a mistyped run folder fails here, before any model loads
        if not plan:
            check_launch(experiment, cfg)  # one process only: refused before any folder exists
    except SublensError as exc:
        _fail(exc)
    return exp, cfg, config


def _team(cfg: Config) -> Team:
    """This process's place in a launch (one process: a team of one)."""
    from sublens.runs import launch_world, team, wants_cpu

    try:
        return team(cpu=wants_cpu(cfg)) if launch_world() > 1 else team()
    except SublensError as exc:  # e.g. device: cuda without CUDA
        _fail(exc)


def _run_folder(
    experiment: str, exp: Experiment, cfg: Config, out: Path, resume: Path | None, fresh: bool, ranks: Team, say: Say
) -> Path:
    """The folder continued (--resume, or the paper chain's newest run with this config) or a new
    one (made by rank 0, shared with the others)."""
    from sublens.runs import new_run_dir

    run_dir = resume
    if run_dir is None and exp.reuse is not None and not fresh:
        run_dir = exp.reuse(cfg, out)  # paper: the newest run with this config is continued
    if run_dir is not None:
        say("run folder:", f"{run_dir} (continuing)", "bold")
        return run_dir
    try:
        run_dir = ranks.share("run folder", lambda: new_run_dir(experiment, out))
    except OSError as exc:
        ranks.fail(exc)
        _fail(f"Cannot create a run folder under {out}: {exc}. Give a writable --out folder.")
    except SublensError as exc:  # rank 0 could not make it
        _fail(exc, EXIT_RUN_FAILED)
    say("run folder:", str(run_dir), "bold")
    return run_dir


def _launch(experiment: str, cfg: Config, out: Path, run_dir: Path, fresh: bool, ranks: Team, say: Say) -> RunOutcome:
    """Run the experiment in its folder; a failure ends the command with its exit status."""
    from sublens.experiments import run_experiment
    from sublens.runs import failed_run_dir

    try:
        return run_experiment(experiment, cfg, out, run_dir=run_dir, fresh=fresh)
    except RunLockedError as exc:
        _fail(exc, EXIT_LOCKED)
    except KeyboardInterrupt:
        say("interrupted:", f"the run is recorded as failed; continue it with --resume {run_dir}", "bold red", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        where = failed_run_dir(exc)
        if where is None:  # refused before the run started (e.g. --resume with another config)
            if isinstance(exc, SublensError):
                _fail(exc)
            raise
        _run_failed(exc, run_dir, where / "record.json", ranks)


def _run_failed(exc: Exception, run_dir: Path, record: Path, ranks: Team) -> NoReturn:
    """Say how a started run failed (rank 0: the record; another rank: its own error) and exit 3,
    or 4 when the paper chain recorded a partial run."""
    from sublens.runs import RankFailedError, read_json

    try:  # the paper chain records {"partial": true} while some stages have not finished
        partial = read_json(run_dir / "results.json").get("partial") is True
    except (OSError, ValueError, AttributeError):
        partial = False
    code = EXIT_PARTIAL if partial and isinstance(exc, SublensError) else EXIT_RUN_FAILED
    if not ranks.is_main:  # rank 0 records the run's failure; this rank's own error is shown here
        if not isinstance(exc, RankFailedError) and not isinstance(exc, SublensError):
            traceback.print_exception(exc, file=sys.stderr)
        _say("error:", f"process {ranks.rank}: {exc}", "bold red", err=True)
        raise typer.Exit(code) from None
    if isinstance(exc, SublensError):
        _say("error:", str(exc), "bold red", err=True)
    else:
        _say(
            "error:",
            f"the run failed unexpectedly ({type(exc).__name__}: {exc}); the traceback is in {record}",
            "bold red",
            err=True,
        )
    _say(
        "run folder:", f"{run_dir} ({'partial' if code == EXIT_PARTIAL else 'failed'}; see {record})", "bold", err=True
    )
    raise typer.Exit(code) from None


def _check_resumable(folder: Path, experiment: str) -> None:
    """--resume needs an existing run folder of this experiment (never a fresh run by mistake)."""
    from sublens.runs import read_json

    if not folder.is_dir():
        raise SublensError(
            f"Cannot resume {folder}: no such run folder. Give the folder of an interrupted run "
            "(printed as 'run folder:' when it started), or leave out --resume to start a new run."
        )
    record = folder / "record.json"
    if not record.is_file() and not (folder / "config.yaml").is_file():
        raise SublensError(
            f"Cannot resume {folder}: it is not a run folder (it has no record.json or config.yaml). "
            "Give the folder of an interrupted run, or leave out --resume to start a new run."
        )
    try:
        recorded = read_json(record).get("experiment") if record.is_file() else None
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and recorded != experiment:
        raise SublensError(
            f"Cannot resume {folder} as {experiment}: it is a run of {recorded}. "
            f"Run `sublens run {recorded} --resume {folder}` instead."
        )


def _plan_table(title: str, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    """A plan table: rich on a terminal wide enough for every cell on one line, else the title
    and plain aligned columns (nothing cropped when piped), as `_print_listing`."""
    _print_table(Table(title=title, title_justify="left"), columns, rows, plain_title=title, indent="  ")


def _print_plan(experiment: str, cfg: Any, source: str, tflops: float, bandwidth: float, as_json: bool) -> None:
    """`run --plan`: the plan of every stage and the totals (sublens.plan); exit 0, nothing written."""
    from sublens.plan import (
        TASK_COLUMNS,
        TOTAL_COLUMNS,
        Gpu,
        human_bytes,
        model_lines,
        peak_line,
        plan_experiment,
        task_rows,
        total_rows,
    )

    try:
        result = plan_experiment(experiment, cfg, Gpu(tflops=tflops, bandwidth_tbs=bandwidth), source)
    except SublensError as exc:
        _fail(exc)
    if as_json:
        _plain(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        _say(
            "plan:",
            f"sublens run {experiment} ({source}): config valid; estimates only, nothing loaded or written",
            "bold",
        )
        for index, stage in enumerate(result.stages, 1):
            _plain("")
            _plan_table(
                f"stage {index}/{len(result.stages)}: {stage.stage} ({stage.config})", TASK_COLUMNS, task_rows(stage)
            )
            peak = peak_line(stage)
            for line in [*model_lines(stage), *([peak] if peak else []), *(f"  note: {n}" for n in stage.notes)]:
                _plain(line)
        _plain("")
        _plan_table(
            "Totals (tokens by kind; peak memory = max over stages, time = sum)", TOTAL_COLUMNS, total_rows(result)
        )
        for line in result.assumptions():
            _plain(f"assumed: {line}")
    if result.peak_memory > result.gpu.memory_gb * 1e9:
        _say(
            "warning:",
            f"peak GPU memory {human_bytes(result.peak_memory)} exceeds an {result.gpu.memory_gb:g} GB GPU",
            "bold yellow",
            err=True,
        )
    for problem in result.problems:
        _say("warning:", problem, "bold yellow", err=True)
