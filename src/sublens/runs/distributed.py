"""Several processes of one launch (`accelerate launch` / `torchrun`): the `Team` they wait for
one another through, the process's rank and world size, and SIGTERM as an interrupt."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from pydantic import BaseModel

from sublens.errors import SublensError

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

    def __init__(
        self, rank: int = 0, world: int = 1, store: Any = None, poll_seconds: float = SYNC_POLL_SECONDS
    ) -> None:
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
            raise SublensError(
                f"Internal error: process {self.rank} waited for {what!r} while process 0 "
                f"shared {said!r}; the processes of this run took different paths."
            )
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
                    self.store.check([f"sublens/stopped/{rank}"]) for rank in range(1, self.world)
                ):
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
        return RankFailedError(
            f"Process {rank} of the {self.world} processes of this run failed ({error}); "
            f"process {self.rank} stopped too (its log has the traceback). Continue the run "
            f"with --resume RUN_FOLDER under a launch of {self.world} processes."
        )

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
        _TEAM = Team(int(state.process_index), int(state.num_processes), dist.distributed_c10d._get_default_store())
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
