"""A finished (or failed) run directory as the reporting code sees it: files only, no model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sublens.errors import SublensError
from sublens.runs import read_json

# The paper's order; the draft and the tables follow it.
STAGE_ORDER = ("teacher", "entanglement", "mechanistic", "pruning", "subliminal", "distill", "hybrid")


@dataclass(frozen=True)
class StageRun:
    """One experiment's run directory: config.yaml, record.json, results.json (may be partial)."""

    stage: str
    path: Path
    config: dict[str, Any]
    record: dict[str, Any]
    results: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"

    @property
    def run_id(self) -> str:
        return self.path.name

    def figures(self) -> dict[str, Path]:
        """The run's figures by stem (PDF preferred; the PNG sits next to it)."""
        found = sorted(self.path.glob("figures/*.pdf")) + sorted(self.path.glob("*.pdf"))  # pruning: top level
        return {p.stem: p for p in found}


def load_stage(path: Path, stage: str | None = None) -> StageRun:
    """Read one run directory; `stage` defaults to the experiment named in its record."""
    record_file, config_file = path / "record.json", path / "config.yaml"
    if not record_file.is_file() or not config_file.is_file():
        raise SublensError(f"{path} is not a sublens run directory (no record.json/config.yaml).")
    record = read_json(record_file)
    results_file = path / "results.json"
    results = read_json(results_file) if results_file.is_file() else {}
    config = yaml.safe_load(config_file.read_text()) or {}
    return StageRun(stage or record.get("experiment", path.name), path, config, record, results)


def spec_label(spec: object) -> str:
    """A model spec or data path as the paper names it (plain text, not escaped).

    Hub ids and embedded names stay as they are; a local path is cut to its folder name, or to
    `<paper run>/stages/<stage>` for a stage of a paper run, so no machine's paths leak into the text.
    """
    text = str(spec if spec is not None else "?").rstrip("/")
    local = text.startswith(("/", ".", "~")) or text.count("/") > 1
    if not local:
        return text
    parts = Path(text).parts
    if len(parts) >= 3 and parts[-2] == "stages":
        return "/".join(parts[-3:])
    return parts[-1] if parts else text
