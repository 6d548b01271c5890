"""Command line: parses, loads a config, calls an experiment, prints where results went.

Errors go to stderr as plain text (never read as rich markup), one line with the fix, and each
kind of failure has its own exit status (EXIT_CODES, also in `sublens --help` and the README).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from sublens.errors import RunLockedError, SublensError

if TYPE_CHECKING:
    from sublens.config import FieldInfoRow

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug outside any run: the traceback is printed
EXIT_USAGE = 2  # usage or config error (bad --set key or value, unknown experiment, bad spec): nothing ran
EXIT_RUN_FAILED = 3  # the run started and failed: its record.json holds the error and traceback
EXIT_PARTIAL = 4  # paper chain: some stages did not finish (report: the bundle has problems)
EXIT_LOCKED = 5  # the run folder is in use by another process
EXIT_INTERRUPTED = 130  # Ctrl-C: the record says failed; --resume continues

EXIT_HELP = (
    "Exit status: 0 ok; 1 internal error (a bug; traceback printed); 2 usage or config error, "
    "nothing ran; 3 the run failed (its record.json has the traceback); 4 partial: some paper "
    "stages did not finish, or the report bundle has problems; 5 the run folder is in use by "
    "another process; 130 interrupted."
)

app = typer.Typer(
    help="sublens: mechanistic study of subliminal learning.",
    epilog=EXIT_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _say(label: str, message: str, style: str = "green", err: bool = False) -> None:
    """A labelled line; the message is plain text (paths like runs/[x] print as they are)."""
    (err_console if err else console).print(
        Text.assemble((label, style), " ", message), soft_wrap=True, highlight=False
    )


def _fail(exc: SublensError | str, code: int = EXIT_USAGE) -> NoReturn:
    _say("error:", str(exc), "bold red", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from sublens import __version__

        console.print(f"sublens {__version__}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """sublens: mechanistic study of subliminal learning."""


PLAN_TFLOPS = 296.7  # sublens.plan.DEFAULT_TFLOPS (not imported here: `sublens --help` stays fast)
PLAN_BANDWIDTH = 4.8  # sublens.plan.DEFAULT_BANDWIDTH_TBS

JSON_HELP = "Print a JSON list of objects (one per row, every column) instead of a table."
JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


def _plain(text: str) -> None:
    """Text exactly as given: no markup, highlighting or emoji codes, never wrapped or cropped by
    rich (soft wrap: a long line is the terminal's to wrap, and `| cat` gets it whole)."""
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def _natural_width(table: Table) -> int:
    """Columns the table takes with every cell on one line."""
    return Measurement.get(console, console.options.update_width(sys.maxsize), table).maximum


def _aligned(columns: tuple[str, ...], rows: list[dict[str, str]], widest: int | None = None) -> list[str]:
    """Plain columns, two spaces apart, every value in full (a header line, then one per row).
    With `widest`, no column is padded wider: a longer cell pushes the rest of its own row only."""
    lines = [[c.replace("_", " ") for c in columns], *([row[c] for c in columns] for row in rows)]
    widths = [min(max(len(line[i]) for line in lines), widest or sys.maxsize) for i in range(len(columns))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]


def _print_listing(title: str, columns: tuple[str, ...], rows: list[dict[str, str]], as_json: bool) -> None:
    """A listing whose identifiers are never cut (rich tables crop cells to `smollm2-13…` when
    piped or narrow): JSON with --json; a table on a terminal wide enough for every cell on one
    line; plain aligned columns otherwise."""
    if as_json:
        _plain(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    _print_table(Table(title=title), columns, rows)


def _print_table(table: Table, columns: tuple[str, ...], rows: list[dict[str, str]],
                 plain_title: str | None = None, indent: str = "") -> None:
    """Rich on a terminal wide enough for every cell on one line; else (piped, narrow) plain
    aligned columns, so no identifier is ever cropped."""
    for column in columns:
        table.add_column(column.replace("_", " "), no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    if console.is_terminal and _natural_width(table) <= console.width:
        console.print(table)
        return
    if plain_title is not None:
        _plain(plain_title)
    for line in _aligned(columns, rows):
        _plain(f"{indent}{line}")


MODEL_COLUMNS = ("name", "architecture", "parameters", "package", "cache", "paper_counterpart")


def _model_rows() -> list[dict[str, str]]:
    from sublens.models.cache import folder_size, gguf_entry, is_complete
    from sublens.models.embedded import EMBEDDED

    rows = []
    for model in EMBEDDED.values():
        entry = gguf_entry(Path(), model.name)
        if is_complete(entry):
            cache = f"converted ({folder_size(entry) / 2**20:.0f} MiB) {entry}"
        else:
            cache = "not converted (`sublens fetch`)"
        package = "installed" if model.installed() else f"missing: {model.pip_command}"
        rows.append({"name": model.name, "architecture": model.architecture, "parameters": model.parameters,
                     "package": package, "cache": cache, "paper_counterpart": model.paper_counterpart})
    return rows


@app.command()
def models(as_json: JsonOption = False) -> None:
    """List the embedded models, their architecture, size and cache state."""
    _print_listing("Embedded models", MODEL_COLUMNS, _model_rows(), as_json)


@app.command()
def fetch(names: Annotated[list[str] | None, typer.Argument(help="Embedded models (default: all).")] = None) -> None:
    """Convert the embedded GGUF models into the safetensors cache (once)."""
    from sublens.models import ensure_embedded
    from sublens.models.embedded import EMBEDDED

    for name in names or list(EMBEDDED):
        if name not in EMBEDDED:
            _fail(SublensError(f"{name!r} is not an embedded model; choose from {', '.join(EMBEDDED)}."))
        start = time.perf_counter()
        try:
            path = ensure_embedded(name)
        except SublensError as exc:
            _fail(exc)
        console.print(f"{name}: {path} ({time.perf_counter() - start:.1f} s)", highlight=False, markup=False)


@app.command(epilog=EXIT_HELP)
def run(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `sublens experiments`).")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override: key=value (YAML; string keys keep the text).")] = None,
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
        bool, typer.Option("--plan", help="Validate the config and print each stage's models, tokens, FLOPs, GPU "
                           "memory and time (estimates; nothing is loaded, downloaded or written), then exit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --plan: print the plan as JSON.")] = False,
    tflops: Annotated[
        float, typer.Option(help="With --plan: sustained bf16 TFLOP/s of the GPU (default: H100/H200 peak 989 x MFU 0.3).")
    ] = PLAN_TFLOPS,
    bandwidth: Annotated[
        float, typer.Option(help="With --plan: GPU memory bandwidth in TB/s (bounds sampling speed; default: H200).")
    ] = PLAN_BANDWIDTH,
) -> None:
    """Run an experiment; its run directory holds config, record, results and artifacts."""
    from sublens.config import check_model_specs, load_config, preset_path
    from sublens.experiments import check_launch, get, run_experiment
    from sublens.runs import (
        RankFailedError,
        failed_run_dir,
        launch_world,
        new_run_dir,
        read_json,
        team,
        wants_cpu,
    )

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

    if plan:  # before any run folder exists or any model loads
        _print_plan(experiment, cfg, str(config) if config else "defaults", tflops, bandwidth, as_json)
        return
    # Under accelerate launch / torchrun, rank 0 makes the folder and the others get its path
    # (sublens.runs.Team); only rank 0 prints where the run goes and how it ended.
    try:
        ranks = team(cpu=wants_cpu(cfg)) if launch_world() > 1 else team()
    except SublensError as exc:  # e.g. device: cuda without CUDA
        _fail(exc)

    def say(label: str, message: str, style: str = "green", err: bool = False) -> None:
        if ranks.is_main:
            _say(label, message, style, err)

    run_dir = resume
    if run_dir is None and exp.reuse is not None and not fresh:
        run_dir = exp.reuse(cfg, out)  # paper: the newest run with this config is continued
    if run_dir is not None:
        say("run folder:", f"{run_dir} (continuing)", "bold")
    else:
        try:
            run_dir = ranks.share("run folder", lambda: new_run_dir(experiment, out))
        except OSError as exc:
            ranks.fail(exc)
            _fail(f"Cannot create a run folder under {out}: {exc}. Give a writable --out folder.")
        except SublensError as exc:  # rank 0 could not make it
            _fail(exc, EXIT_RUN_FAILED)
        say("run folder:", str(run_dir), "bold")
    try:
        outcome = run_experiment(experiment, cfg, out, run_dir=run_dir, fresh=fresh)
    except RunLockedError as exc:
        _fail(exc, EXIT_LOCKED)
    except KeyboardInterrupt:
        say("interrupted:", f"the run is recorded as failed; continue it with --resume {run_dir}", "bold red",
            err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        where = failed_run_dir(exc)
        if where is None:  # refused before the run started (e.g. --resume with another config)
            if isinstance(exc, SublensError):
                _fail(exc)
            raise
        record = where / "record.json"
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
            _say("error:", f"the run failed unexpectedly ({type(exc).__name__}: {exc}); the traceback is in "
                 f"{record}", "bold red", err=True)
        _say("run folder:", f"{run_dir} ({'partial' if code == EXIT_PARTIAL else 'failed'}; see {record})",
             "bold", err=True)
        raise typer.Exit(code) from None
    say("done:", f"results in {outcome.path}")


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
        _say("plan:", f"sublens run {experiment} ({source}): config valid; estimates only, nothing loaded or "
             "written", "bold")
        for index, stage in enumerate(result.stages, 1):
            _plain("")
            _plan_table(f"stage {index}/{len(result.stages)}: {stage.stage} ({stage.config})",
                        TASK_COLUMNS, task_rows(stage))
            peak = peak_line(stage)
            for line in [*model_lines(stage), *([peak] if peak else []), *(f"  note: {n}" for n in stage.notes)]:
                _plain(line)
        _plain("")
        _plan_table("Totals (tokens by kind; peak memory = max over stages, time = sum)", TOTAL_COLUMNS,
                    total_rows(result))
        for line in result.assumptions():
            _plain(f"assumed: {line}")
    if result.peak_memory > result.gpu.memory_gb * 1e9:
        _say("warning:", f"peak GPU memory {human_bytes(result.peak_memory)} exceeds an "
             f"{result.gpu.memory_gb:g} GB GPU", "bold yellow", err=True)
    for problem in result.problems:
        _say("warning:", problem, "bold yellow", err=True)


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


@app.command()
def experiments(as_json: JsonOption = False) -> None:
    """List the experiments."""
    from sublens.experiments import all_experiments

    rows = [{"name": exp.name, "summary": exp.summary} for exp in all_experiments()]
    _print_listing("Experiments", ("name", "summary"), rows, as_json)


# Columns of `sublens config` are padded to at most this width: a long value (a system prompt)
# then pushes the rest of its own row instead of widening the column for every key.
CONFIG_CELL_WIDTH = 36


def _yaml_text(value: Any) -> str:
    """A value as a config file or --set writes it (null, [full, freeze-mlp], 5.0e-05, 'yes'):
    YAML flow style on one line, or JSON where YAML would spread a text over several lines."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=sys.maxsize)
    text = text.removesuffix("\n").removesuffix("\n...")  # the end marker YAML puts after a bare scalar
    return text if "\n" not in text else json.dumps(value, ensure_ascii=False)


def _cell(field: FieldInfoRow, value: Any) -> str:
    """A value in the table; a nested model's keys follow on rows of their own, so its row says {...}."""
    return "{...}" if field.nested and isinstance(value, dict) else _yaml_text(value)


@app.command("config")
def config_keys(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `sublens experiments`).")],
    preset: Annotated[
        str | None, typer.Option(help="Also show each key's value in configs/<experiment>/<preset>.yaml (e.g. quick).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Every config key of an experiment: type, default, the preset's value, documentation."""
    from sublens.config import describe_fields, load_config, preset_path
    from sublens.experiments import get

    try:
        exp = get(experiment)
        # the preset is read as `run --preset` reads it: its values are what a run would get
        values = load_config(exp.config, preset_path(f"{experiment}/{preset}.yaml")) if preset is not None else None
    except SublensError as exc:
        _fail(exc)
    fields = describe_fields(exp.config, values)
    if as_json:
        rows: list[dict[str, Any]] = [
            {"key": f.key, "type": f.type, "default": f.default, "required": f.required, "nested": f.nested}
            | ({"preset": f.value} if values is not None else {})
            | {"description": f.description}
            for f in fields
        ]
        _plain(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    columns = ("key", "type", "default", *(("preset",) if values is not None else ()), "description")
    text_rows = [{"key": f.key, "type": f.type, "default": "(required)" if f.required else _cell(f, f.default),
                  "preset": _cell(f, f.value), "description": f.description} for f in fields]
    for line in _aligned(columns, text_rows, widest=CONFIG_CELL_WIDTH):
        _plain(line)


@app.command(epilog=EXIT_HELP)
def sweep(
    experiment: Annotated[str | None, typer.Argument(help="Experiment name (see `sublens experiments`).")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="A sweep file (configs/sweeps/*.yaml): experiment, base config, grid, seeds.")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", help="A grid axis KEY=V1,V2,... (repeat for more axes: every combination runs).")] = None,
    seeds: Annotated[str, typer.Option(help="Seeds of every grid point: 0,1,2 or 0-4 (one run per point and seed).")] = "0",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Base YAML config file.")] = None,
    preset: Annotated[str | None, typer.Option(help="Base config: a shipped preset (configs/<experiment>/<preset>.yaml).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override every point shares: key=value.")] = None,
    out: Annotated[Path, typer.Option(help="Parent folder; the sweep goes to OUT/sweeps/<time>_<experiment>.")] = Path("runs"),
    folder: Annotated[Path | None, typer.Option(
        "--folder", "--resume", help="The sweep folder: an earlier one (same command) is continued.")] = None,
    executor: Annotated[str, typer.Option(
        help="local: child processes here; slurm: a job array (submitit); debug: one by one in this process.")] = "local",
    parallel: Annotated[int, typer.Option(help="Points run at once (local: processes; slurm: array parallelism).")] = 1,
    comparison: Annotated[str | None, typer.Option(
        help="The comparison the figure shows (default: the first trained model against its matched control).")] = None,
    timeout_min: Annotated[int, typer.Option(help="Time limit of one point, in minutes.")] = 24 * 60,
    partition: Annotated[str | None, typer.Option(help="slurm: the partition.")] = None,
    gpus_per_node: Annotated[int, typer.Option(help="slurm: GPUs per point.")] = 0,
    cpus_per_task: Annotated[int | None, typer.Option(help="slurm: CPU cores per point.")] = None,
    mem_gb: Annotated[int | None, typer.Option(help="slurm: memory per point in GB.")] = None,
) -> None:
    """Run an experiment at every grid point and seed (resumable); write sweep.parquet and a figure."""
    from sublens.config import check_model_specs, preset_path
    from sublens.experiments import get
    from sublens.sweep import (
        EXECUTORS,
        SweepSpec,
        check_required,
        default_folder,
        make_points,
        parse_axis,
        parse_seeds,
        point_configs,
        read_sweep_file,
        run_sweep,
        seed_key,
    )

    try:
        if file is not None:
            if experiment or grid or config or preset or seeds != "0":
                raise SublensError("--file holds the experiment, config, grid and seeds: give only --set with it.")
            sweep_file, config, shared, axes, seed_list = read_sweep_file(file)
            experiment, overrides = sweep_file.experiment, [*shared, *(overrides or [])]
        else:
            if experiment is None:
                raise SublensError("Name an experiment (sublens sweep subliminal --grid ...) or give --file.")
            if preset is not None and config is not None:
                raise SublensError("Give --config or --preset, not both.")
            if preset is not None:
                config = preset_path(f"{experiment}/{preset}.yaml")
            axes, seed_list = [parse_axis(text) for text in grid or []], parse_seeds(seeds)
        if executor not in EXECUTORS:
            raise SublensError(f"--executor {executor!r}: use one of {', '.join(EXECUTORS)}.")
        if parallel < 1:
            raise SublensError("--parallel must be 1 or more.")
        exp = get(experiment)
        if experiment == "paper":
            raise SublensError("The paper chain is not swept; sweep one of its experiments instead.")
        spec = SweepSpec(experiment=experiment, config=str(config) if config else None, overrides=overrides or [],
                         grid=[(a.key, list(a.values)) for a in axes], seeds=seed_list,
                         seed_key=seed_key(exp.config), points=make_points(axes, seed_list))
        for cfg in point_configs(spec, exp.config).values():  # every point checked before any model loads
            check_model_specs(cfg)
            if file is not None:
                check_required(cfg, sweep_file.required, file)
    except SublensError as exc:
        _fail(exc)
    where = folder or default_folder(out, experiment)
    _say("sweep folder:", f"{where} ({len(spec.points)} points)", "bold")
    slurm = {k: v for k, v in {"slurm_partition": partition, "gpus_per_node": gpus_per_node,
                               "cpus_per_task": cpus_per_task, "mem_gb": mem_gb}.items() if v}
    try:
        outcome = run_sweep(spec, where, executor, parallel, timeout_min, slurm,  # type: ignore[arg-type]
                            comparison, say=lambda line: err_console.print(line, highlight=False))
    except SublensError as exc:
        _fail(exc, EXIT_RUN_FAILED)
    if outcome.table is not None:
        _say("table:", str(outcome.table))
    for path in outcome.figure[:1]:
        _say("figure:", str(path))
    if outcome.failed:
        _say("error:", f"{len(outcome.failed)} of {len(spec.points)} points failed; run the same command with "
             f"--folder {where} to continue them", "bold red", err=True)
        raise typer.Exit(EXIT_RUN_FAILED)


@app.command()
def power(
    runs: Annotated[list[Path] | None, typer.Argument(help="Pilot subliminal run folders of one design (pooled).")] = None,
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


@app.command()
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
) -> None:
    """Rebuild the paper bundle (main.tex, tables, figures, PDF) from finished runs, in seconds."""
    from sublens.report.bundle import build_bundle, load_runs, style_settings

    try:
        stages, meta = load_runs(run_dir)
        style, sty = style_settings(meta, mode, str(acl_sty) if acl_sty else None)
        bundle = build_bundle(
            stages, out or run_dir / "paper", mode=style, acl_sty=sty, compile=not no_compile, meta=meta
        )
    except SublensError as exc:
        _fail(exc)
    for line in bundle.headline:
        console.print(f"  {line}", highlight=False, markup=False)
    _say("main.tex:", str(bundle.main_tex))
    if bundle.pdf is not None:
        _say("PDF:", str(bundle.pdf))
    if bundle.message:
        (console if bundle.ok else err_console).print(bundle.message, highlight=False, markup=False, soft_wrap=True)
    if not bundle.ok:
        raise typer.Exit(EXIT_PARTIAL)


if __name__ == "__main__":
    app()
