"""The sweep folder: its default place under the output folder, sweep.json written (or an
earlier sweep in the folder checked to be the same sweep), each point's run folder under
``points/`` and whether that run finished; and `SweepError`, a sweep that cannot start or
finish as asked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sublens.errors import SublensError
from sublens.runs import atomic_write_json, read_json
from sublens.sweep.points import Point, SweepSpec

SWEEP_FILE = "sweep.json"


class SweepError(SublensError):
    """A sweep that cannot start or finish as asked."""


# ---- the folder ----------------------------------------------------------------------------------
def default_folder(out: Path, experiment: str) -> Path:
    return out / "sweeps" / f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}_{experiment}"


def open_folder(folder: Path, spec: SweepSpec) -> None:
    """Write sweep.json, or check that an earlier sweep in this folder is the same sweep."""
    saved = folder / SWEEP_FILE
    if saved.is_file():
        earlier = SweepSpec.model_validate(read_json(saved))
        if earlier != spec:
            raise SweepError(
                f"{folder} holds another sweep ({saved}: {earlier.experiment}, grid {earlier.grid}, seeds "
                f"{earlier.seeds}); continue it with the same command, or give another --folder."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, spec.model_dump(mode="json"))


def point_dir(folder: Path, point: Point) -> Path:
    return folder / "points" / point.id


def finished(run_dir: Path) -> bool:
    try:
        return read_json(run_dir / "record.json").get("status") == "ok"
    except (OSError, ValueError):
        return False
