"""The results paragraph of the pruning section and its terminal headline: degradation, what
was measured at the claim fraction by criterion, the decisions in words, and where the
pruned heads lie."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise

from sublens.claims import Decision
from sublens.experiments.pruning.results import ControlledRateRetention, PruningResults, Step
from sublens.report.latex import escape, noun_for
from sublens.report.sections.pruning.deciding import decisions
from sublens.report.sections.pruning.floats import _ci_text, _ppl
from sublens.report.sections.pruning.reading import (
    Interval,
    _and,
    _controlled,
    _has_ratio,
    _pct,
    _plain,
    _retention,
    _step,
    bound_of,
    claim_fraction,
    damage,
    last_inside,
)
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_text, decisions_latex, scope_words, verdict_label


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
            parts.append(
                f"{who} exceeds it already at the first pruned fraction"
                + (f" ({_pct(first)} kept)" if first is not None else "")
            )
        else:
            stays = "stays" if len(criteria) == 1 else "stay"
            parts.append(f"{who} {stays} inside it down to {_pct(last)} of heads kept")
    return f"Against the ${bound:g}\\times$ perplexity bound, {'; '.join(parts)}. "


def _measured_text(steps: Sequence[Step], f: float, trait: str) -> str:
    """What was measured at the claim fraction, in words that claim nothing; the criteria whose
    retention is of one kind share one sentence."""
    out = []
    entropy, reverse, random = (_step(steps, f, c) for c in ("entropy", "reverse", "random"))
    lead = f"With {_pct(f)} of heads kept ({_pct(1 - f)} pruned)"
    others = [(name, step) for name, step in (("reverse", reverse), ("random", random)) if step is not None]
    if entropy is not None and entropy.controlled is not None and _has_ratio(entropy.controlled.panel_share):
        base_own = entropy.base.retention.p_trait if entropy.base else None
        out.append(
            f"{lead}, entropy-ranked pruning leaves a base-controlled {trait}-share retention of "
            f"{_ci_text(_controlled(entropy))} and a base-controlled P({trait}) retention of "
            f"{_ci_text(_controlled(entropy, 'p_trait'))}; on their own, the biased model keeps "
            f"P({trait}) {_ci_text(_retention(entropy))} and the base model "
            f"{_ci_text(base_own)}. "
        )
        rate = entropy.controlled.answer_rate
        if rate:
            out.append(
                "The base-controlled answer-rate retention is "
                + (_ci_text(rate) if rate.ratio is not None else _undefined_rate(rate, trait))
                + ". "
            )
        controlled = [(n, st) for n, st in others if _has_ratio(_controlled(st))]
        own = [(n, st) for n, st in others if not _has_ratio(_controlled(st))]
        out += [
            _criteria_sentence(controlled, f"base-controlled {trait}-share", _controlled),
            _criteria_sentence(own, f"biased-model P({trait})", _retention),
        ]
    elif entropy is not None:
        listed = [
            f"{_ci_text(_retention(entropy))} under entropy-ranked pruning",
            *(f"{_ci_text(_retention(st))} under the {_criterion_words(n, st)}" for n, st in others),
        ]
        out.append(
            f"{lead}, the biased model's own P({trait}) retention (pruned / unpruned, no base "
            f"control) is {_and(listed)}. "
        )
    else:
        out.append(_criteria_sentence(others, f"biased-model P({trait})", _retention))
    return "".join(out)


def _criterion_words(name: str, step: Step) -> str:
    return f"{name} criterion" + (f" ({step.n_draws} draws)" if name == "random" else "")


def _criteria_sentence(cells: Sequence[tuple[str, Step]], kind: str, value: Callable[[Step], Interval | None]) -> str:
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
    claims = ". ".join(
        f"{claim_text(d.claim.statement)}: \\textbf{{{verdict_label(d)}}}. Estimand: "
        f"{claim_text(d.claim.estimand)}; unit of inference: the {d.claim.unit}"
        for d in found
    )
    return (
        f"Neither claim can be decided, because {claim_text(reason)}. {claims}. To settle both: {claim_text(settle)}. "
    )


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
    parts = [
        f"{sum(layers[layer] for layer in range(a, b))} in layers {a}--{b - 1}" for a, b in pairwise(edges) if b > a
    ]
    full = [layer for layer, n in sorted(layers.items()) if n_heads and n == n_heads]
    text = (
        f"The {len(pruned)} highest-entropy heads (those pruned at {_pct(heat.fraction)} kept) lie {', '.join(parts)}"
    )
    if full:
        text += f"; every head of {noun_for(full, 'layer')} {', '.join(map(str, full))} is pruned"
    return text + ". "


def headline_line(d: Decision) -> str:
    """One plain-text line per claim for the terminal summary."""
    est = d.estimate
    value = f" ×{_plain(est.ratio)}" if est is not None and est.ratio is not None else ""
    return f"pruning: {d.claim.statement}: {d.verdict.value}{value}{scope_words(d)} ({d.reason})"


def results_text(
    run: StageRun, results: PruningResults | None, incomplete: bool, unreadable: str | None = None
) -> tuple[str, list[str]]:
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
    found = decisions(results, c)
    controlled = any(_has_ratio(_controlled(s)) for s in steps)
    out.append(
        f"Table~\\ref{{tab:pruning_sweep}} gives the {'base-controlled share' if controlled else 'P(' + trait + ')'} "
        "retention across the sweep. "
    )
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
    return (
        f"The pruning stage is incomplete (run status: {status}{why}); the numbers below cover "
        "only the finished cells of the sweep. "
    )


def _undefined_rate(rate: ControlledRateRetention, trait: str) -> str:
    """Why the answer-rate retention has no value: which reference model never named the trait."""
    zero = [
        name
        for name, value in (
            ("the unpruned biased model", rate.rates.biased_unpruned),
            ("the pruned base model", rate.rates.base),
            ("the unpruned base model", rate.rates.base_unpruned),
        )
        if value == 0
    ]
    if not zero:
        return f"undefined ({escape(rate.note or 'a rate is 0')})"
    return f"undefined: no sampled answer of {' or '.join(zero)} named the {trait}, so a denominator is 0"
