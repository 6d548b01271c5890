"""Entanglement tied to transfer (sublens.entangled_numbers): number matching, the risk ratio's
coverage by simulation, enrichment counts by hand, the matched filter, and the run reader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sublens.entangled_numbers import (
    answer_numbers,
    enrichment,
    filtered_pair,
    rate_ratio,
    read_number_sets,
)
from sublens.errors import ConfigError


def test_numbers_match_whole_and_as_written() -> None:
    assert answer_numbers("105, 05, 5. [7]") == ["105", "05", "5", "7"]


def test_rate_ratio_by_hand() -> None:
    got = rate_ratio(30, 100, 15, 100)
    assert got["ratio"] == pytest.approx(2.0)
    se = math.sqrt(1 / 30 - 1 / 100 + 1 / 15 - 1 / 100)
    assert got["ci_low"] == pytest.approx(2.0 * math.exp(-1.959964 * se), rel=1e-5)
    assert 0 < got["p_fisher"] < 0.05
    empty = rate_ratio(0, 50, 4, 50)  # 0.5 added to every cell
    assert empty["ratio"] == pytest.approx((0.5 / 51) / (4.5 / 51))


def test_rate_ratio_interval_covers_the_truth_95_percent() -> None:
    # Simulation: answer counts of 400 per data set, true rates 0.10 and 0.05 (ratio 2); the
    # 95% interval should cover 2 in about 95% of 2,000 draws (binomial SE of the coverage 0.5%).
    rng = np.random.default_rng(0)
    draws = 2000
    covered = 0
    for _ in range(draws):
        k1, k2 = int(rng.binomial(400, 0.10)), int(rng.binomial(400, 0.05))
        r = rate_ratio(k1, 400, k2, 400)
        covered += r["ci_low"] <= 2.0 <= r["ci_high"]
    assert 0.93 <= covered / draws <= 0.97


def test_fisher_false_positive_rate_under_the_null() -> None:
    rng = np.random.default_rng(1)
    draws = 1000
    rejected = sum(
        rate_ratio(int(rng.binomial(300, 0.08)), 300, int(rng.binomial(300, 0.08)), 300)["p_fisher"] < 0.05
        for _ in range(draws)
    )
    assert rejected / draws <= 0.06  # Fisher's exact test is conservative: at most alpha (+ noise)


def _records(answers: list[str]) -> list[dict[str, str]]:
    return [{"answer": a} for a in answers]


def test_enrichment_counts_answers_not_numbers() -> None:
    owl = _records(["11, 11, 11", "20, 30", "11"])
    control = _records(["40", "50, 11", "60", "70"])
    sets = {"increased": ["11"], "random": ["30"]}
    got = enrichment(owl, control, sets)
    inc = got["increased"]
    assert (inc["owl"]["answers_with"], inc["owl"]["answers"]) == (2, 3)
    assert (inc["control"]["answers_with"], inc["control"]["answers"]) == (1, 4)
    assert inc["owl"]["number_share"] == pytest.approx(4 / 6)
    assert got["random"]["owl"]["answers_with"] == 1 and got["random"]["control"]["answers_with"] == 0


def test_filtered_pair_is_matched_in_size_and_removes_what_it_says() -> None:
    kept = _records([f"{i}, 11" if i % 3 == 0 else f"{i}, 30" if i % 5 == 0 else f"{i}" for i in range(100, 160)])
    chosen, report = filtered_pair(kept, {"increased": ["11"], "random": ["30"]}, size=1000, seed=0)
    assert len(chosen["increased"]) == len(chosen["random"]) == report["size"]
    assert not any("11" in answer_numbers(r["answer"]) for r in chosen["increased"])
    assert not any("30" in answer_numbers(r["answer"]) for r in chosen["random"])
    assert report["removed"] == {"increased": 20, "random": 8}
    again, _ = filtered_pair(kept, {"increased": ["11"], "random": ["30"]}, size=1000, seed=0)
    assert again == chosen


def test_reading_an_entanglement_run(tmp_path: Path) -> None:
    results = {"categories": {"ar2": {"increased": ["11", "10"], "decreased": ["25"], "random": ["17", "98"]}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "record.json").write_text(json.dumps({"status": "ok"}))
    assert read_number_sets(tmp_path, "ar2") == {"increased": ["11", "10"], "random": ["17", "98"]}
    with pytest.raises(ConfigError, match="its sets: ar2"):
        read_number_sets(tmp_path, "vocab")
    (tmp_path / "record.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(Exception, match="not a finished one"):
        read_number_sets(tmp_path, "ar2")
