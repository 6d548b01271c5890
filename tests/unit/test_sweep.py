"""Sweeps (sublens.sweep): the grid and its points, the across-seed effect against an independent
computation, and a real sweep of the subliminal experiment on a tiny model through submitit's
local executor, SIGKILLed while a point runs and resumed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from sublens.claims import ClaimSettings
from sublens.cli import app
from sublens.config import preset_path
from sublens.errors import ConfigError
from sublens.experiments.subliminal import SubliminalConfig
from sublens.learning import Quarters
from sublens.runs import read_json
from sublens.sweep import (
    SweepSpec,
    check_required,
    chosen_rows,
    effect_by_grid_point,
    grid_label,
    make_points,
    parse_axis,
    parse_seeds,
    point_configs,
    read_sweep_file,
    run_sweep,
    seed_key,
)
from sublens.sweep.combined import StudentSides, owl_specific, specificity_quotients, student_sides
from sublens.sweep.grid import Axis

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# ---- the grid ------------------------------------------------------------------------------------


def test_axes_split_on_top_level_commas_only() -> None:
    assert parse_axis("train.lr=1e-4,2e-4").values == ("1e-4", "2e-4")
    assert parse_axis("modes=[full,freeze-mlp],[full]").values == ("[full,freeze-mlp]", "[full]")
    assert parse_axis("x={a: 1, b: 2},{a: 3}").values == ("{a: 1, b: 2}", "{a: 3}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lr", "is not KEY=VALUE1,VALUE2"),
        ("=1,2", "is not KEY=VALUE1"),
        ("lr=1,,2", "empty value"),
        ("lr=1,1", "names a value twice"),
    ],
)
def test_bad_axes_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_axis(text)


def test_seeds_lists_and_ranges() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5]
    for bad in ("", "a", "1,1", "-1", "2-"):
        with pytest.raises(ConfigError, match="distinct whole numbers"):
            parse_seeds(bad)


def test_points_are_every_combination_with_every_seed() -> None:
    points = make_points([parse_axis("train.lr=1e-4,2e-4"), parse_axis("modes=[full],[freeze-mlp]")], [0, 1])
    assert len(points) == 8 and len({p.id for p in points}) == 8
    assert points[0].id == "lr=1e-4_modes=full_seed=0" and points[-1].id == "lr=2e-4_modes=freeze-mlp_seed=1"
    assert points[1].overrides("seeds") == ["train.lr=1e-4", "modes=[full]", "seeds=[1]"]
    assert points[1].overrides("seed") == ["train.lr=1e-4", "modes=[full]", "seed=1"]
    with pytest.raises(ConfigError, match="names a key twice"):
        make_points([parse_axis("a=1,2"), parse_axis("a=3")], [0])


def test_every_point_config_is_checked_before_anything_runs() -> None:
    assert seed_key(SubliminalConfig) == "seeds"
    spec = SweepSpec(
        experiment="subliminal",
        config=None,
        overrides=[],
        grid=[("train.lr", ["1e-4", "-1"])],
        seeds=[0],
        seed_key="seeds",
        points=make_points([parse_axis("train.lr=1e-4,-1")], [0]),
    )
    with pytest.raises(ConfigError, match="sweep point lr=-1_seed=0"):
        point_configs(spec, SubliminalConfig)


def test_linked_keys_take_the_same_value() -> None:
    (point,) = make_points([parse_axis("modes+control_modes=[layers.1]")], [2])
    assert point.id == "modes=layers.1_seed=2"
    assert point.overrides("seeds") == ["modes=[layers.1]", "control_modes=[layers.1]", "seeds=[2]"]


def test_a_sweep_file_axis_of_settings(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "experiment": "subliminal",
                "preset": "quick",
                "set": {"train.lr": 1e-4},
                "seeds": "0-1",
                "grid": {
                    "arm": [
                        {"modes": ["layers.1"], "control_modes": ["layers.1", "full"]},
                        {"modes": ["full"], "control_modes": ["full"]},
                    ]
                },
            },
            sort_keys=False,
        )
    )
    _, config, overrides, axes, seeds = read_sweep_file(file)
    assert config == preset_path("subliminal/quick.yaml") and overrides == ["train.lr=0.0001"]
    points = make_points(axes, seeds)
    assert [p.id for p in points] == [
        "arm=layers.1_seed=0",
        "arm=layers.1_seed=1",
        "arm=full_seed=0",
        "arm=full_seed=1",
    ]
    assert points[0].overrides("seeds") == ["modes=[layers.1]", "control_modes=[layers.1, full]", "seeds=[0]"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"experiment": "subliminal", "grid": {"arm": [{"modes": ["full"]}, "x"]}}))
    with pytest.raises(ConfigError, match="mixes mappings of settings with plain values"):
        read_sweep_file(bad)


def test_a_grid_label_names_what_tells_two_arms_apart() -> None:
    """An arm's rate or epochs show beside its trainable set (two arms with the same set must not
    read alike); the matched control's repeat of the trainable set adds nothing; the folder
    names stay short."""
    axis = Axis(
        "arm",
        ("[layers.1+lora8]", "[layers.29+lora8]"),
        (
            ("modes=[layers.1+lora8]", "control_modes=[layers.1+lora8]", "extra_mode=layers.1+lora8", "train.lr=0.001"),
            ("modes=[layers.29+lora8]", "control_modes=[layers.29+lora8, full]", "train.epochs=3"),
        ),
    )
    first, second = make_points([axis], [0])
    assert grid_label(first.values, first.settings) == "arm=[layers.1+lora8], train.lr=0.001"
    assert grid_label(second.values, second.settings) == (
        "arm=[layers.29+lora8], control_modes=[layers.29+lora8, full], train.epochs=3"
    )
    assert first.id == "arm=layers.1+lora8_seed=0"  # the run folder's name is the first setting's
    assert grid_label({"lr": "0.001"}) == "lr=0.001" and grid_label({}) == "(no grid)"
    clashed = Axis("arm", ("modes=[full], train.lr=0.1",), (("modes=[full]", "train.lr=0.1"),))
    assert grid_label(*_values_and_settings(clashed)) == "arm=modes=[full], train.lr=0.1"  # said once


def _values_and_settings(axis: Axis) -> tuple[dict[str, str], dict[str, list[str]]]:
    point = make_points([axis], [0])[0]
    return point.values, point.settings


def test_a_figure_row_says_what_it_divides_by_and_a_no_change_verdict_in_words() -> None:
    from sublens.sweep.combined import _row_label

    def label(comparison: str, verdict: str) -> str:
        return _row_label(pd.Series({"grid": "arm=[full]", "comparison": comparison, "n_seeds": 3, "verdict": verdict}))

    assert label("owl-full vs control-full", "inconclusive") == "arm=[full]: owl-full (n = 3), inconclusive"
    assert label("owl-full vs eagle-full", "equivalent") == "arm=[full]: owl-full over eagle-full (n = 3), equivalent"
    assert label("eagle-full vs control-full", "supported") == "arm=[full]: eagle-full (n = 3), no change (supported)"
    assert label("owl-full vs control-full", "supported") == "arm=[full]: owl-full (n = 3), supported"


SWEEP_FILES = sorted((REPO_CONFIGS / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("file", SWEEP_FILES, ids=[f.stem for f in SWEEP_FILES])
def test_shipped_sweep_files_validate_at_every_point(file: Path) -> None:
    sweep, config, overrides, axes, seeds = read_sweep_file(file)
    assert len(seeds) >= 3  # seeds are the unit of inference: three at least
    spec = SweepSpec(
        experiment=sweep.experiment,
        config=str(config),
        overrides=overrides,
        grid=[(a.key, list(a.values)) for a in axes],
        seeds=seeds,
        seed_key="seeds",
        points=make_points(axes, seeds),
    )
    for point_config in point_configs(spec, SubliminalConfig).values():
        assert isinstance(point_config, SubliminalConfig)
        assert set(point_config.modes) <= set(point_config.control_modes)  # matched controls
        if point_config.extra_teachers:  # the specificity students' arm: the owl arm where it can be
            assert point_config.extra_mode in point_config.control_modes
            masked = any("~" in m for m in point_config.modes)
            assert point_config.extra_mode in point_config.modes or (masked and point_config.extra_mode == "full")
        if sweep.required:
            with pytest.raises(ConfigError, match="--set entangled.run="):
                check_required(point_config, sweep.required, file)


def test_command_line_mistakes_stop_before_anything_runs(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["sweep"], "Name an experiment"),
        (["sweep", "subliminal", "--grid", "train.lr"], "is not KEY=VALUE1"),
        (["sweep", "subliminal", "--executor", "cloud"], "use one of local, slurm, debug"),
        (["sweep", "--file", str(REPO_CONFIGS / "sweeps" / "entangled-filter-cpu.yaml")], "needs entangled.run"),
        (["sweep", "subliminal", "--file", str(SWEEP_FILES[0])], "give only --set with it"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--folder", str(tmp_path / "never")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not (tmp_path / "never").exists()


# Both sides' students of a comparison, their loss fallen (sublens.learning), as combined_table
# records them: per curve, the first and the last quarter of the per-step losses.
LEARNED = {"loss_first": [[1.4, 1.5, 1.3, 1.45]] * 2, "loss_last": [[1.0, 1.1, 0.9, 1.05]] * 2, "loss_unchecked": 0}

# ---- the effect across seeds ---------------------------------------------------------------------


def test_effect_is_a_t_interval_of_the_seed_log_ratios() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for grid in ("a", "b"):
        for seed in range(4):
            for name, ratio in (
                ("control-full vs base", 1.0),
                (f"owl-{grid} vs control-{grid}", float(rng.lognormal(0.1, 0.2))),
            ):
                rows.append(
                    {"point": f"{grid}{seed}", "grid": grid, "seed": seed, "comparison": name, "share_ratio": ratio}
                )
    table = pd.DataFrame(rows)
    effect = effect_by_grid_point(chosen_rows(table, None))
    for grid, row in effect.set_index("grid").iterrows():
        logs = np.log(table[(table.grid == grid) & table.comparison.str.startswith("owl")].share_ratio.to_numpy())
        low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
        assert row.n_seeds == 4 and row.comparison == f"owl-{grid} vs control-{grid}"
        assert math.isclose(row.share_ratio, math.exp(logs.mean()), rel_tol=1e-12)
        assert math.isclose(row.share_ratio_ci_low, math.exp(low), rel_tol=1e-9)
        assert math.isclose(row.share_ratio_ci_high, math.exp(high), rel_tol=1e-9)
    named = effect_by_grid_point(chosen_rows(table, "control-full vs base"))
    assert list(named.n_seeds) == [4, 4] and math.isnan(named.share_ratio_ci_low[0])  # equal values: no interval


def test_each_grid_point_comparison_gets_a_holm_adjusted_verdict() -> None:
    """The owl students' rows are decided as transfer (predicted rise), an extra teacher's as
    specificity (predicted: no change of the trait's share), all Holm-adjusted together; the
    LoRA r = 8 arm's three seeds are 'equivalent', a non-owl teacher raising the share as much
    as owl is 'contradicted', and the figure draws the margin."""
    rows = []
    per_seed = {
        "owl-full+lora8 vs control-full+lora8": [1.054, 1.043, 1.057],
        "eagle-full+lora8 vs control-full+lora8": [1.8, 1.7, 1.9],
        "owl-full vs control-full": [1.6, 1.5, 1.7],
    }
    for comparison, ratios in per_seed.items():
        grid = "arm=lora8" if "lora8" in comparison else "arm=full"
        for seed, ratio in enumerate(ratios):
            rows.append(
                {"point": f"{grid}{seed}", "grid": grid, "seed": seed, "comparison": comparison, "share_ratio": ratio}
                | LEARNED
            )
    rows.append(
        {"point": "arm=full0", "grid": "arm=full", "seed": 0, "comparison": "owl-full vs base", "share_ratio": 2.0}
    )
    effect = effect_by_grid_point(chosen_rows(pd.DataFrame(rows), None)).set_index("comparison")
    assert list(effect.index) == list(per_seed)  # every matched comparison, no "vs base" row
    assert effect.prediction.to_dict() == {c: "none" if c.startswith("eagle") else "increase" for c in per_seed}
    assert effect.verdict.to_dict() == {
        "owl-full+lora8 vs control-full+lora8": "equivalent",
        "eagle-full+lora8 vs control-full+lora8": "contradicted",
        "owl-full vs control-full": "supported",
    }
    raw = [float(stats.ttest_1samp(np.log(r), 0.0).pvalue) for r in per_seed.values()]
    order = np.argsort(raw)
    expected = np.maximum.accumulate([(len(raw) - k) * raw[i] for k, i in enumerate(order)])
    holm = np.empty(len(raw))
    holm[order] = np.minimum(expected, 1.0)
    assert np.allclose(effect.p_holm.to_numpy(), holm, rtol=1e-12)
    assert (effect.margin == 1.25).all() and (effect.minimal_detectable > 1).all()
    narrow = effect_by_grid_point(chosen_rows(pd.DataFrame(rows), None), settings=ClaimSettings(margin=1.02))
    assert narrow.set_index("comparison").verdict["owl-full+lora8 vs control-full+lora8"] == "supported"
    # students without a recorded loss curve are not shown to have learned: their null is open
    unrecorded = pd.DataFrame(rows).drop(columns=list(LEARNED))
    blind = effect_by_grid_point(chosen_rows(unrecorded, None)).set_index("comparison")
    assert blind.verdict["owl-full+lora8 vs control-full+lora8"] == "inconclusive"
    assert "no loss curve" in blind.reason["owl-full+lora8 vs control-full+lora8"]
    assert blind.verdict["owl-full vs control-full"] == "supported"  # a rise is reported as measured


def test_a_null_of_students_that_did_not_learn_is_inconclusive() -> None:
    """'equivalent' (and a specificity row's 'supported' no-change) stands only where the
    students, both sides of every seed pooled, are shown to have learned their data; a rise is
    reported as measured either way."""
    rng = np.random.default_rng(3)

    def rows(falling: bool, short: int = 0) -> pd.DataFrame:
        per_seed = {
            "owl-layers.1 vs control-layers.1": [1.002, 0.997, 1.001],
            "eagle-layers.1 vs control-layers.1": [0.998, 0.996, 0.999],
            "owl-full vs control-full": [1.6, 1.5, 1.7],
        }

        def learning() -> dict[str, Any]:  # both sides' 9-step quarters, as combined_table writes them
            first = [list(1.4 + rng.normal(0, 0.2, 9)) for _ in range(2)]
            last = (
                [list(np.array(f) - 0.4 + rng.normal(0, 0.05, 9)) for f in first] if falling else first
            )  # flat: p = 0.5
            return {"loss_first": first, "loss_last": last, "loss_unchecked": short}

        return pd.DataFrame(
            [
                {"grid": c.split(" ")[0], "seed": k, "comparison": c, "share_ratio": r, **learning()}
                for c, ratios in per_seed.items()
                for k, r in enumerate(ratios)
            ]
        )

    learned = effect_by_grid_point(chosen_rows(rows(falling=True), None)).set_index("comparison")
    assert learned.verdict.to_dict() == {
        "owl-layers.1 vs control-layers.1": "equivalent",
        "eagle-layers.1 vs control-layers.1": "supported",
        "owl-full vs control-full": "supported",
    }
    assert set(learned.students_learned) == {"yes"}
    untrained = effect_by_grid_point(chosen_rows(rows(falling=False), None)).set_index("comparison")
    assert untrained.verdict.to_dict() == {
        "owl-layers.1 vs control-layers.1": "inconclusive",
        "eagle-layers.1 vs control-layers.1": "inconclusive",
        "owl-full vs control-full": "supported",
    }
    assert set(untrained.students_learned) == {"not shown"}  # a fall not shown, never "no"
    reason = untrained.reason["owl-layers.1 vs control-layers.1"]
    assert reason.startswith("the students were not shown to learn their data (loss 1.")
    assert "over 6 students" in reason  # three seeds, both sides pooled
    assert reason.endswith(learned.reason["owl-layers.1 vs control-layers.1"])  # the estimate is still given
    assert untrained.settle["owl-layers.1 vs control-layers.1"].startswith("train until the loss falls")
    assert untrained.p_holm.equals(learned.p_holm)  # the gate words the verdict; Holm is unchanged
    short = effect_by_grid_point(chosen_rows(rows(falling=True, short=1), None)).set_index("comparison")
    assert short.verdict["owl-layers.1 vs control-layers.1"] == "inconclusive"  # every curve must be read
    assert "3 too short to tell" in short.reason["owl-layers.1 vs control-layers.1"]


def test_a_runs_specificity_rows_are_the_owl_ratio_over_each_other_teachers() -> None:
    """Per trainable set, the owl student's ratio over the control divided by each other
    teacher's (eagle, dog-2; never the owl data filtered); its learning columns are the two
    trained students' curves, not the control's."""
    rows = pd.DataFrame(
        [
            {"comparison": "owl-full vs control-full", "share_ratio": 1.5, "p_trait_ratio": 1.2, "n_seeds": 1},
            {"comparison": "eagle-full vs control-full", "share_ratio": 1.2, "p_trait_ratio": 0.0, "n_seeds": 1},
            {"comparison": "dog-2-full vs control-full", "share_ratio": 0.75, "p_trait_ratio": 1.0, "n_seeds": 1},
            {"comparison": "owl-no-random-full vs control-full", "share_ratio": 1.1, "p_trait_ratio": 1, "n_seeds": 1},
            {"comparison": "eagle-layers.1 vs control-layers.1", "share_ratio": 1.0, "p_trait_ratio": 1, "n_seeds": 1},
            {"comparison": "owl-full vs base", "share_ratio": 2.0, "p_trait_ratio": 2.0, "n_seeds": 1},
        ]
    )
    owl, eagle, control = Quarters([2.0], [1.0]), Quarters([3.0], [2.0]), Quarters([9.0], [9.0])
    by_model = {"owl-full": [owl], "eagle-full": [eagle], "control-full": [control]}
    derived = specificity_quotients(rows, by_model).set_index("comparison")
    assert list(derived.index) == ["owl-full vs eagle-full", "owl-full vs dog-2-full"]  # layers.1 has no owl student
    assert derived.share_ratio.tolist() == [1.5 / 1.2, 1.5 / 0.75]
    assert math.isnan(derived.p_trait_ratio["owl-full vs eagle-full"])  # a zero ratio divides to nothing
    assert derived.reference.tolist() == ["eagle-full", "dog-2-full"]
    assert derived.loss_first["owl-full vs eagle-full"] == [[2.0], [3.0]]  # owl's and eagle's, no control
    assert derived.loss_first["owl-full vs dog-2-full"] == [[2.0]]  # a student without a record adds none
    assert specificity_quotients(rows[rows.comparison.str.startswith("eagle")], by_model).empty


def test_the_sides_of_a_student_comparison_are_read_whatever_hyphens_the_names_hold() -> None:
    assert student_sides("dog-2-layers.0-5.mlp vs control-layers.0-5.mlp") == StudentSides(
        "dog-2", "layers.0-5.mlp", "control"
    )
    assert student_sides("owl-no-random-full vs control-full") == StudentSides("owl-no-random", "full", "control")
    specificity = student_sides("owl-full+lora8 vs dog-2-full+lora8")
    assert specificity == StudentSides("owl", "full+lora8", "dog-2") and specificity.is_specificity
    for other in ("owl-full vs base", "control-full vs base", "teacher vs base", "owl-full vs eagle-layers.1"):
        assert student_sides(other) is None


@pytest.mark.parametrize(
    ("verdicts", "word", "why"),
    [
        ({"owl-A vs control-A": "supported", "owl-A vs eagle-A": "supported"}, "yes", "and over the eagle student"),
        ({"owl-A vs control-A": "supported", "owl-A vs eagle-A": "equivalent"}, "no", "eagle student: equivalent"),
        ({"owl-A vs control-A": "equivalent", "owl-A vs eagle-A": "inconclusive"}, "no", "its control: equivalent"),
        ({"owl-A vs control-A": "contradicted"}, "no", "its control: contradicted"),
        # a leg not shown is not a leg shown absent: undecided, not "no"
        (
            {"owl-A vs control-A": "inconclusive", "owl-A vs eagle-A": "supported"},
            "inconclusive",
            "its control: inconclusive",
        ),
        ({"owl-A vs control-A": "inconclusive"}, "inconclusive", "its control: inconclusive"),
        ({"owl-A vs control-A": "supported", "eagle-A vs control-A": "supported"}, "not tested", "no other animal"),
        ({"eagle-A vs control-A": "supported"}, "", ""),
    ],
)
def test_owl_specific_transfer_needs_both_rises(verdicts: dict[str, str], word: str, why: str) -> None:
    point = pd.DataFrame({"comparison": list(verdicts), "verdict": list(verdicts.values())})
    got = owl_specific(point)
    assert got[0] == word and why in got[1]


def test_a_sweep_decides_owl_specific_transfer_per_grid_point() -> None:
    """An arm whose eagle student rises as much as the owl student is not owl-specific though
    the owl rise is supported; the owl-over-eagle row joins the Holm family."""
    per_seed = {
        "owl-full vs control-full": [1.6, 1.5, 1.7, 1.55],
        "eagle-full vs control-full": [1.01, 0.99, 1.0, 1.02],
        "owl-full vs eagle-full": [1.6 / 1.01, 1.5 / 0.99, 1.7 / 1.0, 1.55 / 1.02],
        "owl-A vs control-A": [1.6, 1.5, 1.7, 1.55],
        "eagle-A vs control-A": [1.62, 1.49, 1.69, 1.56],
        "owl-A vs eagle-A": [1.6 / 1.62, 1.5 / 1.49, 1.7 / 1.69, 1.55 / 1.56],
    }
    rows = [
        {"grid": c.split(" ")[0].removeprefix("owl-").removeprefix("eagle-"), "seed": k, "comparison": c}
        | {"share_ratio": r}
        | LEARNED
        for c, ratios in per_seed.items()
        for k, r in enumerate(ratios)
    ]
    effect = effect_by_grid_point(chosen_rows(pd.DataFrame(rows), None)).set_index("comparison")
    assert (
        effect.verdict["owl-full vs eagle-full"] == "supported" and effect.prediction["owl-A vs eagle-A"] == "increase"
    )
    assert effect.owl_specific.to_dict() == dict.fromkeys(per_seed, "yes") | {
        c: "no" for c in per_seed if c.endswith("A")
    }
    assert effect.owl_specific_why["owl-A vs control-A"] == "over the eagle student: equivalent"
    assert len(effect) == 6  # every row is in one Holm family
    raw = sorted(float(stats.ttest_1samp(np.log(r), 0.0).pvalue) for r in per_seed.values())
    assert math.isclose(effect.p_holm.min(), min(1.0, 6 * raw[0]), rel_tol=1e-9)


# ---- a real sweep, killed and resumed -------------------------------------------------------------
TINY = "tiny:llama?layers=2&hidden=64&heads=4"


def _base_config(folder: Path) -> Path:
    """The quick preset cut down to seconds on a tiny random model."""
    config = {
        "base": TINY,
        "teacher": "prompted",
        "device": "cpu",
        "n_examples": 8,
        "modes": ["full"],
        "control_modes": ["full"],
        "parallel": 1,
        "stats_resamples": 100,
        "data": {"n_prompts": 16, "max_new_tokens": 24, "batch_size": 16, "shard_size": 8},
        "train": {"batch_size": 8, "warmup_steps": 1, "checkpoint_every": 1},
        "preference": {
            "questions": ["What is your favorite animal?"],
            "sample_questions": ["Name an animal."],
            "samples_per_question": 1,
        },
        "perplexity": {"max_tokens": 64, "window": 32, "batch_size": 2},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config: Path, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sublens",
        "sweep",
        "subliminal",
        "--config",
        str(config),
        "--seeds",
        "0,1",
        "--grid",
        "train.lr=5e-5",
        "--executor",
        "local",
        "--parallel",
        "1",
        "--folder",
        str(folder),
    ]


def test_a_killed_sweep_resumes_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    config, folder = _base_config(tmp_path), tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        _command(config, folder),
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    second = folder / "points" / "lr=5e-5_seed=1"
    deadline = time.monotonic() + 300
    while not (second / "record.json").is_file() and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sweep.poll() is None, sweep.communicate()[0]  # killed while the second point runs
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its worker processes
    sweep.wait()
    assert read_json(second / "record.json")["status"] == "running"

    resumed = subprocess.run(_command(config, folder), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 of 2 points already finished; running the other 1" in resumed.stderr
    assert read_json(second / "record.json")["status"] == "ok"
    table = pd.read_parquet(folder / "sweep.parquet")
    assert set(table.seed) == {0, 1} and table.finished.all()
    assert (folder / "sweep-effect.pdf").is_file()

    # the same sweep, never interrupted, run in this process: the same numbers
    spec = SweepSpec.model_validate(read_json(folder / "sweep.json"))
    clean = run_sweep(spec, tmp_path / "clean", executor="debug", say=lambda _: None)
    assert clean.failed == {}
    clean_table = pd.read_parquet(tmp_path / "clean" / "sweep.parquet")
    columns = ["point", "comparison", "share_ratio", "share_ratio_ci_low", "p_trait_ratio"]
    pd.testing.assert_frame_equal(table[columns], clean_table[columns])


def test_the_printed_effects_say_what_would_settle_an_open_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    import sublens.cli as package
    from sublens.cli.studies import _print_effects
    from sublens.sweep import FIGURE_STEM

    row = {"grid": "arm=a", "comparison": "owl/control", "verdict": "inconclusive", "reason": "flat", "n_seeds": 3}
    settled = {**row, "comparison": "eagle/control", "verdict": "supported", "settle": None}
    word = {"owl_specific": "inconclusive", "owl_specific_why": "the owl student over its control: inconclusive"}
    frame = pd.DataFrame([{**row, "settle": "train longer", **word}, {**settled, **word}])
    frame.to_parquet(tmp_path / f"{FIGURE_STEM}.parquet")
    out = io.StringIO()
    monkeypatch.setattr(package, "console", Console(file=out, width=200))
    _print_effects(tmp_path)
    lines = out.getvalue().splitlines()
    assert lines == [
        "arm=a: owl/control: inconclusive (flat; 3 seeds) To settle it: train longer.",
        "arm=a: eagle/control: supported (flat; 3 seeds)",
        "arm=a: owl-specific transfer: inconclusive (the owl student over its control: inconclusive)",  # once
    ]

    pd.DataFrame([row]).to_parquet(tmp_path / f"{FIGURE_STEM}.parquet")  # a table from before 'settle'
    out.truncate(0), out.seek(0)
    _print_effects(tmp_path)
    assert out.getvalue().splitlines() == ["arm=a: owl/control: inconclusive (flat; 3 seeds)"]
