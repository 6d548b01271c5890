"""An interrupted GGUF conversion leaves .<entry>.partial-<pid> in the model cache: converting or
fetching removes the ones whose process is dead and leaves a live converter's folder alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sublens.models as models
from sublens.models import cache
from sublens.models.cache import MARKER, convert_gguf, gguf_entry, remove_stale_partials


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def partial(folder: Path, entry: str, pid: int) -> Path:
    path = folder / f".{entry}.partial-{pid}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"half written")
    return path


@pytest.fixture
def models_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SUBLENS_CACHE", str(tmp_path / "cache"))
    folder = gguf_entry(Path(), "smollm2-135m-instruct").parent
    folder.mkdir(parents=True)
    return folder


def complete_entry(folder: Path, name: str) -> Path:
    entry = folder / name
    entry.mkdir()
    (entry / MARKER).write_text("{}")
    return entry


def test_dead_partials_are_removed_and_live_ones_kept(models_folder: Path) -> None:
    dead = partial(models_folder, "smollm2-135m-instruct", dead_pid())
    live = partial(models_folder, "gemma3-270m", os.getpid())
    not_ours = models_folder / ".notes.partial-abc"
    not_ours.mkdir()
    entry = complete_entry(models_folder, "gemma3-270m")
    assert remove_stale_partials(models_folder) == [dead]
    assert not dead.exists()
    assert (live / "model.safetensors").is_file() and not_ours.is_dir() and (entry / MARKER).is_file()


def test_a_pid_we_may_not_signal_is_alive(models_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other_user = partial(models_folder, "smollm2-135m-instruct", 4242)

    def denied(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cache.os, "kill", denied)
    assert remove_stale_partials(models_folder) == []
    assert other_user.is_dir()


def test_a_missing_cache_folder_is_nothing_to_clean(tmp_path: Path) -> None:
    assert remove_stale_partials(tmp_path / "no-cache") == []


def test_converting_removes_dead_partials(models_folder: Path) -> None:
    dead = partial(models_folder, "smollm2-135m-instruct", dead_pid())
    live = partial(models_folder, "gemma3-270m", os.getpid())
    dest = complete_entry(models_folder, "smollm2-135m-instruct")  # so no model is converted here
    assert convert_gguf(Path("x.gguf"), dest) == dest
    assert not dead.exists() and live.is_dir()


def test_fetching_a_converted_model_removes_dead_partials(models_folder: Path) -> None:
    dead = partial(models_folder, "gemma3-270m", dead_pid())
    live = partial(models_folder, "smollm2-135m-instruct", os.getpid())
    dest = complete_entry(models_folder, "smollm2-135m-instruct")
    assert models.ensure_embedded("smollm2-135m-instruct") == dest
    assert not dead.exists() and live.is_dir()
