"""The distill experiment's texts: a JSONL file, a `subliminal` run's control data set, or
number prompts with seeded random answers; shuffled with the seed and split into training texts
and held-out fit texts (the KL before and after training, the α distribution, the map figure)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sublens.distill import TextRecord
from sublens.errors import ConfigError
from sublens.experiments.distill.config import DataSettings
from sublens.number_data import make_number_prompts
from sublens.runs import read_json


def _field(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key!r} must be a string, got {type(value).__name__}.")
    return value


def read_records(path: Path) -> list[TextRecord]:
    """Records of a JSONL file: {"text"} or {"prompt", "answer"} per line; "kept": false
    lines (filtered-out answers of a data set) are skipped; bad lines are errors."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where} is not valid JSON ({exc.msg}); one JSON object per line.") from exc
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
            if obj.get("kept") is False:
                continue
            if "prompt" in obj or "answer" in obj:
                record = TextRecord(_field(obj, "prompt", where), _field(obj, "answer", where))
            elif "text" in obj:
                record = TextRecord("", _field(obj, "text", where))
            else:
                raise ConfigError(f'{where}: give a "text" field, or "prompt" and "answer" fields.')
            if not record.answer.strip():
                raise ConfigError(f"{where}: the answer (or text) is empty.")
            records.append(record)
    if not records:
        raise ConfigError(f"{path} holds no records.")
    return records


def subliminal_control(run_dir: Path) -> Path:
    """The control (unbiased teacher) training set of a `subliminal` run directory: the file
    its results list as data.datasets.control.train_file (data/control.train.jsonl)."""
    candidates: list[Path] = []
    results = run_dir / "results.json"
    if results.is_file():
        data = read_json(results).get("data") or {}
        control = (data.get("datasets") or {}).get("control") or {}
        if isinstance(control.get("train_file"), str):
            candidates.append(run_dir / control["train_file"])
    candidates.append(run_dir / "data" / "control.train.jsonl")
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(
            f"{run_dir} holds no control data set (looked for {', '.join(str(p) for p in candidates)}; "
            "has its `subliminal` run finished the data stage?). Or give a JSONL file: --set data.source=PATH."
        )
    return found


def format_answer(numbers: Sequence[int], answer_format: str) -> str:
    """Numbers written in a number prompt's requested format."""
    parts = [str(x) for x in numbers]
    if answer_format == "comma":
        return ", ".join(parts)
    if answer_format == "space":
        return " ".join(parts)
    if answer_format == "newline":
        return "\n".join(parts)
    if answer_format == "brackets":
        return "[" + ", ".join(parts) + "]"
    if answer_format == "semicolon":
        return "; ".join(parts)
    raise ConfigError(f"Unknown answer format {answer_format!r}.")


def generated_records(n: int, seed: int, answer_numbers: tuple[int, int]) -> list[TextRecord]:
    """Number prompts (sublens.number_data) with seeded random answers in the asked format."""
    low, high = answer_numbers
    if not 1 <= low <= high:
        raise ConfigError(f"data.answer_numbers must be (min, max) with 1 <= min <= max, got {answer_numbers}.")
    rng = random.Random(f"distill-answers-{seed}")
    out = []
    for prompt in make_number_prompts(n, seed):
        numbers = [rng.randint(0, 999) for _ in range(rng.randint(low, high))]
        out.append(TextRecord(prompt.text, format_answer(numbers, prompt.answer_format)))
    return out


def load_records(settings: DataSettings, seed: int) -> tuple[list[TextRecord], list[TextRecord], dict[str, Any]]:
    """(training records, fit records, provenance)."""
    need = settings.n_train + settings.n_fit
    if settings.source is None:
        records = generated_records(need, seed, settings.answer_numbers)
        info: dict[str, Any] = {"source": "generated", "generator": "sublens.number_data + random answers"}
    else:
        path = Path(settings.source).expanduser()
        if path.is_dir():
            path = subliminal_control(path)
        elif not path.is_file():
            raise ConfigError(
                f"data.source {settings.source!r} does not exist: give a JSONL file or a subliminal run directory."
            )
        records = read_records(path)
        info = {"source": str(path)}
    if len(records) < need:
        raise ConfigError(
            f"{info['source']} has {len(records)} records; n_train + n_fit = {need}. Lower data.n_train "
            "or data.n_fit, or give more data."
        )
    if settings.shuffle:
        random.Random(f"distill-split-{seed}").shuffle(records)
    info.update(n_available=len(records), n_train=settings.n_train, n_fit=settings.n_fit, shuffled=settings.shuffle)
    return records[settings.n_fit : need], records[: settings.n_fit], info
