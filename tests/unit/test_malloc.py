"""sublens.malloc: freed blocks that glibc keeps in its heap leave the process when released
(each case in a fresh interpreter: the heap's state is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Frees one 8 MiB block (glibc then serves blocks of that size from its heap), allocates 40
# more, each followed by a 100 KB tensor that stays and pins the heap, frees the 40: the
# resident memory that stays (MiB) is what the process did not give back.
SCRIPT = """
import json, sys
from pathlib import Path
import torch
from sublens.malloc import release_freed_memory
def rss():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024
block = 8 * 2**20 // 4
first = torch.ones(block)
del first
before = rss()
big, small = [], []
for _ in range(40):
    big.append(torch.ones(block))
    small.append(torch.ones(25_000))
grown = rss()
del big
if sys.argv[1] == "release":
    assert release_freed_memory()
print(json.dumps({"grown": grown - before, "kept": rss() - before}))
"""


def kept_after_free(setting: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, setting], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_released_blocks_leave_the_process() -> None:
    kept, released = kept_after_free("keep"), kept_after_free("release")
    assert kept["grown"] > 300 and released["grown"] > 300  # 40 x 8 MiB were resident
    assert kept["kept"] > 250  # glibc keeps the freed blocks in its heap
    assert released["kept"] < 20  # released: only the 40 pins (4 MB) stay


def test_release_collects_garbage_everywhere() -> None:
    import gc
    import weakref

    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    gone = weakref.ref(a)
    del a, b
    gc.disable()  # only the release may collect the cycle
    try:
        from sublens.malloc import release_freed_memory

        release_freed_memory()
    finally:
        gc.enable()
    assert gone() is None
