"""The results paragraphs of the mechanistic section and its terminal headline: the category
tests, the numbers vs the random set, the attribution with its verdict, and the attention to
the number and animal tokens."""

from __future__ import annotations

import math
from typing import Any

from sublens.claims import AssociationDecision, Verdict
from sublens.experiments.mechanistic.results import (
    CategoryAssociation,
    Consistency,
    HeadAttention,
    LabelColumn,
    MechanisticResults,
    NumberRow,
    Spearman,
)
from sublens.report.latex import escape, fmt, fmt_ci, p_is, tt
from sublens.report.sections import Figure, figure_label
from sublens.report.sections.mechanistic.deciding import (
    ATTRIBUTION,
    LABEL_TITLES,
    _num,
    _test,
    _word,
    association_verdict,
)
from sublens.report.stages import StageRun
from sublens.stats import summarize

CLOSURE_TOLERANCE = 1e-3  # logits; a larger DLA closure error means the split is unreliable


SCORE_TITLES = {
    "head_score": "top head's score",
    "mlp_score": "MLP score at the spike",
    "spike_jump": "similarity jump",
    "dla_heads": "DLA of all heads",
    "dla_mlp": "DLA of all MLPs",
    "logit_diff": "logit difference",
}


def _incomplete(run: StageRun) -> str:
    status = run.record.get("status", "unknown")
    return (
        rf"The mechanistic stage is incomplete (run status {tt(status)}; no per-number results "
        r"were saved), so this draft has no mechanistic results; rerun the stage to fill this "
        r"section."
    )


def _intro(figures: list[Figure]) -> str:
    refs = [rf"Figure~\ref{{{figure_label('mechanistic', f.stem)}}}" for f in figures]
    return (
        r"Table~\ref{tab:mechanistic_numbers} lists the per-number measurements"
        + (" and " + " and ".join(refs) + " show them by layer and head" if refs else "")
        + "."
    )


def _mode(counts: dict[str, int]) -> str:
    if not counts:
        return "--"
    label, n = next(iter(counts.items()))
    return rf"{escape(label)} ({n}/{sum(counts.values())})"


def _holm_stats(test: CategoryAssociation, decision: AssociationDecision | None) -> str:
    return (
        rf"$\chi^2$ = {fmt(test.chi2, 1)}, dof {test.dof if test.dof is not None else '?'}, permutation "
        rf"{p_is(test.p_permutation)}, Holm-adjusted "
        rf"{p_is(decision.p_adjusted if decision else None)}, Cram\'er's $V$ = "
        rf"{fmt(test.cramers_v)}"
    )


def _association_sentence(
    consistency: Consistency,
    column: LabelColumn,
    decisions: dict[str, AssociationDecision],
    said: dict[str, str] | None = None,
) -> tuple[str, str]:
    """The label's distribution and its test against the category, and the verdict. `said`:
    the test statistics already given (text -> the label they were given for), so two labels
    that split the numbers alike (the spike layer and its top head, often) do not print the
    same statistics twice; this label's are added to it."""
    counts = consistency.distributions.of(column)
    cats = list(consistency.categories)
    text = f"The {LABEL_TITLES[column]} is most often {_mode(counts.get('all') or {})}"
    if cats:
        by = ", ".join(f"{escape(c)} {_mode(counts.get(c) or {})}" for c in cats)
        text += f"; by category {by}"
    test = _test(consistency, column)
    decision = decisions.get(column)
    verdict = association_verdict(test, decision)
    if verdict == "constant":  # the distribution says nothing the one label does not
        label = next(iter(counts.get("all") or {}), "--")
        return (f"The {LABEL_TITLES[column]} is {escape(label)} for every number in every category.", verdict)
    if verdict == "untested":
        return (text + ". Its dependence on the category was not tested (categories unknown).", verdict)
    assert test is not None
    stats = _holm_stats(test, decision)
    earlier = (said or {}).get(stats)
    if said is not None:
        said.setdefault(stats, LABEL_TITLES[column])
    if earlier is not None:
        same = {
            "depends": "depends",
            "smaller": "depends, by less than the dependence of interest,",
            "unsized": "depends, by an amount not shown,",
        }.get(verdict, "shows no evidence of depending")
        return (
            text + f". Its test against the category gives the same statistics as the {earlier}'s, "
            f"so it likewise {same} on the category."
        ), verdict
    interval = _v_interval(decision)
    if verdict == "depends":
        excess = test.max_excess
        return (
            text + f". It depends on the category ({stats}{interval}; largest excess "
            rf"{escape(excess.label if excess else '?')} in {escape(excess.category if excess else '?')})."
        ), verdict
    if verdict == "smaller":
        return (
            text + f". It depends on the category, but by less than the dependence of interest "
            f"({stats}{interval}; {_v_of_interest(decision)})."
        ), verdict
    if verdict == "unsized":
        return (
            text + f". It depends on the category, by an amount the interval does not place against the "
            f"dependence of interest ({stats}{interval}; {_v_of_interest(decision)})."
        ), verdict
    return text + f". There is no evidence that it depends on the category ({stats}{interval}).", verdict


def _all_shown_small(consistency: Consistency, decisions: dict[str, AssociationDecision]) -> bool:
    """Whether every label column that could be tested has its category claim supported (the
    CI of V inside the dependence of interest)."""
    tested = [c for c in LABEL_TITLES if association_verdict(_test(consistency, c), None) == "independent"]
    return bool(tested) and all(c in decisions and decisions[c].verdict is Verdict.SUPPORTED for c in tested)


def _v_interval(decision: AssociationDecision | None) -> str:
    est = decision.estimate if decision is not None else None
    if est is None or not est.has_interval:
        return ""
    return f", 95\\% CI [{fmt(est.ci_low)}, {fmt(est.ci_high)}]"


def _v_of_interest(decision: AssociationDecision | None) -> str:
    return f"$V$ = {decision.claim.rho_of_interest:g} of interest" if decision is not None else "no margin"


def _category_paragraph(consistency: Consistency, decisions: dict[str, AssociationDecision]) -> str:
    said: dict[str, str] = {}
    found = [_association_sentence(consistency, col, decisions, said) for col in LABEL_TITLES]
    verdicts = {verdict for _, verdict in found}
    parts = [text for text, _ in found]
    counts = list(consistency.categories.values())
    if "unsized" in verdicts and "depends" not in verdicts:
        parts.append(
            "A label depends on the category by an amount the data do not size against the dependence of "
            "interest, so the claim that no consistent head or representation singles out the entangled "
            "numbers remains inconclusive."
        )
    elif "depends" in verdicts:
        parts.append(
            "A category has a layer or head of its own (Holm-adjusted within the "
            "family), which contradicts the claim that no consistent head or "
            "representation singles out the entangled numbers."
        )
    elif _all_shown_small(consistency, decisions):
        r = next(iter(decisions.values())).claim.rho_of_interest
        parts.append(
            f"Every tested label's dependence on the category is shown smaller than $V$ = {r:g} (each CI "
            "inside it), which supports the claim that no consistent head or representation singles out the "
            "entangled numbers by that much."
        )
    elif verdicts & {"independent", "constant", "smaller"}:
        parts.append(
            "No layer or head is shown to single out the entangled numbers; that is absence of "
            "evidence, not evidence of absence, so the claim that none does remains inconclusive"
            + (
                f" (with {min(counts)} numbers per category, a moderate dependence cannot be excluded)."
                if counts and min(counts) < 10
                else "."
            )
        )
    else:
        parts.append(
            "Without categories this run cannot test whether a layer or head singles out the entangled numbers."
        )
    parts.append(_vs_random_sentence(consistency))
    return " ".join(filter(None, parts))


def _vs_random_sentence(consistency: Consistency) -> str:
    vs = consistency.vs_random.by_column() if consistency.vs_random is not None else {}
    tests = [(_num(p), column, c) for column, per in vs.items() for c, p in per.items() if p is not None]
    if not tests:
        return ""
    alpha = consistency.alpha
    significant = sorted(t for t in tests if t[0] < alpha)
    if significant:
        listed = ", ".join(
            rf"{escape(c)} in {SCORE_TITLES.get(col, escape(col))} ({p_is(p)})" for p, col, c in significant
        )
        return (
            f"Against Random, {len(significant)} of {len(tests)} per-category score comparisons "
            f"are significant (uncorrected): {listed}."
        )
    p, column, c = min(tests)
    # Non-significance is not sameness: no equivalence test is made here, so nothing is said equal.
    return (
        f"No per-category score comparison with Random is significant ({len(tests)} permutation tests, "
        rf"uncorrected; smallest {p_is(p)}, {escape(c)} in "
        f"{SCORE_TITLES.get(column, escape(column))}); this does not show the categories alike."
    )


def _mean_ci(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "--"
    s = summarize(finite, seed=0)
    return fmt_ci(s["mean"], s["ci_low"], s["ci_high"])


def _corr(c: Spearman) -> str:
    holm = p_is(c.p_holm).replace("$p$", "Holm-adjusted $p$")
    return rf"$\rho$ = {fmt(c.rho)} ({p_is(c.p)}; {holm})"


def _pct(value: Any) -> str:
    v = _num(value)
    return "--" if math.isnan(v) else rf"{100 * v:.0f}\%"


def _verdict_sentence(decision: AssociationDecision) -> str:
    """The claim's verdict with its reason and what would settle it (LaTeX)."""
    text = (
        rf"The claim that {escape(_sentence_inside(decision.claim.statement))}: "
        rf"\emph{{{decision.verdict.value}}} ({escape(decision.reason)})"
    )
    if decision.verdict is Verdict.SUPPORTED:
        text += (
            r"; this is an association in the model reading the number-priming prompt, "
            r"through direct paths only, not the location of a learned bias"
        )
    if decision.settle:
        text += f"; to settle it: {escape(decision.settle)}"
    return text + "."


def _sentence_inside(statement: str) -> str:
    """A statement continued after 'The claim that': its first word lower-cased unless it is
    an acronym ('MLP')."""
    first = statement.split(" ", 1)[0]
    return statement if first.isupper() else statement[:1].lower() + statement[1:]


def _attribution_paragraph(
    results: MechanisticResults, consistency: Consistency, numbers: list[NumberRow], decision: AssociationDecision
) -> str:
    attribution = results.attribution
    corr = consistency.correlations
    closure = _num(attribution.closure_max_abs_error if attribution else None)
    bias, control = escape(_word(results.words, "bias")), escape(_word(results.words, "control"))
    values = {
        "dla_heads": [_num(n.dla_heads) for n in numbers],
        "dla_mlp": [_num(n.dla_mlp) for n in numbers],
        "logit_diff": [_num(n.logit_diff) for n in numbers],
    }
    text = (
        (
            rf"The DLA components add up to the model's {bias}$-${control} logit difference within "
            rf"{fmt(closure, 2)} logits (maximum over numbers)"
            + (
                ", so the decomposition closes."
                if closure <= CLOSURE_TOLERANCE
                else ", more than the tolerance: the split below is unreliable."
            )
        )
        if math.isfinite(closure)
        else "The DLA closure error was not recorded."
    )
    neutral = _num(attribution.neutral.logit_diff if attribution else None)
    text += (
        rf" Averaged over the {len(numbers)} numbers (means with bootstrap 95\% CIs), the heads "
        rf"contribute {_mean_ci(values['dla_heads'])} and the MLPs {_mean_ci(values['dla_mlp'])} "
        rf"logits directly to a logit difference of {_mean_ci(values['logit_diff'])}"
        + (f", against {fmt(neutral)} under the neutral prompt." if math.isfinite(neutral) else ".")
    )
    text += (
        r" These are direct paths only, in the model as loaded (not fine-tuned) reading the "
        r"number-priming prompt."
    )
    text += (
        rf" Across numbers, the bias ratio's raw correlation with the MLPs' DLA is "
        rf"{_corr(corr.dla_mlp)} and with the heads' DLA "
        rf"{_corr(corr.dla_heads)}; part of any such correlation is automatic, "
        r"since the DLA terms add up to the logit difference, which itself tracks the ratio "
        rf"(the logit difference's own correlation: {_corr(corr.logit_diff)})."
    )
    partial = consistency.attribution
    if partial is not None:
        mlp, heads = partial.mlp, partial.heads
        est = decision.estimate
        ci = rf" [{fmt(est.ci_low)}, {fmt(est.ci_high)}]" if est is not None and est.has_interval else ""
        text += (
            rf" Given the total logit difference, the partial correlation of the MLPs' DLA with the "
            rf"bias ratio is $\rho$ = {fmt(mlp.rho)}{ci} (Freedman--Lane permutation "
            rf"{p_is(mlp.p_permutation)}, Holm-adjusted {p_is(decision.p_adjusted)}; "
            rf"parametric {p_is(mlp.p_parametric)}); the heads' is $\rho$ = "
            rf"{fmt(heads.rho)} (permutation {p_is(heads.p_permutation)}, "
            r"descriptive: with the total given, the heads' and the MLPs' terms nearly mirror each "
            r"other)."
        )
        share = partial.variance_share
        if share:
            text += (
                rf" Of the logit difference's variance across numbers, the MLPs' direct terms "
                rf"carry {_pct(share.get('mlp'))} and the heads' {_pct(share.get('heads'))} "
                r"(covariance shares)."
            )
    else:
        text += (
            r" This run did not record the partial correlation given the total logit "
            r"difference, so the automatic part is not controlled for."
        )
    return text + " " + _verdict_sentence(decision)


def _attention_sentence(results: MechanisticResults) -> str:
    attention = results.attention
    to_number = attention.top_to_number if attention else []
    to_animal = attention.top_to_animal if attention else []
    if not to_number or not to_animal:
        return ""

    def top(cells: list[HeadAttention]) -> str:
        return ", ".join(rf"{escape(c.head)} ({fmt(c.attention)})" for c in cells[:3])

    return (
        r"From the final position, the heads attending most to the number tokens are "
        rf"{top(to_number)} and to the animal token {top(to_animal)} (mean attention weights)."
    )


def _plain_p(p: Any) -> str:
    value = _num(p)
    return " n/a" if math.isnan(value) else ("<0.001" if value < 0.001 else f" = {value:.3f}")


SPIKE_LAYER_DEFINED = "spike layer (the block that most raises a number's residual similarity to the animal)"


def _headline(consistency: Consistency, decisions: dict[str, AssociationDecision]) -> list[str]:
    test = _test(consistency, "spike_layer")
    decision = decisions.get("spike_layer")
    verdict = association_verdict(test, decision)
    spike = {
        "depends": "depends on the category",
        "smaller": "a dependence smaller than the one of interest",
        "unsized": "a dependence of unshown size",
        "independent": "no evidence of a dependence",
        "constant": "the same for every number",
        "untested": "not tested",
    }[verdict]
    # The abstract's notes come before the methods, so the term is defined where it first appears.
    first = f"mechanistic: {SPIKE_LAYER_DEFINED} " + (
        f"vs category p{_plain_p(test.p_permutation)}, Holm "
        f"p{_plain_p(decision.p_adjusted if decision else None)} ({spike})"
        if test is not None and test.applicable
        else spike
    )
    att = decisions[ATTRIBUTION]
    est = att.estimate
    detail = (
        f"partial ρ = {_num(est.rho):.2f} given the logit difference, Holm p{_plain_p(att.p_adjusted)}"
        if est is not None and est.rho is not None
        else att.reason
    )
    second = (
        f"mechanistic: {ATTRIBUTION} (MLP DLA tracks the in-context bias, direct paths, "
        f"model not fine-tuned): {att.verdict.value} ({detail})"
    )
    return [first, second]
