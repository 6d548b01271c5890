"""Files of a run folder: atomic writes (temp file + rename, the umask's permissions), JSON
reading, and JSON values cached under a key (the resumable steps of a run)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel


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
