"""The one place a verdict is decided.

A paper claim is a statement about a *ratio* (a treated model over its matched control) that
sublens measures on some unit of inference: training seeds for anything trained, numbers for
an entanglement category, questions only for one fixed model. Every claim declares

- its **estimand** (which ratio of which model over which control),
- its **unit** of inference and the least number of units it needs,
- its **test** (a one-sample t-test on the per-unit log ratios, two-sided),
- its **margin**, the smallest effect of interest as a ratio (default ×1.25), used both to
  call "no effect" (equivalence: the whole 95% CI inside [1/margin, margin], and the
  equivalence test, two one-sided t-tests, significant after Holm's adjustment over the
  family's tests of no effect) and to size the study (the minimal detectable effect at the
  measured spread),
- its **family**, within which p-values are Holm-adjusted (the tests of a difference among
  themselves, the tests of equivalence among themselves).

`decide` returns one of four words, always with the reason and what would settle it:

- ``supported``: the CI excludes no change in the predicted direction (Holm-adjusted p < α)
  and does not lie wholly inside the margin, or, for a claim that predicts *no* effect, it is
  shown equivalent (as below);
- ``contradicted``: the effect goes significantly the other way, or a predicted "no effect"
  is significantly exceeded beyond the margin;
- ``equivalent``: no effect as large as the margin (the CI inside it, and the equivalence
  test's Holm-adjusted p < α) where an effect was predicted, significant or not: the claim is not borne out, and the data say so positively;
- ``inconclusive``: anything else, e.g. one training seed, a CI that straddles both 1 and
  the margin, or a missing arm.

A CI that includes 1 is never read as "no effect" (absence of evidence is not evidence of
absence), and one seed never supports a training claim. A null of trained students
(`equivalent`, or `supported` for a predicted no-change) also needs the students to have
learned their data (`unless_learned`, the check in `sublens.learning`); otherwise it is
``inconclusive``. This module is torch-free: the report
and the terminal summaries call it on recorded results.

The package: `core` (verdicts, claims, estimates, power lines, Holm, `decide`), `composite`
(claims made of decided legs), `association` (correlation claims), `subliminal` (the
subliminal experiment's claims from its recorded results); every name is re-exported here.
"""

from __future__ import annotations

from sublens.claims.association import (
    DEFAULT_RHO_OF_INTEREST,
    Association,
    AssociationClaim,
    AssociationDecision,
    association_equivalence_p,
    correlation_power,
    decide_association,
    decide_association_family,
    estimate_association,
)
from sublens.claims.composite import (
    all_legs,
    blocks_transfer,
    component_blocks_transfer,
)
from sublens.claims.core import (
    DEFAULT_ALPHA,
    DEFAULT_MARGIN,
    DEFAULT_POWER,
    MIN_UNITS,
    Claim,
    ClaimSettings,
    Decision,
    Estimate,
    Prediction,
    RatioInterval,
    Unit,
    Verdict,
    bias_settle,
    bias_too_small,
    decide,
    decide_family,
    equivalence_p,
    estimate_log_ratio,
    holm,
    is_null,
    minimal_detectable_log_effect,
    power_settle,
    units_for_equivalence,
    units_for_margin,
    unless_bias_to_lose,
    unless_learned,
)
from sublens.claims.subliminal import (
    CONTROL,
    NO_ENTANGLED,
    NO_ENTANGLED_WORDS,
    NO_RANDOM,
    NO_RANDOM_WORDS,
    OWL,
    SKIP_DIVERGENCE,
    SUBLIMINAL_MODES,
    SeedLogs,
    arm_seed_logs,
    equivalence_settle,
    extra_students,
    owl_arms,
    paired_difference,
    per_seed_logs,
    run_arms,
    subliminal_decisions,
)

__all__ = [
    "CONTROL",
    "DEFAULT_ALPHA",
    "DEFAULT_MARGIN",
    "DEFAULT_POWER",
    "DEFAULT_RHO_OF_INTEREST",
    "MIN_UNITS",
    "NO_ENTANGLED",
    "NO_ENTANGLED_WORDS",
    "NO_RANDOM",
    "NO_RANDOM_WORDS",
    "OWL",
    "SKIP_DIVERGENCE",
    "SUBLIMINAL_MODES",
    "Association",
    "AssociationClaim",
    "AssociationDecision",
    "Claim",
    "ClaimSettings",
    "Decision",
    "Estimate",
    "Prediction",
    "RatioInterval",
    "SeedLogs",
    "Unit",
    "Verdict",
    "all_legs",
    "arm_seed_logs",
    "association_equivalence_p",
    "bias_settle",
    "bias_too_small",
    "blocks_transfer",
    "component_blocks_transfer",
    "correlation_power",
    "decide",
    "decide_association",
    "decide_association_family",
    "decide_family",
    "equivalence_p",
    "equivalence_settle",
    "estimate_association",
    "estimate_log_ratio",
    "extra_students",
    "holm",
    "is_null",
    "minimal_detectable_log_effect",
    "owl_arms",
    "paired_difference",
    "per_seed_logs",
    "power_settle",
    "run_arms",
    "subliminal_decisions",
    "units_for_equivalence",
    "units_for_margin",
    "unless_bias_to_lose",
    "unless_learned",
]
