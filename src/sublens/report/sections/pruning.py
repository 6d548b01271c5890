"""The pruning section: does the owl bias survive removing attention heads?

Reads a `pruning` run directory: its results.json parsed once into `PruningResults`
(`sublens.experiments.pruning.results`). Verdict words come only from `sublens.claims`
(`decisions` below builds the claims from the recorded numbers):

- **survival** ("the bias survives pruning ~40% of the heads"): a claim of *no effect* on the
  base-controlled panel-share retention of the entropy criterion at the claim fraction
  (config ``claim_fraction``, 0.6 kept; the measured pruned fraction closest to it). Per
  question, log(share biased pruned / share base pruned) - log(share biased unpruned / share
  base unpruned): the same heads are removed from the unbiased base model, so pruning damage
  common to both models cancels. Unit: question (one fixed model); Student-t on the log
  ratios; supported only by equivalence (the CI inside the margin, config ``claims``).
- **entropy vs random** (entropy-ranked pruning retains more of the bias than random pruning
  of as many heads): a two-sided Monte Carlo rank test of the entropy criterion's
  base-controlled retention among the random draws' at the claim fraction, never one draw.
- Holm within the family ``pruning``. Both are decided only where the pruned models are inside
  the degradation bound (config ``max_perplexity_ratio``: perplexity over the unpruned model's,
  for the biased and the base model); outside it they are inconclusive. A run without the
  pruned-base control (recorded before it existed) leaves the survival claim inconclusive.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Any, Literal, Protocol

import numpy as np

from sublens.claims import (
    Claim,
    ClaimSettings,
    Decision,
    Estimate,
    Verdict,
    decide,
    estimate_log_ratio,
    holm,
)
from sublens.experiments.pruning.panels import drawn_panels, missing_panels
from sublens.experiments.pruning.results import (
    ControlledRetention,
    PruningResults,
    RatioEstimate,
    Step,
)
from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci, noun_for
from sublens.report.names import display_name
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_text, decisions_latex, verdict_label
from sublens.results import as_results, read_run_results

PAPER_KEPT = 0.6  # "survives pruning ~40% of the heads" (config: claim_fraction)
DEFAULT_BOUND = 1.5  # perplexity x unpruned beyond which a pruned model is degraded (max_perplexity_ratio)
FAMILY = "pruning"
SHORT = {"entropy": "ent.", "reverse": "rev.", "random": "rand."}  # column headers
CRITERION_NAMES = {
    "entropy": "entropy, which prunes the highest-entropy heads",
    "reverse": "reverse, which prunes the lowest-entropy heads",
    "random": "random",
}
NO_BASE = ("the pruned-base control was not measured (this run predates it), so loss of the bias "
           "is not separated from pruning damage common to any model")
NO_BASE_SETTLE = ("rerun the pruning stage with the unbiased base model as its control: the same heads "
                  "are then removed from it and the retention is base-controlled")
Level = Literal["p_trait", "panel_share"]


class Interval(Protocol):
    """A retention with its interval (own, base-controlled, answer rate)."""

    @property
    def ratio(self) -> float | None: ...
    @property
    def ci_low(self) -> float | None: ...
    @property
    def ci_high(self) -> float | None: ...
    @property
    def ci(self) -> str | None: ...


# ---- reading the results --------------------------------------------------------------------
def _retention(step: Step | None, key: Level = "p_trait") -> RatioEstimate | None:
    """The biased model's own retention (pruned / unpruned), not base-controlled."""
    return getattr(step.retention, key) if step is not None else None


def _controlled(step: Step | None, key: Level = "panel_share") -> ControlledRetention | None:
    """The base-controlled retention; None for a run without the pruned-base control."""
    return getattr(step.controlled, key) if step is not None and step.controlled is not None else None


def _has_ratio(retention: Interval | None) -> bool:
    return retention is not None and retention.ratio is not None


def _step(steps: Sequence[Step], fraction: float, criterion: str) -> Step | None:
    return next((s for s in steps if s.fraction == fraction and s.criterion == criterion), None)


def claim_settings(config: dict[str, Any]) -> ClaimSettings:
    return ClaimSettings(**(config.get("claims") or {}))


def bound_of(config: dict[str, Any]) -> float:
    return float(config.get("max_perplexity_ratio") or DEFAULT_BOUND)


def claim_fraction(steps: Sequence[Step], config: dict[str, Any]) -> float | None:
    """The measured pruned fraction (< 1) closest to the configured one, ties to the larger."""
    target = float(config.get("claim_fraction") or PAPER_KEPT)
    fractions = sorted({s.fraction for s in steps if s.fraction < 1.0}, reverse=True)
    return min(fractions, key=lambda f: abs(f - target)) if fractions else None


def _plain(value: float | None) -> str:
    """A number for the terminal headline: two significant digits."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2g}"


def _pct(fraction: float) -> str:
    return f"{round(100 * fraction)}\\%"


# ---- degradation ----------------------------------------------------------------------------
def damage(step: Step | None) -> float | None:
    """The cell's perplexity over the unpruned model's: the larger of the biased and the base
    model's (means over draws); None when perplexity was not measured."""
    return step.damage() if step is not None else None


def draw_damage(step: Step | None) -> list[float | None]:
    """Per random draw: the larger perplexity ratio of the biased and the base model."""
    biased = (step.perplexity.per_draw_ratio if step and step.perplexity else None) or []
    base_ppl = step.base.perplexity if step and step.base else None
    base = (base_ppl.per_draw_ratio if base_ppl else None) or []
    out: list[float | None] = []
    for i in range(max(len(biased), len(base))):
        values = [v[i] for v in (biased, base) if i < len(v)]
        out.append(max(values) if values else None)
    return out


def inside_bound(step: Step | None, bound: float) -> bool | None:
    d = damage(step)
    return None if d is None else d <= bound


def last_inside(steps: Sequence[Step], criterion: str, bound: float) -> tuple[bool, float | None]:
    """(measured, the smallest kept fraction down to which every pruned fraction of `criterion`
    is inside the bound; None when already the first pruned fraction is outside it)."""
    ordered = sorted((s for s in steps if s.criterion == criterion and s.fraction < 1.0),
                     key=lambda s: -s.fraction)
    if not ordered or any(damage(s) is None for s in ordered):
        return False, None
    last = None
    for s in ordered:  # nested masks: stop at the first fraction outside the bound
        if not inside_bound(s, bound):
            break
        last = s.fraction
    return True, last


# ---- claims ---------------------------------------------------------------------------------
def rank_pvalue(observed: float, draws: Sequence[float]) -> float:
    """Two-sided Monte Carlo rank p-value of `observed` among R exchangeable draws under the
    null: 2 min(1 + #{draws <= observed}, 1 + #{draws >= observed}) / (R + 1), capped at 1.
    The smallest attainable value is 2 / (R + 1)."""
    values = np.asarray(draws, dtype=float)
    if values.size == 0:
        return float("nan")
    low = 1 + int(np.sum(values <= observed))
    high = 1 + int(np.sum(values >= observed))
    return min(1.0, 2 * min(low, high) / (values.size + 1))


def draws_needed(alpha: float, family_size: int) -> int:
    """Fewest draws for which the smallest two-sided rank p, Holm-adjusted in the worst case
    (x family_size), falls below alpha."""
    r = 1
    while 2 * family_size / (r + 1) >= alpha:
        r += 1
    return r


class RankClaim(Claim):
    """A claim decided by a rank test among random draws (its unit is a draw, its test not a t-test)."""

    unit: Literal["draw"] = "draw"  # type: ignore[assignment]

    @property
    def test(self) -> str:
        return ("two-sided Monte Carlo rank test of the entropy criterion's retention among the random "
                f"draws' (p = 2 min(rank, R + 1 - rank) / (R + 1)), Holm within {self.family}")


def survival_claim(fraction: float, settings: ClaimSettings) -> Claim:
    pruned = round(100 * (1 - fraction))
    return Claim(
        name="pruning.survival",
        statement=f"The bias survives pruning {pruned}% of the attention heads (entropy criterion)",
        estimand=(f"base-controlled panel-share retention at {round(100 * fraction)}% of heads kept: per "
                  "question, log(owl share of the pruned biased model / of the base model with the same "
                  "heads pruned) minus the same log ratio of the unpruned models"),
        unit="question", prediction="none", family=FAMILY, settings=settings)


def rank_claim(fraction: float, settings: ClaimSettings) -> RankClaim:
    return RankClaim(
        name="pruning.entropy_vs_random",
        statement=("Entropy-ranked pruning retains more of the bias than random pruning of as many heads "
                   f"({round(100 * fraction)}% kept)"),
        estimand=("the entropy criterion's base-controlled panel-share retention (geometric mean over "
                  "questions) against that of each random draw of as many heads inside the degradation bound"),
        prediction="increase", family=FAMILY, settings=settings)


def _blocked(claim: Claim, reason: str, settle: str, est: Estimate | None = None) -> Decision:
    return Decision(claim=claim, verdict=Verdict.INCONCLUSIVE, estimate=est, p_adjusted=None,
                    reason=reason, settle=settle, mde=None, units_needed=None)


def _degraded_reason(steps: Sequence[Step], fraction: float, bound: float) -> str:
    at_f = [s for s in steps if s.fraction == fraction]
    every = all((d := damage(s)) is not None and d > bound for s in at_f) and all(
        d is not None and d > bound for s in at_f for d in draw_damage(s))
    if every:
        return f"every pruned model at this fraction is degraded beyond ×{bound:g} perplexity"
    d = damage(_step(steps, fraction, "entropy"))
    return (f"the entropy-pruned model at this fraction is degraded beyond ×{bound:g} perplexity "
            f"(×{d:.3g} the unpruned model's)")


def _entropy_blocker(steps: Sequence[Step], fraction: float, bound: float) -> tuple[str, str] | None:
    """Why neither claim can be decided at `fraction` from the entropy cell, or None."""
    entropy = _step(steps, fraction, "entropy")
    if entropy is None:
        return ("the entropy criterion was not measured at this fraction",
                "measure the entropy criterion at this fraction")
    control = _controlled(entropy)
    if control is None or not control.log_ratios:
        return NO_BASE, NO_BASE_SETTLE
    inside = inside_bound(entropy, bound)
    if inside is None:
        return ("perplexity was not measured, so degradation of the pruned models cannot be bounded",
                "rerun with perplexity enabled")
    if not inside:
        last = last_inside(steps, "entropy", bound)[1]
        where = (f"the last kept fraction inside it for the entropy criterion is {round(100 * last)}%"
                 if last is not None else "no pruned fraction of the entropy criterion is inside it")
        return (_degraded_reason(steps, fraction, bound),
                f"judge the claim at a kept fraction inside the ×{bound:g} bound ({where})")
    return None


def _rank_decision(claim: RankClaim, steps: Sequence[Step], fraction: float, bound: float,
                   blocker: tuple[str, str] | None) -> tuple[Decision | None, Estimate | None, list[float]]:
    """(a decision already settled without a p-value, or the estimate and the draws to decide)."""
    if blocker is not None:
        return _blocked(claim, *blocker), None, []
    random = _step(steps, fraction, "random")
    if random is None:
        return _blocked(claim, "random pruning was not measured at this fraction",
                        "measure random draws at this fraction"), None, []
    logs = random.controlled_per_draw.panel_share if random.controlled_per_draw else []
    if not logs:
        return _blocked(claim, NO_BASE, NO_BASE_SETTLE), None, []
    damages = draw_damage(random)
    kept = [v for v, d in zip(logs, damages, strict=False) if d is not None and d <= bound]
    need = draws_needed(claim.settings.alpha, 2)
    if not kept:
        return _blocked(claim, f"every random draw at this fraction is degraded beyond ×{bound:g} perplexity",
                        f"a kept fraction where random draws stay inside the ×{bound:g} bound"), None, []
    if len(kept) < 2:
        return _blocked(claim, "too few draws (one random draw inside the bound: a rank test needs the "
                        "random draws' distribution)", f"at least {need} random draws at this fraction"), None, []
    entropy_control = _controlled(_step(steps, fraction, "entropy"))
    assert entropy_control is not None  # no blocker: the entropy cell has its base control
    observed = float(np.mean(entropy_control.log_ratios))
    p = rank_pvalue(observed, kept)
    est = Estimate(n=len(kept), ratio=math.exp(observed - float(np.mean(kept))), ci_low=None, ci_high=None,
                   p_value=p, sd_log=float(np.std(kept, ddof=1)),
                   interval=f"rank among {len(kept)} random draws inside the bound (no interval)")
    return None, est, [observed, *kept]


def _decide_rank(claim: RankClaim, est: Estimate, values: list[float], p_adjusted: float) -> Decision:
    observed, draws = values[0], np.asarray(values[1:])
    s = claim.settings
    below = int(np.sum(draws < observed))
    detail = (f"entropy retention ×{math.exp(observed):.3g} vs random ×{math.exp(float(np.median(draws))):.3g} "
              f"(median; range ×{math.exp(float(draws.min())):.3g}..×{math.exp(float(draws.max())):.3g}); "
              f"{below} of {draws.size} draws retain less; rank p = {est.p_value:.3g}, Holm p = {p_adjusted:.3g}")
    settle = ""
    if p_adjusted < s.alpha:
        up = observed > float(np.median(draws))
        verdict = Verdict.SUPPORTED if up else Verdict.CONTRADICTED
        reason = detail + (": above the random draws' distribution" if up else ": below the random draws' distribution")
    else:
        verdict = Verdict.INCONCLUSIVE
        smallest = 2 / (draws.size + 1)
        if 2 * smallest >= s.alpha:
            reason = detail + f": with {draws.size} draws the smallest attainable rank p is {smallest:.3g}"
            settle = (f"at least {draws_needed(s.alpha, 2)} random draws inside the bound (Holm over two "
                      f"claims at alpha {s.alpha:g})")
        else:
            reason = detail + ": inside the random draws' distribution"
            settle = ("a rank test cannot show the criteria equal; the entropy criterion is not distinguished "
                      "from random pruning at this fraction")
    return Decision(claim=claim, verdict=verdict, estimate=est, p_adjusted=p_adjusted, reason=reason,
                    settle=settle, mde=None, units_needed=None)


def decisions(results: PruningResults | Mapping[str, Any], config: dict[str, Any]) -> list[Decision]:
    """The family's decisions (survival, entropy vs random), Holm-adjusted, from recorded results."""
    return step_decisions(as_results(results, PruningResults).steps, config)


def step_decisions(steps: Sequence[Step], config: dict[str, Any]) -> list[Decision]:
    """`decisions` from the finished cells alone."""
    settings, bound = claim_settings(config), bound_of(config)
    fraction = claim_fraction(steps, config)
    if fraction is None:
        f = float(config.get("claim_fraction") or PAPER_KEPT)
        why = ("no pruned fraction was measured", "run the sweep to a pruned fraction")
        return [_blocked(survival_claim(f, settings), *why), _blocked(rank_claim(f, settings), *why)]
    survival, rank = survival_claim(fraction, settings), rank_claim(fraction, settings)
    blocker = _entropy_blocker(steps, fraction, bound)
    entropy_control = _controlled(_step(steps, fraction, "entropy"))
    s_est = (None if blocker is not None or entropy_control is None
             else estimate_log_ratio(entropy_control.log_ratios, "question"))
    r_done, r_est, r_values = _rank_decision(rank, steps, fraction, bound, blocker)
    adjusted = holm([s_est.p_value if s_est is not None else None,
                     r_est.p_value if r_est is not None else None])
    s_decision = _blocked(survival, *blocker) if blocker is not None else decide(survival, s_est, adjusted[0])
    if r_done is not None:
        r_decision = r_done
    else:
        assert r_est is not None and adjusted[1] is not None
        r_decision = _decide_rank(rank, r_est, r_values, adjusted[1])
    return [s_decision, r_decision]


# ---- formatting -----------------------------------------------------------------------------
def _tex(text: str) -> str:
    """Plain text of a decision as LaTeX (× as \\times)."""
    return escape(text).replace(r"\texttt{U+00D7}", r"$\times$")


def _bounds(retention: Interval | None) -> tuple[float | None, float | None, float | None]:
    return (retention.ratio, retention.ci_low, retention.ci_high) if retention else (None, None, None)


def retention_cell(retention: Interval | None) -> str:
    """'0.53 [0.41, 0.69]'; tiny ratios share one power of ten with their CI to stay narrow."""
    ratio, low, high = _bounds(retention)
    if low is None or high is None or not low < high:  # no interval, or a zero-width one: the value only
        return fmt(ratio)
    if ratio is None or ratio <= 0 or ratio >= 0.01:
        return fmt_ci(ratio, low, high)
    exponent = math.floor(math.log10(ratio))
    scale = 10.0**exponent

    def mantissa(v: float) -> str:
        m = v / scale
        return f"{m:.1f}" if m < 9.95 else f"{m:.0f}"

    return rf"${mantissa(ratio)}\,[{mantissa(low)}, {mantissa(high)}]\times10^{{{exponent}}}$"


def _ci_text(retention: Interval | None) -> str:
    """Retention with its CI for running text; without an interval, the value and why."""
    ratio, low, high = _bounds(retention)
    if low is None or high is None or not low < high:
        why = (retention.ci if retention else None) or "too few questions for an interval"
        return f"{fmt(ratio)} (no CI: {escape(why)})"
    return fmt_ci(ratio, low, high)


def _draws(steps: Sequence[Step]) -> list[int]:
    return sorted({s.n_draws for s in steps if s.criterion == "random"})


def _ppl(value: float | None) -> str:
    return fmt(value, 1 if value is None or value < 100 else 0)


def _damage_cell(step: Step | None, bound: float) -> str:
    d = damage(step)
    if d is None:
        return "--"
    return _ppl(d) + ("$^\\dagger$" if d > bound else "")


def sweep_table(results: PruningResults, config: dict[str, Any], incomplete: bool) -> str:
    """Rows: fraction kept; columns: retention per criterion, then the perplexity ratio per criterion."""
    steps = results.steps
    criteria = list(dict.fromkeys(s.criterion for s in steps))
    fractions = sorted({s.fraction for s in steps}, reverse=True)
    controlled = any(_has_ratio(_controlled(s)) for s in steps)
    bound = bound_of(config)
    has_ppl = any(damage(s) is not None for s in steps)
    header = ["kept", *criteria] + ([f"ppl {SHORT.get(c, c)}" for c in criteria] if has_ppl else [])
    rows = []
    for f in fractions:
        cells = [_step(steps, f, c) for c in criteria]
        row = [f"{f:.2f}"] + [retention_cell(_controlled(s) if controlled else _retention(s)) if s else "--"
                              for s in cells]
        if has_ppl:
            row += [_damage_cell(s, bound) for s in cells]
        rows.append(row)
    trait = escape(results.trait)
    total = results.n_heads_total
    draws = _draws(steps)
    draw_text = (f"; random: {'/'.join(map(str, draws))} draws, averaged in log space" if draws else "")
    what = (f"Base-controlled {trait}-share retention (pruned / unpruned share of the biased model over the "
            "same ratio of the base model with the same heads removed; geometric mean over questions, "
            "95\\% Student-t CI)" if controlled else
            f"P({trait}) retention of the biased model alone (pruned / unpruned, geometric mean over "
            "questions, 95\\% CI); this run has no pruned-base control, so the ratio mixes loss of the "
            "bias with damage common to any model")
    ppl = (f", then perplexity over the unpruned model's (the larger of the biased and the base model's "
           f"where both were measured; $^\\dagger$: beyond the ${bound:g}\\times$ degradation bound)"
           if has_ppl else "")
    caption = (f"Head pruning: {what} by fraction of {f'the {total} ' if total else ''}heads kept (rows) and "
               f"criterion (columns{draw_text}){ppl}." + _unpruned_caption(results)
               + (" Incomplete run: missing cells are marked --." if incomplete else ""))
    align = "@{}l" + r"@{\hspace{8pt}}r" * (len(header) - 1) + "@{}"
    return booktabs_table(header, rows, caption, "tab:pruning_sweep", align=align, wide=True)


def _unpruned_caption(results: PruningResults) -> str:
    parts = []
    trait = escape(results.trait)
    for label, measured in (("", results.unpruned), ("base model ", results.base_unpruned)):
        if measured is None:
            continue
        p = measured.preference.probability.p_trait
        ppl = measured.perplexity.perplexity if measured.perplexity else None
        parts.append(f"unpruned {label}P({trait}) = {fmt_ci(p.mean, p.ci_low, p.ci_high, 3)}")
        if ppl is not None:
            parts.append(f"unpruned {label}perplexity {fmt(ppl, 1)}")
    text = "; ".join(parts)
    return f" {text[:1].upper()}{text[1:]}." if parts else ""


# ---- methods --------------------------------------------------------------------------------
def _biased_model(run: StageRun, results: PruningResults | None) -> str:
    """Which biased model: the prompted base (system prompt) or a fine-tuned teacher run."""
    spec = run.config.get("model") or (results.model if results else None) or "?"
    source = ((run.record.get("models") or {}).get("model") or {}).get("source")
    system = run.config.get("system")
    name = escape(display_name(spec))
    if source in ("run", "folder"):
        text = name if name.startswith("the ") else f"the fine-tuned model {name}"
        return text + (f", measured with the system prompt ``{escape(system)}''" if system else "")
    if system:
        return f"a prompted teacher: the base model {name} with the system prompt ``{escape(system)}''"
    return f"{name} with the chat template's default system prompt"


def corpus_text(corpus: object) -> str:
    """The perplexity corpus as the text names it: 'Wikipedia text', or 'a local text file' for a
    path (no machine's paths in the paper)."""
    text = str(corpus or "?")
    if text.lower() == "wikipedia":
        return "Wikipedia text"
    return "a local text file" if "/" in text or "." in text else f"{escape(text)} text"


def _bias_system(system: str | None, measured: str | None) -> str:
    if not system:
        return "the chat template's default system prompt"
    if system == measured:
        return "the same system prompt"
    return f"the system prompt ``{escape(system)}''"


def _base_methods(run: StageRun, results: PruningResults | None) -> str:
    base = (results.base_model if results else None) or run.config.get("base")
    if results is None or results.base_unpruned is None or not base:
        return ("This run has no pruned-base control: only the biased model was pruned, so its "
                "retention mixes loss of the bias with damage common to any model. ")
    system = run.config.get("base_system")
    under = f"the system prompt ``{escape(system)}''" if system else "the chat template's default system prompt"
    return (f"As the matched control, the same heads are removed from the unbiased base model "
            f"{escape(display_name(base))} (under {under}), measured the same way; retention is "
            "base-controlled: per question, the log ratio of the biased to the base model's value, pruned, "
            "minus the same log ratio unpruned, so pruning damage common to both models cancels. ")


def methods(run: StageRun, results: PruningResults | None) -> str:
    c, r = run.config, results
    pref = c.get("preference") or {}
    ppl = c.get("perplexity") or {}
    heads = (
        f" ({r.n_layers} layers $\\times$ {r.n_heads} heads = {r.n_heads_total} heads)"
        if r is not None and r.n_layers and r.n_heads else ""
    )
    prompts = r.entropy.n_prompts if r is not None else None
    fractions = ", ".join(f"{f:g}" for f in c.get("fractions") or [])
    criteria = "; ".join(CRITERION_NAMES.get(k, escape(k)) for k in c.get("criteria") or [])
    bp = c.get("bias_prompts") or {}
    trait = escape(pref.get("trait", "owl"))
    f = claim_fraction(r.steps if r is not None else [], c)
    claim_draws = c.get("claim_random_draws")
    draws = f"{c.get('random_draws', 1)} seeded random draws"
    if claim_draws and f is not None:
        draws += f", {max(int(claim_draws), int(c.get('random_draws', 1)))} at {_pct(f)} kept"
    text = [
        f"We prune the attention heads of {_biased_model(run, r)}{heads}, following the head-pruning "
        "studies of \\citet{michel2019sixteen} and \\citet{voita2019analyzing}. "
        f"Heads are ranked by their mean attention entropy (nats) on "
        f"{prompts if prompts else 'the'} bias prompts (the preference questions under "
        f"{_bias_system(bp.get('system'), c.get('system'))} with the answer "
        f"prefilled as ``{escape(bp.get('prefill', ''))}''); a head's entropy is pooled over all its "
        "query rows, padding and each prompt's first row excluded. ",
        f"For each fraction of heads kept ({fractions}) and criterion ({criteria}; {draws}), exactly "
        "round(fraction $\\times$ heads) heads are kept and the others' outputs are zeroed. ",
        f"Each pruned model is measured as the unpruned one: P({trait}) at the prefilled answer "
        f"``{escape(pref.get('prefill', ''))}'' over {len(pref.get('questions') or [])} paraphrased "
        f"questions, its share among {len(pref.get('panel') or []) + 1} animals, and sampled "
        f"one-word answers ({len(pref.get('sample_questions') or [])} questions $\\times$ "
        f"{pref.get('samples_per_question', '?')} samples, temperature "
        f"{pref.get('temperature', '?')}). ",
        _base_methods(run, r),
        "Retention is the geometric mean over questions of the per-question ratios, with a 95\\% "
        "Student-t interval on the log scale over questions (one fixed model: question variation "
        "only); random draws are averaged in log space first. ",
    ]
    if ppl.get("enabled"):
        text.append(
            f"Perplexity is measured on {ppl.get('max_tokens', '?')} tokens of "
            f"{corpus_text(ppl.get('corpus'))} (windows of {ppl.get('window', '?')}); a pruned model "
            f"whose perplexity exceeds ${bound_of(c):g}\\times$ the unpruned model's counts as degraded, "
            "and no claim is decided on degraded models. "
        )
    settings = claim_settings(c)
    text.append(
        "Two claims are decided: the survival claim by equivalence (the CI of the "
        f"base-controlled {trait}-share retention inside ${1 / settings.margin:.2g}\\times$.."
        f"${settings.margin:g}\\times$), the comparison with random pruning by a two-sided Monte Carlo "
        "rank test among the random draws, Holm-adjusted together "
        f"($\\alpha = {settings.alpha:g}$). Seed {c.get('seed', '?')}."
    )
    return "".join(text)


# ---- results --------------------------------------------------------------------------------
def _degradation_text(steps: Sequence[Step], bound: float) -> str:
    """How far each criterion prunes inside the degradation bound (defined in the methods), the
    criteria that end alike named together."""
    by_last: dict[float | None, list[str]] = {}
    for criterion in dict.fromkeys(s.criterion for s in steps):
        measured, last = last_inside(steps, criterion, bound)
        if measured:
            by_last.setdefault(last, []).append(criterion)
    if not by_last:
        return "Perplexity was not measured for every pruned model, so degradation is not bounded. "
    first = max((s.fraction for s in steps if s.fraction < 1.0), default=None)
    parts = []
    for last, criteria in by_last.items():
        who = f"{_and(criteria)} pruning"
        if last is None:
            parts.append(f"{who} exceeds it already at the first pruned fraction"
                         + (f" ({_pct(first)} kept)" if first is not None else ""))
        else:
            stays = "stays" if len(criteria) == 1 else "stay"
            parts.append(f"{who} {stays} inside it down to {_pct(last)} of heads kept")
    return f"Against the ${bound:g}\\times$ perplexity bound, {'; '.join(parts)}. "


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _measured_text(steps: Sequence[Step], f: float, trait: str) -> str:
    """What was measured at the claim fraction, in words that claim nothing; the criteria whose
    retention is of one kind share one sentence."""
    out = []
    entropy, reverse, random = (_step(steps, f, c) for c in ("entropy", "reverse", "random"))
    lead = f"With {_pct(f)} of heads kept ({_pct(1 - f)} pruned)"
    others = [(name, step) for name, step in (("reverse", reverse), ("random", random)) if step is not None]
    if entropy is not None and entropy.controlled is not None and _has_ratio(entropy.controlled.panel_share):
        base_own = entropy.base.retention.p_trait if entropy.base else None
        out.append(f"{lead}, entropy-ranked pruning leaves a base-controlled {trait}-share retention of "
                   f"{_ci_text(_controlled(entropy))} and a base-controlled P({trait}) retention of "
                   f"{_ci_text(_controlled(entropy, 'p_trait'))}; on their own, the biased model keeps "
                   f"P({trait}) {_ci_text(_retention(entropy))} and the base model "
                   f"{_ci_text(base_own)}. ")
        rate = entropy.controlled.answer_rate
        if rate:
            out.append("The base-controlled answer-rate retention is "
                       + (_ci_text(rate) if rate.ratio is not None
                          else f"undefined ({escape(rate.note or 'a rate is 0')})") + ". ")
        controlled = [(n, st) for n, st in others if _has_ratio(_controlled(st))]
        own = [(n, st) for n, st in others if not _has_ratio(_controlled(st))]
        out += [_criteria_sentence(controlled, f"base-controlled {trait}-share", _controlled),
                _criteria_sentence(own, f"biased-model P({trait})", _retention)]
    elif entropy is not None:
        listed = [f"{_ci_text(_retention(entropy))} under entropy-ranked pruning",
                  *(f"{_ci_text(_retention(st))} under the {_criterion_words(n, st)}" for n, st in others)]
        out.append(f"{lead}, the biased model's own P({trait}) retention (pruned / unpruned, no base "
                   f"control) is {_and(listed)}. ")
    else:
        out.append(_criteria_sentence(others, f"biased-model P({trait})", _retention))
    return "".join(out)


def _criterion_words(name: str, step: Step) -> str:
    return f"{name} criterion" + (f" ({step.n_draws} draws)" if name == "random" else "")


def _criteria_sentence(cells: Sequence[tuple[str, Step]], kind: str,
                       value: Callable[[Step], Interval | None]) -> str:
    """'Under the reverse and random criteria (random: 3 draws) the ... retention is A and B
    respectively.'"""
    if not cells:
        return ""
    values = _and([_ci_text(value(st)) for _, st in cells])
    if len(cells) == 1:
        return f"Under the {_criterion_words(*cells[0])} the {kind} retention is {values}. "
    draws = [f"random: {st.n_draws} draws" for n, st in cells if n == "random"]
    names = _and([n for n, _ in cells]) + " criteria" + (f" ({draws[0]})" if draws else "")
    return f"Under the {names} the {kind} retention is {values} respectively. "


def _ppl_text(steps: Sequence[Step], f: float) -> str:
    """The perplexity ratios at the claim fraction, as the table prints them (one number each)."""
    cells = [s for s in steps if s.fraction == f and damage(s) is not None]
    if not cells:
        return ""
    parts = ", ".join(f"{s.criterion} ${_ppl(damage(s))}\\times$" for s in cells)
    return f"Perplexity over the unpruned model's at {_pct(f)} kept: {parts}. "


def _decisions_text(found: Sequence[Decision]) -> str:
    """The family's verdicts. Claims stopped before any estimate for one shared reason (a run
    without the pruned-base control) give that reason and what would settle them once; otherwise
    `decisions_latex` says what the claims share once."""
    reasons = {(d.reason, d.settle) for d in found}
    if len(found) < 2 or len(reasons) != 1 or any(d.estimate is not None for d in found):
        return decisions_latex(found) + " "
    reason, settle = next(iter(reasons))
    claims = ". ".join(f"{claim_text(d.claim.statement)}: \\textbf{{{verdict_label(d)}}} (estimand: "
                       f"{claim_text(d.claim.estimand)}; unit of inference: the {d.claim.unit})" for d in found)
    return (f"Neither claim can be decided, because {claim_text(reason)}. {claims}. "
            f"To settle both: {claim_text(settle)}. ")


def heads_location(results: PruningResults) -> str:
    """Where the heads pruned on the heatmap (the highest-entropy ones) sit, by thirds of depth."""
    heat = results.entropy.heatmap
    pruned = heat.pruned
    n_layers, n_heads = results.n_layers, results.n_heads
    if not pruned or not n_layers:
        return ""
    labels = (re.fullmatch(r"L(\d+)H\d+", str(h)) for h in pruned)  # 'L3H2' (hooks.head_label)
    layers = Counter(int(m[1]) for m in labels if m)
    edges = [round(i * n_layers / 3) for i in range(4)]
    parts = [f"{sum(layers[layer] for layer in range(a, b))} in layers {a}--{b - 1}"
             for a, b in pairwise(edges) if b > a]
    full = [layer for layer, n in sorted(layers.items()) if n_heads and n == n_heads]
    text = (f"The {len(pruned)} highest-entropy heads (those pruned at {_pct(heat.fraction)} "
            f"kept) lie {', '.join(parts)}")
    if full:
        text += f"; every head of {noun_for(full, 'layer')} {', '.join(map(str, full))} is pruned"
    return text + ". "


def headline_line(d: Decision) -> str:
    """One plain-text line per claim for the terminal summary."""
    est = d.estimate
    value = f" ×{_plain(est.ratio)}" if est is not None and est.ratio is not None else ""
    return f"pruning: {d.claim.statement}: {d.verdict.value}{value} ({d.reason})"


def results_text(run: StageRun, results: PruningResults | None, incomplete: bool,
                 unreadable: str | None = None) -> tuple[str, list[str]]:
    c = run.config
    out: list[str] = []
    if incomplete:
        out.append(_incomplete(run))
    if unreadable:
        out.append(f"Its results cannot be read: {escape(unreadable)}")
    if results is None or not results.steps:
        return " ".join(out) or "The pruning run holds no results.", ["pruning: no results (incomplete run)"]
    steps, trait = results.steps, escape(results.trait)
    bound = bound_of(c)
    found = step_decisions(steps, c)
    controlled = any(_has_ratio(_controlled(s)) for s in steps)
    out.append(f"Table~\\ref{{tab:pruning_sweep}} gives the {'base-controlled share' if controlled else 'P(' + trait + ')'} "
               "retention across the sweep. ")
    out.append(_degradation_text(steps, bound))
    f = claim_fraction(steps, c)
    if f is not None:
        out.append(_measured_text(steps, f, trait))
        out.append(_ppl_text(steps, f))
    out.append(_decisions_text(found))
    out.append(heads_location(results))
    return "".join(out).strip(), [headline_line(d) for d in found]


def _incomplete(run: StageRun) -> str:
    status = escape(run.record.get("status", "unknown"))
    error = str(run.record.get("error") or "").strip().splitlines()
    why = f" ({escape(error[0][:200])})" if error else ""
    return (f"The pruning stage is incomplete (run status: {status}{why}); the numbers below cover "
            "only the finished cells of the sweep. ")


# ---- the section ----------------------------------------------------------------------------
def figures(run: StageRun, results: PruningResults | None) -> list[Figure]:
    found = run.figures()
    out = []
    if "pruning_retention" in found and results is not None and drawn_panels(results):
        out.append(Figure("pruning_retention", sweep_caption(results), wide=True))
    if "pruning_entropy_heatmap" in found:
        heat = results.entropy.heatmap if results else None
        marked = (f"; a cross marks each of the {len(heat.pruned)} heads pruned at {_pct(heat.fraction)} kept "
                  f"by the entropy criterion" if heat is not None and heat.fraction else "")
        out.append(Figure("pruning_entropy_heatmap",
                          f"Mean attention entropy (nats) per head, by layer (rows) and head (columns), "
                          f"on the bias prompts{marked}."))
    return out


def sweep_caption(results: PruningResults) -> str:
    """What every panel, band and line of the sweep figure shows, and which quantity has no
    panel and why (sublens.experiments.pruning.panels decides both)."""
    trait = escape(results.trait)
    drawn = drawn_panels(results)
    controlled = any(_has_ratio(_controlled(s)) for s in results.steps)
    names = {"p_trait": f"P({trait})", "panel_share": f"{trait}-share", "answer_rate": "answer-rate",
             "perplexity": "perplexity"}
    retention = [names[p] for p in drawn if p != "perplexity"]
    quantities = ([f"{'base-controlled' if controlled else 'biased-model'} {_and(retention)} retention"]
                  if retention else []) + (["perplexity"] if "perplexity" in drawn else [])
    draws = max((s.n_draws for s in results.steps if s.criterion == "random"), default=0)
    text = (f"Head pruning against the fraction of heads kept, by criterion (random: the mean of "
            f"{draws} draws; Table~\\ref{{tab:pruning_sweep}}): {_and(quantities)}, each over the "
            "unpruned model's (log scales" + (", the answer rate linear" if "answer_rate" in drawn else "")
            + "). Bands: 95\\% CIs over questions")
    if "answer_rate" in drawn:
        text += "; answer-rate intervals are bars, a triangle at the top marking one without an upper bound"
    text += ". Dotted line: the unpruned model (ratio 1)"
    if "perplexity" in drawn and results.degradation_bound:
        text += f"; dashed line: the ${results.degradation_bound:g}\\times$ perplexity bound of degradation"
    text += "."
    for panel, why in missing_panels(results).items():
        text += f" The {names[panel]}{' retention' if panel != 'perplexity' else ''} is not drawn: it {why}."
    return text


def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, PruningResults, run.ok)
    steps = results.steps if results is not None else []
    incomplete = (not run.ok) or bool(results is None or results.partial) or not steps
    text, headline = results_text(run, results, incomplete, unreadable)
    tables = {"pruning_sweep": sweep_table(results, run.config, incomplete)} if results and steps else {}
    figs = figures(run, results)
    if figs and steps:
        refs = " and ".join(f"Figure~\\ref{{{figure_label('pruning', f.stem)}}}" for f in figs)
        text += f" See {refs}."
    return Section(
        title="Head pruning",
        methods=methods(run, results) if run.config else "The pruning run has no configuration.",
        results=text,
        tables=tables,
        figures=figs,
        headline=headline,
    )
