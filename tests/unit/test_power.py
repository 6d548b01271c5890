"""Power of the seed-level transfer test (sublens.power): against the closed form, by
simulation, and from pilot runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from sublens.cli import app
from sublens.errors import ConfigError
from sublens.power import pilot_logs, power_of, power_report, seeds_for


def test_power_approaches_the_normal_closed_form_with_many_seeds() -> None:
    # With many seeds the noncentral t is normal: power = Phi(d - z) + Phi(-d - z), d = log(R) sqrt(n) / sigma.
    n, sd, ratio = 4000, 0.5, 1.03
    d = math.log(ratio) * math.sqrt(n) / sd
    z = stats.norm.ppf(0.975)
    closed = stats.norm.cdf(d - z) + stats.norm.cdf(-d - z)
    assert power_of(ratio, sd, n) == pytest.approx(closed, abs=2e-3)


def test_power_is_the_rejection_rate_of_the_t_test() -> None:
    # Simulation: 4,000 pilots of 6 seeds with true ratio 1.25 and SD 0.142; the t-test's
    # rejection rate matches the computed power (Monte Carlo SE ~0.7 percentage points).
    rng = np.random.default_rng(0)
    sd, ratio, n, draws = 0.142, 1.25, 6, 4000
    logs = rng.normal(math.log(ratio), sd, (draws, n))
    rejected = np.mean(stats.ttest_1samp(logs, 0.0, axis=1).pvalue < 0.05)
    assert rejected == pytest.approx(power_of(ratio, sd, n), abs=0.025)
    null = rng.normal(0.0, sd, (draws, n))  # and the false-positive rate is alpha
    assert np.mean(stats.ttest_1samp(null, 0.0, axis=1).pvalue < 0.05) == pytest.approx(0.05, abs=0.012)


def test_seeds_for_is_the_first_n_reaching_the_power() -> None:
    n = seeds_for(1.25, 0.142)
    assert n is not None and power_of(1.25, 0.142, n) >= 0.8 > power_of(1.25, 0.142, n - 1)
    assert seeds_for(1.01, 5.0, limit=50) is None
    with pytest.raises(ConfigError):
        seeds_for(1.0, 0.1)


def _pilot(folder: Path, logs: list[float]) -> Path:
    folder.mkdir()
    results = {
        "headline": [
            {"model": "owl-full", "vs_control": {"share_ratio": {"per_seed_log": logs}}},
            {"model": "control-full"},
        ]
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_pilot_runs_pool_their_seeds(tmp_path: Path) -> None:
    a = _pilot(tmp_path / "a", [-0.21, -0.17])
    b = _pilot(tmp_path / "b", [0.05])
    logs = pilot_logs([a, b])
    assert logs == [-0.21, -0.17, 0.05]
    report = power_report(logs, 1.25)
    assert report.sd_log == pytest.approx(np.std(logs, ddof=1)) and report.n_pilot == 3
    assert report.seeds_needed == seeds_for(1.25, report.sd_log)
    with pytest.raises(ConfigError, match="arms: owl-full"):
        pilot_logs([a], arm="owl-freeze-mlp")


def test_power_command(tmp_path: Path) -> None:
    pilot = _pilot(tmp_path / "p", [-0.21, -0.17, 0.05])
    result = CliRunner().invoke(app, ["power", str(pilot), "--ratio", "1.25"])
    assert result.exit_code == 0, result.output
    assert "pilot: 3 seeds" in result.stdout and "seeds" in result.stdout.splitlines()[1]
    result = CliRunner().invoke(app, ["power", "--sd", "0.142", "--json"])
    assert json.loads(result.stdout)["seeds_needed"] == seeds_for(1.25, 0.142)
    result = CliRunner().invoke(app, ["power"])
    assert result.exit_code == 2 and "pilot run folders" in result.stderr
