"""The subliminal results as the run ends them, without a model: the recorded run read as
`SubliminalResults`, the comparisons, claims and outputs of several seeds built from its students
(the typed end of `run.execute`), and every figure fit to print (`sublens.figures.print_problems`),
the teacher on an axis of its own and every marker in the legend."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fixture_runs import RUNS
from sublens.experiments.subliminal import SubliminalConfig
from sublens.experiments.subliminal.figures import (
    make_figures,
    preference_figure,
    training_loss_figure,
)
from sublens.experiments.subliminal.results import Student, SubliminalResults
from sublens.experiments.subliminal.run import compare, decide, print_summary
from sublens.figures import DOUBLE_COLUMN_IN, SINGLE_COLUMN_IN, print_problems
from sublens.results import load_results

MODES = ["full", "freeze-attention", "freeze-mlp"]


@pytest.fixture(scope="module")
def recorded() -> SubliminalResults:
    return load_results(RUNS / "subliminal" / "results.json", SubliminalResults)


def _student(template: Student, dataset: str, mode: str, seed: int, owl_scale: float) -> Student:
    """A recorded student as another arm and seed: its per-question P(owl) scaled (the owl is
    the first animal of every row), so that seeds differ."""
    data: dict[str, Any] = template.model_dump(mode="json")
    name = f"{dataset}-{mode}-seed{seed}"
    data |= {"name": name, "dataset": dataset, "mode": mode, "seed": seed}
    per_question = data["preference"]["probability"]["per_question"]
    for row in per_question["p_word"]:
        row[0] *= owl_scale
    per_question["share"] = [row[0] / sum(row) for row in per_question["p_word"]]
    return Student.model_validate(data)


@pytest.fixture(scope="module")
def two_seeds(recorded: SubliminalResults) -> tuple[SubliminalConfig, SubliminalResults]:
    """The recorded run re-dressed as a matched-control run with two seeds, then compared and
    decided as `run.execute` does at its end."""
    config = SubliminalConfig(seeds=[0, 1], modes=MODES, control_modes=MODES)
    assert recorded.students is not None
    students = {}
    for seed in config.seeds:
        for dataset, template in (("control", "control-full-seed0"), ("owl", "owl-full-seed0")):
            for mode in MODES:
                scale = 1.0 if dataset == "control" else 1.2 + 0.1 * seed + 0.05 * MODES.index(mode)
                student = _student(recorded.students[template], dataset, mode, seed, scale)
                students[student.name] = student
    started = recorded.model_copy(
        update={
            "seeds": config.seeds,
            "n_seeds": 2,
            "modes": MODES,
            "control_modes": MODES,
            "partial": True,
            "students": students,
            "headline": None,
            "comparisons": None,
            "specificity": None,
            "parameters": None,
        }
    )
    return config, decide(config, compare(config, started))


def test_the_recorded_run_is_typed(recorded: SubliminalResults) -> None:
    assert recorded.n_seeds == 1 and not recorded.partial and recorded.teacher.kind == "prompted"
    owl_full = recorded.row("owl", "full")
    assert owl_full is not None and owl_full.vs_control is not None
    assert owl_full.vs_control.share_ratio.per_seed_log is None  # recorded before per-seed logs
    assert recorded.students is not None and recorded.students["owl-full-seed0"].training.steps == 38
    assert recorded.data is not None and recorded.data.datasets["control"].train_file == "data/control.train.jsonl"


def test_comparisons_and_claims_of_two_seeds_are_typed(two_seeds: tuple[SubliminalConfig, SubliminalResults]) -> None:
    results = two_seeds[1]
    assert [r.model for r in results.headline or []] == [
        "base",
        "teacher",
        *(f"control-{m}" for m in MODES),
        *(f"owl-{m}" for m in MODES),
    ]
    for mode in MODES:  # like against like, seed by seed
        comparison = (results.comparisons or {})[f"owl-{mode} vs control-{mode}"]
        assert comparison.n_seeds == 2 and len(comparison.per_seed) == 2
        assert comparison.share_ratio.ratio > 1 and comparison.share_ratio.ci == "t over 2 seeds"
        assert comparison.rate_difference is not None and comparison.rate_difference.per_seed == [0.0, 0.0]
    owl_full = results.row("owl", "full")
    assert owl_full is not None and owl_full.panel_share.per_seed is not None
    assert results.claims is not None and results.claims["transfer.full"].claim.unit == "seed"
    assert results.parameters is not None and set(results.parameters) == {
        f"{d}-{m}" for d in ("control", "owl") for m in MODES
    }
    written = results.model_dump(mode="json")
    assert load_results(json.loads(json.dumps(written)), SubliminalResults).model_dump(mode="json") == json.loads(
        json.dumps(written)
    )  # what results.json holds reads back as it was
    print_summary(results)  # the terminal summary reads the typed results


def _legend(fig: Figure) -> set[str]:
    return {t.get_text() for legend in fig.legends for t in legend.get_texts()}


@pytest.mark.parametrize("seeds", [1, 2])
def test_the_preference_figure_is_fit_to_print(
    seeds: int, recorded: SubliminalResults, two_seeds: tuple[SubliminalConfig, SubliminalResults]
) -> None:
    results = recorded if seeds == 1 else two_seeds[1]
    fig = preference_figure(results)
    try:
        assert print_problems(fig, DOUBLE_COLUMN_IN) == []
        references, students, _ = fig.axes
        assert isinstance(students, Axes)
        # the teacher's share lies above the students' axis: it has an axis of its own
        teacher_share = next(r for r in results.headline or [] if r.model == "teacher").panel_share.mean
        assert students.get_ylim()[1] < teacher_share <= references.get_ylim()[1]
        legend = _legend(fig)
        assert {"control students", "students of the owl teacher", "base model", "no change (×1)"} <= legend
        assert ("one training seed" in legend) is (seeds > 1)  # a grey dot is drawn only with several seeds
    finally:
        plt.close(fig)


def test_the_training_loss_figure_is_fit_to_print(recorded: SubliminalResults) -> None:
    fig = training_loss_figure(recorded)
    try:
        assert print_problems(fig, SINGLE_COLUMN_IN) == []
        assert _legend(fig) == {"control-full", "owl-full", "owl-freeze-attention", "owl-freeze-mlp"}
    finally:
        plt.close(fig)


def test_figures_are_written_from_the_results(recorded: SubliminalResults, tmp_path: Path) -> None:
    written = make_figures(recorded, tmp_path)
    assert sorted(p.name for p in written) == [
        "preference.pdf",
        "preference.png",
        "training_loss.pdf",
        "training_loss.png",
    ]
    partial = recorded.model_copy(update={"headline": None, "students": None})
    assert make_figures(copy.deepcopy(partial), tmp_path / "partial") == []
