"""GGUF -> safetensors conversion, done once into the sublens cache.

Loading a GGUF de-quantises every tensor (~20 s for SmolLM2, ~55 s for Gemma3); a
safetensors folder loads in well under a second. A conversion is written into a
temporary folder and renamed into place only when complete, with a marker file
written last: a half-written entry (interrupted conversion) is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

MARKER = "sublens-complete.json"
# A conversion in progress: .<entry>.partial-<pid of the converting process> (a pid fits 9
# digits; a longer number is no pid of ours and os.kill could not take it).
PARTIAL = re.compile(r"\..+\.partial-(\d{1,9})")


def cache_root() -> Path:
    return Path(os.environ.get("SUBLENS_CACHE", Path.home() / ".cache" / "sublens")).expanduser()


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def gguf_entry(gguf: Path, name: str | None = None) -> Path:
    """Cache folder for a GGUF file: by embedded name, or by file name + size + path hash."""
    if name:
        return cache_root() / "models" / name
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_partials(models: Path) -> list[Path]:
    """Remove the half-written folders of conversions whose process has died (interrupted, killed,
    out of memory): nothing else ever removes them, and each holds up to a model's size. A live
    converter's folder is left alone. Returns the folders removed."""
    if not models.is_dir():
        return []
    removed = []
    for folder in sorted(models.iterdir()):
        match = PARTIAL.fullmatch(folder.name)
        if match is None or not folder.is_dir() or folder.is_symlink():
            continue
        pid = int(match.group(1))
        if pid > 0 and not pid_alive(pid):  # pid 0 would ask about our own process group
            shutil.rmtree(folder, ignore_errors=True)  # another process may be removing it too
            removed.append(folder)
    return removed


def convert_gguf(gguf: Path, dest: Path, architecture: str | None = None) -> Path:
    """De-quantise `gguf` into a safetensors folder at `dest` (atomic); returns `dest`."""
    remove_stale_partials(dest.parent)
    if is_complete(dest):
        return dest
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained and training until this flag is cleared.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if architecture and not model.config.architectures:
        model.config.architectures = [architecture]  # GGUF configs carry none
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {"source": str(gguf), "seconds": round(time.perf_counter() - start, 1)}
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    if dest.exists():  # an incomplete leftover from an interrupted conversion
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
