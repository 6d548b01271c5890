"""The distill package: its figures read at print size, its results are assembled and written
as the recorded run's, its training summary is the shared one, and the registry finds it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from fixture_runs import RUNS
from sublens.experiments import get
from sublens.experiments.distill import DistillConfig
from sublens.experiments.distill.figures import (
    MapPanel,
    alpha_figure,
    colour_ceiling,
    fit_figure,
    loss_figure,
    make_figures,
    maps_figure,
)
from sublens.experiments.distill.results import DistillResults, FitRecord, SeedStudent
from sublens.experiments.distill.students import training_summary, with_student
from sublens.figures import DOUBLE_COLUMN_IN, SINGLE_COLUMN_IN, print_problems
from sublens.results import load_results
from sublens.training import TrainResult


@pytest.fixture(scope="module")
def recorded() -> DistillResults:
    return load_results(RUNS / "distill" / "results.json", DistillResults)


def _readable(fig: plt.Figure, width: float) -> list[str]:
    problems = print_problems(fig, width)
    plt.close(fig)
    return problems


# ---- figures ----------------------------------------------------------------------------------
def test_the_figures_from_the_recorded_results_read_at_print_size(recorded: DistillResults) -> None:
    losses = loss_figure(recorded)
    assert _readable(losses, DOUBLE_COLUMN_IN) == []
    # the legend sits above the panels and their titles, where it covers no curve
    (legend,) = losses.legends
    renderer = FigureCanvasAgg(losses).get_renderer()
    above = legend.get_window_extent(renderer).y0
    assert all(above >= ax.get_tightbbox(renderer).y1 - 0.5 for ax in losses.axes)
    alphas = alpha_figure(recorded)
    assert alphas is not None and _readable(alphas, DOUBLE_COLUMN_IN) == []
    for role in recorded.teachers:
        assert _readable(fit_figure(recorded, role), SINGLE_COLUMN_IN) == []


def _map(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    causal = np.tril(rng.random((n, n)))
    return causal / causal.sum(1, keepdims=True)


def _panels(n_teacher: int, n_student: int) -> list[MapPanel]:
    """The map figure's seven panels: teacher head, squeezed, projected, four student states."""
    t, s = [f"t{i}" for i in range(n_teacher)], [f"s{i}" for i in range(n_student)]
    panels = [
        MapPanel("teacher L14H0", _map(n_teacher, 0), t, t),
        MapPanel("squeezed H0–H3", _map(n_teacher, 1), t, t),
        MapPanel("on student tokens", _map(n_student, 2), s, s),
    ]
    return panels + [
        MapPanel(f"{name} student", _map(n_student, 3 + i), s, s)
        for i, name in enumerate(("initial", "biased-SHD", "LM only", "base-SHD"))
    ]


@pytest.mark.parametrize(("n_teacher", "n_student"), [(7, 6), (137, 93)])  # labelled tokens; positions only
def test_the_map_figure_reads_at_print_size(n_teacher: int, n_student: int) -> None:
    fig = maps_figure(_panels(n_teacher, n_student), "student layer 9, head 0")
    labelled = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert (labelled[:2] == ["t0", "t1"]) == (n_teacher < 9)  # token labels only where they fit at 7 pt
    assert len(fig.axes) == 8 and not fig.axes[-1].axison  # the eighth cell is switched off
    assert _readable(fig, DOUBLE_COLUMN_IN) == []


def test_axis_names_once_per_row_and_column() -> None:
    fig = maps_figure(_panels(137, 93), "student layer 9, head 0")  # 7 maps, 4 to a row
    y_names = [ax.get_ylabel() for ax in fig.axes[:7]]
    x_names = [ax.get_xlabel() for ax in fig.axes[:7]]
    assert y_names == ["query", "", "", "", "query", "", ""]
    assert x_names == ["", "", "", "key", "key", "key", "key"]  # the fourth has no map below it


def test_the_colour_scale_tops_out_beside_the_sink() -> None:
    """A sink column of weight 0.9 would take the whole scale; the ceiling is the 99th
    percentile of the other weights, computed here by sorting them."""
    rng = np.random.default_rng(0)
    matrix = np.tril(rng.uniform(0.0, 0.1, (50, 50)))
    matrix[:, 0] = 0.9
    rest = np.sort(matrix[:, 1:][matrix[:, 1:] > 0])
    position = 0.99 * (rest.size - 1)  # linear interpolation between order statistics
    low = int(position)
    expected = rest[low] + (position - low) * (rest[low + 1] - rest[low])
    assert colour_ceiling(matrix) == pytest.approx(expected)
    assert colour_ceiling(np.zeros((3, 3))) > 0  # an empty map still gets a scale


def test_the_alignment_figure_reads_at_print_size() -> None:
    """docs/shd_alignment.md: four panels, two to a row, the alignment matrix among them."""
    panels = _panels(15, 12)[:3]
    labels = [f"s{i}" for i in range(12)], [f"t{i}" for i in range(15)]
    panels.insert(2, MapPanel("alignment Q", np.eye(12, 15), *labels, "teacher token", "student token"))
    assert _readable(maps_figure(panels, "student layer 4, head 0", columns=2), DOUBLE_COLUMN_IN) == []


def test_every_figure_is_written_and_runs_without_shd_or_squeezing_still_draw(
    recorded: DistillResults, tmp_path: Path
) -> None:
    written = make_figures(recorded, tmp_path, _panels(9, 7), "student layer 9, head 0")
    stems = {p.stem for p in written}
    assert stems == {"distill_losses", "distill_alphas", "distill_fit_biased", "distill_fit_base", "distill_maps"}
    assert all(p.is_file() for p in written) and {p.suffix for p in written} == {".pdf", ".png"}
    # only the LM-only student, and a student with as many heads as the teachers (nothing squeezed)
    lm_only = recorded.model_copy(
        update={
            "arms": {"lm_only": recorded.arms["lm_only"]},
            "alphas": {
                role: {layer: s.model_copy(update={"quantiles": None}) for layer, s in per.items()}
                for role, per in recorded.alphas.items()
            },
        }
    )
    assert alpha_figure(lm_only) is None
    assert _readable(loss_figure(lm_only), DOUBLE_COLUMN_IN) == []  # the SHD panel says why it is empty


# ---- results ------------------------------------------------------------------------------------
def test_a_fit_record_keeps_its_temperatures_at_the_top_level(recorded: DistillResults) -> None:
    written = {
        "layers": [0, 1],
        "kl_direction": "student_teacher",
        "rows": {"0": 5, "1": 5},
        "T=1": {"mean": 0.5, "per_layer": {"0": 0.4, "1": 0.6}},
        "T=2": {"mean": 0.2, "per_layer": {"0": 0.1, "1": 0.3}},
    }
    fit = FitRecord.model_validate(written)
    assert fit.model_dump(mode="json") == written and list(fit.model_dump()) == list(written)
    kl_2, first = fit.kl(2.0), fit.kl()
    assert kl_2 is not None and kl_2.mean == 0.2 and first is not None and first.mean == 0.5
    assert fit.kl(0.5) is None
    initial = recorded.fit["initial"]["biased"].kl()
    assert initial is not None and initial.mean == pytest.approx(1.42, abs=0.005)  # the section's "1.42 / 1.68"


def test_the_recorded_training_summaries_are_the_shared_one(recorded: DistillResults) -> None:
    """The curves of the recorded run, reshaped: [step, loss] pairs and the aligned SHD series."""
    biased, lm_only = recorded.arms["shd_biased"].train, recorded.arms["lm_only"].train
    assert [step for step, _ in biased.loss_curve] == list(range(1, biased.steps + 1))
    assert len(biased.extra_curves["shd"]) == len(biased.extra_curves["alpha_mean"]) == len(biased.loss_curve)
    assert biased.first("shd") == pytest.approx(1.4516, abs=1e-4) and biased.final("shd") == pytest.approx(
        0.5264, abs=1e-4
    )
    assert lm_only.extra_curves == {} and lm_only.final("shd") is None
    assert biased.data_fingerprint is None and "data_fingerprint" not in biased.model_dump()  # not recorded then


def _train_result(history: list[dict[str, object]]) -> TrainResult:
    return TrainResult(
        out_dir="o",
        model_dir=None,
        complete=True,
        steps=len(history),
        total_steps=len(history),
        steps_per_epoch=len(history),
        resumed_from=None,
        freeze={"mode": "full"},
        lora=None,
        n_examples=4,
        data_fingerprint="abc",
        world_size=1,
        tokens=40,
        answer_tokens=10,
        padded_tokens=48,
        padding_fraction=1 / 6,
        train_seconds=2.0,
        tokens_per_second=20.0,
        final_lm_loss=2.0,
        history=history,
        config={"epochs": 1},
    )


def test_a_student_keeps_the_shd_loss_and_mean_alpha_of_its_training() -> None:
    history: list[dict[str, object]] = [
        {"step": 1, "lm_loss": 3.0, "extra/shd": 0.9, "extra/alpha_mean": 0.5, "extra/kl_L0": 1.1, "extra/kl_L1": 0.7},
        {"step": 2, "lm_loss": 2.0, "extra/shd": 0.6, "extra/alpha_mean": 0.49, "extra/kl_L0": 0.8, "extra/kl_L1": 0.4},
    ]
    summary = training_summary(_train_result(history))
    assert summary.loss_curve == [(1, 3.0), (2, 2.0)]
    assert summary.extra_curves == {"alpha_mean": [0.5, 0.49], "shd": [0.9, 0.6]}  # per-layer KLs: train_result.json
    assert (summary.first("shd"), summary.final("shd")) == (0.9, 0.6)
    assert training_summary(_train_result([{"step": 1, "lm_loss": 3.0}])).extra_curves == {}  # LM only


def test_a_trained_student_is_added_under_its_seed_and_the_first_seed_is_the_arms(recorded: DistillResults) -> None:
    start = recorded.model_copy(update={"arms": {}, "per_seed": {}, "checkpoints": {}})
    arm = recorded.arms["shd_biased"]
    student = SeedStudent(train=arm.train, preference=arm.preference, fit=recorded.fit["shd_biased"])
    first = with_student(
        start, 0, "shd_biased", student, True, "shd_biased:seed0", "checkpoints/shd_biased/seed0/model"
    )
    later = with_student(first, 1, "shd_biased", student, False, "shd_biased:seed1", None)
    assert list(later.per_seed) == ["0", "1"] and list(later.per_seed["1"]) == ["shd_biased"]
    assert later.arms["shd_biased"].seed == 0 and later.arms["shd_biased"].teacher == "biased"
    assert later.checkpoints == {"shd_biased:seed0": "checkpoints/shd_biased/seed0/model"}
    again = load_results(later.model_dump(mode="json"), DistillResults)  # written and read back alike
    assert again.model_dump_json() == later.model_dump_json()
    assert math.isclose(again.per_seed["1"]["shd_biased"].train.final_lm_loss or 0, arm.train.final_lm_loss or 1)


# ---- the package ------------------------------------------------------------------------------
def test_the_registry_finds_the_package_and_its_results_stay_torch_free() -> None:
    assert get("distill").config is DistillConfig
    code = (
        "import sys\n"
        "from sublens.experiments.distill import DistillResults\n"
        "import sublens.report.sections.distill\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
