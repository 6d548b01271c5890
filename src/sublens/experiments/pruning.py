"""pruning: does the owl bias survive with fewer attention heads?

1. The biased model (by default the fine-tuned teacher of the newest finished `teacher` run)
   and its matched control, the unbiased base model (config `base`), are loaded.
2. Head importance: the entropy of every head's attention rows on the bias prompts of the
   biased model (definition in `sublens.pruning`), saved as a layer x head matrix.
3. For each kept fraction f and criterion (``entropy``: keep the lowest-entropy heads;
   ``reverse``: prune the lowest-entropy heads; ``random``: seeded random heads, several
   draws, more at the claim fraction), exactly round(f * n_heads_total) heads are kept; the
   rest are masked, the SAME heads in the biased and in the base model.
4. Each masked model, and both unpruned ones, are measured: owl preference (`evaluate_preference`;
   the biased model under `system`, the base under `base_system`) and perplexity.

Retention, paired on the same questions:
- the biased model's own (pruned / unpruned) and the base model's own, as `compare_preference`;
- **base-controlled** (`controlled`): per question, log(v_biased_pruned / v_base_pruned) -
  log(v_biased_unpruned / v_base_unpruned) for v = P(owl) and owl's panel share, so pruning damage
  common to both models cancels; geometric mean over questions, Student-t CI on the log scale
  (`sublens.claims.estimate_log_ratio`, unit: question). With several random draws the
  per-question value is averaged over draws first; each draw's own mean is kept
  (`controlled_per_draw`) for the rank test against the entropy criterion.
- Answer rate: pooled rate of the pruned model(s) / rate of the unpruned model, per model, and
  base-controlled (the ratio of the two), CI by resampling questions (none below 5 questions).
- Perplexity: the mean over draws, per-draw ratios to the unpruned perplexity, for both models.

The claims (survival, entropy vs random) are decided in `sublens.report.sections.pruning.decisions`
from these numbers (torch-free, also on recorded runs) and stored under ``claims``.

Every finished measurement is saved at once; rerunning into the same run directory
(`run_experiment("pruning", config, run_dir=PATH)`) with the same config reuses them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console
from rich.table import Table
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from sublens.answers import mentions
from sublens.claims import ClaimSettings, estimate_log_ratio
from sublens.config import Config
from sublens.corpus import load_text
from sublens.errors import ConfigError
from sublens.experiments import Experiment, default_teacher_run
from sublens.hooks import head_label
from sublens.models import LoadedModel, load_model
from sublens.perplexity import PerplexitySettings, measure_perplexity
from sublens.preference import (
    PreferenceSettings,
    compare_preference,
    evaluate_preference,
    shipped_questions,
)
from sublens.prompts import encode_prompt, make_prompt
from sublens.pruning import (
    CRITERIA,
    Criterion,
    Unit,
    attention_entropy,
    keep_count,
    plan,
    pruned_heads,
    sweep,
)
from sublens.report.sections.pruning import DEFAULT_BOUND, PAPER_KEPT, decisions, headline_line
from sublens.runs import (
    Run,
    atomic_write_bytes,
    atomic_write_figure,
    atomic_write_parquet,
    read_json,
)
from sublens.stats import MIN_INTERVAL_N, summarize, wilson_ci

ENTROPY_FILE = "head_entropy.safetensors"
TABLE_FILE = "pruning_table.parquet"


class BiasPrompts(BaseModel):
    """The prompts whose attention entropies rank the heads (owl-context prompts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = None  # None: the chat template's default (recorded as used)
    questions: list[str] | None = None  # None: the shipped preference paraphrases
    prefill: str = "My favorite animal is the"
    batch_size: int = Field(default=8, ge=1)


class PruningConfig(Config):
    model: str | None = Field(
        default=None,
        description="the biased model spec; null: the fine-tuned teacher of the newest finished `teacher` "
        "run under runs_root (a run directory is a model spec). The prompted teacher is "
        "model=<base> with system and bias_prompts.system set to the owl prompt",
    )
    runs_root: str = Field(default="runs", description="where the default biased model is looked for")
    base: str = Field(
        default="smollm2-135m-instruct",
        description="the unbiased base model: the matched control, pruned with the same heads",
    )
    # System prompt when measuring the biased model's preference; None = the chat template's default.
    system: str | None = None
    base_system: str | None = Field(
        default=None,
        description="system prompt of the base model's measurements; null: the chat template's default",
    )
    bias_prompts: BiasPrompts = Field(default_factory=BiasPrompts)
    fractions: list[float] = Field(default_factory=lambda: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    criteria: list[Criterion] = Field(default_factory=lambda: list(CRITERIA))
    random_draws: int = Field(default=3, ge=1, description="random draws at every pruned fraction")
    claim_fraction: float = Field(
        default=PAPER_KEPT, gt=0.0, lt=1.0,
        description="kept fraction at which the claims are decided (the measured one closest to it)",
    )
    claim_random_draws: int = Field(
        default=80, ge=1,
        description="random draws at the claim fraction (at least random_draws): the rank test's R. "
        "Its smallest two-sided p is 2/(R+1); Holm over the two pruning claims at alpha 0.05 needs R >= 80",
    )
    max_perplexity_ratio: float = Field(
        default=DEFAULT_BOUND, gt=1.0,
        description="degradation bound: a pruned model whose perplexity exceeds this multiple of its "
        "unpruned perplexity (biased or base model) is degraded; no claim is decided on degraded models",
    )
    claims: ClaimSettings = Field(default_factory=ClaimSettings)
    heatmap_fraction: float = 0.6  # the entropy criterion's mask drawn on the heatmap
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    perplexity: PerplexitySettings = Field(default_factory=PerplexitySettings)
    bootstrap_resamples: int = Field(default=5000, ge=100)
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if not fractions:
            raise ValueError("give at least one kept fraction, e.g. [1.0, 0.6]")
        if any(not 0.0 < f <= 1.0 for f in fractions):
            raise ValueError("kept fractions must be in (0, 1]")
        if len(set(fractions)) != len(fractions):
            raise ValueError("kept fractions must be distinct")
        return sorted(fractions, reverse=True)

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, criteria: list[Criterion]) -> list[Criterion]:
        if not criteria or len(set(criteria)) != len(criteria):
            raise ValueError(f"give distinct criteria from {', '.join(CRITERIA)}")
        return criteria

    @field_validator("heatmap_fraction")
    @classmethod
    def _heatmap_fraction(cls, fraction: float) -> float:
        if not 0.0 < fraction <= 1.0:
            raise ValueError("heatmap_fraction must be in (0, 1]")
        return fraction


# ---------------------------------------------------------------------------------------------
# measuring


def measure(lm: LoadedModel, config: PruningConfig, text: str, base: bool = False) -> dict[str, Any]:
    """Preference and perplexity of the model as it is now (masked or not); the biased model
    under `config.system`, the base model (base=True) under `config.base_system`."""
    start = time.perf_counter()
    system = config.base_system if base else config.system
    preference = evaluate_preference(lm, config.preference, system, config.seed)
    perplexity = measure_perplexity(lm, config.perplexity, text)
    return {
        "preference": preference,
        "perplexity": perplexity,
        "seconds": round(time.perf_counter() - start, 3),
    }


def fingerprint(config: PruningConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def biased_spec(config: PruningConfig) -> str:
    """The biased model: `model`, or the newest finished teacher run under runs_root."""
    if config.model:
        return config.model
    return default_teacher_run(
        config.runs_root, "biased model to prune",
        "Make one with `sublens run teacher --preset quick`, or give one: "
        "--set model=SPEC (a teacher run directory; or the prompted teacher: --set "
        "model=smollm2-135m-instruct --set system=\"<owl prompt>\" --set bias_prompts.system=\"<owl prompt>\").",
    )


def check_base(spec: str, base: str) -> None:
    """A teacher run names its base model: the control must be that model (like against like)."""
    path = Path(spec) / "config.yaml"
    if not path.is_file():
        return
    import yaml

    trained_from = (yaml.safe_load(path.read_text()) or {}).get("base")
    if trained_from and str(trained_from) != base:
        raise ConfigError(
            f"The biased model {spec} was fine-tuned from {trained_from!r}, but the pruned-base control is "
            f"{base!r}. Prune its own base model: --set base={trained_from}."
        )


def previous_results(run: Run, key: str) -> dict[str, Any]:
    """Results of an earlier run in the same directory with the same config (fingerprint), else {}."""
    path = run.path / "results.json"
    if not path.is_file():
        return {}
    old = read_json(path)
    return old if isinstance(old, dict) and old.get("fingerprint") == key else {}


# ---------------------------------------------------------------------------------------------
# retention


def pooled_preference(preferences: list[dict[str, Any]]) -> dict[str, Any]:
    """Several draws as one: per-question geometric means of P(animal) and share, answers pooled."""
    p_word = np.exp(
        np.mean([np.log(p["probability"]["per_question"]["p_word"]) for p in preferences], axis=0)
    )
    share = np.exp(
        np.mean([np.log(p["probability"]["per_question"]["share"]) for p in preferences], axis=0)
    )
    pooled: dict[str, Any] = {
        "probability": {"per_question": {"p_word": p_word.tolist(), "share": share.tolist()}}
    }
    if all("sampled" in p for p in preferences):
        count = sum(p["sampled"]["trait_rate"]["count"] for p in preferences)
        n = sum(p["sampled"]["n_answers"] for p in preferences)
        low, high = wilson_ci(count, n)
        pooled["sampled"] = {
            "n_answers": n,
            "trait_rate": {"count": count, "rate": count / n, "ci_low": low, "ci_high": high},
        }
    return pooled


def question_hits(sampled: dict[str, Any], trait: str) -> np.ndarray:
    """Trait mentions per question [question] (answers are ordered by question, then sample)."""
    answers = sampled["answers"]
    n_q, m = sampled["n_questions"], sampled["samples_per_question"]
    assert len(answers) == n_q * m
    hits = np.array([mentions(a, trait) for a in answers], dtype=float)
    return hits.reshape(n_q, m).sum(axis=1)


def rate_retention(
    tests: list[dict[str, Any]],
    reference: dict[str, Any],
    trait: str,
    resamples: int = 5000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Pooled answer rate of `tests` / answer rate of `reference`, CI by resampling questions."""
    if "sampled" not in reference or not all("sampled" in t for t in tests):
        return None
    ref = question_hits(reference["sampled"], trait)  # [q]
    test = np.sum([question_hits(t["sampled"], trait) for t in tests], axis=0)  # [q], over draws
    per_ref = reference["sampled"]["samples_per_question"]
    per_test = sum(t["sampled"]["samples_per_question"] for t in tests)
    out: dict[str, Any] = {
        "rate": float(test.sum() / (per_test * test.size)),
        "reference_rate": float(ref.sum() / (per_ref * ref.size)),
        "n_questions": int(ref.size),
        "n_draws": len(tests),
    }
    if ref.sum() == 0:
        return {
            **out,
            "ratio": None,
            "ci_low": None,
            "ci_high": None,
            "underpowered": True,
            "note": "the unpruned model never named the trait: the ratio is undefined",
        }
    ratio = out["rate"] / out["reference_rate"]
    low: float | None = None
    high: float | None = None
    if ref.size >= MIN_INTERVAL_N:  # fewer questions: no question-level CI ("too few")
        index = np.random.default_rng(seed).integers(0, ref.size, (resamples, ref.size))  # [B, q]
        num, den = test[index].sum(axis=1) / per_test, ref[index].sum(axis=1) / per_ref
        ratios = np.full(resamples, np.inf)  # a resample where the reference never names the trait
        np.divide(num, den, out=ratios, where=den > 0)
        bounds = [float(v) for v in np.percentile(ratios, [2.5, 97.5], method="inverted_cdf")]
        low, high = (v if math.isfinite(v) else None for v in bounds)  # None: unbounded above
    underpowered = low is None or high is None or low <= 1.0 <= high
    ci = (f"percentile bootstrap over {ref.size} questions" if ref.size >= MIN_INTERVAL_N
          else f"too few questions for an interval ({ref.size} < {MIN_INTERVAL_N})")
    return {**out, "ratio": ratio, "ci_low": low, "ci_high": high, "ci": ci, "underpowered": underpowered}


def _values(preference: dict[str, Any], key: str) -> np.ndarray:
    """Per-question P(trait) (key p_trait) or the trait's panel share (key panel_share)."""
    per_question = preference["probability"]["per_question"]
    if key == "p_trait":
        return np.asarray(per_question["p_word"], dtype=float)[:, 0]
    return np.asarray(per_question["share"], dtype=float)


def controlled_log_ratios(
    biased: dict[str, Any],
    base: dict[str, Any],
    biased_unpruned: dict[str, Any],
    base_unpruned: dict[str, Any],
    key: str,
) -> np.ndarray:
    """Per question: log(v_biased / v_base) pruned minus the same unpruned (preference dicts)."""
    pruned = np.log(_values(biased, key)) - np.log(_values(base, key))
    unpruned = np.log(_values(biased_unpruned, key)) - np.log(_values(base_unpruned, key))
    return pruned - unpruned


def controlled_entry(log_ratios: np.ndarray) -> dict[str, Any]:
    """A base-controlled retention: geometric mean over questions with its Student-t interval."""
    est = estimate_log_ratio([float(v) for v in log_ratios], "question")
    return {
        "ratio": est.ratio,
        "ci_low": est.ci_low,
        "ci_high": est.ci_high,
        "p_value": est.p_value,
        "n_questions": est.n,
        "sd_log": est.sd_log,
        "ci": est.interval,
        "log_ratios": [float(v) for v in log_ratios],
    }


def controlled_rate_retention(
    biased: list[dict[str, Any]],
    biased_reference: dict[str, Any],
    base: list[dict[str, Any]],
    base_reference: dict[str, Any],
    trait: str,
    resamples: int = 5000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """(biased pruned rate / unpruned rate) / (base pruned rate / unpruned rate), answers pooled
    over draws; CI by resampling questions (all four arms together), none below 5 questions."""
    arms = [biased, [biased_reference], base, [base_reference]]
    if not all("sampled" in m for arm in arms for m in arm):
        return None
    hits = [np.sum([question_hits(m["sampled"], trait) for m in arm], axis=0) for arm in arms]  # [q] each
    per = [sum(m["sampled"]["samples_per_question"] for m in arm) for arm in arms]
    n_q = int(hits[0].size)
    rates = [float(h.sum() / (p * n_q)) for h, p in zip(hits, per, strict=True)]
    out: dict[str, Any] = {"rates": dict(zip(("biased", "biased_unpruned", "base", "base_unpruned"), rates,
                                             strict=True)), "n_questions": n_q}
    if min(rates[1], rates[2], rates[3]) == 0:
        return {**out, "ratio": None, "ci_low": None, "ci_high": None,
                "note": "a reference rate is 0 (the unpruned models or the pruned base never named the trait): "
                        "the ratio is undefined"}
    ratio = (rates[0] / rates[1]) / (rates[2] / rates[3])
    low: float | None = None
    high: float | None = None
    if n_q >= MIN_INTERVAL_N:
        index = np.random.default_rng(seed).integers(0, n_q, (resamples, n_q))  # [B, q]
        sums = [h[index].sum(axis=1) for h in hits]  # sample sizes cancel within each ratio pair
        num, den = sums[0] * sums[3] * per[1] * per[2], sums[1] * sums[2] * per[0] * per[3]
        ratios = np.full(resamples, np.inf)
        np.divide(num, den, out=ratios, where=den > 0)
        bounds = [float(v) for v in np.percentile(ratios, [2.5, 97.5], method="inverted_cdf")]
        low, high = (v if math.isfinite(v) else None for v in bounds)
        if low is not None and high is not None and not low < high:
            low = high = None  # a zero-width interval is never a result
    ci = (f"percentile bootstrap over {n_q} questions" if n_q >= MIN_INTERVAL_N
          else f"too few questions for an interval ({n_q} < {MIN_INTERVAL_N})")
    return {**out, "ratio": ratio, "ci_low": low, "ci_high": high, "ci": ci}


def _perplexity(measurements: list[dict[str, Any]], unpruned: dict[str, Any]) -> dict[str, Any] | None:
    ppl = [m["perplexity"]["perplexity"] for m in measurements if m["perplexity"]]
    if not ppl or not unpruned["perplexity"]:
        return None
    reference = unpruned["perplexity"]["perplexity"]
    return {
        "mean": float(np.mean(ppl)),
        "per_draw": ppl,
        "ratio": float(np.mean(ppl)) / reference,
        "per_draw_ratio": [p / reference for p in ppl],
    }


def summarize_step(
    fraction: float,
    criterion: Criterion,
    measurements: list[dict[str, Any]],
    unpruned: dict[str, Any],
    n_total: int,
    config: PruningConfig,
    base_measurements: list[dict[str, Any]] | None = None,
    base_unpruned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One (fraction, criterion) cell: levels, retention with CIs, perplexity; with the base
    model's measurements of the same masks, its own retention and the base-controlled one."""
    prefs = [m["preference"] for m in measurements]
    reference = unpruned["preference"]
    pooled = pooled_preference(prefs)
    comparison = compare_preference(pooled, reference)
    per_draw = [compare_preference(p, reference) for p in prefs]
    p_trait = np.mean(
        [np.asarray(p["probability"]["per_question"]["p_word"])[:, 0] for p in prefs], axis=0
    )
    share = np.mean([p["probability"]["per_question"]["share"] for p in prefs], axis=0)
    n_keep = keep_count(fraction, n_total)
    trait = config.preference.trait
    step: dict[str, Any] = {
        "fraction": fraction,
        "criterion": criterion,
        "n_kept": n_keep,
        "n_pruned": n_total - n_keep,
        "n_draws": len(measurements),
        "p_trait": summarize(p_trait),
        "panel_share": summarize(share),
        "answer_rate": pooled.get("sampled", {}).get("trait_rate"),
        "retention": {
            "p_trait": comparison["p_trait_ratio"],
            "panel_share": comparison["share_ratio"],
            "answer_rate": rate_retention(
                prefs, reference, trait, config.bootstrap_resamples, config.seed
            ),
        },
        "retention_per_draw": {
            "p_trait": [c["p_trait_ratio"]["ratio"] for c in per_draw],
            "panel_share": [c["share_ratio"]["ratio"] for c in per_draw],
        },
    }
    if "rate_difference" in comparison:
        step["answer_rate_difference"] = comparison["rate_difference"]
    ppl = _perplexity(measurements, unpruned)
    if ppl:
        step["perplexity"] = ppl
    if base_measurements is None or base_unpruned is None:
        return step
    if len(base_measurements) != len(measurements):
        raise ValueError("the base model needs one measurement per draw of the biased model")
    base_prefs = [m["preference"] for m in base_measurements]
    base_reference = base_unpruned["preference"]
    base_comparison = compare_preference(pooled_preference(base_prefs), base_reference)
    step["base"] = {
        "p_trait": summarize(np.mean([_values(p, "p_trait") for p in base_prefs], axis=0)),
        "panel_share": summarize(np.mean([_values(p, "panel_share") for p in base_prefs], axis=0)),
        "retention": {
            "p_trait": base_comparison["p_trait_ratio"],
            "panel_share": base_comparison["share_ratio"],
            "answer_rate": rate_retention(
                base_prefs, base_reference, trait, config.bootstrap_resamples, config.seed
            ),
        },
        "perplexity": _perplexity(base_measurements, base_unpruned),
    }
    controlled: dict[str, Any] = {}
    per_draw_controlled: dict[str, list[float]] = {}
    for key in ("p_trait", "panel_share"):
        logs = np.array([
            controlled_log_ratios(b, c, reference, base_reference, key)
            for b, c in zip(prefs, base_prefs, strict=True)
        ])  # [draw, question]
        controlled[key] = controlled_entry(logs.mean(axis=0))
        per_draw_controlled[key] = [float(v) for v in logs.mean(axis=1)]  # each draw's mean log retention
    controlled["answer_rate"] = controlled_rate_retention(
        prefs, reference, base_prefs, base_reference, trait, config.bootstrap_resamples, config.seed
    )
    step["controlled"] = controlled
    step["controlled_per_draw"] = per_draw_controlled
    return step


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (fraction, criterion) for the parquet table."""
    rows = []
    for s in results["steps"]:
        row: dict[str, Any] = {
            k: s[k] for k in ("fraction", "criterion", "n_kept", "n_pruned", "n_draws")
        }
        for level in ("p_trait", "panel_share"):
            row[level] = s[level]["mean"]
            row[f"{level}_ci_low"], row[f"{level}_ci_high"] = (
                s[level]["ci_low"],
                s[level]["ci_high"],
            )
        rate = s["answer_rate"] or {}
        row["answer_rate"] = rate.get("rate")
        row["answer_rate_ci_low"], row["answer_rate_ci_high"] = (
            rate.get("ci_low"),
            rate.get("ci_high"),
        )
        for name, r in s["retention"].items():
            r = r or {}
            row[f"{name}_retention"] = r.get("ratio")
            row[f"{name}_retention_ci_low"], row[f"{name}_retention_ci_high"] = (
                r.get("ci_low"),
                r.get("ci_high"),
            )
        for name, r in (s.get("controlled") or {}).items():
            r = r or {}
            row[f"{name}_controlled"] = r.get("ratio")
            row[f"{name}_controlled_ci_low"], row[f"{name}_controlled_ci_high"] = (
                r.get("ci_low"),
                r.get("ci_high"),
            )
        ppl = s.get("perplexity") or {}
        row["perplexity"], row["perplexity_ratio"] = ppl.get("mean"), ppl.get("ratio")
        base_ppl = (s.get("base") or {}).get("perplexity") or {}
        row["base_perplexity"], row["base_perplexity_ratio"] = base_ppl.get("mean"), base_ppl.get("ratio")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# the experiment


def execute(config: PruningConfig, run: Run) -> dict[str, Any]:
    spec = biased_spec(config)
    check_base(spec, config.base)
    with run.timed("load_model"):
        lm = load_model(spec, config.device, config.dtype)
        base_lm = load_model(config.base, config.device, config.dtype)
    run.note(models={"model": lm.describe(), "base": base_lm.describe()})
    adapter = lm.adapter
    if (base_lm.adapter.n_layers, base_lm.adapter.n_heads) != (adapter.n_layers, adapter.n_heads):
        raise ConfigError(
            f"The base model {config.base!r} has {base_lm.adapter.n_layers} x {base_lm.adapter.n_heads} heads, "
            f"the biased model {adapter.n_layers} x {adapter.n_heads}: the same heads cannot be removed from both."
        )
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    key = fingerprint(config.model_copy(update={"model": spec}))
    old = previous_results(run, key)
    n_total = adapter.n_layers * adapter.n_heads

    with run.timed("entropy"):
        bp = config.bias_prompts
        questions = bp.questions or shipped_questions("preference_questions")
        prompts = [make_prompt(lm.tokenizer, q, bp.system, bp.prefill) for q in questions]
        ids = [encode_prompt(lm.tokenizer, p) for p in prompts]
        entropy = attention_entropy(lm.model, adapter, ids, bp.batch_size)
    atomic_write_bytes(run.artifact(ENTROPY_FILE),
                       safetensors_bytes({k: v.contiguous() for k, v in entropy.tensors().items()}))
    heatmap_pruned = pruned_heads(entropy.mean, config.heatmap_fraction, "entropy")
    results: dict[str, Any] = {
        "model": spec,
        "base_model": config.base,
        "trait": config.preference.trait,
        "system_prompt_used": None,
        "base_system_prompt_used": None,
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
        "n_heads_total": n_total,
        "degradation_bound": config.max_perplexity_ratio,
        "entropy": {
            "matrix": entropy.mean.tolist(),
            "unit": "nats",
            "definition": "mean Shannon entropy of attention rows over all valid query positions of "
            "all bias prompts (pooled); padding and each prompt's first row excluded",
            "n_prompts": len(ids),
            "n_rows": int(entropy.rows.sum()),
            "bias_system_prompt_used": prompts[0].system,
            "bias_system_source": prompts[0].system_source,
            "bias_prompts": [p.text for p in prompts],
            "file": ENTROPY_FILE,
            "heatmap": {
                "fraction": config.heatmap_fraction,
                "criterion": "entropy",
                "pruned": [head_label(*h) for h in heatmap_pruned],
            },
        },
        "fingerprint": key,
        "resumed": bool(old),
        "partial": True,
    }

    with run.timed("measure:unpruned"):
        unpruned = old.get("unpruned") or measure(lm, config, text)
        base_unpruned = old.get("base_unpruned") or measure(base_lm, config, text, base=True)
    results["unpruned"], results["base_unpruned"] = unpruned, base_unpruned
    results["system_prompt_used"] = unpruned["preference"]["probability"]["system_prompt_used"]
    results["base_system_prompt_used"] = base_unpruned["preference"]["probability"]["system_prompt_used"]
    measurements: dict[str, Any] = dict(old.get("measurements", {}))
    base_measurements: dict[str, Any] = dict(old.get("base_measurements", {}))
    results["measurements"], results["base_measurements"] = measurements, base_measurements
    results["steps"] = []
    run.save_results(results)

    pruned_fractions = [f for f in config.fractions if f < 1.0]
    claim_f = (min(pruned_fractions, key=lambda f: (abs(f - config.claim_fraction), -f))
               if pruned_fractions else None)
    draws_at = {claim_f: max(config.random_draws, config.claim_random_draws)} if claim_f is not None else {}
    results["claim_fraction_measured"] = claim_f
    units = plan(entropy.mean, config.fractions, config.criteria, config.random_draws, config.seed, draws_at)
    remaining: dict[tuple[float, str], list[Unit]] = defaultdict(list)
    for unit in units:
        remaining[(unit.fraction, unit.criterion)].append(unit)
    planned = {u.key: [head_label(*h) for h in u.pruned] for u in units}

    def reusable(stored: dict[str, Any]) -> dict[str, Any]:
        # Reuse a stored measurement only if it masked the same heads (entropies can differ by device).
        return {k: v["measurement"] for k, v in stored.items() if planned.get(k) == v["pruned_heads"]}

    done, base_done = reusable(measurements), reusable(base_measurements)
    results["resumed_units"] = len(done) + len(base_done)
    cell: dict[tuple[float, str], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    with run.timed("sweep"):
        for unit in tqdm(units, desc="pruning sweep (biased + base)"):
            pairs = []
            for model, store, previous, reference, is_base in (
                (lm, measurements, done, unpruned, False),
                (base_lm, base_measurements, base_done, base_unpruned, True),
            ):
                measure_now = partial(measure, model, config, text, base=is_base)
                _, result = next(sweep(
                    model.model, model.adapter, [unit], measure_now, previous, reference, progress=False
                ))
                store[unit.key] = {
                    "fraction": unit.fraction,
                    "criterion": unit.criterion,
                    "draw": unit.draw,
                    "n_kept": n_total - len(unit.pruned),
                    "pruned_heads": planned[unit.key],
                    "measurement": result,
                }
                pairs.append(result)
            group = (unit.fraction, unit.criterion)
            cell[group].append((pairs[0], pairs[1]))
            if len(cell[group]) == len(remaining[group]):  # the (fraction, criterion) cell is complete
                results["steps"].append(summarize_step(
                    unit.fraction, unit.criterion, [b for b, _ in cell[group]], unpruned, n_total, config,
                    [c for _, c in cell[group]], base_unpruned,
                ))
            run.save_results(results)

    table = pd.DataFrame(table_rows(results))
    atomic_write_parquet(run.artifact(TABLE_FILE), table)
    results["table"] = TABLE_FILE
    config_dict = config.model_dump(mode="json")
    results["claims"] = [d.model_dump(mode="json") for d in decisions(results, config_dict)]
    with run.timed("figures"):
        results["figures"] = make_figures(results, run.path)
    results["partial"] = False
    print_summary(results, config_dict)
    return results


# ---------------------------------------------------------------------------------------------
# output


def _ci(r: dict[str, Any] | None, digits: int = 3) -> str:
    if not r or r.get("ratio") is None:
        return "-"
    low, high = r.get("ci_low"), r.get("ci_high")
    fmt = f"{{:.{digits}g}}"
    if low is None or high is None or not low < high:
        return fmt.format(r["ratio"]) + " (no CI)"
    return fmt.format(r["ratio"]) + f" [{fmt.format(low)}, {fmt.format(high)}]"


def _level(p: dict[str, Any]) -> str:
    low, high = p.get("ci_low"), p.get("ci_high")
    has_ci = low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
    return f"{p['mean']:.4f}" + (f" [{low:.4f}, {high:.4f}]" if has_ci else "")


def print_summary(results: dict[str, Any], config: dict[str, Any] | None = None) -> None:
    trait = results["trait"]
    p = results["unpruned"]["preference"]["probability"]["p_trait"]
    base = results.get("base_unpruned")
    title = f"Bias retention after head pruning (95% CIs); unpruned P({trait}) = {_level(p)}"
    if base:
        title += f", base model {_level(base['preference']['probability']['p_trait'])}"
    table = Table(title=title)
    for column in (
        "kept",
        "criterion",
        "heads",
        "share, base-controlled",
        f"P({trait}), base-controlled",
        f"P({trait}) biased only",
        "ppl × (biased / base)",
    ):
        table.add_column(column)
    for s in results["steps"]:
        ppl = s.get("perplexity")
        base_ppl = (s.get("base") or {}).get("perplexity")
        controlled = s.get("controlled") or {}
        table.add_row(
            f"{s['fraction']:.2f}",
            s["criterion"] + (f" ×{s['n_draws']}" if s["n_draws"] > 1 else ""),
            f"{s['n_kept']}/{results['n_heads_total']}",
            _ci(controlled.get("panel_share")),
            _ci(controlled.get("p_trait")),
            _ci(s["retention"]["p_trait"]),
            (f"{ppl['ratio']:.2f}" if ppl else "-") + (f" / {base_ppl['ratio']:.2f}" if base_ppl else ""),
        )
    console = Console()
    console.print(table)
    for d in decisions(results, config or {}):
        console.print(headline_line(d), markup=False, highlight=False)


def make_figures(results: dict[str, Any], out: Path) -> list[str]:
    """Retention and perplexity vs kept fraction; entropy heatmap with pruned heads marked.

    Reads the results dict only (so reporting can redraw from a run directory).
    """
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9}):
        fig = sweep_figure(results, plt)
        written += _save(fig, out, "pruning_retention")
        plt.close(fig)
        fig = heatmap_figure(results, plt)
        written += _save(fig, out, "pruning_entropy_heatmap")
        plt.close(fig)
    return written


def _save(fig: Any, out: Path, stem: str) -> list[str]:
    names = []
    for ext in ("png", "pdf"):
        atomic_write_figure(fig, out / f"{stem}.{ext}", dpi=200, bbox_inches="tight")
        names.append(f"{stem}.{ext}")
    return names


COLORS = {"entropy": "tab:blue", "reverse": "tab:red", "random": "tab:gray"}


def _series(steps: list[dict[str, Any]], name: str) -> tuple[list[float], ...]:
    """x, value, CI low, CI high of one panel (an unbounded upper bound is inf)."""
    x, y, low, high = [], [], [], []
    for s in steps:
        if name == "perplexity":
            value = (s.get("perplexity") or {}).get("mean")
            lo = hi = value
        else:
            r = ((s.get("controlled") or s["retention"]).get(name)) or {}
            value, lo, hi = r.get("ratio"), r.get("ci_low"), r.get("ci_high")
        if value is None:
            continue
        x.append(s["fraction"])
        y.append(value)
        low.append(value if lo is None else lo)
        high.append(math.inf if hi is None else hi)
    return x, y, low, high


def sweep_figure(results: dict[str, Any], plt: Any) -> Any:
    """Four panels vs kept fraction: P(trait), panel share and answer-rate retention (95% CI
    bands), perplexity. Retention of P and share on a log scale; the answer rate (often 0) linear,
    an unbounded CI drawn to the top of the panel."""
    trait = results["trait"]
    kind = " (base-controlled)" if any(s.get("controlled") for s in results["steps"]) else ""
    panels = [
        ("p_trait", f"P({trait}) retention{kind}"),
        ("panel_share", f"panel-share retention{kind}"),
        ("answer_rate", f"answer-rate retention{kind}"),
        ("perplexity", "perplexity (biased model)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.0))
    for ax, (name, label) in zip(axes, panels, strict=True):
        series = {}
        for criterion in CRITERIA:
            x, y, low, high = _series(
                [s for s in results["steps"] if s["criterion"] == criterion], name
            )
            if x:
                series[criterion] = (x, y, low, high)
        finite = [v for _, y, _, h in series.values() for v in (*y, *h) if math.isfinite(v)]
        cap = max([2.0, *finite]) * 1.1 if name == "answer_rate" else math.inf
        for criterion, (x, y, low, high) in series.items():
            ax.plot(x, y, marker="o", ms=3, color=COLORS[criterion], label=criterion)
            if name != "perplexity":
                ax.fill_between(
                    x, low, [min(h, cap) for h in high], color=COLORS[criterion], alpha=0.15, lw=0
                )
        if not series:
            sampled = "sampled" in results["unpruned"]["preference"]
            why = (
                "undefined\n(unpruned model never\nnamed the trait)"
                if sampled and name == "answer_rate"
                else "not measured"
            )
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4")
        if name == "perplexity" and results["unpruned"]["perplexity"]:
            reference = results["unpruned"]["perplexity"]["perplexity"]
            ax.axhline(reference, color="k", lw=0.6, ls=":")
            bound = results.get("degradation_bound")
            if bound:
                ax.axhline(reference * bound, color="tab:red", lw=0.6, ls="--", label=f"×{bound:g} bound")
        elif name != "perplexity":
            ax.axhline(1.0, color="k", lw=0.6, ls=":")
        if name == "answer_rate":
            ax.set_ylim(0, cap if series else 2.0)
        else:
            ax.set_yscale("log")
        ax.set_xlabel("kept fraction of heads")
        ax.set_title(label)
        ax.invert_xaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=len(labels) or 1,
        frameon=False,
        bbox_to_anchor=(0.5, 1.06),
    )
    fig.tight_layout()
    return fig


def heatmap_figure(results: dict[str, Any], plt: Any) -> Any:
    matrix = np.asarray(results["entropy"]["matrix"])  # [layer, head]
    n_layers, n_heads = matrix.shape
    heat = results["entropy"]["heatmap"]
    fig, ax = plt.subplots(figsize=(max(3.0, 0.3 * n_heads + 1.5), max(3.0, 0.16 * n_layers + 1.0)))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", origin="upper")
    fig.colorbar(image, ax=ax, label="mean attention entropy (nats)")
    pruned = np.array([[int(p) for p in h[1:].split("H")] for h in heat["pruned"]]).reshape(-1, 2)
    if pruned.size:
        ax.scatter(pruned[:, 1], pruned[:, 0], marker="x", s=12, color="white", linewidths=0.8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_title(
        f"Head entropy on the bias prompts\n× = pruned at kept fraction {heat['fraction']:g} "
        f"({len(heat['pruned'])} of {matrix.size} heads)",
        fontsize=8,
    )
    return fig


EXPERIMENT = Experiment(
    "pruning",
    "Entropy-based attention-head pruning: bias retention and perplexity vs kept heads",
    PruningConfig,
    execute,
)
