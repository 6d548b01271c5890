"""Measurement records that more than one experiment writes into its results.json, torch-free.

One class per shape: what `sublens.preference.evaluate_preference` / `compare_preference`,
`sublens.perplexity` and `sublens.stats.summarize` return, and `sublens.prompts.PromptText` as
recorded. An experiment's `results.py` imports them (and extends one with the keys it adds,
e.g. hybrid's `SampledRecord` with ``trait_like``); a record stays in the experiment's module
when its shape is the experiment's own. Every record here is `Sparse` (a field never set is
left out when written) and writes a non-finite float as NaN (`sublens.results`); a field is
optional only where a real results.json may lack it, and its comment says which.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from sublens.claims import ClaimSettings, Estimate, Prediction, Verdict
from sublens.results import Sparse


# ---- one preference measurement (sublens.preference.evaluate_preference) --------------------
class Summary(Sparse):
    """`sublens.stats.summarize` of per-question values (NaN bounds: too few for an interval).
    (The mechanistic results keep their own: there a non-finite value is null.)"""

    n: int
    mean: float
    median: float
    sd: float
    ci_low: float
    ci_high: float
    ci: str | None = None  # how the interval was made; not recorded by older runs


class Rate(Sparse):
    """A count among the sampled answers, its rate and Wilson 95% interval."""

    count: int
    rate: float
    ci_low: float
    ci_high: float


class AnimalRecord(Sparse):
    p_word: Summary
    p_first_token: float
    n_tokens: int


class PerQuestion(Sparse):
    p_word: list[list[float]]  # [question, animal]; the trait first
    share: list[float]  # [question]: the trait's share of the panel
    animals: list[str]


class ProbabilityRecord(Sparse):
    """P(animal) at the prefilled answer, per question and summarised."""

    system_prompt_used: str | None
    system_source: str
    prefill: str
    n_questions: int
    trait: str
    p_trait: Summary
    p_trait_first_token: float
    panel_share: Summary
    animals: dict[str, AnimalRecord]
    per_question: PerQuestion


class SamplingRecord(Sparse):
    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int
    seed: int
    prefill: str
    sampler: str | None = None  # not recorded by older runs


class SampledRecord(Sparse):
    """One-word answers sampled per question (ordered by question, then sample)."""

    n_questions: int
    samples_per_question: int
    n_answers: int
    sampling: SamplingRecord
    trait_rate: Rate
    rates: dict[str, Rate]
    top_answers: list[tuple[str, int]]
    answers: list[str]


class PerplexityRecord(Sparse):
    perplexity: float
    mean_nll: float
    tokens: int
    windows: int


# ---- comparisons (sublens.preference.compare_preference) --------------------------------------
class RatioEstimate(Sparse):
    """test / reference paired by question: geometric mean over questions, Student-t interval
    of the mean log ratio (a paired bootstrap in older hybrid runs)."""

    ratio: float
    ci_low: float | None  # None: too few questions for an interval
    ci_high: float | None
    n_questions: int | None = None  # absent only from the cells the pruning report tests build by hand
    log_ratios: list[float] | None = None  # not recorded by older runs
    ci: str | None = None  # not recorded by older runs
    underpowered: bool | None = None  # absent only from the cells the pruning report tests build by hand


class RateDifference(Sparse):
    """Sampled answer rate, test minus reference (`sublens.preference.rate_difference`): paired
    over questions, Student-t CI and sign-flip p over questions. Older records pooled the
    answers (bootstrap over answers, Fisher's exact p): they have p_fisher instead."""

    difference: float
    ci_low: float
    ci_high: float
    p_questions: float | None = None  # sign-flip test over questions
    n_questions: int | None = None
    p_fisher: float | None = None  # older records: pooled answers, descriptive
    underpowered: bool


class Comparison(Sparse):
    """`sublens.preference.compare_preference`: a model over a reference model on the same
    questions (teacher vs base model, one evaluate condition vs the first)."""

    p_trait_ratio: RatioEstimate
    share_ratio: RatioEstimate
    rate_difference: RateDifference | None = None  # absent: either model was not sampled


# ---- prompts ----------------------------------------------------------------------------------
class PromptRecord(Sparse):
    """`sublens.prompts.PromptText` as recorded."""

    text: str
    user: str
    system: str | None
    system_source: Literal["given", "template_default", "none"]
    prefill: str
    templated: bool
    add_special_tokens: bool


# ---- one training run (sublens.training.train_summary) --------------------------------------
class TrainingSummary(Sparse):
    """What every training experiment (teacher, subliminal students, distilled students) keeps
    of one `sublens.training.train` run. The per-step series are aligned with ``loss_curve``:
    ``extra_curves[name][i]`` was logged at step ``loss_curve[i][0]`` (None where a step did
    not log it); distillation records its SHD loss and mean alpha there. `train_summary` sets
    every field; the four that default to None were not recorded by distill runs before this
    summary was shared (tests/data/runs/distill), so there they stay absent."""

    steps: int
    epochs: int | None = None  # the configured epochs; absent: older distill runs
    n_examples: int
    tokens: int  # real (non-padding) tokens processed, before and after a resume
    answer_tokens: int  # tokens inside the loss
    tokens_per_second: float
    train_seconds: float
    padding_fraction: float
    resumed_from: int | None = None  # the step a resumed run started from; None: ran from the start
    freeze: dict[str, object]  # the trainable set: its spec, counts and names (sublens.trainable)
    first_lm_loss: float | None
    final_lm_loss: float | None
    loss_curve: list[tuple[int, float]]  # [step, language-model loss]
    extra_curves: dict[str, list[float | None]] = Field(default_factory=dict)  # aligned with loss_curve
    data_fingerprint: str | None = None  # absent: older distill runs
    precision: str = "no"  # the mixed precision in effect ("no": float32 throughout)
    world_size: int = 1
    config: dict[str, object] | None = None  # the resolved training config; absent: older distill runs

    always_written: ClassVar[frozenset[str]] = frozenset({"extra_curves", "precision", "world_size"})

    def first(self, curve: str) -> float | None:
        """The first logged value of an extra series (None if it was never logged)."""
        return next((v for v in self.extra_curves.get(curve, []) if v is not None), None)

    def final(self, curve: str) -> float | None:
        """The last logged value of an extra series (None if it was never logged)."""
        return next((v for v in reversed(self.extra_curves.get(curve, [])) if v is not None), None)


# ---- a decided claim (sublens.claims.Decision), as pruning and subliminal record it ----------
# (entanglement and mechanistic write their own decision records, with their own keys.)
class ClaimRecord(Sparse):
    """`sublens.claims.Claim` as recorded (unit "draw": pruning's rank claim)."""

    name: str
    statement: str
    estimand: str
    unit: Literal["seed", "question", "number", "draw"]
    prediction: Prediction
    family: str
    settings: ClaimSettings


class DecisionRecord(Sparse):
    """`sublens.claims.Decision` as recorded at the end of a run."""

    claim: ClaimRecord
    verdict: Verdict
    estimate: Estimate | None
    p_adjusted: float | None
    reason: str
    settle: str
    mde: float | None
    units_needed: int | None
    equivalence_p_adjusted: float | None = None  # where the CI lies inside the margin; older runs: absent
