"""The lock that keeps two processes from writing one run folder."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from sublens.errors import RunLockedError

LOCK_FILE = ".lock"


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
