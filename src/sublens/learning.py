"""Did the students learn their training data? The manipulation check behind every "no transfer".

A null result of the subliminal experiment ("the owl student's share is within the margin of
its control's") says something about where the trait can sit only if the students learned
the teachers' numbers at all: an arm whose students did not move cannot carry anything, and
its "equivalent" is a null of untrained students. The check reads the training loss curves
that every student records: with one epoch each step's loss is measured on examples the
student has not yet been updated on, so a mean loss over the last quarter of the steps below
that over the first quarter says the students fit data of that kind better than when they
began. Over several epochs the last quarter's examples have been seen before, so the fall
also counts fitting those very examples: it still shows that the students moved on their
teacher's data, which is all a null needs, but not that they generalise from it. An arm is checked as a whole (its owl and control students, every seed): each curve
gives its own first and last quarter, and the pooled steps are compared by a one-sided Welch t
(steps are the unit; consecutive batches are independent draws of the shuffled data). Why the
step and not the student: under the null that the students did not move, a step's loss is a
fresh batch scored by an unchanged model, so the steps are exchangeable; their dependence
comes only from the model changing, which is the alternative. One
student's 38 steps alone are too few to show a fall of 20% against the batch-to-batch noise;
an arm's pooled steps are not.

`sublens.claims.unless_learned` is the one place the check meets a verdict: a null
("equivalent", or "supported" for a predicted no-change) of students not shown to learn
becomes "inconclusive". Torch-free: the claims and the sweep call it on recorded results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

MIN_STEPS = 8  # two steps per quarter at least: fewer cannot show a fall
ALPHA = 0.05

LossCurve = Sequence[Sequence[float]] | Sequence[float]  # [step, loss] pairs, as recorded, or losses


@dataclass(frozen=True)
class Quarters:
    """One curve's first and last quarter of per-step losses."""

    first: list[float]
    last: list[float]


@dataclass(frozen=True)
class LearningCheck:
    """The pooled first and last quarters' mean loss and whether the fall is significant."""

    curves: int  # curves long enough to check
    unchecked: int  # curves too short to tell (fewer than MIN_STEPS steps)
    first_loss: float
    last_loss: float
    p_value: float  # one-sided: the last quarters lower than the first
    learned: bool  # the fall is significant and every curve could be checked

    def words(self) -> str:
        """'loss 1.30 -> 1.05 over 2 students (one-sided Welch p = 0.002)'"""
        text = f"loss {self.first_loss:.2f} -> {self.last_loss:.2f} over {self.curves} student"
        text += f"{'s' if self.curves != 1 else ''} (one-sided Welch p = {self.p_value:.2g})"
        return text + (f", {self.unchecked} too short to tell" if self.unchecked else "")


def quarters(curve: LossCurve) -> Quarters | None:
    """The first and last quarter of a curve's finite losses; None below MIN_STEPS steps."""
    losses = [float(p[-1]) if isinstance(p, Sequence) else float(p) for p in curve]
    losses = [v for v in losses if math.isfinite(v)]
    if len(losses) < MIN_STEPS:
        return None
    quarter = len(losses) // 4
    return Quarters(losses[:quarter], losses[-quarter:])


def pooled_check(parts: Sequence[Quarters | None], alpha: float = ALPHA) -> LearningCheck | None:
    """The check on the curves' pooled quarters; None when no curve is long enough."""
    known = [q for q in parts if q is not None]
    if not known:
        return None
    first = [v for q in known for v in q.first]
    last = [v for q in known for v in q.last]
    result = stats.ttest_ind(first, last, equal_var=False, alternative="greater")
    p = float(result.pvalue) if math.isfinite(result.pvalue) else 1.0
    unchecked = len(parts) - len(known)
    return LearningCheck(
        curves=len(known),
        unchecked=unchecked,
        first_loss=sum(first) / len(first),
        last_loss=sum(last) / len(last),
        p_value=p,
        learned=p < alpha and unchecked == 0,
    )


def learning_check(curves: Sequence[LossCurve], alpha: float = ALPHA) -> LearningCheck | None:
    """The check on students' loss curves, as recorded, taken together."""
    return pooled_check([quarters(c) for c in curves], alpha)
