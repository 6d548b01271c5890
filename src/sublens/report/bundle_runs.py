"""The run directories behind a paper bundle: a paper run, one experiment's run, or a folder of
run directories, read into stages and meta (`load_runs`); the style settings they ask for."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from sublens.errors import SublensError
from sublens.report.stages import STAGE_ORDER, StageRun, load_stage
from sublens.runs import read_json


def load_runs(run_dir: Path) -> tuple[dict[str, StageRun], dict[str, Any]]:
    """A paper run, one experiment's run, or a folder of run directories -> stages and meta.

    meta: `expected` (the stages the draft has a section for), `notes` (what was skipped),
    and for a paper run `paper` (its run id, record and per-stage entries), `preset`, `config`.
    """
    if not run_dir.is_dir():
        raise SublensError(f"{run_dir} is not a folder; give a run directory or a folder of run directories.")
    record_file = run_dir / "record.json"
    if record_file.is_file():
        record = read_json(record_file)
        if record.get("experiment") == "paper":
            return _load_paper(run_dir, record)
        run = load_stage(run_dir)
        return {run.stage: run}, {"expected": [run.stage], "notes": []}
    return _load_folder(run_dir)


def _load_paper(run_dir: Path, record: dict[str, Any]) -> tuple[dict[str, StageRun], dict[str, Any]]:
    results_file, config_file = run_dir / "results.json", run_dir / "config.yaml"
    results = read_json(results_file) if results_file.is_file() else {}
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    entries: dict[str, Any] = results.get("stages") or {}
    stages: dict[str, StageRun] = {}
    notes: list[str] = []
    for stage in _ordered(entries):
        entry = entries[stage] or {}
        path = run_dir / entry["path"] if entry.get("path") else None
        if path is None or not (path / "record.json").is_file() or not (path / "config.yaml").is_file():
            notes.append(
                f"{stage}: no run directory at {entry.get('path') or '(none recorded)'} "
                f"(status {entry.get('status', 'unknown')}); skipped."
            )
            continue
        stages[stage] = load_stage(path, stage)
    meta = {
        "expected": list(STAGE_ORDER),
        "notes": notes,
        "paper": {"run_id": run_dir.name, "record": record, "stages": entries},
        "preset": results.get("preset"),
        "config": config,
    }
    return stages, meta


def _load_folder(folder: Path) -> tuple[dict[str, StageRun], dict[str, Any]]:
    """Each subfolder that is a run directory; per stage the newest ok run (names start with a timestamp)."""
    runs = [load_stage(p) for p in sorted(folder.iterdir()) if _is_run_dir(p)]
    if not runs:
        raise SublensError(
            f"{folder} is neither a run directory nor a folder of run directories "
            "(folders holding record.json and config.yaml)."
        )
    papers = [r for r in runs if r.stage == "paper"]
    if papers and not any(r.stage in STAGE_ORDER for r in runs):  # a folder of paper runs: the newest
        return _load_paper(papers[-1].path, papers[-1].record)
    notes = [f"{r.run_id}: a paper run; run `sublens report {r.path}` for its bundle." for r in papers]
    notes += [
        f"{r.run_id}: the paper has no section for {r.stage!r}; ignored."
        for r in runs
        if r.stage != "paper" and r.stage not in STAGE_ORDER
    ]
    stages: dict[str, StageRun] = {}
    for run in (r for r in runs if r.stage in STAGE_ORDER):
        previous = stages.get(run.stage)
        if previous is None or run.ok or not previous.ok:
            stages[run.stage] = run
        if previous is not None:
            kept = stages[run.stage]
            dropped = previous if kept is run else run
            notes.append(f"{run.stage}: several runs; using {kept.run_id}, not {dropped.run_id}.")
    return stages, {"expected": list(STAGE_ORDER), "notes": notes}


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "record.json").is_file() and (path / "config.yaml").is_file()


def _ordered(stages: Iterable[str]) -> list[str]:
    """The paper's order first, then any other stage by name."""
    names = set(stages)
    return [s for s in STAGE_ORDER if s in names] + sorted(names - set(STAGE_ORDER))


def style_settings(meta: dict[str, Any], mode: str | None, acl_sty: str | None) -> tuple[str, str | None]:
    """Mode and acl.sty: the command line first, then the paper run's config (`style`, `acl_sty`)."""
    config = meta.get("config") or {}
    return mode or config.get("style") or "review", acl_sty or config.get("acl_sty")
