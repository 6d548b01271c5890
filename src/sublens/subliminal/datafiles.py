"""Data-file bookkeeping of the teacher and subliminal data: stable hashes of JSON-encoded parts
(the fingerprints every shard is stamped with), 31-bit seeds derived from them (per shard, per
subsample), and the JSONL files the data lines are kept in (one JSON object a line, written
atomically).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sublens.runs import atomic_write_text


def stable_hash(*parts: Any) -> str:
    """sha256 (hex, 16 chars) of JSON-encoded parts: fingerprints and derived seeds."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_seed(*parts: Any) -> int:
    """A 31-bit seed derived from the parts (e.g. the config seed and a shard number)."""
    return int(stable_hash(*parts), 16) % (2**31 - 1)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
