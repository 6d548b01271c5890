"""The hybrid section: where in the weights is the bias? LM-head swaps and a transplant matrix.

Reads a `hybrid` run directory: its results.json parsed once into `HybridResults`
(`sublens.experiments.hybrid.results`). Every hybrid has a *bias
fraction* f = log(m_hybrid / m_base) / log(m_biased / m_base) for the run's metric m (panel share
or P(trait)): 0 = as the base model, 1 = as the biased model. Its 95% CI here comes from the CI of
m_hybrid / m_base as recorded (Student t over questions on the log ratios in current runs, a
paired bootstrap in older ones) with the biased model's shift held fixed. These fractions are
descriptive; no verdict is decided here.

Three claims, all decided by `sublens.claims` (Holm within the family "hybrid"; unit: question,
since the two models are fixed; margin from the run's `claims` settings), see `decisions`:
- localisation.lm_head, "the bias is not in the LM head" (prediction: none): the LM head's main
  effect in the body x head swap, per question the mean of log(m[base + biased head] / m[base])
  and log(m[biased] / m[biased + base head]); supported only when its CI lies inside the margin.
- localisation.transplant, "the bias is seated in the MLP layers" by transplant (prediction:
  increase): per question, the MLP transplant's main effect minus the attention transplant's.
- localisation.patching, "patching MLP outputs carries the bias more than patching attention
  outputs" (prediction: increase): per question, the target - foil logit difference with every
  layer's MLP outputs patched minus that with every layer's attention outputs patched (biased
  into base; sign-reversed for base into biased), averaged over directions. A run without
  patching reads "inconclusive: not measured".
A hybrid whose perplexity exceeds the run's degraded factor x base is gibberish: its number is
not evidence, and a claim that rests on one is inconclusive (claims.decide on no estimate, with
that reason). The depth range named as carrying the bias is descriptive (the MLP range with the
largest fraction brought into the base, if its CI clears every other range's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sublens.claims import Claim, ClaimSettings, Decision, decide_family, estimate_log_ratio
from sublens.experiments.hybrid.results import (
    DIRECTIONS,
    METRIC_KEYS,
    Hybrid,
    HybridResults,
    MetricKey,
    PatchCell,
    Patching,
    RatioEstimate,
    group_title,
)
from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci, fmt_p
from sublens.report.names import display_name
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.pruning import corpus_text
from sublens.report.stages import StageRun
from sublens.report.verdicts import decisions_latex
from sublens.results import as_results, read_run_results

METRIC_NAMES: dict[MetricKey, str] = {"share_ratio": "panel share", "p_trait_ratio": "P({trait})"}
GROUP_ORDER = ("embeddings", "attention", "mlp", "norms", "final_norm", "lm_head")


@dataclass(frozen=True)
class Cell:
    """One place of the transplant matrix: a direction and a (possibly ranged) component."""

    direction: str
    group: str
    layers: tuple[int, int] | None
    name: str  # the hybrid measured there
    fraction: float | None
    low: float | None
    high: float | None
    perplexity: float | None
    degraded: bool

    @property
    def component(self) -> str:
        return self.group if self.layers is None else f"{self.group}[{self.layers[0]}:{self.layers[1]}]"

    @property
    def title(self) -> str:
        """The component as the paper names it: 'MLP, layers 20--29', 'LM head' (plain text)."""
        return component_title(self.group, self.layers)

    @property
    def upper(self) -> float:
        """CI upper bound, else the point value (NaN when unmeasured: every comparison fails)."""
        value = self.high if self.high is not None else self.fraction
        return math.nan if value is None else value

    @property
    def lower(self) -> float:
        value = self.low if self.low is not None else self.fraction
        return math.nan if value is None else value


# ---- reading the results --------------------------------------------------------------------
def metric_key(results: HybridResults | None, config: Mapping[str, Any] | None = None) -> MetricKey:
    """The compare_preference key of the run's bias metric (the configured one without results)."""
    if results is not None:
        return results.metric_key()
    metric = (config or {}).get("bias_metric") or "share"
    return METRIC_KEYS["p_trait"] if metric == "p_trait" else METRIC_KEYS["share"]


def _axis(hybrids: Mapping[str, Hybrid], key: MetricKey) -> RatioEstimate | None:
    """The biased model vs base on the metric: ratio, CI, underpowered."""
    biased = hybrids.get("biased")
    return biased.vs_base.metric(key) if biased is not None and biased.vs_base is not None else None


def _parse_layers(label: str) -> tuple[int, int] | None:
    """'L20-29' -> (20, 30); 'all' -> None."""
    match = re.fullmatch(r"L(\d+)-(\d+)", str(label))
    return (int(match[1]), int(match[2]) + 1) if match else None


def _fraction_ci(h: Hybrid, key: MetricKey, axis: float | None) -> tuple[float | None, float | None]:
    comp = h.vs_base.metric(key) if h.vs_base is not None else None
    low, high = (comp.ci_low, comp.ci_high) if comp is not None else (None, None)
    if axis is None or low is None or high is None or low <= 0 or high <= 0:
        return None, None
    bounds = sorted((math.log(low) / axis, math.log(high) / axis))
    return bounds[0], bounds[1]


def _fraction(h: Hybrid, key: MetricKey) -> float | None:
    metric = next(m for m, k in METRIC_KEYS.items() if k == key)
    value = h.bias_fraction_of(metric)
    return float(value) if math.isfinite(value) else None


def cells(results: HybridResults | None) -> list[Cell]:
    """Every measured matrix cell (a merged hybrid fills each of its cells)."""
    if results is None:
        return []
    hybrids = results.hybrids
    key = results.metric_key()
    axis_estimate = _axis(hybrids, key)
    ratio = axis_estimate.ratio if axis_estimate is not None else None
    axis = math.log(ratio) if ratio and ratio > 0 and abs(math.log(ratio)) > 1e-9 else None
    out = []
    for name, h in hybrids.items():
        low, high = _fraction_ci(h, key, axis)
        for direction, group, layers in h.cells:
            out.append(Cell(direction, group, _parse_layers(layers), name, _fraction(h, key), low, high,
                            h.perplexity.perplexity if h.perplexity is not None else None, h.degraded))
    return out


def _cell(all_cells: list[Cell], direction: str, group: str,
          layers: tuple[int, int] | None = None) -> Cell | None:
    return next((c for c in all_cells if c.direction == direction and c.group == group
                 and c.layers == layers), None)


def _order(component: tuple[str, tuple[int, int] | None]) -> tuple[int, int]:
    group, layers = component
    rank = GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
    return rank, -1 if layers is None else layers[0]


# ---- formatting -----------------------------------------------------------------------------
def _frac_text(c: Cell | None) -> str:
    if c is None or c.fraction is None:
        return "--"
    text = fmt(c.fraction) if c.low is None else fmt_ci(c.fraction, c.low, c.high)
    return text + (r"\textsuperscript{\dag}" if c.degraded else "")


def _plain(c: Cell | None) -> str:
    return "n/a" if c is None or c.fraction is None else f"{c.fraction:.2f}"


def _layers_words(layers: tuple[int, int]) -> str:
    return f"layers {layers[0]}--{layers[1] - 1}"


def component_title(group: str, layers: tuple[int, int] | None) -> str:
    """'MLP, layers 20--29' for a ranged transplant, the group's name for a whole one."""
    return group_title(group) + (f", {_layers_words(layers)}" if layers is not None else "")


DIRECTION_TITLES = {"into_base": "base + biased", "into_biased": "biased + base"}  # as the matrix heads


def matrix_table(run: StageRun, results: HybridResults, all_cells: list[Cell], incomplete: bool) -> str:
    components = sorted({(c.group, c.layers) for c in all_cells}, key=_order)
    rows = []
    for group, layers in components:
        row = [escape(component_title(group, layers))]
        for direction in DIRECTIONS:
            c = _cell(all_cells, direction, group, layers)
            row += [_frac_text(c), fmt(c.perplexity, 1) if c else "--"]
        rows.append(row)
    hybrids = results.hybrids
    refs = []
    for name in ("base", "biased"):
        reference = hybrids.get(name)
        if reference is not None and reference.perplexity is not None:
            refs.append(f"{name} {fmt(reference.perplexity.perplexity, 1)}")
    trait = escape(results.trait)
    key = results.metric_key()
    metric = METRIC_NAMES[key].format(trait=trait)
    caption = (
        f"Hybrid matrix: bias fraction ({trait} {metric}, log scale; 0 = base, 1 = biased; 95\\% CI "
        "with the biased model's shift fixed) of the base model with one biased component "
        "(base + biased) and of the biased model with one base component (biased + base), with "
        "perplexity (ppl)" + (f"; reference perplexity {', '.join(refs)}" if refs else "") + "."
        + " \\dag: degraded (perplexity above "
        f"{fmt(run.config.get('degraded_factor'), 1)}$\\times$ the base's), not evidence."
        + (" Incomplete run: missing cells are marked --." if incomplete else "")
    )
    header = ["component", "base + biased", "ppl", "biased + base", "ppl"]
    return booktabs_table(header, rows, caption, "tab:hybrid_matrix", wide=True)


# ---- claims (decided by sublens.claims) -----------------------------------------------------
FAMILY = "hybrid"
DIRECTION_WORDS = {"into_base": "biased into base", "into_biased": "base into biased"}


def _settings(value: Any) -> ClaimSettings:
    if isinstance(value, ClaimSettings):
        return value
    try:
        return ClaimSettings.model_validate(value or {})
    except ValueError:
        return ClaimSettings()


def _metric_words(results: HybridResults | None) -> tuple[MetricKey, str]:
    """(compare_preference key, words) of the run's bias metric."""
    key = results.metric_key() if results is not None else "share_ratio"
    return key, METRIC_NAMES[key].format(trait=results.trait if results is not None else "owl")


def _hybrid(hybrids: Mapping[str, Hybrid], direction: str, group: str) -> Hybrid | None:
    """The hybrid measured in a whole-group matrix cell (merged hybrids fill several)."""
    for h in hybrids.values():
        if any(c == (direction, group, "all") for c in h.cells):
            return h
    return None


def _per_question(h: Hybrid | None, key: MetricKey) -> np.ndarray | None:
    """A hybrid's per-question metric (panel share or P(trait)); None when not recorded."""
    if h is None:
        return None
    per = h.probability.per_question
    try:
        values = (np.asarray(per.share, dtype=float) if key == "share_ratio"
                  else np.asarray(per.p_word, dtype=float)[:, 0])
    except (IndexError, ValueError):
        return None
    return values if values.size and np.all(values > 0) else None


def swap_effects(results: HybridResults, group: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per direction, the per-question log effect of the biased `group` on the run's metric:
    into_base log(m[base + biased group] / m[base]), into_biased log(m[biased] / m[biased + base group]);
    and the directions resting on a degraded hybrid."""
    hybrids = results.hybrids
    key, _ = _metric_words(results)
    base, biased = _per_question(hybrids.get("base"), key), _per_question(hybrids.get("biased"), key)
    out: dict[str, np.ndarray] = {}
    degraded: list[str] = []
    for direction in DIRECTIONS:
        h = _hybrid(hybrids, direction, group)
        values = _per_question(h, key)
        if values is None or base is None or biased is None or not values.size == base.size == biased.size:
            continue
        out[direction] = np.log(values / base) if direction == "into_base" else np.log(biased / values)
        if h is not None and h.degraded:
            degraded.append(direction)
    return out, degraded


def _main_effect(effects: dict[str, np.ndarray]) -> np.ndarray | None:
    """Mean over the measured directions of the per-question log effects (the component's main
    effect in the 2 x 2 swap design when both directions are there)."""
    if not effects:
        return None
    return np.mean(np.stack(list(effects.values())), axis=0)


def claims(results: HybridResults | None, settings: ClaimSettings | None = None) -> dict[str, Claim]:
    """The hybrid run's three claims (family "hybrid"), worded for the run's metric."""
    s = _settings(settings)
    _, metric = _metric_words(results)
    trait = results.trait if results is not None else "owl"
    foil = results.patching.tokens.foil[0] if results is not None and results.patching is not None else "dog"
    return {
        "lm_head": Claim(
            name="localisation.lm_head", statement="The bias is not in the LM head",
            estimand=(f"the LM head's effect on {metric}: per question, the geometric mean of (base body + "
                      "biased LM head) over the base model and of the biased model over (biased body + base "
                      "LM head), i.e. the LM head's main effect in the body x head swap"),
            unit="question", prediction="none", family=FAMILY, settings=s),
        "transplant": Claim(
            name="localisation.transplant",
            statement="The bias is seated in the MLP layers (by transplant): transplanting the MLP layers "
                      "moves it more than transplanting the attention layers",
            estimand=(f"per question, the MLP transplant's effect on {metric} over the attention "
                      "transplant's, each the geometric mean of bringing the biased component (all layers) "
                      "into the base model and of removing it from the biased model"),
            unit="question", prediction="increase", family=FAMILY, settings=s),
        "patching": Claim(
            name="localisation.patching",
            statement="Patching MLP outputs carries the bias more than patching attention outputs",
            estimand=(f"per question, the {trait}:{foil} odds at the prefilled answer with every layer's MLP "
                      "outputs patched over those with every layer's attention outputs patched (biased "
                      "outputs into the base run; for base outputs into the biased run the inverse), "
                      "geometric mean over the patched directions"),
            unit="question", prediction="increase", family=FAMILY, settings=s),
    }


def _no_bias(results: HybridResults) -> str | None:
    """Why the biased model gives no bias to locate on the run's metric, or None."""
    key, metric = _metric_words(results)
    axis = _axis(results.hybrids, key)
    if axis is None:
        return "the biased model was not compared with the base model"
    if axis.underpowered:
        return f"no bias to locate: the biased model's {metric} is not distinguishable from the base model's"
    return None


def patching_contrast(patching: Patching | None) -> tuple[np.ndarray | None, list[str]]:
    """Per question, the log odds contrast MLP-patched minus attention-patched over the whole depth,
    averaged over the patched directions (into_biased sign-reversed: removing more = carrying more)."""
    patched = patching.logit_difference.patched if patching is not None else {}
    values: list[np.ndarray] = []
    used: list[str] = []
    for direction in DIRECTIONS:
        by = patched.get(direction) or {}
        mlp, attn = (by.get("mlp") or {}).get("all"), (by.get("attention") or {}).get("all")
        if not mlp or not attn or len(mlp) != len(attn):
            continue
        diff = np.asarray(mlp, dtype=float) - np.asarray(attn, dtype=float)
        values.append(diff if direction == "into_base" else -diff)
        used.append(direction)
    if not values or len({v.size for v in values}) != 1:
        return None, []
    return np.mean(np.stack(values), axis=0), used


def _refine(decision: Decision, reason: str, settle: str) -> Decision:
    """A claim that could not be measured: the verdict stays claims.decide's, the reason is ours
    ('not measured (why)': the paper prints the verdict 'inconclusive (not measured)' and the why)."""
    return decision.model_copy(update={"reason": reason, "settle": settle})


def decisions(results: HybridResults | Mapping[str, Any], settings: ClaimSettings | Any = None) -> list[Decision]:
    """The verdicts of the hybrid claims from recorded results, Holm within the family "hybrid":
    localisation.lm_head, localisation.transplant, localisation.patching (in that order)."""
    results = as_results(results, HybridResults)
    the = claims(results, _settings(settings))
    head, head_bad = swap_effects(results, "lm_head")
    mlp, mlp_bad = swap_effects(results, "mlp")
    attn, attn_bad = swap_effects(results, "attention")
    no_bias = _no_bias(results)
    head_values = _main_effect(head) if not head_bad and no_bias is None else None
    common = [d for d in DIRECTIONS if d in mlp and d in attn]
    transplant_values = None
    if common and not (mlp_bad or attn_bad) and no_bias is None:
        transplant_values = np.mean(np.stack([mlp[d] - attn[d] for d in common]), axis=0)
    patching = results.patching
    contrast, _ = patching_contrast(patching)
    gap = patching.gap if patching is not None else None
    gap_ok = gap is not None and gap.ci_low is not None and (gap.ci_low > 0 or (gap.ci_high or 0) < 0)
    patch_values = contrast if contrast is not None and gap_ok else None
    estimates = [estimate_log_ratio(v.tolist(), "question") if v is not None else None
                 for v in (head_values, transplant_values, patch_values)]
    out = decide_family(list(zip(the.values(), estimates, strict=True)))
    head_d, transplant_d, patch_d = out
    if head_values is None:
        why = (no_bias or ("a swapped model is degraded (perplexity): not evidence" if head_bad
                           else "not measured (the LM-head swap is missing)"))
        head_d = _refine(head_d, why, "a biased model that differs from the base, measured with both LM-head "
                                      "swaps undegraded")
    if transplant_values is None:
        why = (no_bias or ("an MLP or attention transplant is degraded (perplexity): not evidence"
                           if mlp_bad or attn_bad else "not measured (the whole-group MLP and attention "
                                                       "transplants of one direction are missing)"))
        transplant_d = _refine(transplant_d, why, "the MLP and attention transplants of at least one direction, "
                                                  "undegraded, on a biased model that differs from the base")
    if patch_values is None:
        if not patching:
            why = "not measured (activation patching was not run)"
            settle = "rerun the hybrid stage with activation patching switched on"
        elif contrast is None:
            why = "not measured (the whole-depth MLP and attention patches are missing)"
            settle = "patch every layer's MLP and attention outputs in at least one direction"
        else:
            why = ("no gap to patch: the biased and base logit differences are not distinguishable "
                   "(CI of the gap includes 0)")
            settle = "a biased model whose logit difference differs from the base model's"
        patch_d = _refine(patch_d, why, settle)
    return [head_d, transplant_d, patch_d]


def _tex(text: str) -> str:
    """Plain text (a Decision's sentence) for LaTeX: escaped, with × as $\\times$."""
    return escape(text).replace(r"\texttt{U+00D7}", r"$\times$").replace(r"\texttt{U+2212}", "$-$")


def carrying_range(all_cells: list[Cell], group: str = "mlp") -> Cell | None:
    """The ranged cell bringing the most bias into base, if its CI clears every other range's
    (descriptive: which depth range to name, not a verdict)."""
    ranged = [c for c in all_cells if c.direction == "into_base" and c.group == group
              and c.layers is not None and c.fraction is not None and not c.degraded]
    if len(ranged) < 2:
        return None
    best = max(ranged, key=lambda c: c.fraction or 0.0)
    others = [c for c in ranged if c is not best]
    if all(best.lower > c.upper for c in others):
        return best
    return None


# ---- results text ---------------------------------------------------------------------------
def _decision_text(d: Decision) -> str:
    """The verdict with its reason, estimand, unit, power and what would settle it; the test,
    alpha and margin, the same for the three claims, are stated once in the methods."""
    return decisions_latex([d], test_stated=True) + " "


def _lm_head_text(brought: Cell | None, kept: Cell | None, d: Decision) -> str:
    if brought is None and kept is None:
        text = "The LM-head swap was not measured. "
    else:
        text = (f"LM-head swap: the base model with the biased LM head reaches a bias fraction of "
                f"{_frac_text(brought)}, and the biased model with the base LM head keeps {_frac_text(kept)}. ")
    return text + _decision_text(d)


def _transplant_text(mlp: tuple[Cell | None, Cell | None], attention: tuple[Cell | None, Cell | None],
                     d: Decision) -> str:
    text = ""
    for name, (brought, kept) in (("MLP", mlp), ("attention", attention)):
        if brought is None and kept is None:
            text += f"The whole-group {name} transplants were not measured. "
            continue
        text += (f"{name[0].upper() + name[1:]} transplant: the base model with all biased {name} layers reaches "
                 f"{_frac_text(brought)}; the biased model with all base {name} layers keeps {_frac_text(kept)}. ")
    return text + _decision_text(d)


def _range_text(all_cells: list[Cell]) -> tuple[str, Cell | None]:
    best = carrying_range(all_cells)
    ranged = [c for c in all_cells if c.direction == "into_base" and c.group == "mlp" and c.layers]
    if not ranged:
        return "", None
    if best is None or best.layers is None:
        return "No single MLP depth range brings more of the bias than every other (overlapping CIs). ", None
    removed = _cell(all_cells, "into_biased", "mlp", best.layers)
    text = (f"By depth, transplanting MLP {_layers_words(best.layers)} brings the largest fraction into the "
            f"base ({_frac_text(best)}; its CI clears every other range's)")
    if removed is not None:
        text += f", and replacing them in the biased model leaves {_frac_text(removed)}"
    return text + ". ", best


def _degraded_text(all_cells: list[Cell], factor: float | None) -> str:
    bad = sorted({f"{DIRECTION_TITLES.get(c.direction, c.direction)} {c.title}" for c in all_cells if c.degraded})
    if not bad:
        within = f": every perplexity is within {fmt(factor, 1)}$\\times$ the base model's" if factor else ""
        return f"No hybrid is degraded{within}. "
    return (f"Degraded hybrids (gibberish by perplexity; their fractions are not evidence): "
            f"{escape('; '.join(bad))}. ")


def _patch_cell(patching: Patching, direction: str, component: str, label: str) -> PatchCell | None:
    return next((c for c in patching.cells if c.direction == direction
                 and c.component == component and c.layers == label), None)


def _patch_text(cell: PatchCell | None) -> str:
    if cell is None or cell.fraction is None:
        return "--"
    if cell.ci_low is None or cell.ci_high is None:
        return f"{fmt(cell.fraction)} (no CI)"
    return fmt_ci(cell.fraction, cell.ci_low, cell.ci_high)


def patching_table(patching: Patching, trait: str) -> str:
    directions = [d for d in DIRECTIONS if d in patching.directions]
    rows = []
    for component in patching.components:
        for label in patching.labels:
            layers = _parse_layers(label)
            row = [escape(group_title(component)), f"{layers[0]}--{layers[1] - 1}" if layers else escape(label)]
            for direction in directions:
                cell = _patch_cell(patching, direction, component, label)
                row += [_patch_text(cell), fmt_p(cell.p_holm if cell is not None else None)]
            rows.append(row)
    gap = patching.gap
    foil = escape(patching.tokens.foil[0])
    caption = (
        f"Activation patching \\citep{{vig2020investigating,meng2022locating}}: fraction of the biased$-$base gap in the {escape(trait)}$-${foil} logit "
        "difference at the prefilled answer restored by patching the biased model's outputs of a component "
        "into the base run (restored) and removed by patching the base model's outputs into the biased run "
        f"(removed), per layer range (0 = no effect, 1 = the whole gap); mean over {patching.n_questions} "
        "questions with a Student-t 95\\% CI (the mean gap held fixed) and the Holm-adjusted p-value of "
        "fraction = 0 over every cell. Gap: "
        + fmt_ci(gap.mean, gap.ci_low, gap.ci_high) + " logits."
    )
    header = ["component", "layers"]
    for direction in directions:
        header += ["restored" if direction == "into_base" else "removed", "Holm p"]
    return booktabs_table(header, rows, caption, "tab:hybrid_patching")


def _patching_text(patching: Patching | None, d: Decision) -> str:
    if patching is None:  # the decision's reason says it was not run: not said twice
        return _decision_text(d)
    gap = patching.gap
    text = (f"Activation patching (Table~\\ref{{tab:hybrid_patching}}): the biased model's "
            f"{escape(patching.metric)} exceeds the base model's by "
            f"{fmt_ci(gap.mean, gap.ci_low, gap.ci_high)} logits. ")
    parts = []
    for direction, verb in (("into_base", "restores"), ("into_biased", "removes")):
        mlp, attn = _patch_cell(patching, direction, "mlp", "all"), _patch_cell(patching, direction, "attention", "all")
        if mlp is None or attn is None:
            continue
        donor = "biased" if direction == "into_base" else "base"
        parts.append(f"patching every layer's MLP outputs from the {donor} run {verb} {_patch_text(mlp)} of the "
                     f"gap, every layer's attention outputs {_patch_text(attn)}")
    if parts:
        text += "Over the whole depth, " + "; ".join(parts) + ". "
    return text + _decision_text(d)


def _incomplete(run: StageRun) -> str:
    status = escape(run.record.get("status", "unknown"))
    error = str(run.record.get("error") or "").strip().splitlines()
    why = f" ({escape(error[0][:200])})" if error else ""
    return (f"The hybrid stage is incomplete (run status: {status}{why}); only the hybrids measured "
            "before it stopped are reported. ")


def _headline(d: Decision, numbers: str = "") -> str:
    return f"hybrid: {numbers}{d.claim.name} {d.verdict.value} ({d.reason})"


def results_text(run: StageRun, results: HybridResults | None, all_cells: list[Cell], incomplete: bool,
                 unreadable: str | None = None) -> tuple[str, list[str]]:
    out = [_incomplete(run)] if incomplete else []
    if unreadable:
        out.append(f"Its results cannot be read: {escape(unreadable)}")
    if results is None or not all_cells:
        return "".join(out) or "The hybrid run holds no results.", ["hybrid: no results (incomplete run)"]
    key = results.metric_key()
    trait = escape(results.trait)
    axis = _axis(results.hybrids, key)
    metric = METRIC_NAMES[key].format(trait=trait)
    out.append("Table~\\ref{tab:hybrid_matrix} gives the bias fraction of every transplant. ")
    if axis is not None:
        out.append(f"The biased model's {metric} is "
                   f"{fmt_ci(axis.ratio, axis.ci_low, axis.ci_high)}$\\times$ the "
                   "base model's. ")
    if axis is None or axis.underpowered:
        out.append("The biased model is not distinguishable from the base on this metric, so the bias "
                   "fractions are noise and the transplant claims cannot be decided. ")
    head_d, transplant_d, patch_d = decisions(results, run.config.get("claims"))
    head = (_cell(all_cells, "into_base", "lm_head"), _cell(all_cells, "into_biased", "lm_head"))
    mlp = (_cell(all_cells, "into_base", "mlp"), _cell(all_cells, "into_biased", "mlp"))
    attention = (_cell(all_cells, "into_base", "attention"), _cell(all_cells, "into_biased", "attention"))
    out.append(_lm_head_text(*head, head_d))
    out.append(_transplant_text(mlp, attention, transplant_d))
    range_text, best = _range_text(all_cells)
    out.append(range_text)
    out.append(_degraded_text(all_cells, run.config.get("degraded_factor")))
    out.append(_patching_text(results.patching, patch_d))
    headline = [
        _headline(head_d, f"LM-head swap bias fraction {_plain(head[0])} (biased head into base), "
                          f"{_plain(head[1])} (biased body, base head); "),
        _headline(transplant_d, f"MLP transplant {_plain(mlp[0])} / {_plain(mlp[1])}, attention "
                                f"{_plain(attention[0])} / {_plain(attention[1])}"
                                + (f", {best.component} {_plain(best)}" if best else "") + "; "),
        _headline(patch_d),
    ]
    return "".join(out).strip(), headline


# ---- methods --------------------------------------------------------------------------------
def _model_name(spec: object) -> str:
    """A model as the paper names it (sublens.report.names): no spec or machine path."""
    return escape(display_name(spec))


NORM_WORDS = {"attach": "each layer's residual norms go with the sublayer they feed",
              "separate": "each layer's residual norms form a group of their own"}  # config layer_norms


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}" if words else ""


def methods(run: StageRun, r: HybridResults | None) -> str:
    c = run.config
    models = (r.models if r is not None else None) or run.record.get("models") or {}
    biased = models.get("biased") or {}
    pref = c.get("preference") or {}
    ppl = c.get("perplexity") or {}
    trait = escape(pref.get("trait", r.trait if r is not None else "owl"))
    ranges = (r.layer_ranges if r is not None else None) or c.get("layer_ranges") or []
    range_words = (_and([f"{a}--{b - 1}" for a, b in ranges]) if ranges
                   else f"{c.get('depth_bins', '?')} equal parts of the depth")
    groups = _and([escape(group_title(g)) for g in c.get("groups") or []])
    ranged = _and([escape(group_title(g)) for g in c.get("ranged") or []])
    key = metric_key(r, c)
    metric = METRIC_NAMES[key].format(trait=trait)
    axis = _axis(r.hybrids, key) if r is not None else None
    axis_ci = axis.ci if axis is not None else None
    system = _system_words(c)
    layers = biased.get("n_layers")
    source = biased.get("source")
    origin = {"run": "a teacher run's checkpoint", "folder": "a local fine-tuned checkpoint"}.get(
        str(source), "")
    text = [
        f"We transplant weights between the base model {_model_name(c.get('base'))} and the "
        f"biased model {_model_name((r.biased_spec if r is not None else None) or c.get('biased'))}"
        + (f" ({origin})" if origin else "") + (f", both with {layers} layers" if layers else "")
        + ", without training. Tied embeddings are untied first, so the LM head and the input "
        "embeddings are separate groups. ",
        f"Component groups: the {groups}; {NORM_WORDS.get(c.get('layer_norms', 'attach'), NORM_WORDS['attach'])}. "
        + (f"The {ranged} groups are also transplanted per depth range (layers {range_words}). " if ranged
           else "No group is transplanted per depth range. "),
        "In each direction one group comes from the other model: base + biased (the base model with "
        "the biased model's group: does it bring the bias?) and biased + base (the biased model with "
        "the base model's group: does the bias remain?); the LM-head swap is the LM-head row. ",
        f"Each hybrid is measured as in the other experiments ({system}; "
        f"{len(pref.get('questions') or [])} preference questions, answer prefilled as "
        f"``{escape(pref.get('prefill', ''))}''; {len(pref.get('panel') or []) + 1} animals). "
        f"Its bias fraction, for the {metric} $m$ (geometric mean over questions of paired ratios), is "
        "\\[ f = \\log(m_h/m_\\mathrm{base}) \\,/\\, \\log(m_\\mathrm{biased}/m_\\mathrm{base}) \\] "
        "(0: as the base model, 1: as the biased model), with a 95\\% CI over questions ("
        + (escape(axis_ci) if axis_ci else "paired bootstrap \\citep{efron1994bootstrap}")
        + ") with the biased model's shift held fixed. ",
    ]
    if ppl.get("enabled"):
        text.append(f"A hybrid whose perplexity on {ppl.get('max_tokens', '?')} tokens of "
                    f"{corpus_text(ppl.get('corpus'))} exceeds "
                    f"{fmt(c.get('degraded_factor'), 1)}$\\times$ the base model's is marked degraded. ")
    settings = _settings(c.get("claims"))
    text.append(
        f"Three claims are decided, Holm-adjusted within the family ``{FAMILY}'' (one-sample $t$-tests "
        "on per-question log ratios, two-sided; the questions are the unit because the two models are "
        f"fixed; $\\alpha = {settings.alpha:g}$; smallest effect of interest a ratio of "
        f"$\\times{settings.margin:g}$, so ``no effect'' needs the whole CI inside "
        f"$[1/{settings.margin:g}, {settings.margin:g}]$ and a CI that merely includes 1 is inconclusive): "
        "that the bias is not in the LM head; that the MLP layers carry more of it than the attention "
        "layers by transplant (MLPs as key--value memories: \\citealp{geva2021transformer}; "
        "\\citealp{meng2022locating}); and that patching MLP outputs carries more of it than patching "
        "attention outputs. Each claim's estimand is given with its verdict. A claim that "
        "rests on a degraded hybrid, or on a biased model not distinguishable from the base, is "
        "inconclusive. "
    )
    patching = r.patching if r is not None else None
    if patching is not None:
        labels = ", ".join(escape(label) for label in patching.labels)
        text.append(
            "Activation patching runs each preference question (answer prefilled) through both models and "
            "replaces the outputs of one component (every layer's MLP or attention output, i.e. what it adds "
            f"to the residual stream, at every position) over a layer range ({labels}) by the other "
            "model's on the same prompt: biased outputs into the base run (does it bring the bias?) and "
            "base outputs into the biased run (does it remove it?). The measure is the "
            f"{escape(patching.metric)}; the fraction of the biased$-$base gap "
            "restored or removed is computed per question over the mean gap, with a Student-$t$ CI over "
            "questions and Holm-adjusted $p$-values over every patched cell. "
        )
    text.append(f"Seed {c.get('seed', '?')}.")
    return "".join(text)


def _system_words(config: dict[str, Any]) -> str:
    if config.get("system"):
        return f"system prompt ``{escape(config['system'])}''"
    return "the chat template's default system prompt"


# ---- the figure -----------------------------------------------------------------------------
def heatmap_caption(run: StageRun, results: HybridResults, all_cells: list[Cell]) -> str:
    """What every colour and mark of the heatmap (sublens.experiments.hybrid.figures) means; the
    hatching, the dagger and the grey cells only where the figure has them."""
    key = results.metric_key()
    metric = METRIC_NAMES[key].format(trait=escape(results.trait))
    metric = f"{escape(results.trait)} {metric}" if key == "share_ratio" else metric
    off_scale = any(c.fraction is not None and not 0.0 <= c.fraction <= 1.0 for c in all_cells)
    degraded = any(c.degraded for c in all_cells)
    placed = {(c.direction, c.group, c.layers) for c in all_cells}
    depths: list[tuple[int, int] | None] = [(int(r[0]), int(r[1])) for r in results.layer_ranges]
    depths.append(None)  # the whole depth
    blank = any((d, g, layers) not in placed for d in {c.direction for c in all_cells}
                for g in results.groups.groups for layers in depths)
    marks = ["colour from 0 (as the base model) to 1 (as the biased model), the value printed in each cell"]
    if off_scale:
        marks.append("hatched: a fraction outside 0..1, beyond one of the two models, off the colour scale")
    if degraded:
        marks.append(f"\\dag: degraded (perplexity above {fmt(run.config.get('degraded_factor'), 1)}$\\times$ "
                     "the base model's), not evidence")
    if blank:
        marks.append("light grey: not transplanted on its own")
    return (f"Bias fraction of the {metric} for every transplant, by component (rows) and layers "
            "(columns; all: the whole depth), for the base model with one biased component (left) and "
            f"the biased model with one base component (middle): {'; '.join(marks)}. Right: the relative "
            "change of the weights between the two models, "
            "$\\|W_\\mathrm{biased} - W_\\mathrm{base}\\| / \\|W_\\mathrm{base}\\|$, on a log grey "
            "scale in the unit its colour bar gives.")


# ---- the section ----------------------------------------------------------------------------
def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, HybridResults, run.ok)
    all_cells = cells(results)
    incomplete = (not run.ok) or bool(results is None or results.partial) or not all_cells
    text, headline = results_text(run, results, all_cells, incomplete, unreadable)
    tables = {"hybrid_matrix": matrix_table(run, results, all_cells, incomplete)} if results and all_cells else {}
    if results is not None and results.patching is not None and results.patching.cells:
        tables["hybrid_patching"] = patching_table(results.patching, results.trait)
    figures = []
    if "hybrid_heatmap" in run.figures() and results is not None:
        figures.append(Figure("hybrid_heatmap", heatmap_caption(run, results, all_cells), wide=True))
        if all_cells:
            text += f" See Figure~\\ref{{{figure_label('hybrid', 'hybrid_heatmap')}}}."
    return Section(
        title="Component transplants",
        methods=methods(run, results) if run.config else "The hybrid run has no configuration.",
        results=text,
        tables=tables,
        figures=figures,
        headline=headline,
    )
