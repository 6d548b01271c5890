"""The flat parquet tables of the training and evaluation experiments (sublens.tables): the same
numbers as the nested results, read back through load_run."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_subliminal import fake_preference

from sublens.api import load_run
from sublens.config import Config
from sublens.experiments.subliminal import compare_arm
from sublens.runs import open_run
from sublens.tables import comparison_columns, preference_columns, write_tables


def test_preference_and_comparison_columns_are_the_nested_numbers() -> None:
    preference = fake_preference(2.0, 0)
    columns = preference_columns(preference)
    probability = preference["probability"]
    assert columns["p_trait"] == probability["p_trait"]["mean"]
    assert columns["panel_share_ci_high"] == probability["panel_share"]["ci_high"]
    assert columns["answer_rate"] == preference["sampled"]["trait_rate"]["rate"] and columns["answers"] == 48
    comparison = compare_arm([fake_preference(2.0, s) for s in range(3)], [fake_preference(1.0, s) for s in range(3)])
    flat = comparison_columns(comparison)
    assert flat["p_trait_ratio"] == comparison["p_trait_ratio"]["ratio"] and flat["n_seeds"] == 3
    assert flat["share_ratio_ci_low"] == comparison["share_ratio"]["ci_low"]


def test_tables_are_read_back_by_load_run(tmp_path: Path) -> None:
    comparison = compare_arm([fake_preference(2.0, 0)], [fake_preference(1.0, 0)])
    models = [
        {"model": "owl-full-seed0", "seed": 0, **preference_columns(fake_preference(2.0, 0))},
        {"model": "control-full-seed0", "seed": 0, **preference_columns(fake_preference(1.0, 0))},
    ]
    with open_run("demo", Config(), tmp_path) as run:
        written = write_tables(run, models, {"owl vs control": comparison})
    assert written == ["models.parquet", "comparisons.parquet"]
    tables = load_run(run.path).tables
    assert list(tables["models"]["model"]) == ["owl-full-seed0", "control-full-seed0"]
    assert tables["models"]["p_trait"].iloc[0] == pytest.approx(models[0]["p_trait"])
    assert tables["comparisons"]["share_ratio"].iloc[0] == pytest.approx(comparison["share_ratio"]["ratio"])
