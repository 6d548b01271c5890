"""entanglement: the fine-tuned teachers of the tuned sets, a teacher run's owl teacher and its
control teacher, checked to exist before any model loads (`tuned_teachers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sublens.errors import ModelSpecError
from sublens.experiments.entanglement.config import EntanglementConfig
from sublens.models import check_spec, looks_like_path
from sublens.runs import check_upstream_finished, read_json

CONTROL_CHECKPOINT = "control_teacher"  # the teacher run's checkpoint of its control teacher


@dataclass(frozen=True)
class TunedTeachers:
    """A teacher run's two fine-tuned teachers, checked to exist (`tuned_teachers`)."""

    run: str  # the run directory, as given
    teacher: str  # the owl teacher's model spec: the run directory (its first checkpoint)
    control_teacher: str  # RUN#control_teacher
    base: str | None  # what the run fine-tuned both from (its config.yaml `base`)

    def specs(self) -> dict[str, str]:
        """By the names phase1_work records their scoring under."""
        return {"owl_teacher": self.teacher, "control_teacher": self.control_teacher}


def tuned_teachers(config: EntanglementConfig) -> TunedTeachers | None:
    """The teachers of `config.tuned_teacher`, or None. Refuses, before any model loads, a folder
    that does not exist, is not a finished run, or lacks the owl teacher or the control teacher."""
    folder = config.tuned_teacher
    if folder is None:
        return None
    path = Path(folder).expanduser()

    def refuse(problem: str) -> ModelSpecError:
        return ModelSpecError(
            f"tuned_teacher: {problem} Give the run directory of a finished `teacher` run made with a "
            "control teacher (control_system set), or tuned_teacher=null to measure no tuned sets."
        )

    try:  # a missing folder: the message names the nearest existing ones
        check_spec(folder if looks_like_path(folder) else f"./{folder}")
    except ModelSpecError as exc:
        raise refuse(str(exc)) from exc
    if not path.is_dir() or not (path / "record.json").is_file():
        raise refuse(f"{folder!r} is not a run directory (it has no record.json).")
    check_upstream_finished(path, "teacher")
    results = path / "results.json"
    listed = read_json(results).get("checkpoints") if results.is_file() else None
    checkpoints: dict[str, Any] = listed if isinstance(listed, dict) else {}
    names = list(checkpoints)
    if CONTROL_CHECKPOINT not in names or names[0] == CONTROL_CHECKPOINT:
        raise refuse(
            f"the run {folder!r} lists the checkpoints {', '.join(names) or 'none'}: it needs "
            f"its owl teacher first and a {CONTROL_CHECKPOINT!r}."
        )
    missing = [
        name for name in (names[0], CONTROL_CHECKPOINT) if not (path / str(checkpoints[name]) / "config.json").is_file()
    ]
    if missing:
        raise refuse(
            f"the run {folder!r} lists the checkpoint(s) {', '.join(missing)} but their "
            "folders hold no model (config.json)."
        )
    saved = path / "config.yaml"
    base = yaml.safe_load(saved.read_text(encoding="utf-8")).get("base") if saved.is_file() else None
    return TunedTeachers(folder, folder, f"{folder}#{CONTROL_CHECKPOINT}", str(base) if base is not None else None)
