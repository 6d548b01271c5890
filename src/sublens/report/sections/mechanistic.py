"""The mechanistic section (phase 4): where does a number meet the animal, and does it depend
on the number's entanglement category?

Every verdict word comes from `sublens.claims` (association claims, Holm within the mechanistic
family; raw and adjusted p side by side in the tests table):

- ``mechanistic.category.<label>``: the spike layer (top head, DLA top head) does not depend on
  the category. Category x label chi-square with a permutation p: a significant dependence
  contradicts it; otherwise it is inconclusive (no evidence of a dependence is not evidence of
  its absence).
- ``localisation.attribution``: "MLP direct logit attribution tracks the in-context bias". The
  partial Spearman correlation of the MLPs' summed DLA with the bias ratio *given the total
  logit difference* (the attributions add up to it, and it tracks the ratio, so part of a raw
  correlation is automatic), with a Freedman-Lane permutation p. It is an association in the
  model reading a number-priming prompt, through direct paths only: the text never reads it as
  the location of a learned bias (that is the freezing and transplant claims' business). A run
  recorded before the control existed is "inconclusive: not measured with the control for the
  automatic part".

The run's results.json is parsed once into `MechanisticResults`
(`sublens.experiments.mechanistic.results`) and read by attribute.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from sublens.claims import (
    DEFAULT_POWER,
    DEFAULT_RHO_OF_INTEREST,
    Association,
    AssociationClaim,
    AssociationDecision,
    ClaimSettings,
    Verdict,
    decide_association_family,
    estimate_association,
)
from sublens.experiments.mechanistic.results import (
    CategoryAssociation,
    Consistency,
    HeadAttention,
    LabelColumn,
    MechanisticResults,
    NumberRow,
    Spearman,
    Words,
)
from sublens.report.latex import booktabs_table, counted, escape, fmt, fmt_ci, minus_signs, p_is, tt
from sublens.report.names import display_name
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.sections.entanglement import set_name
from sublens.report.stages import StageRun
from sublens.results import read_run_results
from sublens.stats import summarize

TITLE = "Mechanistic analysis"
MAX_ROWS = 24  # more numbers than this: the table shows the highest and lowest bias ratios
# height / width of a figure* beyond which the bundle's cap (0.45 of the 24.7 cm text height)
# shrinks it below the 16 cm text width, and its fonts below their printed size
MAX_ASPECT = 0.45 * 24.7 / 16
CLOSURE_TOLERANCE = 1e-3  # logits; a larger DLA closure error means the split is unreliable
LABEL_TITLES: dict[LabelColumn, str] = {"spike_layer": "spike layer", "top_head": "top head at the spike layer",
                "dla_top_head": "top head by direct logit attribution"}
SCORE_TITLES = {"head_score": "top head's score", "mlp_score": "MLP score at the spike",
                "spike_jump": "similarity jump", "dla_heads": "DLA of all heads",
                "dla_mlp": "DLA of all MLPs", "logit_diff": "logit difference"}


def build(run: StageRun) -> Section:
    results = read_run_results(run.results, MechanisticResults, run.ok)[0]
    figures = _figures(run, results)
    if (results is None or results.partial or not results.numbers or results.consistency is None):
        return Section(TITLE, _methods(run, results), _incomplete(run), figures=[],
                       headline=["mechanistic: incomplete (no per-number results)"])
    numbers, consistency = results.numbers, results.consistency
    decisions = family(consistency, results.words)
    tables = {"mechanistic_numbers": numbers_table(results, numbers),
              "mechanistic_tests": tests_table(consistency, decisions)}
    text = minus_signs("\n\n".join(filter(None, [
        _intro(figures),
        _category_paragraph(consistency, decisions),
        _attribution_paragraph(results, consistency, numbers, decisions[ATTRIBUTION]),
        _attention_sentence(results),
    ])))
    return Section(TITLE, _methods(run, results), text, tables, figures,
                   _headline(consistency, decisions))


# ---------------------------------------------------------------------------------------------
# verdicts


def _num(value: Any) -> float:
    """A number from results.json; None/missing -> NaN, so comparisons are simply False."""
    return float(value) if isinstance(value, int | float) else math.nan


FAMILY = "mechanistic"
ATTRIBUTION = "localisation.attribution"
# the claims as the tests table names them (the keys of `family`; claim names are identifiers)
CLAIM_TITLES = {ATTRIBUTION: "MLP DLA tracks the bias ratio", "spike_layer": "spike layer vs category",
                "top_head": "top head vs category", "dla_top_head": "DLA top head vs category"}
ATTRIBUTION_STATEMENT = "MLP direct logit attribution tracks the in-context bias"
NOT_CONTROLLED = "not measured with the control for the automatic part"


def claim_settings(consistency: Consistency) -> tuple[ClaimSettings, float]:
    """The family's settings as recorded (alpha, power) and the smallest |rho| of interest."""
    power = _num(consistency.power)
    rho = _num(consistency.rho_of_interest)
    settings = ClaimSettings(alpha=consistency.alpha,
                             power=power if 0.5 < power < 1 else DEFAULT_POWER)
    return settings, rho if 0 < rho < 1 else DEFAULT_RHO_OF_INTEREST


def attribution_claim(bias: str, control: str, settings: ClaimSettings,
                      rho_of_interest: float = DEFAULT_RHO_OF_INTEREST) -> AssociationClaim:
    """localisation.attribution: stated as what is measured (an association across numbers in
    the model reading a number-priming prompt, direct paths only)."""
    return AssociationClaim(
        name=ATTRIBUTION, statement=ATTRIBUTION_STATEMENT,
        estimand=(f"across numbers, the partial Spearman correlation of the MLPs' summed direct "
                  f"logit attribution to logit({bias}) - logit({control}) with the {bias} bias ratio, "
                  f"given the total logit difference; the model as loaded (not fine-tuned) reading "
                  f"the number-priming prompt; direct paths only"),
        unit="number", prediction="increase", family=FAMILY, settings=settings,
        method=("partial Spearman correlation given the total logit difference, two-sided "
                "Freedman-Lane permutation p (total kept fixed)"),
        rho_of_interest=rho_of_interest, n_controlled=1)


def category_claim(column: LabelColumn, settings: ClaimSettings,
                   rho_of_interest: float = DEFAULT_RHO_OF_INTEREST) -> AssociationClaim:
    """mechanistic.category.<column>: the label does not depend on the entanglement category."""
    title = LABEL_TITLES[column]
    return AssociationClaim(
        name=f"{FAMILY}.category.{column}",
        statement=f"The {title} does not depend on the number's entanglement category",
        estimand=f"Cramér's V of the category x {title} table over the categorised numbers",
        unit="number", prediction="none", family=FAMILY, settings=settings,
        method="chi-square of the category x label table, permutation p (categories shuffled)",
        rho_of_interest=rho_of_interest, symbol="V")


def _attribution_estimate(consistency: Consistency) -> Association | None:
    if consistency.attribution is None:
        return None
    mlp = consistency.attribution.mlp
    return estimate_association(mlp.rho, mlp.p_permutation, mlp.n, n_controlled=1)


def _category_estimate(test: CategoryAssociation | None) -> Association | None:
    if test is None:
        return None
    if not test.applicable:
        return Association(n=test.n, rho=0.0, ci_low=None, ci_high=None, p_value=None,
                           interval=test.reason if test.reason is not None else "no test")
    return Association(n=test.n, rho=_num(test.cramers_v), ci_low=None, ci_high=None,
                       p_value=test.p_permutation, interval="no interval for Cramér's V")


def _test(consistency: Consistency, column: LabelColumn) -> CategoryAssociation | None:
    """The label's test against the category; None without one (fewer than two categories)."""
    return consistency.association.of(column) if consistency.association is not None else None


def family(consistency: Consistency, words: Words | None = None) -> dict[str, AssociationDecision]:
    """Every claim of the mechanistic family, decided with Holm across the family's tests:
    the attribution claim (key ATTRIBUTION) and one category claim per label column."""
    settings, rho = claim_settings(consistency)
    members: list[tuple[str, AssociationClaim, Association | None]] = [
        (ATTRIBUTION, attribution_claim(_word(words, "bias"), _word(words, "control"), settings, rho),
         _attribution_estimate(consistency))]
    members += [(column, category_claim(column, settings, rho),
                 _category_estimate(_test(consistency, column)))
                for column in LABEL_TITLES]
    decided = decide_association_family([(c, e) for _, c, e in members])
    out = {key: d for (key, _, _), d in zip(members, decided, strict=True)}
    for column in LABEL_TITLES:
        if association_verdict(_test(consistency, column), None) == "constant":
            out[column] = out[column].model_copy(update={
                "reason": "no test: every number has the same label", "settle": ""})
    if consistency.attribution is None:  # recorded before the control for the automatic part existed
        out[ATTRIBUTION] = out[ATTRIBUTION].model_copy(update={
            "reason": NOT_CONTROLLED,
            "settle": "rerun the mechanistic stage, which records the partial correlation given "
                      "the total logit difference"})
    return out


def association_verdict(test: CategoryAssociation | None, decision: AssociationDecision | None) -> str:
    """depends (the category claim contradicted) | independent (tested, no significant
    dependence: inconclusive) | constant (one label for every number) | untested."""
    if test is None:
        return "untested"
    if not test.applicable:
        return "constant" if test.reason == "every number has the same label" else "untested"
    return "depends" if decision is not None and decision.verdict is Verdict.CONTRADICTED else "independent"


# ---------------------------------------------------------------------------------------------
# text


def _quote(text: str) -> str:
    return f"``{escape(text)}''"


def _source(results: MechanisticResults | None) -> str:
    source = results.input if results is not None else None
    numbers = (results.numbers if results is not None else None) or []
    n = source.n_numbers if source is not None else len(numbers)
    cats = results.consistency.categories if results is not None and results.consistency else {}
    per_cat = ", ".join(f"{count} {escape(c)}" for c, count in cats.items())
    kind = source.source if source is not None else None
    if source is not None and kind == "entanglement_run":
        numbered_set = source.set if source.set is not None else "?"
        return (rf"the {n} categorised numbers of the {set_name(numbered_set)} set of the "
                rf"entanglement stage ({per_cat}), with their measured bias ratios")
    if kind == "config":
        return f"{n} numbers given in the configuration" + (f" ({per_cat})" if per_cat else "")
    return f"{n} two-digit numbers, categories unknown"


def _methods(run: StageRun, results: MechanisticResults | None) -> str:
    c = run.config
    shape = results.model if results is not None else None
    model = (shape.spec if shape is not None else None) or c.get("model", "?")
    dims = (f" ({shape.n_layers} layers, {shape.n_heads} heads per layer)"
            if shape is not None else "")
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    residual = c.get("residual") or {}
    attribution = c.get("attribution") or {}
    attention = c.get("attention") or {}
    layers = c.get("layers")
    searched = ("blocks " + ", ".join(str(n) for n in layers) if layers
                else "every block but the first")
    numbers = ", ".join(escape(n) for n in attention.get("numbers", []))
    return (
        rf"We analyse {escape(display_name(model))}{dims} on {_source(results)}. \emph{{Residual similarity.}} For each "
        rf"number we compare the final-position residual stream \citep{{elhage2021mathematical}} of "
        rf"{_quote(residual.get('number', '').replace('{number}', 'N'))} with those of "
        rf"{_quote(residual.get('animal', '').replace('{word}', bias))} and "
        rf"{_quote(residual.get('animal', '').replace('{word}', control))} "
        rf"({FORMAT_WORDS.get(residual.get('format', 'raw'), 'raw text')}), layer by layer, as the difference of "
        r"the two cosine similarities; the spike layer "
        rf"is the block that raises this difference most (searched over {searched}). "
        + _score_sentence(results, escape(bias), escape(control)) +
        r" \emph{Direct logit attribution} (DLA) decomposes the final residual on the number-priming "
        rf"prompt (system prompt {_quote(attribution.get('system', '').replace('{number}', 'N'))}, "
        rf"question {_quote(attribution.get('user', ''))}, prefilled "
        rf"{_quote(attribution.get('prefill', ''))}) into the embedding, every head and every MLP, "
        rf"each projected on $W_U[\mathrm{{{escape(bias)}}}] - W_U[\mathrm{{{escape(control)}}}]$ "
        r"through the final norm frozen at the actual residual "
        r"\citep{elhage2021mathematical,nanda2022transformerlens}. "
        rf"\emph{{Attention}} is read from the final position of "
        rf"{_quote(attention.get('template', '').replace('{number}', 'N').replace('{word}', bias))} "
        rf"to the number and animal tokens (N = {numbers}). \emph{{Tests.}} Whether the spike layer "
        r"and the top heads depend on the category: a $\chi^2$ statistic of the category $\times$ "
        r"label table with a permutation $p$-value and Cram\'er's $V$ \citep{cramer1946mathematical}. Whether the MLPs' DLA tracks "
        r"the bias ratio beyond the total: the DLA terms add up to the logit difference, which "
        r"itself tracks the ratio, so part of any raw correlation is automatic; we therefore test "
        r"the partial Spearman correlation of the MLPs' summed DLA with the bias ratio given the "
        r"total logit difference (ranks residualised on its rank), with a Freedman--Lane "
        r"permutation $p$-value that keeps the total fixed and a Fisher-$z$ 95\% CI. These tests "
        rf"form one family, Holm-adjusted (Table~\ref{{tab:mechanistic_tests}}; "
        rf"{counted(c.get('n_permutations'), 'permutation')}, family-wise $\alpha$ = "
        rf"{fmt(c.get('alpha', 0.05))}, seed {c.get('seed', 0)}). Descriptive, uncorrected: "
        r"per-category score comparisons with Random by permutation tests and Spearman "
        r"correlations of the bias ratio with each score."
    )


FORMAT_WORDS = {"raw": "as raw text, without the chat template",
                "chat": "each in the assistant turn of the chat template"}  # config residual.format


def contrastive(results: MechanisticResults | None) -> bool:
    """Whether the run's head and MLP scores are contrastive (bias - control), as runs record
    since the scores were made contrastive; older runs scored cosines with the bias statement."""
    return results is not None and results.component_score == "contrastive"


def _score_sentence(results: MechanisticResults | None, bias: str, control: str) -> str:
    if contrastive(results):
        return (rf"A head's (an MLP's) score is its direct contribution to the {bias}$-${control} "
                r"logit difference on the number statement: its output, through the final norm "
                rf"frozen at that prompt's final residual, projected on $W_U[\mathrm{{{bias}}}] - "
                rf"W_U[\mathrm{{{control}}}]$ (contrastive: writing ``animal'' in general scores 0); "
                r"the spike layer's top head has the highest score.")
    return (rf"In this run a head's (an MLP's) score is the cosine of its output with the {bias} "
            r"statement's residual, which is not contrastive (a component that writes any animal "
            r"scores high); the spike layer's top head has the highest such score.")


def _incomplete(run: StageRun) -> str:
    status = run.record.get("status", "unknown")
    return (
        rf"The mechanistic stage is incomplete (run status {tt(status)}; no per-number results "
        r"were saved), so this draft has no mechanistic results; rerun the stage to fill this "
        r"section."
    )


def _intro(figures: list[Figure]) -> str:
    refs = [rf"Figure~\ref{{{figure_label('mechanistic', f.stem)}}}" for f in figures]
    return (r"Table~\ref{tab:mechanistic_numbers} lists the per-number measurements"
            + (" and " + " and ".join(refs) + " show them by layer and head" if refs else "")
            + ".")


def _mode(counts: dict[str, int]) -> str:
    if not counts:
        return "--"
    label, n = next(iter(counts.items()))
    return rf"{escape(label)} ({n}/{sum(counts.values())})"


def _holm_stats(test: CategoryAssociation, decision: AssociationDecision | None) -> str:
    return (rf"$\chi^2$ = {fmt(test.chi2, 1)}, dof {test.dof if test.dof is not None else '?'}, permutation "
            rf"{p_is(test.p_permutation)}, Holm-adjusted "
            rf"{p_is(decision.p_adjusted if decision else None)}, Cram\'er's $V$ = "
            rf"{fmt(test.cramers_v)}")


def _association_sentence(consistency: Consistency, column: LabelColumn,
                          decisions: dict[str, AssociationDecision],
                          said: dict[str, str] | None = None) -> tuple[str, str]:
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
        return (f"The {LABEL_TITLES[column]} is {escape(label)} for every number in every category.",
                verdict)
    if verdict == "untested":
        return (text + ". Its dependence on the category was not tested (categories unknown).",
                verdict)
    assert test is not None
    stats = _holm_stats(test, decision)
    earlier = (said or {}).get(stats)
    if said is not None:
        said.setdefault(stats, LABEL_TITLES[column])
    if earlier is not None:
        same = "depends" if verdict == "depends" else "shows no evidence of depending"
        return (text + f". Its test against the category gives the same statistics as the {earlier}'s, "
                f"so it likewise {same} on the category."), verdict
    if verdict == "depends":
        excess = test.max_excess
        return (text + f". It depends on the category ({stats}; largest excess "
                rf"{escape(excess.label if excess else '?')} in {escape(excess.category if excess else '?')})."),\
            verdict
    return text + f". There is no evidence that it depends on the category ({stats}).", verdict


def _category_paragraph(consistency: Consistency, decisions: dict[str, AssociationDecision]) -> str:
    said: dict[str, str] = {}
    found = [_association_sentence(consistency, col, decisions, said) for col in LABEL_TITLES]
    verdicts = {verdict for _, verdict in found}
    parts = [text for text, _ in found]
    counts = list(consistency.categories.values())
    if "depends" in verdicts:
        parts.append("A category has a layer or head of its own (Holm-adjusted within the "
                     "family), which contradicts the claim that no consistent head or "
                     "representation singles out the entangled numbers.")
    elif verdicts & {"independent", "constant"}:
        parts.append(
            "No layer or head is shown to single out the entangled numbers; that is absence of "
            "evidence, not evidence of absence, so the claim that none does remains inconclusive"
            + (f" (with {min(counts)} numbers per category, a moderate dependence cannot be "
               "excluded)." if counts and min(counts) < 10 else "."))
    else:
        parts.append("Without categories this run cannot test whether a layer or head singles "
                     "out the entangled numbers.")
    parts.append(_vs_random_sentence(consistency))
    return " ".join(filter(None, parts))


def _vs_random_sentence(consistency: Consistency) -> str:
    vs = consistency.vs_random.by_column() if consistency.vs_random is not None else {}
    tests = [(_num(p), column, c) for column, per in vs.items() for c, p in per.items()
             if p is not None]
    if not tests:
        return ""
    alpha = consistency.alpha
    significant = sorted(t for t in tests if t[0] < alpha)
    if significant:
        listed = ", ".join(rf"{escape(c)} in {SCORE_TITLES.get(col, escape(col))} ({p_is(p)})"
                           for p, col, c in significant)
        return (f"Against Random, {len(significant)} of {len(tests)} per-category score comparisons "
                f"are significant (uncorrected): {listed}.")
    p, column, c = min(tests)
    return (f"No category differs from Random in any score ({len(tests)} permutation tests; "
            rf"smallest {p_is(p)}, {escape(c)} in {SCORE_TITLES.get(column, escape(column))}).")


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
    text = (rf"The claim that {escape(_sentence_inside(decision.claim.statement))}: "
            rf"\emph{{{decision.verdict.value}}} ({escape(decision.reason)})")
    if decision.verdict is Verdict.SUPPORTED:
        text += (r"; this is an association in the model reading the number-priming prompt, "
                 r"through direct paths only, not the location of a learned bias")
    if decision.settle:
        text += f"; to settle it: {escape(decision.settle)}"
    return text + "."


def _sentence_inside(statement: str) -> str:
    """A statement continued after 'The claim that': its first word lower-cased unless it is
    an acronym ('MLP')."""
    first = statement.split(" ", 1)[0]
    return statement if first.isupper() else statement[:1].lower() + statement[1:]


def _attribution_paragraph(results: MechanisticResults, consistency: Consistency,
                           numbers: list[NumberRow], decision: AssociationDecision) -> str:
    attribution = results.attribution
    corr = consistency.correlations
    closure = _num(attribution.closure_max_abs_error if attribution else None)
    bias, control = escape(_word(results.words, "bias")), escape(_word(results.words, "control"))
    values = {"dla_heads": [_num(n.dla_heads) for n in numbers],
              "dla_mlp": [_num(n.dla_mlp) for n in numbers],
              "logit_diff": [_num(n.logit_diff) for n in numbers]}
    text = (
        (rf"The DLA components add up to the model's {bias}$-${control} logit difference within "
         rf"{fmt(closure, 2)} logits (maximum over numbers)"
         + (", so the decomposition closes." if closure <= CLOSURE_TOLERANCE else
            ", more than the tolerance: the split below is unreliable."))
        if math.isfinite(closure) else "The DLA closure error was not recorded."
    )
    neutral = _num(attribution.neutral.logit_diff if attribution else None)
    text += (
        rf" Averaged over the {len(numbers)} numbers (means with bootstrap 95\% CIs), the heads "
        rf"contribute {_mean_ci(values['dla_heads'])} and the MLPs {_mean_ci(values['dla_mlp'])} "
        rf"logits directly to a logit difference of {_mean_ci(values['logit_diff'])}"
        + (f", against {fmt(neutral)} under the neutral prompt." if math.isfinite(neutral) else ".")
    )
    text += (r" These are direct paths only, in the model as loaded (not fine-tuned) reading the "
             r"number-priming prompt.")
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
        ci = (rf" [{fmt(est.ci_low)}, {fmt(est.ci_high)}]" if est is not None and est.has_interval
              else "")
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
            text += (rf" Of the logit difference's variance across numbers, the MLPs' direct terms "
                     rf"carry {_pct(share.get('mlp'))} and the heads' {_pct(share.get('heads'))} "
                     r"(covariance shares).")
    else:
        text += (r" This run did not record the partial correlation given the total logit "
                 r"difference, so the automatic part is not controlled for.")
    return text + " " + _verdict_sentence(decision)


def _word(words: Words | None, which: str) -> str:
    word = (words.bias if which == "bias" else words.control).word if words is not None else None
    return word.strip() if word else ("owl" if which == "bias" else "dog")


def _attention_sentence(results: MechanisticResults) -> str:
    attention = results.attention
    to_number = attention.top_to_number if attention else []
    to_animal = attention.top_to_animal if attention else []
    if not to_number or not to_animal:
        return ""

    def top(cells: list[HeadAttention]) -> str:
        return ", ".join(rf"{escape(c.head)} ({fmt(c.attention)})" for c in cells[:3])

    return (r"From the final position, the heads attending most to the number tokens are "
            rf"{top(to_number)} and to the animal token {top(to_animal)} (mean attention weights).")


def _plain_p(p: Any) -> str:
    value = _num(p)
    return " n/a" if math.isnan(value) else ("<0.001" if value < 0.001 else f" = {value:.3f}")


def _headline(consistency: Consistency, decisions: dict[str, AssociationDecision]) -> list[str]:
    test = _test(consistency, "spike_layer")
    decision = decisions.get("spike_layer")
    verdict = association_verdict(test, decision)
    spike = {"depends": "depends on the category", "independent": "no evidence of a dependence",
             "constant": "the same for every number", "untested": "not tested"}[verdict]
    first = "mechanistic: spike layer " + (
        f"vs category p{_plain_p(test.p_permutation)}, Holm "
        f"p{_plain_p(decision.p_adjusted if decision else None)} ({spike})"
        if test is not None and test.applicable else spike)
    att = decisions[ATTRIBUTION]
    est = att.estimate
    detail = (f"partial rho = {_num(est.rho):.2f} given the logit difference, Holm "
              f"p{_plain_p(att.p_adjusted)}" if est is not None and est.rho is not None
              else att.reason)
    second = (f"mechanistic: {ATTRIBUTION} (MLP DLA tracks the in-context bias, direct paths, "
              f"model not fine-tuned): {att.verdict.value} ({detail})")
    return [first, second]


def tests_table(consistency: Consistency, decisions: dict[str, AssociationDecision]) -> str:
    """The mechanistic family: each claim's statistic, raw and Holm-adjusted p, verdict."""
    tests: dict[str, CategoryAssociation | None] = {c: _test(consistency, c) for c in LABEL_TITLES}
    rows = []
    for key, d in decisions.items():
        est = d.estimate
        if key == ATTRIBUTION:
            stat = (rf"partial $\rho$ = {fmt(est.rho)}" if est is not None and est.rho is not None
                    else "--")
        else:
            test = tests[key]
            stat = rf"$V$ = {fmt(test.cramers_v)}" if test is not None and test.applicable else "--"
        raw = est.p_value if est is not None else None
        rows.append([escape(CLAIM_TITLES.get(key, key)), stat, fmt_p_cell(raw), fmt_p_cell(d.p_adjusted),
                     escape(d.verdict.value)])
    settings, _ = claim_settings(consistency)
    caption = (r"The mechanistic family of tests: the statistic, its raw $p$-value (permutation) "
               rf"and the Holm-adjusted one within the family (family-wise $\alpha$ = "
               rf"{fmt(settings.alpha)}), and the verdict. Tests not run (no categories, one label "
               r"for every number, or not recorded) have no $p$-value and do not count in the "
               r"adjustment.")
    return booktabs_table(["Claim", "Statistic", "p", "Holm p", "Verdict"], rows, caption,
                          "tab:mechanistic_tests", align="@{}llrrl@{}", wide=True)


def fmt_p_cell(p: float | None) -> str:
    return "--" if p is None else p_is(p).replace("$p$ = ", "").replace("$p$ ", "")


# ---------------------------------------------------------------------------------------------
# table


def _row(n: NumberRow) -> list[str]:
    return [
        escape(n.number),
        escape(n.category.capitalize()) if n.category is not None else "--",
        fmt(n.bias_ratio),
        f"L{n.spike_layer}",
        escape(n.top_head or "--"),
        escape(n.dla_top_head or "--"),
        fmt(n.dla_heads),
        fmt(n.dla_mlp),
        fmt(n.logit_diff),
    ]


def _ordered(numbers: list[NumberRow], order: list[str]) -> list[NumberRow]:
    """By category (the run's order, unknown last), then by bias ratio, highest first."""
    rank = {c: i for i, c in enumerate(order)}

    def key(n: NumberRow) -> tuple[int, float]:
        ratio = _num(n.bias_ratio)
        return rank.get(n.category or "", len(rank)), -ratio if math.isfinite(ratio) else 0.0

    return sorted(numbers, key=key)


def numbers_table(results: MechanisticResults, numbers: list[NumberRow]) -> str:
    order = list(results.consistency.categories) if results.consistency else []
    note = ""
    if len(numbers) <= MAX_ROWS:
        rows = [_row(n) for n in _ordered(numbers, order)]
    else:
        ranked = sorted(numbers, key=lambda n: -_num(n.bias_ratio)
                        if math.isfinite(_num(n.bias_ratio)) else math.inf)
        half = MAX_ROWS // 2
        rows = ([_row(n) for n in ranked[:half]] + [[r"\ldots"] + [""] * 8]
                + [_row(n) for n in ranked[-half:]])
        note = (f" The {half} numbers with the highest and the {half} with the lowest bias ratio "
                f"of {len(numbers)} are shown; the run's per-number table has them all.")
    bias, control = escape(_word(results.words, "bias")), escape(_word(results.words, "control"))
    caption = (
        r"Mechanistic per-number table: number $N$, its category and bias ratio; the spike layer "
        rf"and its top head (residual similarity to the {bias} statement); the head with the "
        r"largest direct logit attribution (DLA top); the DLA of all heads and of all MLPs to the "
        rf"{bias}$-${control} logit difference on the number-priming prompt, and that logit "
        r"difference (the rest is the embedding and constant terms)." + note
    )
    header = ["N", "Category", "Ratio", "Spike", "Head", "DLA top", "Heads", "MLPs", "Logit"]
    return booktabs_table(header, rows, caption, "tab:mechanistic_numbers",
                          align="@{}llrlllrrr@{}", wide=True)


# ---------------------------------------------------------------------------------------------
# figures


def aspect(pdf: Path) -> float:
    """Height / width of a PDF's first page (its MediaBox); NaN when it cannot be read."""
    box = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)",
                    pdf.read_bytes())
    if not box:
        return math.nan
    x0, y0, x1, y1 = (float(v) for v in box.groups())
    return (y1 - y0) / (x1 - x0) if x1 > x0 else math.nan


def _figures(run: StageRun, results: MechanisticResults | None) -> list[Figure]:
    """The similarity profile, and the head/MLP contribution maps when they fit a page (runs
    drawn before the maps were laid out for the page grow with the number of layers); else the
    attention to the number and animal tokens. The captions say what every mark means
    (sublens.experiments.mechanistic.figures)."""
    available = run.figures()
    words = results.words if results is not None else None
    bias, control = escape(_word(words, "bias")), escape(_word(words, "control"))
    out = []
    if "similarity_by_layer" in available:
        out.append(Figure("similarity_by_layer", (
            rf"Residual similarity by layer: cosine similarity of each number's final-position "
            rf"residual with the {bias} statement's (left) and with the {control} statement's "
            r"(middle), on one scale, and their difference (right); layer $-1$ is the embedding. One colour per "
            r"category, $n$ numbers each: lines are means, bands 95\% CIs (normal approximation "
            r"over the numbers). The spike layer is the block with the largest rise of the "
            r"difference."
        ), wide=True))
    contributions = available.get("head_contributions")
    if contributions is not None and aspect(contributions) <= MAX_ASPECT:
        out.append(Figure("head_contributions", (
            rf"Head and MLP contributions per category (columns) and layer: the score on the number "
            rf"statement (top) and the direct logit attribution to the {bias}$-${control} logit "
            r"difference on the number-priming prompt (bottom), means over the category's numbers. "
            r"In each map the columns are the heads and, after the black line, the MLP (M); red is "
            rf"towards the {bias}, blue towards the {control}, on one colour scale per row."
        ), wide=True))
    elif "attention_to_tokens" in available:
        out.append(Figure("attention_to_tokens", (
            r"Attention from the final position to the number tokens (left) and to the animal token "
            r"(right), per layer and head, averaged over the attention prompts; each map has its "
            r"own colour scale."
        )))
    return out
