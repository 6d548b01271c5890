"""Commands over many runs: `sublens sweep` (an experiment at every grid point and seed),
`sublens power` (seeds needed, from pilot runs) and `sublens report` (the paper bundle from
finished runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sublens.cli.common import EXIT_PARTIAL, EXIT_RUN_FAILED, JsonOption, _fail, _out, _plain, _say
from sublens.errors import SublensError

if TYPE_CHECKING:
    from sublens.sweep import Axis, SweepFile, SweepOutcome, SweepSpec


def sweep(
    experiment: Annotated[str | None, typer.Argument(help="Experiment name (see `sublens experiments`).")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="A sweep file (configs/sweeps/*.yaml): experiment, base config, grid, seeds."
        ),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="A grid axis KEY=V1,V2,... (repeat for more axes: every combination runs)."),
    ] = None,
    seeds: Annotated[
        str, typer.Option(help="Seeds of every grid point: 0,1,2 or 0-4 (one run per point and seed).")
    ] = "0",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Base YAML config file.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="Base config: a shipped preset (configs/<experiment>/<preset>.yaml).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override every point shares: key=value.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Parent folder; the sweep goes to OUT/sweeps/<time>_<experiment>.")] = Path(
        "runs"
    ),
    folder: Annotated[
        Path | None,
        typer.Option("--folder", "--resume", help="The sweep folder: an earlier one (same command) is continued."),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local: child processes here; slurm: a job array (submitit); debug: one by one in this process."
        ),
    ] = "local",
    parallel: Annotated[int, typer.Option(help="Points run at once (local: processes; slurm: array parallelism).")] = 1,
    comparison: Annotated[
        str | None,
        typer.Option(
            help="The comparison the figure shows (default: the first trained model against its matched control)."
        ),
    ] = None,
    timeout_min: Annotated[int, typer.Option(help="Time limit of one point, in minutes.")] = 24 * 60,
    partition: Annotated[str | None, typer.Option(help="slurm: the partition.")] = None,
    gpus_per_node: Annotated[int, typer.Option(help="slurm: GPUs per point.")] = 0,
    cpus_per_task: Annotated[int | None, typer.Option(help="slurm: CPU cores per point.")] = None,
    mem_gb: Annotated[int | None, typer.Option(help="slurm: memory per point in GB.")] = None,
) -> None:
    """Run an experiment at every grid point and seed (resumable); write sweep.parquet and a figure."""
    from sublens.sweep import default_folder, run_sweep

    spec = _sweep_spec(experiment, file, grid, seeds, config, preset, overrides, executor, parallel)
    where = folder or default_folder(out, spec.experiment)
    _say("sweep folder:", f"{where} ({len(spec.points)} points)", "bold")
    slurm = {
        k: v
        for k, v in {
            "slurm_partition": partition,
            "gpus_per_node": gpus_per_node,
            "cpus_per_task": cpus_per_task,
            "mem_gb": mem_gb,
        }.items()
        if v
    }
    try:
        outcome = run_sweep(
            spec,
            where,
            executor,  # type: ignore[arg-type]
            parallel,
            timeout_min,
            slurm,
            comparison,
            say=lambda line: _out(err=True).print(line, highlight=False),
        )
    except SublensError as exc:
        _fail(exc, EXIT_RUN_FAILED)
    _sweep_ended(outcome, spec, where)


def _sweep_spec(
    experiment: str | None,
    file: Path | None,
    grid: list[str] | None,
    seeds: str,
    config: Path | None,
    preset: str | None,
    overrides: list[str] | None,
    executor: str,
    parallel: int,
) -> SweepSpec:
    """The sweep the options (or --file) describe, every point's config checked before any model
    loads: usage errors and bad configs stop here (exit 2)."""
    from sublens.config import check_model_specs
    from sublens.experiments import get
    from sublens.sweep import (
        EXECUTORS,
        SweepSpec,
        check_required,
        make_points,
        point_configs,
        seed_key,
    )

    try:
        experiment, config, overrides, axes, seed_list, sweep_file = _sweep_inputs(
            experiment, file, grid, seeds, config, preset, overrides
        )
        if executor not in EXECUTORS:
            raise SublensError(f"--executor {executor!r}: use one of {', '.join(EXECUTORS)}.")
        if parallel < 1:
            raise SublensError("--parallel must be 1 or more.")
        exp = get(experiment)
        if experiment == "paper":
            raise SublensError("The paper chain is not swept; sweep one of its experiments instead.")
        spec = SweepSpec(
            experiment=experiment,
            config=str(config) if config else None,
            overrides=overrides or [],
            grid=[(a.key, list(a.values)) for a in axes],
            seeds=seed_list,
            seed_key=seed_key(exp.config),
            points=make_points(axes, seed_list),
        )
        for cfg in point_configs(spec, exp.config).values():  # every point checked before any model loads
            check_model_specs(cfg)
            if file is not None and sweep_file is not None:
                check_required(cfg, sweep_file.required, file)
    except SublensError as exc:
        _fail(exc)
    return spec


def _sweep_inputs(
    experiment: str | None,
    file: Path | None,
    grid: list[str] | None,
    seeds: str,
    config: Path | None,
    preset: str | None,
    overrides: list[str] | None,
) -> tuple[str, Path | None, list[str] | None, list[Axis], list[int], SweepFile | None]:
    """Experiment, base config, shared overrides, grid axes and seeds: from --file (only --set
    beside it) or from the options; the sweep file too when one was given."""
    from sublens.config import preset_path
    from sublens.sweep import parse_axis, parse_seeds, read_sweep_file

    if file is not None:
        if experiment or grid or config or preset or seeds != "0":
            raise SublensError("--file holds the experiment, config, grid and seeds: give only --set with it.")
        sweep_file, config, shared, axes, seed_list = read_sweep_file(file)
        return sweep_file.experiment, config, [*shared, *(overrides or [])], axes, seed_list, sweep_file
    if experiment is None:
        raise SublensError("Name an experiment (sublens sweep subliminal --grid ...) or give --file.")
    if preset is not None and config is not None:
        raise SublensError("Give --config or --preset, not both.")
    if preset is not None:
        config = preset_path(f"{experiment}/{preset}.yaml")
    return experiment, config, overrides, [parse_axis(text) for text in grid or []], parse_seeds(seeds), None


def _sweep_ended(outcome: SweepOutcome, spec: SweepSpec, where: Path) -> None:
    """Where the table and figure went; exit 3 when some points failed."""
    if outcome.table is not None:
        _say("table:", str(outcome.table))
    for path in outcome.figure[:1]:
        _say("figure:", str(path))
    _print_effects(outcome.folder)
    if outcome.failed:
        _say(
            "error:",
            f"{len(outcome.failed)} of {len(spec.points)} points failed; run the same command with "
            f"--folder {where} to continue them",
            "bold red",
            err=True,
        )
        raise typer.Exit(EXIT_RUN_FAILED)


def _print_effects(folder: Path) -> None:
    """Each grid point's comparisons across seeds with their verdicts (sweep-effect.parquet)."""
    from sublens.sweep import FIGURE_STEM

    path = folder / f"{FIGURE_STEM}.parquet"
    if not path.is_file():
        return
    import pandas as pd

    effect = pd.read_parquet(path)
    for _, row in effect.iterrows():
        # a settled row has none (read back as NaN), and tables from before the column lack it
        settle = row.get("settle")
        settle = f" To settle it: {settle}." if isinstance(settle, str) and settle else ""
        _say(
            f"{row['grid']}:",
            f"{row['comparison']}: {row['verdict']} ({row['reason']}; {row['n_seeds']} seeds){settle}",
        )
    if "owl_specific" not in effect:
        return
    for grid, group in effect.groupby("grid", sort=False):
        word, why = group["owl_specific"].iloc[0], group["owl_specific_why"].iloc[0]
        if word:
            _say(f"{grid}:", f"owl-specific transfer: {word} ({why})", "bold")


def power(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Pilot subliminal run folders of one design (pooled).")
    ] = None,
    ratio: Annotated[float, typer.Option(help="The share ratio to detect (owl student over its control).")] = 1.25,
    arm: Annotated[str, typer.Option(help="The arm whose per-seed ratios are the pilot.")] = "owl-full",
    sd: Annotated[float | None, typer.Option(help="Between-seed SD of the log ratio, instead of pilot runs.")] = None,
    alpha: Annotated[float, typer.Option(help="Two-sided significance level.")] = 0.05,
    target: Annotated[float, typer.Option("--power", help="Power wanted.")] = 0.8,
    as_json: JsonOption = False,
) -> None:
    """Seeds needed to detect a transfer of a given size, from a pilot's between-seed spread."""
    from dataclasses import asdict

    from sublens.power import pilot_logs, power_report

    try:
        if not runs and sd is None:
            raise SublensError("Give pilot run folders (finished subliminal runs with 2 or more seeds) or --sd.")
        logs = pilot_logs(runs or [], arm) if runs else []
        found = power_report(logs, ratio, alpha, target, sd)
    except SublensError as exc:
        _fail(exc)
    if as_json:
        _plain(json.dumps(asdict(found), indent=2))
        return
    for line in found.lines():
        _plain(line)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A paper run, one experiment's run, or a folder of runs.")],
    out: Annotated[Path | None, typer.Option(help="Bundle folder (default: RUN_DIR/paper).")] = None,
    mode: Annotated[
        str | None, typer.Option(help="review | final | preprint (default: the paper config's style, else review).")
    ] = None,
    acl_sty: Annotated[
        Path | None, typer.Option("--acl-sty", help="Your copy of the official acl.sty (default: sublens-acl.sty).")
    ] = None,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="Write the bundle without running LaTeX.")] = False,
    sweep: Annotated[
        list[Path] | None,
        typer.Option(help="A finished `sublens sweep` folder (repeat for more): a section on the powered designs."),
    ] = None,
) -> None:
    """Rebuild the paper bundle (main.tex, tables, figures, PDF) from finished runs, in seconds."""
    from sublens.report.bundle import build_bundle, load_runs, load_sweep, style_settings

    try:
        sweeps = [load_sweep(folder) for folder in sweep or []]  # checked before anything is written
        stages, meta = load_runs(run_dir)
        style, sty = style_settings(meta, mode, str(acl_sty) if acl_sty else None)
        bundle = build_bundle(
            stages,
            out or run_dir / "paper",
            mode=style,
            acl_sty=sty,
            compile=not no_compile,
            meta=meta,
            sweeps=sweeps,
        )
    except SublensError as exc:
        _fail(exc)
    for line in bundle.headline:
        _out().print(f"  {line}", highlight=False, markup=False)
    _say("main.tex:", str(bundle.main_tex))
    if bundle.pdf is not None:
        _say("PDF:", str(bundle.pdf))
    if bundle.message:
        _out(err=not bundle.ok).print(bundle.message, highlight=False, markup=False, soft_wrap=True)
    if not bundle.ok:
        raise typer.Exit(EXIT_PARTIAL)
