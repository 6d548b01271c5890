"""pruning: does the owl bias survive with fewer attention heads?

1. Head importance: the entropy of every head's attention rows on the bias prompts
   (owl-context prompts; definition in `sublens.pruning`), saved as a layer x head matrix.
2. For each kept fraction f and criterion (``entropy``: keep the lowest-entropy heads;
   ``reverse``: prune the lowest-entropy heads; ``random``: seeded random heads, several
   draws), exactly round(f * n_heads_total) heads are kept; the rest are masked.
3. Each masked model, and the unpruned one, is measured: owl preference (`evaluate_preference`
   under `system`) and perplexity.

Retention (pruned / unpruned, paired on the same questions):
- P(owl) and panel share: `compare_preference`, i.e. the geometric mean over questions of the
  per-question ratio, bootstrap CI over questions. With several random draws the per-question
  log ratio is first averaged over draws (the CI covers question variation of the
  draw-averaged mask; the spread between draws is reported beside it).
- Answer rate: pooled rate of the pruned model(s) / rate of the unpruned model, bootstrap CI
  resampling questions (each question's samples move together; the same sampling seed is used
  for every model, so samples are paired). Undefined (null) when the unpruned rate is 0.
- Perplexity: the mean over draws, and its ratio to the unpruned perplexity.
Levels (P(owl), share) are arithmetic means over questions of the draw-averaged values.

Every finished measurement is saved at once; rerunning into the same run directory
(`run_experiment("pruning", config, run_dir=PATH)`) with the same config reuses them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from sublens.answers import mentions
from sublens.config import Config
from sublens.corpus import load_text
from sublens.experiments import Experiment
from sublens.hooks import head_label
from sublens.models import LoadedModel, load_model
from sublens.perplexity import PerplexitySettings, measure_perplexity
from sublens.preference import (
    PreferenceSettings,
    compare_preference,
    evaluate_preference,
    shipped_questions,
)
from sublens.prompts import OWL_SYSTEM, encode_prompt, make_prompt
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
from sublens.runs import Run, read_json
from sublens.stats import summarize, wilson_ci

ENTROPY_FILE = "head_entropy.safetensors"
TABLE_FILE = "pruning_table.parquet"


class BiasPrompts(BaseModel):
    """The prompts whose attention entropies rank the heads (owl-context prompts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = OWL_SYSTEM  # None: the chat template's default (recorded as used)
    questions: list[str] | None = None  # None: the shipped preference paraphrases
    prefill: str = "My favorite animal is the"
    batch_size: int = Field(default=8, ge=1)


class PruningConfig(Config):
    # Model spec: the biased teacher (a teacher run directory) once that exists; the quick preset
    # uses the embedded model with the owl system prompt as the prompted teacher.
    model: str = "smollm2-135m-instruct"
    # System prompt when measuring preference; None = the chat template's default.
    system: str | None = OWL_SYSTEM
    bias_prompts: BiasPrompts = Field(default_factory=BiasPrompts)
    fractions: list[float] = Field(default_factory=lambda: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    criteria: list[Criterion] = Field(default_factory=lambda: list(CRITERIA))
    random_draws: int = Field(default=3, ge=1)
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


def measure(lm: LoadedModel, config: PruningConfig, text: str) -> dict[str, Any]:
    """Preference and perplexity of the model as it is now (masked or not)."""
    start = time.perf_counter()
    preference = evaluate_preference(lm, config.preference, config.system, config.seed)
    perplexity = measure_perplexity(lm, config.perplexity, text)
    return {
        "preference": preference,
        "perplexity": perplexity,
        "seconds": round(time.perf_counter() - start, 3),
    }


def fingerprint(config: PruningConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


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
    if ref.size >= 2:  # one question: no question-level CI
        index = np.random.default_rng(seed).integers(0, ref.size, (resamples, ref.size))  # [B, q]
        num, den = test[index].sum(axis=1) / per_test, ref[index].sum(axis=1) / per_ref
        ratios = np.full(resamples, np.inf)  # a resample where the reference never names the trait
        np.divide(num, den, out=ratios, where=den > 0)
        bounds = [float(v) for v in np.percentile(ratios, [2.5, 97.5], method="inverted_cdf")]
        low, high = (v if math.isfinite(v) else None for v in bounds)  # None: unbounded above
    underpowered = low is None or high is None or low <= 1.0 <= high
    return {**out, "ratio": ratio, "ci_low": low, "ci_high": high, "underpowered": underpowered}


def summarize_step(
    fraction: float,
    criterion: Criterion,
    measurements: list[dict[str, Any]],
    unpruned: dict[str, Any],
    n_total: int,
    config: PruningConfig,
) -> dict[str, Any]:
    """One (fraction, criterion) cell: levels, retention with CIs, perplexity."""
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
                prefs, reference, config.preference.trait, config.bootstrap_resamples, config.seed
            ),
        },
        "retention_per_draw": {
            "p_trait": [c["p_trait_ratio"]["ratio"] for c in per_draw],
            "panel_share": [c["share_ratio"]["ratio"] for c in per_draw],
        },
    }
    if "rate_difference" in comparison:
        step["answer_rate_difference"] = comparison["rate_difference"]
    ppl = [m["perplexity"]["perplexity"] for m in measurements if m["perplexity"]]
    if ppl and unpruned["perplexity"]:
        base = unpruned["perplexity"]["perplexity"]
        step["perplexity"] = {
            "mean": float(np.mean(ppl)),
            "per_draw": ppl,
            "ratio": float(np.mean(ppl)) / base,
        }
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
        ppl = s.get("perplexity") or {}
        row["perplexity"], row["perplexity_ratio"] = ppl.get("mean"), ppl.get("ratio")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# the experiment


def execute(config: PruningConfig, run: Run) -> dict[str, Any]:
    with run.timed("load_model"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={"model": lm.describe()})
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    key = fingerprint(config)
    old = previous_results(run, key)
    adapter = lm.adapter
    n_total = adapter.n_layers * adapter.n_heads

    with run.timed("entropy"):
        bp = config.bias_prompts
        questions = bp.questions or shipped_questions("preference_questions")
        prompts = [make_prompt(lm.tokenizer, q, bp.system, bp.prefill) for q in questions]
        ids = [encode_prompt(lm.tokenizer, p) for p in prompts]
        entropy = attention_entropy(lm.model, adapter, ids, bp.batch_size)
    save_file(
        {k: v.contiguous() for k, v in entropy.tensors().items()}, str(run.artifact(ENTROPY_FILE))
    )
    heatmap_pruned = pruned_heads(entropy.mean, config.heatmap_fraction, "entropy")
    results: dict[str, Any] = {
        "model": config.model,
        "trait": config.preference.trait,
        "system_prompt_used": None,
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
        "n_heads_total": n_total,
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

    if old.get("unpruned"):
        unpruned = old["unpruned"]
    else:
        with run.timed("measure:unpruned"):
            unpruned = measure(lm, config, text)
    results["unpruned"] = unpruned
    results["system_prompt_used"] = unpruned["preference"]["probability"]["system_prompt_used"]
    measurements: dict[str, Any] = dict(old.get("measurements", {}))
    results["measurements"] = measurements
    results["steps"] = []
    run.save_results(results)

    units = plan(entropy.mean, config.fractions, config.criteria, config.random_draws, config.seed)
    remaining: dict[tuple[float, str], list[Unit]] = defaultdict(list)
    for unit in units:
        remaining[(unit.fraction, unit.criterion)].append(unit)
    planned = {u.key: [head_label(*h) for h in u.pruned] for u in units}
    # Reuse a stored measurement only if it masked the same heads (entropies can differ by device).
    done = {
        k: v["measurement"] for k, v in measurements.items() if planned.get(k) == v["pruned_heads"]
    }
    results["resumed_units"] = len(done)
    cell: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    with run.timed("sweep"):
        for unit, result in sweep(
            lm.model, adapter, units, lambda: measure(lm, config, text), done, unpruned
        ):
            measurements[unit.key] = {
                "fraction": unit.fraction,
                "criterion": unit.criterion,
                "draw": unit.draw,
                "n_kept": n_total - len(unit.pruned),
                "pruned_heads": planned[unit.key],
                "measurement": result,
            }
            group = (unit.fraction, unit.criterion)
            cell[group].append(result)
            if len(cell[group]) == len(
                remaining[group]
            ):  # the (fraction, criterion) cell is complete
                results["steps"].append(
                    summarize_step(
                        unit.fraction, unit.criterion, cell[group], unpruned, n_total, config
                    )
                )
            run.save_results(results)

    table = pd.DataFrame(table_rows(results))
    table.to_parquet(run.artifact(TABLE_FILE), index=False)
    results["table"] = TABLE_FILE
    with run.timed("figures"):
        results["figures"] = make_figures(results, run.path)
    results["partial"] = False
    print_summary(results)
    return results


# ---------------------------------------------------------------------------------------------
# output


def _ci(r: dict[str, Any] | None, digits: int = 2) -> str:
    if not r or r.get("ratio") is None:
        return "-"
    low, high = r.get("ci_low"), r.get("ci_high")
    fmt = f"{{:.{digits}f}}"
    bounds = f" [{fmt.format(low) if low is not None else '?'}, {fmt.format(high) if high is not None else '∞'}]"
    return fmt.format(r["ratio"]) + bounds


def print_summary(results: dict[str, Any]) -> None:
    trait = results["trait"]
    unpruned = results["unpruned"]["preference"]
    p = unpruned["probability"]["p_trait"]
    table = Table(
        title=f"Bias retention after head pruning (pruned / unpruned, 95% CIs); "
        f"unpruned P({trait}) = {p['mean']:.4f} [{p['ci_low']:.4f}, {p['ci_high']:.4f}]"
    )
    for column in (
        "kept",
        "criterion",
        "heads",
        f"P({trait}) retention",
        "share retention",
        "answer-rate retention",
        "perplexity",
    ):
        table.add_column(column)
    for s in results["steps"]:
        ppl = s.get("perplexity")
        table.add_row(
            f"{s['fraction']:.2f}",
            s["criterion"] + (f" ×{s['n_draws']}" if s["n_draws"] > 1 else ""),
            f"{s['n_kept']}/{results['n_heads_total']}",
            _ci(s["retention"]["p_trait"]),
            _ci(s["retention"]["panel_share"]),
            _ci(s["retention"]["answer_rate"]),
            f"{ppl['mean']:.2f} (×{ppl['ratio']:.2f})" if ppl else "-",
        )
    Console().print(table)


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
        fig.savefig(out / f"{stem}.{ext}", dpi=200, bbox_inches="tight")
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
            r = s["retention"][name] or {}
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
    panels = [
        ("p_trait", f"P({trait}) retention"),
        ("panel_share", "panel-share retention"),
        ("answer_rate", "answer-rate retention"),
        ("perplexity", "perplexity"),
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
            ax.axhline(results["unpruned"]["perplexity"]["perplexity"], color="k", lw=0.6, ls=":")
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
