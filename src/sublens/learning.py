"""Did a student learn its training data? The manipulation check behind every "no transfer".

A null result of the subliminal experiment ("the owl student's share is within the margin of
its control's") says something about where the trait can sit only if the students learned
the teachers' numbers at all: an arm whose students did not move cannot carry anything, and
its "equivalent" is a null of untrained students. The check reads the training loss curve
that every student records: with one epoch each step's loss is measured on examples the
student has not yet been updated on, so the mean loss of the last quarter of the steps below
that of the first quarter says the student fits data of that kind better than when it began.
The test is one-sided Welch t on the per-step losses of the two quarters (steps are the unit;
consecutive batches are independent draws of the shuffled data).

Torch-free: the report and the sweep call it on recorded results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

MIN_STEPS = 8  # two steps per quarter at least: fewer cannot show a fall
ALPHA = 0.05


@dataclass(frozen=True)
class LearningCheck:
    """The first and last quarter's mean answer-token loss and whether the fall is significant."""

    steps: int
    first_loss: float
    last_loss: float
    p_value: float  # one-sided: last quarter lower than the first
    learned: bool

    def words(self) -> str:
        """'loss 1.34 -> 1.37 over 38 steps (p = 0.62)'"""
        return f"loss {self.first_loss:.2f} -> {self.last_loss:.2f} over {self.steps} steps (p = {self.p_value:.2g})"


def learning_check(
    loss_curve: Sequence[Sequence[float]] | Sequence[float], alpha: float = ALPHA
) -> LearningCheck | None:
    """The check on one student's loss curve, as recorded ([step, loss] pairs or plain losses);
    None when there are too few finite steps to tell."""
    losses = [float(p[-1]) if isinstance(p, Sequence) else float(p) for p in loss_curve]
    losses = [v for v in losses if math.isfinite(v)]
    if len(losses) < MIN_STEPS:
        return None
    quarter = len(losses) // 4
    first, last = losses[:quarter], losses[-quarter:]
    result = stats.ttest_ind(first, last, equal_var=False, alternative="greater")
    p = float(result.pvalue) if math.isfinite(result.pvalue) else 1.0
    return LearningCheck(
        steps=len(losses),
        first_loss=sum(first) / quarter,
        last_loss=sum(last) / quarter,
        p_value=p,
        learned=p < alpha,
    )
