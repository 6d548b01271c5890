"""What a mechanistic run writes to results.json, as a torch-free pydantic model.

Written by `run.execute` (once after the residual stage, ``partial``, then at the end), read by
the report section `sublens.report.sections.mechanistic` with `load_results`.

Every part is `Finite` (`sublens.results`), which keeps results.json as the run has always
written it: a float that is not finite is read as null (the file is strict JSON), and a key the
run leaves out (an optional field never set: the entanglement keys of ``input`` for numbers
given in the config, a ``note`` where there is none, everything after ``partial`` in a partial
run) stays out when the model is written, so a recorded results.json is written back unchanged.

Fields default to None only where a real results.json may lack them:
- a partial run (saved after the residual stage): everything after ``partial``;
- a run recorded before a field existed (tests/data/runs/mechanistic is one): ``component_score``
  (its scores were cosines), ``claims``, ``definitions.attribution_claim``,
  ``consistency.attribution``/``power``/``rho_of_interest``, ``Summary.ci``;
- a part that does not apply: per-category statistics without two categories, ``vs_random``
  without a random category, a test that is not applicable, too few numbers for a statistic.
Marked "hand-built": optional because the report tests build these parts by hand without them
(tests/unit/test_sections_analysis.py); a run always writes them.
"""

from __future__ import annotations

from typing import Literal

from sublens.claims import Verdict
from sublens.result_records import PromptRecord
from sublens.results import Finite, SparseResults

LabelColumn = Literal["spike_layer", "top_head", "dla_top_head"]
ScoreColumn = Literal["head_score", "mlp_score", "spike_jump", "dla_heads", "dla_mlp", "logit_diff"]
Measured = float | None  # None: not finite (NaN, inf), written as null
TABLE_FILE = "numbers.parquet"  # the per-number table (`NumberRow`s)
TENSOR_FILE = "mechanistic.safetensors"  # every per-number, per-layer and per-head measurement


# ---- the model and its inputs ---------------------------------------------------------------
class ModelRecord(Finite):
    """`LoadedModel.describe()`: where the model came from and its geometry."""

    spec: str
    source: str
    path: str
    device: str
    dtype: str
    chat_template: bool
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    tied_embeddings: bool
    post_norm_residual: bool


class RatioCheck(Finite):
    """Given bias ratios against the first-token ratios measured here."""

    n: int  # numbers with a given ratio; the rest are absent with n = 0
    max_relative_difference: Measured = None
    bias_word_single_token: bool | None = None
    note: str | None = None


class InputRecord(Finite):
    """Where the numbers came from (`sublens.mechanistic.read_entanglement_numbers`)."""

    source: Literal["entanglement_run", "config", "default"]
    entanglement_run: str | None = None  # this and the five below: the entanglement source only
    set: str | None = None
    set_chosen: Literal["given", "auto"] | None = None
    sets_available: list[str] | None = None
    bias_ratio_column: bool | None = None
    matches_results_json: bool | None = None  # also None: the run's results.json lists no categories
    note: str | None = None  # no categories known
    n_numbers: int
    bias_ratio_check: RatioCheck | None = None  # None: a partial run


class WordToken(Finite):
    word: str  # with its leading space
    token_ids: list[int]
    first_token: int
    single_token: bool


class Words(Finite):
    bias: WordToken
    control: WordToken


# ---- prompts and definitions ----------------------------------------------------------------
class ResidualPromptRecord(Finite):
    format: Literal["raw", "chat"]
    bias: PromptRecord
    control: PromptRecord
    number_example: PromptRecord  # the first number's statement
    final_position: str


class AttributionPromptRecord(Finite):
    example: PromptRecord  # the first number's prompt
    neutral: PromptRecord


class AttentionPromptRecord(Finite):
    number: str
    prompt: PromptRecord
    number_tokens: list[int]  # token positions of the number
    animal_tokens: list[int]
    final_token: int
    tokens: list[str]


class PromptsRecord(Finite):
    residual: ResidualPromptRecord
    attribution: AttributionPromptRecord
    attention: list[AttentionPromptRecord]


class Definitions(Finite):
    """What each measurement is, in words (`sublens.mechanistic` has them in full)."""

    cos_diff: str
    spike_layer: str
    head_score: str
    mlp_score: str
    attribution_claim: str | None = None  # older runs
    dla: str
    bias_ratio_first_token: str


# ---- measurements ---------------------------------------------------------------------------
class ResidualRecord(Finite):
    mean_diff_by_layer: dict[str, list[Measured]]  # by category ("all numbers" without): [layer]


class NeutralRecord(Finite):
    """The attribution prompt under the neutral system prompt."""

    logit_diff: Measured
    p_bias_first_token: Measured
    p_control_first_token: Measured


class AttributionRecord(Finite):
    closure_max_abs_error: Measured  # |sum of the DLA terms - the model's logit difference|
    residual_max_abs_error: Measured  # |sum of the components - the final residual|
    neutral: NeutralRecord


class HeadAttention(Finite):
    head: str  # 'L3H2'
    attention: Measured


class AttentionRecord(Finite):
    plotted_heads: list[str]
    top_to_number: list[HeadAttention]  # mean attention from the final position, top 5
    top_to_animal: list[HeadAttention]


# ---- consistency statistics (sublens.experiments.mechanistic.analysis) ----------------------
class Summary(Finite):
    """`sublens.stats.summarize` of one score in one category. Not `sublens.result_records.Summary`:
    here a statistic that is not finite is null (``Measured``), there NaN."""

    n: int
    mean: Measured
    median: Measured
    sd: Measured
    ci_low: Measured  # None: too few values for an interval
    ci_high: Measured
    ci: str | None = None  # how the interval was made; older runs


class MaxExcess(Finite):
    """The largest excess of a label in a category, with its max-statistic permutation p."""

    category: str
    label: str
    excess: float
    share_in_category: float
    p_permutation: float


class CategoryAssociation(Finite):
    """`category_association`: the category x label table and its tests."""

    categories: list[str]
    labels: list[str]
    table: list[list[int]]  # [category, label]
    n: int
    applicable: bool
    reason: str | None = None  # not applicable: why
    chi2: Measured = None  # this and the rest: applicable only
    dof: int | None = None
    p_asymptotic: Measured = None
    p_permutation: Measured = None
    cramers_v: Measured = None
    min_expected: Measured = None
    max_excess: MaxExcess | None = None
    n_permutations: int | None = None


class Spearman(Finite):
    rho: Measured  # None: fewer than 3 pairs or a constant variable
    p: Measured
    n: int
    note: str | None = None  # why rho is None
    p_holm: Measured  # Holm over the score correlations


class PartialSpearman(Finite):
    """`partial_spearman`: x and y given z, with the plain correlations of the three pairs."""

    rho: Measured  # None: too few triples, or nothing left once z is given (note)
    p_parametric: Measured
    p_permutation: Measured  # Freedman-Lane
    n: int
    n_permutations: int | None = None  # hand-built
    spearman_xy: Measured = None  # this and the two below: absent with too few triples; hand-built
    spearman_xz: Measured = None
    spearman_yz: Measured = None
    note: str | None = None


class AttributionSummary(Finite):
    """`attribution_summary`: the partial correlations given the total logit difference."""

    given: str  # the total the correlation is given
    method: str | None = None  # hand-built
    mlp: PartialSpearman
    heads: PartialSpearman
    variance_share: dict[str, Measured]  # by component: its share of the total's variance


class LabelDistributions(Finite):
    """Per label column: counts of each label, over all numbers ("all") and per category."""

    spike_layer: dict[str, dict[str, int]]
    top_head: dict[str, dict[str, int]]
    dla_top_head: dict[str, dict[str, int]]

    def of(self, column: LabelColumn) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = getattr(self, column)
        return counts


class Associations(Finite):
    spike_layer: CategoryAssociation
    top_head: CategoryAssociation
    dla_top_head: CategoryAssociation

    def of(self, column: LabelColumn) -> CategoryAssociation:
        test: CategoryAssociation = getattr(self, column)
        return test


class ScoreSummaries(Finite):
    """Per score column and category."""

    head_score: dict[str, Summary]
    mlp_score: dict[str, Summary]
    spike_jump: dict[str, Summary]
    dla_heads: dict[str, Summary]
    dla_mlp: dict[str, Summary]
    logit_diff: dict[str, Summary]


class VsRandom(Finite):
    """Per score column and category: permutation p of the difference from Random."""

    head_score: dict[str, Measured]
    mlp_score: dict[str, Measured]
    spike_jump: dict[str, Measured]
    dla_heads: dict[str, Measured]
    dla_mlp: dict[str, Measured]
    logit_diff: dict[str, Measured]

    def by_column(self) -> dict[str, dict[str, Measured]]:
        return {column: getattr(self, column) for column in type(self).model_fields}


class Correlations(Finite):
    """Per score column: its Spearman correlation with the bias ratio."""

    head_score: Spearman
    mlp_score: Spearman
    spike_jump: Spearman
    dla_heads: Spearman
    dla_mlp: Spearman
    logit_diff: Spearman

    def of(self, column: ScoreColumn) -> Spearman:
        correlation: Spearman = getattr(self, column)
        return correlation


class Consistency(Finite):
    """`consistency_summary`, with the power settings of the family's claims."""

    n_numbers: int
    alpha: float
    categories: dict[str, int]  # numbers per category, in the canonical order
    distributions: LabelDistributions
    association: Associations | None = None  # None: fewer than two categories (and below)
    by_category: ScoreSummaries | None = None
    vs_random: VsRandom | None = None  # None: also without a random category
    note: str | None = None  # why the per-category parts are missing
    bias_ratio_source: dict[str, int] | None = None  # hand-built
    correlations: Correlations
    attribution: AttributionSummary | None = None  # older runs: before the control for the total
    power: float | None = None  # older runs
    rho_of_interest: float | None = None  # older runs


# ---- claims, numbers, artifacts -------------------------------------------------------------
# The decision record of this family is its own (statistic and CI, null where not finite), not
# pruning's (the whole claim and estimate) nor entanglement's (per set and test).
class DecisionRecord(Finite):
    """One claim of the mechanistic family as decided at the end of the run."""

    name: str
    statement: str
    estimand: str
    test: str
    statistic: Measured  # rho (attribution) or Cramér's V (category); None: not measured
    ci: list[Measured] | None  # [low, high]; None: not measured
    p: Measured
    p_holm: Measured
    verdict: Verdict
    reason: str
    settle: str
    p_equivalence_holm: Measured = None  # where the CI lies inside ±rho of interest; older runs: absent


class ClaimsRecord(Finite):
    family: str
    alpha: float
    method: str
    decisions: list[DecisionRecord]


class NumberRow(Finite):
    """One number's row of numbers.parquet."""

    category: str | None  # None: unknown
    number: str
    bias_ratio: Measured
    bias_ratio_source: Literal["given", "measured_first_token"]
    bias_ratio_first_token: Measured
    p_bias_first_token: Measured
    p_control_first_token: Measured
    spike_layer: int
    spike_jump: Measured
    cos_diff_at_spike: Measured
    top_head: str
    head_score: Measured
    mlp_score: Measured
    dla_top_head: str
    dla_top_head_value: Measured
    dla_heads: Measured
    dla_mlp: Measured
    dla_embed: Measured
    logit_diff: Measured


class Artifacts(Finite):
    table: str
    tensors: str
    figures: list[str]  # relative to the run directory


class MechanisticResults(SparseResults, Finite):
    schema_version: int = 1
    model: ModelRecord
    input: InputRecord
    words: Words
    partial: bool
    # None (absent): a partial run, saved after the residual stage; this and every field below
    prompts: PromptsRecord | None = None
    definitions: Definitions | None = None
    approximations: list[str] | None = None
    layers_searched: list[int] | None = None
    residual: ResidualRecord | None = None
    attribution: AttributionRecord | None = None
    attention: AttentionRecord | None = None
    component_score: Literal["contrastive"] | None = None  # also older runs (cosine scores)
    consistency: Consistency | None = None
    claims: ClaimsRecord | None = None  # also older runs
    verdict: list[str] | None = None
    numbers: list[NumberRow] | None = None
    artifacts: Artifacts | None = None
