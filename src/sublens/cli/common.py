"""What every command shares: the exit codes and their help, the Typer app and its --version
callback, the consoles, and the output helpers (labelled lines, errors, plain text, tables and
listings that never crop an identifier).

The consoles are read from the package (`sublens.cli.console`, `sublens.cli.err_console`) at
each print, so one swap there (a test of a narrow terminal) reaches every command.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

import sublens.cli as package
from sublens.errors import SublensError

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


def _out(err: bool = False) -> Console:
    """The console in use: the package's err_console or console (see the module docstring)."""
    return package.err_console if err else package.console


def _say(label: str, message: str, style: str = "green", err: bool = False) -> None:
    """A labelled line; the message is plain text (paths like runs/[x] print as they are)."""
    _out(err).print(Text.assemble((label, style), " ", message), soft_wrap=True, highlight=False)


def _fail(exc: SublensError | str, code: int = EXIT_USAGE) -> NoReturn:
    _say("error:", str(exc), "bold red", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from sublens import __version__

        _out().print(f"sublens {__version__}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """sublens: mechanistic study of subliminal learning."""


JSON_HELP = "Print a JSON list of objects (one per row, every column) instead of a table."
JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


def _plain(text: str) -> None:
    """Text exactly as given: no markup, highlighting or emoji codes, never wrapped or cropped by
    rich (soft wrap: a long line is the terminal's to wrap, and `| cat` gets it whole)."""
    _out().print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def _natural_width(table: Table) -> int:
    """Columns the table takes with every cell on one line."""
    console = _out()
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


def _print_table(
    table: Table, columns: tuple[str, ...], rows: list[dict[str, str]], plain_title: str | None = None, indent: str = ""
) -> None:
    """Rich on a terminal wide enough for every cell on one line; else (piped, narrow) plain
    aligned columns, so no identifier is ever cropped."""
    for column in columns:
        table.add_column(column.replace("_", " "), no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    console = _out()
    if console.is_terminal and _natural_width(table) <= console.width:
        console.print(table)
        return
    if plain_title is not None:
        _plain(plain_title)
    for line in _aligned(columns, rows):
        _plain(f"{indent}{line}")
