"""An open run folder (`Run`, `open_run`): its record, timings, results and resumable steps; a
failed run's folder named on its exception; a full disk explained; the runs other runs read from."""

from __future__ import annotations

import errno
import os
import platform
import secrets
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml
from pydantic import BaseModel

from sublens.errors import ConfigError, DiskFullError, SublensError
from sublens.runs.files import atomic_write_json, atomic_write_text, cached_json, read_json
from sublens.runs.lock import RunLock
from sublens.runs.record import (
    _PEAKS_BEFORE_RESET,
    code_version,
    git_commit,
    package_versions,
    peak_since,
    start_peak_window,
)

M = TypeVar("M", bound=BaseModel)

SCHEMA_VERSION = 1


def new_run_dir(experiment: str, out: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out / f"{stamp}_{experiment}_{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


class Run:
    """An open run directory: records status, timings, peak memory and results as the run goes."""

    def __init__(self, path: Path, experiment: str, config: BaseModel) -> None:
        self.path = path
        self.experiment = experiment
        self.config = config
        self._started = time.time()
        self._memory_mark = start_peak_window()
        self.record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "experiment": experiment,
            "status": "running",
            "seed": getattr(config, "seed", None),
            "started": datetime.now(UTC).isoformat(),
            "ended": None,
            "wall_seconds": None,
            "timings": {},
            "memory": None,
            "versions": package_versions(),
            "git": git_commit(),
            "code_version": code_version(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "argv": sys.argv},
            "models": {},
            "error": None,
            "traceback": None,
        }

    def artifact(self, name: str) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @overload
    def step(self, name: str, key: str, compute: Callable[[], M], kind: type[M]) -> M: ...

    @overload
    def step(self, name: str, key: str, compute: Callable[[], Any], kind: None = None) -> Any: ...

    def step(self, name: str, key: str, compute: Callable[[], Any], kind: type[BaseModel] | None = None) -> Any:
        """One resumable step of an experiment: `compute()` saved as <run>/<name>.json under `key`
        (a fingerprint of everything the step's output depends on) and reused while the key is
        the same. `kind`: the typed result the step returns (saved as JSON, validated on reading)."""
        path = self.artifact(f"{name}.json")
        if kind is None:
            return cached_json(path, key, compute)
        computed: list[BaseModel] = []

        def compute_json() -> Any:
            computed.append(compute())
            return computed[0].model_dump(mode="json")

        saved = cached_json(path, key, compute_json)
        return computed[0] if computed else kind.model_validate(saved)

    def note(self, **fields: Any) -> None:
        """Add fields to record.json (e.g. device, dtype, the models used, prompts in effect)."""
        self.record.update(fields)
        self.save_record()

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record["timings"][step] = round(time.perf_counter() - start, 3)
            self.record["memory"] = peak_since(self._memory_mark)
            self.save_record()

    def save_record(self) -> None:
        atomic_write_json(self.path / "record.json", self.record)

    def save_results(self, results: Any) -> None:
        """results.json: a dict, or a typed results model (`sublens.results.Results`) as JSON."""
        if isinstance(results, BaseModel):
            results = results.model_dump(mode="json")
        atomic_write_json(self.path / "results.json", results)

    def _finish(self, status: str, exc: BaseException | None = None) -> None:
        self.record["status"] = status
        self.record["ended"] = datetime.now(UTC).isoformat()
        self.record["wall_seconds"] = round(time.time() - self._started, 3)
        self.record["memory"] = peak_since(self._memory_mark)
        if exc is not None:
            self.record["error"] = f"{type(exc).__name__}: {exc}"
            self.record["traceback"] = "".join(traceback.format_exception(exc))
        self.save_record()


class FollowerRun(Run):
    """The run as a rank > 0 of a data-parallel launch sees it: the same folder (its artifacts
    are read there), but record.json and results.json are rank 0's alone, so nothing is written.
    Timings and notes are kept in memory only."""

    def __init__(self, path: Path, experiment: str, config: BaseModel) -> None:
        self.path = path
        self.experiment = experiment
        self.config = config
        self._started = time.time()
        self._memory_mark = len(_PEAKS_BEFORE_RESET)
        self.record = {"experiment": experiment, "status": "running", "timings": {}, "memory": None}

    def save_record(self) -> None:
        pass

    def save_results(self, results: Any) -> None:
        pass


_FAILED_RUN = "sublens_failed_run"


def failed_run_dir(exc: BaseException) -> Path | None:
    """The run directory whose record.json recorded this exception (the innermost one), or None
    when the exception came before any run started (a config or usage problem)."""
    path = getattr(exc, _FAILED_RUN, None)
    return Path(path) if path is not None else None


def mark_failed_run(exc: BaseException, run_dir: Path) -> None:
    """Name the run directory whose record tells about `exc` (see `failed_run_dir`)."""
    with suppress(AttributeError, TypeError):  # an exception type without attributes
        setattr(exc, _FAILED_RUN, str(run_dir))


@contextmanager
def open_run(experiment: str, config: BaseModel, out: Path, run_dir: Path | None = None) -> Iterator[Run]:
    """Create (or reopen, to resume) a run directory; record ok/failed whatever happens.

    The directory is locked for the life of the run: a second process gets a RunLockedError
    naming the holder's pid. An exception from the run is recorded in record.json (error and
    traceback) and re-raised; `failed_run_dir(exc)` then names the directory."""
    path = run_dir if run_dir is not None else new_run_dir(experiment, out)
    path.mkdir(parents=True, exist_ok=True)
    with RunLock(path):
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        saved = path / "config.yaml"
        if saved.is_file() and yaml.safe_load(saved.read_text()) != yaml.safe_load(text):
            raise ConfigError(
                f"{path} was run with a different config; resuming needs the same one "
                f"(compare with {saved}), or start a new run without --resume."
            )
        run = Run(path, experiment, config)
        atomic_write_text(saved, text)
        run.save_record()
        try:
            yield run
        except BaseException as exc:  # KeyboardInterrupt too: the record must say the run did not finish
            if is_disk_full(exc):
                full = DiskFullError(disk_full_message(path))
                with suppress(OSError):  # the record itself may not fit: the old one then stays
                    run._finish("failed", full)
                setattr(full, _FAILED_RUN, str(path))
                raise full from exc
            run._finish("failed", exc)
            if getattr(exc, _FAILED_RUN, None) is None:
                with suppress(AttributeError, TypeError):  # an exception type without attributes
                    setattr(exc, _FAILED_RUN, str(path))
            raise
        run._finish("ok")


def disk_full_message(run_dir: Path) -> str:
    """What to tell a user whose run stopped on a full disk: the folder, what it holds so far,
    and what is free where it writes (the run resumes from its last saved unit once there is
    room, so the space it still needs is about what it wrote so far, again)."""
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        free = None
    written = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) if run_dir.is_dir() else 0
    free_text = f"{free / 2**30:.2f} GiB free" if free is not None else "free space unknown"
    return (
        f"The disk is full: writing into {run_dir} failed ({free_text} on that file system; the "
        f"run folder holds {written / 2**30:.2f} GiB so far). Free space (or give --out on another "
        f"disk), then continue with --resume {run_dir}: finished work is kept and no file was "
        "replaced by a half-written one."
    )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def check_upstream_finished(run_dir: Path, what: str) -> None:
    """Refuse to read another run's outputs while it is running or after it failed: its files
    may be missing or half-written. A folder without record.json (assembled by hand) is read."""
    record = run_dir / "record.json"
    if not record.is_file():
        return
    try:
        status = read_json(record).get("status")
    except (OSError, ValueError) as exc:
        raise SublensError(f"Cannot read {record} ({exc}); is {run_dir} a finished {what} run?") from exc
    if status != "ok":
        raise SublensError(
            f"{run_dir} is a {what} run with status {status!r}, not a finished one: its files may be "
            f"incomplete. Wait for it to finish, or continue it with `sublens run {what} --resume {run_dir}`."
        )


def newest_finished_run(runs_root: str | Path, experiment: str) -> Path | None:
    """The newest run of `experiment` under runs_root whose record says ok and whose results list
    a checkpoint (a model spec), or None. Run directory names start with a timestamp."""
    for run_dir in sorted(Path(runs_root).glob(f"*_{experiment}_*"), reverse=True):
        try:
            ok = read_json(run_dir / "record.json").get("status") == "ok"
            checkpoints = read_json(run_dir / "results.json").get("checkpoints")
        except (OSError, ValueError):
            continue
        if ok and checkpoints:
            return run_dir
    return None
