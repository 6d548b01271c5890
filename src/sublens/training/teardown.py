"""Leaving data-parallel training cleanly when a step or callback raises (Ctrl-C included)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

log = logging.getLogger(__name__)


@contextmanager
def _process_group_torn_down_on_interrupt(world: int, wrapped: nn.Module) -> Iterator[None]:
    """Leave data-parallel training cleanly when a step or callback raises (Ctrl-C included).

    Left alone, a rank exits with its gloo process group alive: at interpreter exit the group's
    worker threads can still be joinable when their owners are destroyed ("terminate called
    without an active exception", SIGABRT), and destroying the DDP reducer while a worker
    still finishes a collective deadlocks (the worker needs the GIL the destructor holds). So,
    in order: wait for every rank and every queued collective (a barrier, GIL released), drop
    the DDP reducer, destroy the group. The run is over for every rank anyway; the last
    checkpoint is what a rerun resumes from.

    That barrier is only safe when every rank is leaving too (Ctrl-C reaches them all; a
    callback raising at the same step on every rank). A rank that failed alone would meet the
    others inside the step's gradient all-reduce instead, and both would wait there for good.
    So each rank first counts itself in through the process group's store and waits up to
    TEARDOWN_WAIT_SECONDS for the others; when they do not come, it leaves the group as it is
    and raises: its exit closes its connections, which fails the others' collective at once."""
    try:
        yield
    except BaseException:
        if world > 1:
            if _everyone_leaving(world):
                _tear_down_process_group(wrapped)
            else:
                log.warning(
                    "training failed in this process alone: leaving without waiting for the others "
                    "(they stop when this process exits)"
                )
        raise


TEARDOWN_WAIT_SECONDS = 15.0
_teardowns = 0


def _everyone_leaving(world: int) -> bool:
    """Whether every rank reached the teardown (each counts itself in under a key numbered per
    teardown), waiting up to TEARDOWN_WAIT_SECONDS; False when the store cannot be asked."""
    import torch.distributed as dist

    global _teardowns
    if not (dist.is_available() and dist.is_initialized()):
        return True
    _teardowns += 1
    key = f"sublens/train-teardown/{_teardowns}"
    try:
        store = dist.distributed_c10d._get_default_store()
        store.add(key, 1)
        deadline = time.monotonic() + TEARDOWN_WAIT_SECONDS
        while int(store.add(key, 0)) < world:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    except Exception as exc:  # no store (or it is gone with a dead launcher): nobody to wait for
        log.warning("cannot tell whether the other ranks are leaving training: %s", exc)
        return False
    return True


def _tear_down_process_group(wrapped: nn.Module) -> None:
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    if dist.is_available() and dist.is_initialized():
        log.warning("training interrupted: waiting for the other ranks, then leaving the process group")
        try:
            dist.barrier()  # gloo's barrier also waits for every collective queued before it
        except Exception as exc:  # a peer that already died: nothing left to wait for
            log.warning("barrier failed while leaving data-parallel training: %s", exc)
        if hasattr(wrapped, "reducer"):
            del wrapped.reducer  # its last reference: freed now, while the workers are idle
        dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
