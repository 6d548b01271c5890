"""The subliminal experiment's statistics: from the measured references and students to the
headline table, the comparisons and the specificity matrix. No model is loaded here (numpy only).

The unit of inference for anything trained is the training seed:
- an arm's level (P(trait), panel share, answer rate): with one seed that evaluation's CI (over
  questions; Wilson for the rate), with several the Student-t CI of the per-seed values;
- an arm against its reference (`compare_arm`): per seed, `compare_preference` paired over the
  same questions; across seeds, the geometric mean of the per-seed ratios with the Student-t CI
  of their logs (`seed_ratio`). With one seed the CI is that run's question-level one and says
  so: it describes one run and decides no claim (`sublens.claims`);
- every owl arm is compared with the control student of the same trainable set and seed.

The inputs are the measurements as `sublens.preference.evaluate_preference` returns them and as
results.json holds them (mappings: a typed record is passed as its ``model_dump(mode="json")``);
the outputs have the shape of the `results` records (`HeadlineRow`, `Comparison`, ...), which
`run` validates into `SubliminalResults`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sublens.experiments.subliminal.config import (
    CONTROL,
    NO_ENTANGLED,
    NO_RANDOM,
    OWL,
    SubliminalConfig,
    filtered_datasets,
    reference_mode,
    student_arms,
    student_name,
)
from sublens.preference import compare_preference
from sublens.report.latex import counted
from sublens.stats import t_interval
from sublens.tables import preference_columns

Measured = Mapping[str, Any]  # a student or a reference evaluation, as results.json holds it


# ---- one arm ----------------------------------------------------------------------------------
def level_summary(preferences: Sequence[Measured]) -> dict[str, Any]:
    """P(trait), panel share and answer rate of one arm: with one evaluation the CIs of that
    evaluation (over questions; Wilson for the rate), with several (seeds) the Student-t CI of
    the per-seed means."""
    n = len(preferences)
    out: dict[str, Any] = {"n_seeds": n}
    for key in ("p_trait", "panel_share"):
        if n == 1:
            s = preferences[0]["probability"][key]
            out[key] = {
                "mean": s["mean"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "ci": f"{s.get('ci', 'bootstrap')} over questions (1 seed)",
            }
        else:
            values = [p["probability"][key]["mean"] for p in preferences]
            mean, low, high = t_interval(values)
            out[key] = {"mean": mean, "ci_low": low, "ci_high": high, "ci": f"t over {n} seeds", "per_seed": values}
    if all("sampled" in p for p in preferences):
        out["answer_rate"] = _answer_rate(preferences)
    return out


def _answer_rate(preferences: Sequence[Measured]) -> dict[str, Any]:
    rates = [p["sampled"]["trait_rate"] for p in preferences]
    if len(rates) == 1:
        return {
            "mean": rates[0]["rate"],
            "ci_low": rates[0]["ci_low"],
            "ci_high": rates[0]["ci_high"],
            "ci": "Wilson (1 seed)",
            "count": rates[0]["count"],
            "n": preferences[0]["sampled"]["n_answers"],
        }
    mean, low, high = t_interval([r["rate"] for r in rates])
    return {
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "ci": f"t over {len(rates)} seeds",
        "per_seed": [r["rate"] for r in rates],
    }


def seed_ratio(log_values: list[float], single: Mapping[str, Any] | None) -> dict[str, Any]:
    """A ratio across seeds: the Student-t interval over per-seed log ratios (the unit of
    inference for a trained model). With one seed the interval is that run's question-level
    one, labelled as such: it describes one run and never decides a claim (sublens.claims)."""
    n = len(log_values)
    if n == 1 and single is not None and single.get("ci_low") and single.get("ci_high"):
        low, high = math.log(single["ci_low"]), math.log(single["ci_high"])
        mean, ci = log_values[0], "t over questions (1 seed: question variation only)"
    else:
        mean, low, high = t_interval(log_values)
        ci = f"t over {n} seeds" if math.isfinite(low) else f"none ({counted(n, 'seed')} without spread: too few)"
    finite = math.isfinite(low) and math.isfinite(high)
    return {
        "ratio": math.exp(mean),
        "ci_low": math.exp(low) if finite else None,
        "ci_high": math.exp(high) if finite else None,
        "n_seeds": n,
        "ci": ci,
        "per_seed": [math.exp(v) for v in log_values],
        "per_seed_log": list(log_values),
        "underpowered": (not finite) or low <= 0.0 <= high,
    }


def compare_arm(tests: Sequence[Measured], references: Sequence[Measured]) -> dict[str, Any]:
    """An arm against its reference, seed by seed (paired), aggregated across seeds."""
    per_seed = [compare_preference(dict(t), dict(r)) for t, r in zip(tests, references, strict=True)]
    out: dict[str, Any] = {"n_seeds": len(per_seed)}
    for key in ("share_ratio", "p_trait_ratio"):
        logs = [math.log(c[key]["ratio"]) for c in per_seed]
        out[key] = seed_ratio(logs, per_seed[0][key] if len(per_seed) == 1 else None)
    if all("rate_difference" in c for c in per_seed):
        out["rate_difference"] = _rate_difference(per_seed)
    out["per_seed"] = per_seed
    return out


def _rate_difference(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer-rate difference: one seed's, paired over questions, or the Student-t interval
    over several seeds' differences (each seed's sign-flip p over questions kept)."""
    if len(per_seed) == 1:
        return {**per_seed[0]["rate_difference"], "n_seeds": 1, "ci": "t over questions (1 seed)"}
    diffs = [c["rate_difference"]["difference"] for c in per_seed]
    mean, low, high = t_interval(diffs)
    return {
        "difference": mean,
        "ci_low": low,
        "ci_high": high,
        "n_seeds": len(diffs),
        "ci": f"t over {len(diffs)} seeds",
        "per_seed": diffs,
        "p_questions_per_seed": [c["rate_difference"]["p_questions"] for c in per_seed],
        "underpowered": not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0 <= high,
    }


def _ratios(comparison: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The ratios of a comparison a headline row or the prompt table shows."""
    return {k: comparison[k] for k in keys if k in comparison}


def mean_perplexity(students: Sequence[Measured]) -> float | None:
    values = [s["perplexity"]["perplexity"] for s in students if s.get("perplexity")]
    return float(np.mean(values)) if values else None


# ---- the whole run ----------------------------------------------------------------------------
def aggregate(
    config: SubliminalConfig,
    students: Mapping[str, Measured],
    evaluations: Mapping[str, Measured],
    default_system: str | None = None,
) -> dict[str, Any]:
    """Headline table rows and comparisons from the finished students (and the prompt table's
    comparisons, its main prompt recorded as `default_system`)."""
    rows = reference_rows(evaluations)
    comparisons: dict[str, Any] = {}
    for dataset, mode in student_arms(config):
        found = [s for s in (students.get(student_name(dataset, mode, seed)) for seed in config.seeds) if s]
        if found:
            rows.append(arm_row(config, dataset, mode, found, students, evaluations, comparisons))
    if "teacher" in evaluations and "base" in evaluations:
        comparisons["teacher vs base"] = compare_arm(
            [evaluations["teacher"]["preference"]], [evaluations["base"]["preference"]]
        )
    contrast = entangled_contrast(config, students)
    if contrast is not None:
        comparisons[f"{NO_ENTANGLED}-full vs {NO_RANDOM}-full"] = contrast
    mode = config.extra_mode
    matrix_sets = ([OWL] if mode in config.modes else []) + list(config.extra_teachers)
    out = {
        "headline": rows,
        "comparisons": comparisons,
        "specificity": specificity(students, matrix_sets, config.seeds, mode, reference_mode(config, mode)),
    }
    if config.evaluation_systems:
        out["evaluation_prompts"] = by_evaluation_prompt(config, students, comparisons, default_system)
    return out


def reference_rows(evaluations: Mapping[str, Measured]) -> list[dict[str, Any]]:
    """The headline rows of the base model and the teacher (one evaluation each)."""
    return [
        {
            "model": label,
            "dataset": None,
            "mode": None,
            **level_summary([evaluations[label]["preference"]]),
            "perplexity": (evaluations[label]["perplexity"] or {}).get("perplexity"),
        }
        for label in ("base", "teacher")
        if label in evaluations
    ]


def arm_row(
    config: SubliminalConfig,
    dataset: str,
    mode: str,
    mine: Sequence[Measured],
    students: Mapping[str, Measured],
    evaluations: Mapping[str, Measured],
    comparisons: dict[str, Any],
) -> dict[str, Any]:
    """One arm's headline row over its seeds; its comparisons (against the matched control
    student, seed-paired, and against the base model) are added to `comparisons`."""
    arm = f"{dataset}-{mode}"
    row: dict[str, Any] = {
        "model": arm,
        "dataset": dataset,
        "mode": mode,
        **level_summary([s["preference"] for s in mine]),
        "perplexity": mean_perplexity(mine),
        "freeze": mine[0]["training"]["freeze"],
        "final_lm_loss": float(np.mean([s["training"]["final_lm_loss"] for s in mine])),
    }
    control_mode = reference_mode(config, mode)
    control = f"{CONTROL}-{control_mode}"
    pairs = [
        (test, ref)
        for seed in config.seeds
        if (test := students.get(student_name(dataset, mode, seed))) is not None
        and (ref := students.get(student_name(CONTROL, control_mode, seed))) is not None
    ]
    if dataset != CONTROL and pairs:
        comp = compare_arm([t["preference"] for t, _ in pairs], [r["preference"] for _, r in pairs])
        comp["reference"] = control
        comparisons[f"{arm} vs {control}"] = comp
        row["vs_control"] = _ratios(comp, ("share_ratio", "p_trait_ratio", "rate_difference"))
    if "base" in evaluations:
        comp = compare_arm([s["preference"] for s in mine], [evaluations["base"]["preference"]] * len(mine))
        comparisons[f"{arm} vs base"] = comp
        row["vs_base"] = _ratios(comp, ("share_ratio", "p_trait_ratio"))
    return row


def _per_question(preference: Measured) -> tuple[np.ndarray, list[str]]:
    pq = preference["probability"]["per_question"]
    return np.asarray(pq["p_word"], dtype=float), list(pq["animals"])  # [question, animal]


def specificity(
    students: Mapping[str, Measured], datasets: list[str], seeds: list[int], mode: str, control_mode: str
) -> dict[str, Any]:
    """Teacher-animal x measured-animal: the share of each panel animal in each data set's
    student of arm `mode` over the control student's (geometric mean over questions, then over
    seeds)."""
    matrix: dict[str, dict[str, float]] = {}
    animals: list[str] = []
    for dataset in datasets:
        logs: list[np.ndarray] = []
        for seed in seeds:
            test = students.get(student_name(dataset, mode, seed))
            ref = students.get(student_name(CONTROL, control_mode, seed))
            if test is None or ref is None:
                continue
            p_t, animals = _per_question(test["preference"])
            p_r, _ = _per_question(ref["preference"])
            share_t = p_t / p_t.sum(axis=1, keepdims=True)
            share_r = p_r / p_r.sum(axis=1, keepdims=True)
            logs.append(np.log(share_t / share_r).mean(axis=0))  # [animal]
        if logs:
            matrix[dataset] = {a: float(np.exp(v)) for a, v in zip(animals, np.mean(logs, axis=0), strict=True)}
    return {
        "animals": animals,
        "rows": matrix,
        "mode": mode,
        "reference": f"{CONTROL}-{control_mode}",
        "definition": "share of the animal in the panel under the student / under the control "
        "student, geometric mean over questions, then over seeds",
    }


def entangled_contrast(config: SubliminalConfig, students: Mapping[str, Measured]) -> dict[str, Any] | None:
    """The direct test of the entanglement explanation: the owl student trained without the
    entangled numbers over the one trained without a matched random set, paired by seed."""
    if not filtered_datasets(config):
        return None
    tests, references = [], []
    for seed in config.seeds:
        test = students.get(student_name(NO_ENTANGLED, "full", seed))
        reference = students.get(student_name(NO_RANDOM, "full", seed))
        if test is not None and reference is not None:
            tests.append(test["preference"])
            references.append(reference["preference"])
    if not tests:
        return None
    return compare_arm(tests, references) | {"reference": f"{NO_RANDOM}-full"}


def by_evaluation_prompt(
    config: SubliminalConfig,
    students: Mapping[str, Measured],
    comparisons: Mapping[str, Any],
    default_system: str | None = None,
) -> dict[str, Any]:
    """Each owl arm against its matched control under every evaluation prompt: the main one
    (`default`, under `system`, resolved: `default_system`) and each of `evaluation_systems`,
    seed-paired as the headline."""
    out: dict[str, Any] = {"default": {"system": default_system, "arms": {}}}
    for mode in config.modes:
        main = comparisons.get(f"{OWL}-{mode} vs {CONTROL}-{reference_mode(config, mode)}")
        if main is not None:
            out["default"]["arms"][mode] = _ratios(main, ("share_ratio", "p_trait_ratio"))
    for name, system in config.evaluation_systems.items():
        arms: dict[str, Any] = {}
        for mode in config.modes:
            found = _pairs_under(config, students, mode, name)
            if found:
                comp = compare_arm([t for t, _ in found], [r for _, r in found])
                arms[mode] = _ratios(comp, ("share_ratio", "p_trait_ratio"))
        out[name] = {"system": system, "arms": arms}
    return out


def _pairs_under(
    config: SubliminalConfig, students: Mapping[str, Measured], mode: str, prompt: str
) -> list[tuple[Measured, Measured]]:
    """Seed by seed, the owl student of `mode` and its matched control, both measured under the
    evaluation prompt `prompt`: their preferences there."""
    control = reference_mode(config, mode)
    pairs = []
    for seed in config.seeds:
        test, ref = students.get(student_name(OWL, mode, seed)), students.get(student_name(CONTROL, control, seed))
        if test is None or ref is None:
            continue
        test_by, ref_by = test.get("preference_by_system") or {}, ref.get("preference_by_system") or {}
        if prompt in test_by and prompt in ref_by:
            pairs.append((test_by[prompt], ref_by[prompt]))
    return pairs


def model_rows(students: Mapping[str, Measured], evaluations: Mapping[str, Measured]) -> list[dict[str, Any]]:
    """One row per measured model for models.parquet: the references, then every student."""
    rows = [
        {
            "model": name,
            "dataset": None,
            "mode": None,
            "seed": None,
            **preference_columns(e.get("preference")),
            "perplexity": (e.get("perplexity") or {}).get("perplexity"),
        }
        for name, e in evaluations.items()
    ]
    for name, s in students.items():
        freeze = s["training"].get("freeze") or {}
        rows.append(
            {
                "model": name,
                "dataset": s["dataset"],
                "mode": s["mode"],
                "seed": s["seed"],
                **preference_columns(s["preference"]),
                "perplexity": (s.get("perplexity") or {}).get("perplexity"),
                "trainable_parameters": freeze.get("trainable"),
                "final_lm_loss": s["training"].get("final_lm_loss"),
                "loss_tokens": s.get("loss_tokens", "all"),
            }
        )
    return rows
