"""The typed results write back what they read: every recorded run under tests/data/runs, loaded
and written as `Run.save_results` writes it, is its original results.json byte for byte, with
``schema_version`` added; and the shared rule of `sublens.results.Sparse` / `Finite`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sublens.experiments.distill.results import DistillResults
from sublens.experiments.entanglement.results import EntanglementResults
from sublens.experiments.hybrid.results import HybridResults
from sublens.experiments.mechanistic.results import MechanisticResults
from sublens.experiments.pruning.results import PruningResults
from sublens.experiments.subliminal.results import SubliminalResults
from sublens.experiments.teacher.results import TeacherResults
from sublens.result_records import RatioEstimate, Summary
from sublens.results import Finite, Results, load_results, schema_version_of
from sublens.runs import atomic_write_json

RUNS = Path(__file__).resolve().parents[1] / "data" / "runs"
MODELS: dict[str, type[Results]] = {
    "pruning": PruningResults,
    "hybrid": HybridResults,
    "entanglement": EntanglementResults,
    "mechanistic": MechanisticResults,
    "subliminal": SubliminalResults,
    "distill": DistillResults,
    "teacher": TeacherResults,
}


def _as_written(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"  # as sublens.runs.atomic_write_json


@pytest.mark.parametrize("experiment", sorted(MODELS))
def test_a_recorded_run_is_written_back_byte_for_byte(experiment: str, tmp_path: Path) -> None:
    recorded = RUNS / experiment / "results.json"
    original = recorded.read_text(encoding="utf-8")
    data = json.loads(original)
    assert "schema_version" not in data and _as_written(data) == original  # recorded before versions
    model = MODELS[experiment]
    results = load_results(recorded, model)
    written = tmp_path / "results.json"
    atomic_write_json(written, results.model_dump(mode="json"))  # what Run.save_results does
    expected = _as_written({"schema_version": schema_version_of(model), **data})
    assert written.read_text(encoding="utf-8") == expected
    assert load_results(written, model).model_dump_json() == results.model_dump_json()


def test_a_key_is_left_out_only_when_never_set() -> None:
    built = RatioEstimate(ratio=1.5, ci_low=None, ci_high=None, n_questions=4)
    assert built.model_dump(mode="json") == {"ratio": 1.5, "ci_low": None, "ci_high": None, "n_questions": 4}
    assert "ci" in RatioEstimate.model_validate({**built.model_dump(), "ci": None}).model_dump()  # null stays
    assert built.model_copy(update={"underpowered": True}).model_dump()["underpowered"] is True
    assert built.present() == {"ratio": 1.5, "ci_low": None, "ci_high": None, "n_questions": 4}
    summary = Summary(n=1, mean=0.5, median=0.5, sd=math.nan, ci_low=math.nan, ci_high=math.nan)
    assert math.isnan(summary.model_dump(mode="json")["sd"])  # NaN written as NaN


def test_a_finite_record_reads_non_finite_floats_as_null() -> None:
    class Values(Finite):
        value: float | None
        values: list[float | None]
        note: str | None = None

    read = Values.model_validate({"value": math.inf, "values": [1.0, math.nan]})
    assert read.model_dump(mode="json") == {"value": None, "values": [1.0, None]}
