"""The manipulation check behind a null: whether a student's training loss fell (sublens.learning),
against hand-computed quarters and Welch's t, and its false-positive rate on flat curves by
simulation."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from sublens.learning import MIN_STEPS, learning_check


def test_a_falling_curve_learned_and_the_numbers_are_the_quarters() -> None:
    rng = np.random.default_rng(1)
    losses = list(np.linspace(2.0, 0.8, 40) + rng.normal(0, 0.1, 40))
    check = learning_check([[step + 1, loss] for step, loss in enumerate(losses)])
    assert check is not None and check.learned and check.steps == 40
    assert math.isclose(check.first_loss, float(np.mean(losses[:10])), rel_tol=1e-12)
    assert math.isclose(check.last_loss, float(np.mean(losses[-10:])), rel_tol=1e-12)
    welch = stats.ttest_ind(losses[:10], losses[-10:], equal_var=False)
    assert math.isclose(check.p_value, float(welch.pvalue) / 2, rel_tol=1e-9)  # one-sided, the fall
    assert check.words().startswith(f"loss {check.first_loss:.2f} -> {check.last_loss:.2f} over 40 steps")


def test_a_rising_or_too_short_curve_did_not_show_learning() -> None:
    rising = learning_check(list(np.linspace(1.0, 2.0, 20)))
    assert rising is not None and not rising.learned and rising.p_value > 0.99
    assert learning_check([1.5] * (MIN_STEPS - 1)) is None
    assert learning_check([float("nan")] * 20) is None


def test_flat_noisy_curves_pass_the_check_at_most_at_alpha() -> None:
    """Students that learned nothing (a flat curve with batch noise, the layer-1 LoRA arm's
    shape) are called learned in about 5% of curves, not more."""
    rng = np.random.default_rng(7)
    calls = [learning_check(list(1.35 + rng.normal(0, 0.25, 38))) for _ in range(4000)]
    rate = sum(c is not None and c.learned for c in calls) / len(calls)
    assert 0.035 < rate < 0.065, rate
