"""The results paragraph of the hybrid section and its terminal headline: the LM-head swap,
the transplant contrast, the depth range that carries the bias, degraded hybrids, activation
patching, each with its decision in words."""

from __future__ import annotations

from sublens.claims import Decision
from sublens.experiments.hybrid.results import HybridResults, Patching
from sublens.report.latex import escape, fmt, fmt_ci
from sublens.report.sections.hybrid.deciding import decisions
from sublens.report.sections.hybrid.floats import (
    DIRECTION_TITLES,
    _frac_text,
    _patch_cell,
    _patch_text,
    _plain,
)
from sublens.report.sections.hybrid.reading import (
    METRIC_NAMES,
    Cell,
    _axis,
    _cell,
    _layers_words,
    logit_difference_words,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import decisions_latex, scope_words


def _tex(text: str) -> str:
    """Plain text (a Decision's sentence) for LaTeX: escaped, with × as $\\times$."""
    return escape(text).replace(r"\texttt{U+00D7}", r"$\times$").replace(r"\texttt{U+2212}", "$-$")


def carrying_range(all_cells: list[Cell], group: str = "mlp") -> Cell | None:
    """The ranged cell bringing the most bias into base, if its CI clears every other range's
    (descriptive: which depth range to name, not a verdict)."""
    ranged = [
        c
        for c in all_cells
        if c.direction == "into_base"
        and c.group == group
        and c.layers is not None
        and c.fraction is not None
        and not c.degraded
    ]
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
        text = (
            f"LM-head swap: the base model with the biased LM head reaches a bias fraction of "
            f"{_frac_text(brought)}, and the biased model with the base LM head keeps {_frac_text(kept)}. "
        )
    return text + _decision_text(d)


def _transplant_text(
    mlp: tuple[Cell | None, Cell | None], attention: tuple[Cell | None, Cell | None], d: Decision
) -> str:
    text = ""
    for name, (brought, kept) in (("MLP", mlp), ("attention", attention)):
        if brought is None and kept is None:
            text += f"The whole-group {name} transplants were not measured. "
            continue
        text += (
            f"{name[0].upper() + name[1:]} transplant: the base model with all biased {name} layers reaches "
            f"{_frac_text(brought)}; the biased model with all base {name} layers keeps {_frac_text(kept)}. "
        )
    return text + _decision_text(d)


def _range_text(all_cells: list[Cell]) -> tuple[str, Cell | None]:
    best = carrying_range(all_cells)
    ranged = [c for c in all_cells if c.direction == "into_base" and c.group == "mlp" and c.layers]
    if not ranged:
        return "", None
    if best is None or best.layers is None:
        return "No single MLP depth range is shown to bring more of the bias than every other (overlapping CIs). ", None
    removed = _cell(all_cells, "into_biased", "mlp", best.layers)
    text = (
        f"By depth, transplanting MLP {_layers_words(best.layers)} brings the largest fraction into the "
        f"base ({_frac_text(best)}; its CI clears every other range's)"
    )
    if removed is not None:
        text += f", and replacing them in the biased model leaves {_frac_text(removed)}"
    return text + ". ", best


def _degraded_text(all_cells: list[Cell], factor: float | None) -> str:
    bad = sorted({f"{DIRECTION_TITLES.get(c.direction, c.direction)} {c.title}" for c in all_cells if c.degraded})
    if not bad:
        within = f": every perplexity is within {fmt(factor, 1)}$\\times$ the base model's" if factor else ""
        return f"No hybrid is degraded{within}. "
    return f"Degraded hybrids (gibberish by perplexity; their fractions are not evidence): {escape('; '.join(bad))}. "


def _patching_text(patching: Patching | None, d: Decision) -> str:
    if patching is None:  # the decision's reason says it was not run: not said twice
        return _decision_text(d)
    gap = patching.gap
    text = (
        f"Activation patching (Table~\\ref{{tab:hybrid_patching}}): the biased model's "
        f"{logit_difference_words(patching, defined=True)} exceeds the base model's by "
        f"{fmt_ci(gap.mean, gap.ci_low, gap.ci_high)} logits. "
    )
    parts = []
    for direction, verb in (("into_base", "restores"), ("into_biased", "removes")):
        mlp, attn = _patch_cell(patching, direction, "mlp", "all"), _patch_cell(patching, direction, "attention", "all")
        if mlp is None or attn is None:
            continue
        donor = "biased" if direction == "into_base" else "base"
        parts.append(
            f"patching every layer's MLP outputs from the {donor} run {verb} {_patch_text(mlp)} of the "
            f"gap, every layer's attention outputs {_patch_text(attn)}"
        )
    if parts:
        text += "Over the whole depth, " + "; ".join(parts) + ". "
    return text + _decision_text(d)


def _incomplete(run: StageRun) -> str:
    status = escape(run.record.get("status", "unknown"))
    error = str(run.record.get("error") or "").strip().splitlines()
    why = f" ({escape(error[0][:200])})" if error else ""
    return (
        f"The hybrid stage is incomplete (run status: {status}{why}); only the hybrids measured "
        "before it stopped are reported. "
    )


def _headline(d: Decision, numbers: str = "") -> str:
    return f"hybrid: {numbers}{d.claim.name} {d.verdict.value}{scope_words(d)} ({d.reason})"


def results_text(
    run: StageRun, results: HybridResults | None, all_cells: list[Cell], incomplete: bool, unreadable: str | None = None
) -> tuple[str, list[str]]:
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
        out.append(
            f"Re-measured in this stage, the biased model's {metric} is "
            f"{fmt_ci(axis.ratio, axis.ci_low, axis.ci_high)}$\\times$ the "
            "base model's. "
        )
    if axis is None or axis.underpowered:
        out.append(
            "The biased model is not shown to differ from the base on this metric (its CI includes no "
            "change), so the bias fractions cannot be read and the transplant claims cannot be decided. "
        )
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
        _headline(
            head_d,
            f"LM-head swap bias fraction {_plain(head[0])} (biased head into base), "
            f"{_plain(head[1])} (biased body, base head); ",
        ),
        _headline(
            transplant_d,
            f"MLP transplant {_plain(mlp[0])} / {_plain(mlp[1])}, attention "
            f"{_plain(attention[0])} / {_plain(attention[1])}"
            + (f", {best.component} {_plain(best)}" if best else "")
            + "; ",
        ),
        _headline(patch_d),
    ]
    return "".join(out).strip(), headline
