"""The manipulation check behind a null: whether students' training loss fell (sublens.learning),
against hand-computed quarters and Welch's t, and its false-positive rate on flat curves by
simulation."""

from __future__ import annotations

import json
import math

import numpy as np
from scipy import stats

from fixture_runs import RUNS
from sublens.claims import Claim, ClaimSettings, Verdict, decide, estimate_log_ratio, unless_learned
from sublens.learning import MIN_STEPS, learning_check


def test_falling_curves_learned_and_the_numbers_are_the_pooled_quarters() -> None:
    rng = np.random.default_rng(1)
    curves = [list(np.linspace(2.0, 0.8, n) + rng.normal(0, 0.1, n)) for n in (40, 20)]
    check = learning_check([[[step + 1, loss] for step, loss in enumerate(curves[0])], curves[1]])
    assert check is not None and check.learned and (check.curves, check.unchecked) == (2, 0)
    first = [*curves[0][:10], *curves[1][:5]]
    last = [*curves[0][-10:], *curves[1][-5:]]
    assert math.isclose(check.first_loss, float(np.mean(first)), rel_tol=1e-12)
    assert math.isclose(check.last_loss, float(np.mean(last)), rel_tol=1e-12)
    welch = stats.ttest_ind(first, last, equal_var=False)
    assert math.isclose(check.p_value, float(welch.pvalue) / 2, rel_tol=1e-9)  # one-sided, the fall
    assert check.words().startswith(f"loss {check.first_loss:.2f} -> {check.last_loss:.2f} over 2 students")


def test_a_rising_a_short_or_an_unreadable_curve_is_not_learning() -> None:
    rising = learning_check([list(np.linspace(1.0, 2.0, 20))])
    assert rising is not None and not rising.learned and rising.p_value > 0.99
    assert learning_check([[1.5] * (MIN_STEPS - 1)]) is None
    assert learning_check([[float("nan")] * 20]) is None
    falling_but_one_short = learning_check([list(np.linspace(2.0, 0.5, 40)), [1.0, 0.9]])
    assert falling_but_one_short is not None and falling_but_one_short.p_value < 1e-6
    assert not falling_but_one_short.learned and falling_but_one_short.unchecked == 1  # all must be read


def test_the_recorded_full_fine_tuning_students_learned() -> None:
    """The recorded quick-preset run (38 steps at 5e-5): the owl and control students' loss
    fell from about 1.3 to 1.05; pooled, the arm passes though one curve alone would not."""
    students = json.loads((RUNS / "subliminal" / "results.json").read_text())["students"]
    curves = [s["training"]["loss_curve"] for s in students.values() if s["mode"] == "full"]
    check = learning_check(curves)
    assert check is not None and check.learned and check.last_loss < 0.85 * check.first_loss


def test_flat_noisy_curves_pass_the_check_at_most_at_alpha() -> None:
    """Students that learned nothing (flat curves with batch noise, the layer-1 LoRA arm's
    shape: six curves of 38 steps) are called learned in about 5% of arms, not more."""
    rng = np.random.default_rng(7)
    calls = [learning_check([list(1.35 + rng.normal(0, 0.25, 38)) for _ in range(6)]) for _ in range(4000)]
    rate = sum(c is not None and c.learned for c in calls) / len(calls)
    assert 0.035 < rate < 0.065, rate


def test_only_a_null_of_students_not_shown_to_learn_is_made_inconclusive() -> None:
    """`unless_learned`: equivalence and a predicted no-change need a passing check; a rise, a
    passing check, or a verdict that is not a null are left as decided."""
    settings = ClaimSettings()
    rise = Claim(
        name="t", statement="s", estimand="e", unit="seed", prediction="increase", family="f", settings=settings
    )
    none = rise.model_copy(update={"prediction": "none"})
    flat, tight, up = [0.01, -0.01, 0.005], [0.002, -0.001, 0.0], [0.4, 0.5, 0.45]
    equivalent = decide(rise, estimate_log_ratio(flat, "seed"))
    no_change = decide(none, estimate_log_ratio(tight, "seed"))
    supported = decide(rise, estimate_log_ratio(up, "seed"))
    assert (equivalent.verdict, no_change.verdict, supported.verdict) == (
        Verdict.EQUIVALENT,
        Verdict.SUPPORTED,
        Verdict.SUPPORTED,
    )
    flat_check = learning_check([[1.3] * 20, [1.4] * 20])
    falling = learning_check([list(np.linspace(2.0, 1.0, 20))] * 2)
    for null in (equivalent, no_change):
        assert unless_learned(null, falling) is null
        gated = unless_learned(null, flat_check)
        assert gated.verdict is Verdict.INCONCLUSIVE and gated.settle.startswith("train until the loss falls")
        assert gated.reason.endswith(null.reason) and "over 2 students" in gated.reason
        assert f"no loss curve of at least {MIN_STEPS} steps" in unless_learned(null, None).reason
    assert unless_learned(supported, flat_check) is supported  # a rise is reported as measured
