"""Token entanglement, phases 1-3 (docs/design.md, "Measurements"): candidate number sets, disjoint
categories with a Random null control, and the statistics of bias ratios.

The research logic only; the experiment that runs a model through it is
``sublens.experiments.entanglement``.

Definitions (recorded in every run's results.json under "definitions"):

- **Candidate sets.** ``vocab``: every distinct pure-digit string that is a vocabulary token
  (all characters of Unicode category Nd, any script, after dropping one leading space or
  space marker), kept only if the string encodes back to exactly one token. ``ar{n}``: every
  string of n ASCII digits (leading zeros included by default: 10**n strings).
- **Surface form.** A number is scored as the text the answer would continue with after the
  prefill: ``" {num}"`` (leading space, because the prefill ends without one), tokenized in
  context; its probability is the chain-rule joint probability of those tokens. For ``ar{n}``
  this is the probability that the answer *begins* with these n digits (no end-of-number is
  required), so each length is its own set and is normalised on its own.
- **Normalisation.** Within each set, p_norm = p / sum(p) over the set's candidates, under
  each prompt separately; prob_diff = p_owl_context_norm - p_neutral_norm (descriptive).
- **Owl-specific shift.** owl_shift = log p_owl_context_norm - log p_neutral_norm, likewise
  control_shift under the control-animal context ("You love dogs..."), and specific_shift =
  owl_shift - control_shift (= log p_owl_context_norm - log p_control_context_norm): how much
  more the owl context moves a number than another animal's context does.
- **Categories.** Increased = the k largest specific_shift, Decreased = the k smallest,
  Unchanged = the k smallest |specific_shift| among the rest; Random = k numbers from what is
  left, matched to Increased on the neutral (baseline) log probability: for each Increased
  number in a seeded order, an unused number drawn at random among those within the caliper
  of its baseline log probability (the nearest unused one when none is), without replacement.
  Random[i] is the partner of Increased[i]. Ties break by the number string. Disjointness is
  checked; a violation raises.
- **Tuned sets.** ``{set}@tuned`` (an entanglement run given a teacher run): the same
  candidates, scored under the neutral prompt in the fine-tuned owl teacher and in its control
  teacher (fine-tuned the same way from the same base); their fine-tuning shift, log
  p_owl_teacher_norm - log p_control_teacher_norm, takes the place of the specific shift (as
  owl_shift - control_shift with both against the base model's neutral prompt), and Random is
  matched on the base model's neutral log probability. Their claims are their own Holm family
  (``TUNED_FAMILY``), so a prompted set's verdicts do not change with them.
- **Ratios.** bias_ratio = P(bias | number prompt) / P(bias | neutral prompt), control_ratio
  likewise for the control word, relative_ratio = bias_ratio / control_ratio. P(word) is the
  full chain-rule probability of " word" at the prefilled answer.
- **Statistics.** Descriptive: per category n, arithmetic mean, median, sd and bootstrap 95%
  CI of the mean, and the geometric mean with a t-interval on the log scale. Verdicts: the
  claims of ``entanglement_claims`` decided by ``sublens.claims`` (unit: numbers; Student t on
  log bias ratios: one-sample per category, paired for Increased vs its matched Random,
  Welch for two categories; Holm over every set and test).

The package, one module per concern: `definitions` (categories, tuned-set names, errors, prompt
templates), `candidates` (the candidate sets), `categories` (phase 1: normalisation, shifts,
categories), `ratios` (phases 2 and 3: statistics of ratios) and `claims` (the claims, decided
by `sublens.claims`); the public names are re-exported here.
"""

from __future__ import annotations

from sublens.entanglement.candidates import (
    VocabularyNumbers,
    autoregressive_numbers,
    digit_script,
    is_digit_string,
    number_script,
    vocabulary_numbers,
)
from sublens.entanglement.categories import (
    DEFAULT_CALIPER,
    KChoice,
    check_disjoint,
    choose_k,
    form_categories,
    log_normalize,
    match_on_baseline,
    matching_quality,
    normalize_logprobs,
    specific_shift,
)
from sublens.entanglement.claims import (
    FAMILY,
    TESTS,
    TUNED_FAMILY,
    claims_record,
    decide_recorded,
    paired_log_ratio,
    primary_set,
    set_claims,
    welch_log_ratio,
)
from sublens.entanglement.definitions import (
    CATEGORIES,
    TUNED,
    CategoryOverlapError,
    EntanglementError,
    animal_context,
    fill,
    is_tuned_set,
    prompted_set_name,
    tuned_set_name,
)
from sublens.entanglement.ratios import (
    GroupValues,
    compare_ratios,
    geometric_summary,
    group_statistics,
    rank_correlation,
    ratio_summary,
    strongest,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_CALIPER",
    "FAMILY",
    "TESTS",
    "TUNED",
    "TUNED_FAMILY",
    "CategoryOverlapError",
    "EntanglementError",
    "GroupValues",
    "KChoice",
    "VocabularyNumbers",
    "animal_context",
    "autoregressive_numbers",
    "check_disjoint",
    "choose_k",
    "claims_record",
    "compare_ratios",
    "decide_recorded",
    "digit_script",
    "fill",
    "form_categories",
    "geometric_summary",
    "group_statistics",
    "is_digit_string",
    "is_tuned_set",
    "log_normalize",
    "match_on_baseline",
    "matching_quality",
    "normalize_logprobs",
    "number_script",
    "paired_log_ratio",
    "primary_set",
    "prompted_set_name",
    "rank_correlation",
    "ratio_summary",
    "set_claims",
    "specific_shift",
    "strongest",
    "tuned_set_name",
    "vocabulary_numbers",
    "welch_log_ratio",
]
