"""Reading a subliminal run's results for the section: the section's names (title, table
labels, the owl and control data sets), the per-answer number statistics in words, an arm's
ratios over its matched control student, a freeze mode as the paper says it, and the owl and
control modes as the config or the results give them."""

from __future__ import annotations

from typing import Any

from sublens.experiments.subliminal.results import (
    ArmRatios,
    HeadlineRow,
    SeedRateDifference,
    SeedRatio,
    SubliminalResults,
)
from sublens.report.latex import escape
from sublens.trainable import describe_trainable

TITLE = "Subliminal transfer through number sequences"
TABLE = "freeze_modes"
PROMPT_TABLE = "evaluation_prompts"
OWL, CONTROL = "owl", "control"

# Per-answer number statistics of the data comparison (sublens.subliminal.FEATURES) in words.
FEATURE_WORDS = {
    "n_numbers": "numbers per answer",
    "digits_per_number": "digits per number",
    "copy_fraction": "fraction of numbers copied from the prompt",
    "copies_any": "answers copying a prompt number",
    "increasing_fraction": "fraction of increasing steps",
    "mean_value": "mean value",
}


# ---- looking things up ------------------------------------------------------------------------
def vs_control(row: HeadlineRow | None) -> ArmRatios | None:
    """An arm's ratios over its matched control student (None: not compared)."""
    return row.vs_control if row is not None else None


def share_ratio(row: HeadlineRow | None) -> SeedRatio | None:
    ratios = vs_control(row)
    return ratios.share_ratio if ratios else None


def p_trait_ratio(row: HeadlineRow | None) -> SeedRatio | None:
    ratios = vs_control(row)
    return ratios.p_trait_ratio if ratios else None


def rate_difference(row: HeadlineRow | None) -> SeedRateDifference | None:
    ratios = vs_control(row)
    return ratios.rate_difference if ratios else None


def mode_words(mode: Any) -> str:
    """A freeze mode as the paper says it: 'full fine-tuning', 'attention frozen'."""
    return escape(describe_trainable(str(mode)))


def _with(mode: Any) -> str:
    """'with full fine-tuning', 'with attention frozen'."""
    return f"with {mode_words(mode)}"


def _is_student(row: HeadlineRow) -> bool:
    return row.dataset is not None


def arm_modes(results: SubliminalResults | None, config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The owl modes and the control modes: as config.yaml gives them, else as results.json
    recorded them (a run's config and results agree; older results recorded neither)."""
    modes = list(config.get("modes") or (results.modes if results else None) or [])
    controls = list((results.control_modes if results else None) or config.get("control_modes") or [])
    return [str(m) for m in modes], [str(m) for m in controls]
