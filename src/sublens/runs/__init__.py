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

The modules: `files` (atomic writes, JSON reading, cached JSON values), `record` (versions,
git commit, code version, peak memory), `lock` (`RunLock`), `run` (`Run`, `open_run`, failed
runs, a full disk, upstream runs) and `distributed` (`Team`, `team()`, launches of several
processes). Import from `sublens.runs`; the names below are its interface.
"""

from __future__ import annotations

from sublens.runs.distributed import (
    FAILURE_NOTICE_SECONDS,
    SYNC_POLL_SECONDS,
    RankFailedError,
    Team,
    launch_world,
    team,
    terminate_as_interrupt,
    wants_cpu,
)
from sublens.runs.files import (
    atomic_write_bytes,
    atomic_write_figure,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    cached_json,
    current_umask,
    read_json,
)
from sublens.runs.lock import LOCK_FILE, RunLock, holder_pid
from sublens.runs.record import (
    TRACKED_PACKAGES,
    code_version,
    git_commit,
    package_versions,
    peak_since,
    start_peak_window,
)
from sublens.runs.run import (
    SCHEMA_VERSION,
    FollowerRun,
    Run,
    check_upstream_finished,
    disk_full_message,
    failed_run_dir,
    is_disk_full,
    mark_failed_run,
    new_run_dir,
    newest_finished_run,
    open_run,
)

__all__ = [
    "FAILURE_NOTICE_SECONDS",
    "LOCK_FILE",
    "SCHEMA_VERSION",
    "SYNC_POLL_SECONDS",
    "TRACKED_PACKAGES",
    "FollowerRun",
    "RankFailedError",
    "Run",
    "RunLock",
    "Team",
    "atomic_write_bytes",
    "atomic_write_figure",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "cached_json",
    "check_upstream_finished",
    "code_version",
    "current_umask",
    "disk_full_message",
    "failed_run_dir",
    "git_commit",
    "holder_pid",
    "is_disk_full",
    "launch_world",
    "mark_failed_run",
    "new_run_dir",
    "newest_finished_run",
    "open_run",
    "package_versions",
    "peak_since",
    "read_json",
    "start_peak_window",
    "team",
    "terminate_as_interrupt",
    "wants_cpu",
]
