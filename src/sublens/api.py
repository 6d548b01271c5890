"""Reading a finished (or failed) run folder from Python: `load_run(path)`.

The rest of the Python API (`sublens.load_model`, `capture`, `score_strings`, `run_experiment`)
lives in its home modules and is re-exported lazily by `sublens/__init__.py`. This module must
stay torch-free: a notebook that only reads results should not pay for (or need) torch, so it
reads files only, and pandas is imported only when a table is first read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sublens.errors import SublensError
from sublens.runs import read_json

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIX = ".parquet"


class RunTables(Mapping[str, "pd.DataFrame"]):
    """A run's parquet tables by name (path relative to the run folder, without `.parquet`):
    `numbers`, `figures/heads`, ... Each is read on first access and then kept, so listing the
    tables of a large run costs nothing."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = dict(files)
        self._loaded: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._files:
            available = ", ".join(self._files) or "none"
            raise KeyError(f"No table {name!r} in this run (tables: {available}).")
        if name not in self._loaded:
            self._loaded[name] = _read_table(self._files[name])
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def path(self, name: str) -> Path:
        """The parquet file behind a table (for reading it another way)."""
        return self._files[name]

    def __repr__(self) -> str:  # names only: a repr must not read every table
        return f"RunTables({list(self._files)})"


@dataclass(frozen=True)
class LoadedRun:
    """One run folder as written by `sublens.runs.open_run`: files only, no model."""

    path: Path
    experiment: str | None  # from record.json; None only in a hand-assembled record
    config: dict[str, Any]  # config.yaml, as run
    record: dict[str, Any]  # record.json: status, error, versions, timings, ...
    results: dict[str, Any] | None  # results.json; None when the run wrote none (failed early)
    tables: RunTables = field(repr=False)

    @property
    def status(self) -> str | None:
        """ "ok", "failed", or "running" (still running, or killed before it could say)."""
        status = self.record.get("status")
        return status if isinstance(status, str) else None


def load_run(path: str | Path) -> LoadedRun:
    """Read a run folder (runs/<timestamp>_<experiment>_<id>/, or a paper run's stages/<stage>/).

    Any status is read, failed and running runs too: check `.status` before trusting the
    results. Tables of nested runs (a paper run's stages) belong to those runs: load them with
    `load_run(path / "stages" / stage)`."""
    run_dir = Path(path).expanduser()
    record_file, config_file = run_dir / "record.json", run_dir / "config.yaml"
    if not record_file.is_file() or not config_file.is_file():
        missing = " and ".join(f.name for f in (record_file, config_file) if not f.is_file())
        raise SublensError(
            f"{str(run_dir)!r} is not a sublens run folder: it has no {missing}. Give a folder "
            "that `sublens run` wrote, such as runs/<timestamp>_<experiment>_<id>."
        )
    record = _read_mapping(record_file, read_json)
    results_file = run_dir / "results.json"
    results = _read_mapping(results_file, read_json) if results_file.is_file() else None
    experiment = record.get("experiment")
    return LoadedRun(
        path=run_dir,
        experiment=experiment if isinstance(experiment, str) else None,
        config=_read_mapping(config_file, _read_config),
        record=record,
        results=results,
        tables=RunTables(table_files(run_dir)),
    )


def table_files(run_dir: Path) -> dict[str, Path]:
    """The run's own *.parquet files by table name, in name order. Hidden files and folders
    are skipped (atomic writes leave `.name.tmp` files while they run), and so are nested run
    folders (a paper run's stages, stale stages): their tables are theirs."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(run_dir):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (here / d / "record.json").is_file()]
        for name in files:
            if name.endswith(TABLE_SUFFIX) and not name.startswith("."):
                table = (here / name).relative_to(run_dir).as_posix()[: -len(TABLE_SUFFIX)]
                found[table] = here / name
    return dict(sorted(found.items()))


def _read_config(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _read_mapping(path: Path, reader: Callable[[Path], Any]) -> dict[str, Any]:
    """A run file that must hold a mapping; anything else is a torn or foreign file, named."""
    try:
        data = reader(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise SublensError(
            f"Cannot read {path} ({type(exc).__name__}: {exc}): the file is damaged or was not written by sublens."
        ) from exc
    if not isinstance(data, dict):
        raise SublensError(f"{path} holds a {type(data).__name__}, not a mapping: it was not written by sublens.")
    return data


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd  # here, not at the top: reading a run's config should not import pandas

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SublensError(
            f"{path} cannot be read as a parquet table ({type(exc).__name__}: {exc}): it is torn "
            "or not a table. Rerun (or --resume) the run that wrote it."
        ) from exc
