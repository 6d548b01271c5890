"""Command line: parses, loads a config, calls an experiment, prints where results went.

Errors go to stderr as plain text (never read as rich markup), one line with the fix, and each
kind of failure has its own exit status (EXIT_CODES, also in `sublens --help` and the README).

Modules: `common` (exit codes, the Typer app, the consoles and the output helpers every command
uses), `listing` (models, fetch, experiments, config), `running` (run, and the plan it prints
with --plan), `studies` (sweep, power, report). The commands are registered here, in the order
`sublens --help` lists them.
"""

from sublens.cli.common import (
    EXIT_HELP,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    JSON_HELP,
    JsonOption,
    app,
    console,
    err_console,
    main,
)
from sublens.cli.listing import (
    CONFIG_CELL_WIDTH,
    MODEL_COLUMNS,
    config_keys,
    experiments,
    fetch,
    models,
)
from sublens.cli.running import PLAN_BANDWIDTH, PLAN_TFLOPS, run
from sublens.cli.studies import power, report, sweep

app.command()(models)
app.command()(fetch)
app.command(epilog=EXIT_HELP)(run)
app.command()(experiments)
app.command("config")(config_keys)
app.command(epilog=EXIT_HELP)(sweep)
app.command()(power)
app.command()(report)

__all__ = [
    "CONFIG_CELL_WIDTH",
    "EXIT_HELP",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_RUN_FAILED",
    "EXIT_USAGE",
    "JSON_HELP",
    "MODEL_COLUMNS",
    "PLAN_BANDWIDTH",
    "PLAN_TFLOPS",
    "JsonOption",
    "app",
    "config_keys",
    "console",
    "err_console",
    "experiments",
    "fetch",
    "main",
    "models",
    "power",
    "report",
    "run",
    "sweep",
]
