"""Freed memory handed back to the operating system between the phases of a run (glibc, Linux).

glibc keeps what a process frees in its heap for the next allocation: after a student is
trained and dropped, the process stays as large as it was at the training step's peak, and the
next stage of the paper chain (same process) starts from there. Measured on the distill stage
(Gemma-3-270M students, benchmarks/README.md, "Memory of the distill stage"): with the heap
released after each student, the figure phase after the last one held 1.6 GB instead of 3.5,
and the process ended at 0.9 GB instead of 2.9.

Only between phases: trimming, or glibc's fixed mmap threshold (which returns every large block
when freed), inside a training step costs fresh page faults on every step's activations. The
fixed threshold lowered a distill student's training peak by 1.1 GB but made the training step
22% slower (same section), so it is not used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import cache
from typing import Any


@cache
def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return libc


def release_freed_memory() -> bool:
    """Collect garbage, then return the heap's free pages to the OS; False where the C library
    has no malloc_trim (macOS, musl) and only the collection ran."""
    gc.collect()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
