"""The entanglement section's results paragraphs (the ratios of the primary set, the paper claim
and the other claims in words, the tuned sets, digit length, caveats) and its headline.
"""

from __future__ import annotations

import re

from sublens.claims import Verdict
from sublens.entanglement import CATEGORIES, is_tuned_set
from sublens.experiments.entanglement.figures import TUNED_FIGURE
from sublens.experiments.entanglement.results import EntanglementResults, SetStatistics
from sublens.report.latex import counted, escape, fmt, minus_signs, p_is, scientific
from sublens.report.sections import Figure, figure_label
from sublens.report.sections.entanglement.deciding import decision_text, primary
from sublens.report.sections.entanglement.reading import (
    LABELS,
    Decided,
    _geo,
    _n_tests,
    _per_length,
    _sets_phrase,
    _stats,
    _tex,
    _too_few,
    owl_specific,
    set_name,
)
from sublens.report.verdicts import scope_words


def _paper_claim(results: EntanglementResults, decided: Decided) -> str:
    main = primary(results, decided)
    d = decided[main]["entangled_vs_null"]
    bias = escape(results.bias)
    lead = (
        rf"The paper's claim, tested in the {set_name(main)} set ($k = {results.k.get(main, '?')}$"
        rf"), that entangled numbers raise $P(\mathrm{{{bias}}})$ no more than "
        r"frequency-matched Random ones"
    )
    if not owl_specific(results):
        return _undecidable(results, decided, lead)
    text = decision_text(d, lead)
    others = {name: tests["entangled_vs_null"].verdict.value for name, tests in decided.items() if name != main}
    return text + (" " + _verdicts_by_set(others) if others else "")


def _verdicts_by_set(verdicts: dict[str, str]) -> str:
    """'In the vocabulary and 1-digit sets it is inconclusive.': the sets grouped by verdict, so
    a verdict shared by every set is said once."""
    by_verdict: dict[str, list[str]] = {}
    for name, verdict in verdicts.items():
        by_verdict.setdefault(verdict, []).append(name)
    parts = [f"{_sets_phrase(names)} it is {verdict}" for verdict, names in by_verdict.items()]
    return "In " + "; in ".join(parts) + "."


def _undecidable(results: EntanglementResults, decided: Decided, lead: str) -> str:
    """A run without owl-specific categories: why no claim is decided, said once, and the one
    verdict word every claim gets (from the Decisions, decided on no estimate)."""
    verdicts = sorted({d.verdict.value for tests in decided.values() for d in tests.values()})
    word = r"\emph{" + "/".join(verdicts) + "}"
    return (
        rf"For that reason no claim is decided on this run: {lead[0].lower()}{lead[1:]}, is {word} "
        rf"in every set, and so are the claims that Decreased and Unchanged numbers raise the bias "
        r"ratio as much as Increased ones and that each category raises it over the neutral "
        r"prompt. Rerunning the stage, which scores the control-animal context and matches "
        r"Random numbers on frequency, would decide them."
    )


def _between_categories(results: EntanglementResults, decided: Decided) -> str:
    main = primary(results, decided)
    parts = [decision_text(decided[main][f"{c}_vs_increased"]) for c in ("decreased", "unchanged")]
    return " ".join(parts)


def _all_raise(results: EntanglementResults, decided: Decided) -> str:
    """'Every category raises P(bias)' only when each category's own claim is supported after
    Holm; otherwise the verdicts per category."""
    main = primary(results, decided)
    own = {c: decided[main][f"raises.{c}"] for c in CATEGORIES}
    bias = escape(results.bias)
    if all(d.verdict is Verdict.SUPPORTED for d in own.values()):
        return (
            rf"In the {set_name(main)} set the prompt that names a number of any category raises "
            rf"$P(\mathrm{{{bias}}})$ over the neutral prompt (each category's claim supported after Holm), "
            r"Decreased and Unchanged numbers included: the rise includes the priming template's own (the "
            r"template control measures that part where it was run), so it is not credited to the numbers."
        )
    listed = "; ".join(rf"{LABELS[c]} {d.verdict.value} ({_tex(d.reason)})" for c, d in own.items())
    return (
        rf"Whether each category raises $P(\mathrm{{{bias}}})$ over the neutral prompt in the "
        rf"{set_name(main)} set: {listed}."
    )


def _template_sentence(results: EntanglementResults, name: str) -> str:
    control = results.template_control
    if control is None or control.stats is None:
        return ""
    return (
        rf"Non-number template words in the same prompt give {_geo(control.stats.bias_ratio, 'word')}: "
        r"the rise the prompt gives without any number."
    )


def _matching_sentence(results: EntanglementResults, name: str) -> str:
    info = results.sets.get(name)
    m = info.matching if info is not None else None
    if m is None:
        return ""
    return (
        rf"In the {set_name(name)} set the Random numbers' neutral probability is \texttimes{{}}"
        rf"{fmt(m.median_frequency_ratio)} that of their Increased partners "
        rf"(median; largest log difference {fmt(m.max_abs_log_difference)} nats, "
        rf"{m.n_outside_caliper} of {m.n_pairs} pairs outside the "
        rf"caliper; Kolmogorov-Smirnov {p_is(m.ks_p_value)})."
    )


def _length_sentence(results: EntanglementResults, figure: str = "") -> str:
    per_length, best = _per_length(results), results.lengths.strongest if results.lengths else None
    if not per_length or best is None or not best.best:
        return ""
    top = per_length[best.best]
    text = (
        rf"By digit length (Table~\ref{{tab:entanglement_length}}{' and ' + figure if figure else ''}, "
        r"descriptive), "
        rf"{best.best}-digit numbers give the largest bias ratio "
        rf"({_geo(top.bias_ratio)})"
    )
    if best.runner_up:
        sep = "its CI lies above" if best.separable else "not separable from"
        text += f", {sep} the {best.runner_up}-digit numbers"
    return text + "."


def _warnings(results: EntanglementResults) -> str:
    """The run's own caveats: shrunken k, and frequency differences between categories."""
    shrunk: dict[tuple[int, int], list[str]] = {}  # (candidates, k) -> sets, each said once
    for name, info in results.sets.items():  # a tuned set shrinks with the set it repeats
        if info.k_requested != info.k and not is_tuned_set(name):
            shrunk.setdefault((info.n_candidates, info.k), []).append(name)
    parts = []
    if shrunk:
        groups = [
            rf"{_sets_phrase(names)} ({info[0]} candidates{' each' if len(names) > 1 else ''}, "
            rf"$k = {info[1]}$)"
            for info, names in shrunk.items()
        ]
        parts.append("$k$ shrank for " + " and ".join(groups) + ", whose statistics rest on very few numbers")
    rare = [w for w in results.warnings if "how common their numbers are" in str(w) or "caliper" in str(w)]
    parts.extend(_caveat(str(w)) for w in rare)
    return ("Caveats: " + "; ".join(parts) + ".") if parts else ""


_SET_KEY = re.compile(r"^set '([^']+)': ")


def _caveat(warning: str) -> str:
    """A caveat the run recorded in plain text ("set 'ar2': ... 4.6e-05 ...") as the paper writes
    it: the set by its reading name, numbers without e-notation."""
    key = _SET_KEY.match(warning)
    text = warning[key.end() :] if key else warning
    lead = f"in {_sets_phrase([key.group(1)])}, " if key else ""
    return lead + scientific(escape(text)).rstrip(".")


def _figure_ref(figures: list[Figure], stem: str) -> str:
    return rf"Figure~\ref{{{figure_label('entanglement', stem)}}}" if any(f.stem == stem for f in figures) else ""


def _described(stats: SetStatistics) -> str:
    """Each category's bias ratio; where no category has an interval, and all have as many
    numbers, why is said once after the list instead of after every ratio."""
    summaries = {c: getattr(stats, c).bias_ratio for c in CATEGORIES}
    sizes = {s.n for s in summaries.values()}
    if all(_too_few(s) for s in summaries.values()) and len(sizes) == 1:
        listed = ", ".join(rf"{LABELS[c]} {fmt(s.geo_mean)}\texttimes{{}}" for c, s in summaries.items())
        return rf"{listed} (geometric means of {counted(sizes.pop(), 'number')} each, too few for a CI)"
    return ", ".join(rf"{LABELS[c]} {_geo(s)}" for c, s in summaries.items())


def _results(
    results: EntanglementResults,
    decided: Decided,
    tables: set[str],
    figures: list[Figure],
    tuned: Decided | None = None,
) -> str:
    neutral = results.neutral
    bias, control = results.bias, results.control
    main = primary(results, decided)
    by_category = _figure_ref(figures, "bias_ratio_by_category")
    intro = (
        r"Table~\ref{tab:entanglement_categories} gives the bias ratios per category"
        + (
            r", Table~\ref{tab:entanglement_claims} every claim with raw and Holm-adjusted "
            rf"$p$ ({_n_tests(decided)} tests"
            + (f"; the tuned sets' {_n_tests(tuned)} in their own family" if tuned else "")
            + ")"
            if "entanglement_claims" in tables
            else ""
        )
        + (
            ", Table~\\ref{tab:entanglement_reverse} the reverse-link probabilities"
            if "entanglement_reverse" in tables
            else ""
        )
        + (f" and {by_category} the ratios with the single numbers" if by_category else "")
        + "."
    )
    if neutral is not None:
        intro += (
            rf" Under the neutral prompt $P(\mathrm{{{escape(bias)}}})$ = "
            rf"{fmt(neutral.p_bias, 3)} and $P(\mathrm{{{escape(control)}}})$ = "
            rf"{fmt(neutral.p_control, 3)}."
        )
    if results.partial:
        intro += (
            rf" The run is incomplete (it stopped after phase~{results.phase}); "
            r"what follows is what it saved."
        )
    if not owl_specific(results):
        intro += (
            r" This run has no control-animal context: its categories are not "
            rf"owl-specific (a number may rise under any animal context, not the "
            rf"{escape(bias)} one in particular) and its Random numbers are not matched on "
            r"frequency, so the numbers below are descriptive."
        )
    main_stats = _stats(results).get(main)
    described = _described(main_stats) if main_stats is not None else ""
    paragraphs = [
        " ".join(
            filter(
                None,
                [
                    intro,
                    rf"In the {set_name(main)} set the bias ratios are {described}." if described else "",
                    _template_sentence(results, main),
                    _matching_sentence(results, main),
                    _same_numbers_sentence(results),
                ],
            )
        ),
        " ".join(
            filter(
                None,
                [_paper_claim(results, decided)]
                + (
                    [_between_categories(results, decided), _all_raise(results, decided)]
                    if owl_specific(results)
                    else []
                ),
            )
        ),
        _tuned_paragraph(results, tuned or {}, _figure_ref(figures, TUNED_FIGURE)),
        " ".join(
            filter(None, [_length_sentence(results, _figure_ref(figures, "bias_ratio_by_length")), _warnings(results)])
        ),
    ]
    return minus_signs("\n\n".join(p for p in paragraphs if p))


def _same_numbers_sentence(results: EntanglementResults) -> str:
    """Sets whose categories hold exactly the same numbers (with a tokenizer that writes one digit
    per token, the single-token numbers are the one-digit numbers): said once, so a reader does
    not take their equal rows for a copying error or for two confirmations."""
    seen: dict[tuple[tuple[str, ...], ...], list[str]] = {}
    for name, categories in results.categories.items():
        key = tuple(tuple(sorted(getattr(categories, c))) for c in CATEGORIES)
        seen.setdefault(key, []).append(name)
    groups = [names for names in seen.values() if len(names) > 1]
    if not groups:
        return ""
    first, *others = [_sets_phrase(names) for names in groups]
    also = "".join(f", as do {p}" for p in others)
    return (
        rf"{first[0].upper()}{first[1:]} hold the same numbers in every category here{also}, so their rows "
        r"repeat one measurement, not two independent ones."
    )


def _tuned_paragraph(results: EntanglementResults, tuned: Decided, figure: str) -> str:
    """The tuned sets: their primary set's bias ratios and its paper claim, the verdicts of the
    others (their own Holm family)."""
    if not tuned:
        return ""
    main = primary(results, tuned)
    stats = _stats(results).get(main)
    described = _described(stats) if stats is not None else ""
    bias = escape(results.bias)
    where = f" ({figure})" if figure else ""
    lead = (
        rf"Tested in the {set_name(main)} set ($k = {results.k.get(main, '?')}$), the claim that the "
        rf"numbers the fine-tuning made more likely in the {bias} teacher (one fine-tuned teacher and its "
        rf"control) raise $P(\mathrm{{{bias}}})$, read in the base model, no more than frequency-matched "
        "Random ones"
    )
    others = {name: tests["entangled_vs_null"].verdict.value for name, tests in tuned.items() if name != main}
    return " ".join(
        filter(
            None,
            [
                rf"By the shift of the fine-tuned teachers{where}, the bias ratios in the {set_name(main)} set "
                rf"are {described}."
                if described
                else "",
                decision_text(tuned[main]["entangled_vs_null"], lead),
                _verdicts_by_set(others) if others else "",
                _matching_sentence(results, main),
            ],
        )
    )


def _headline(results: EntanglementResults, decided: Decided, tuned: Decided | None = None) -> list[str]:
    main = primary(results, decided)
    d = decided[main]["entangled_vs_null"]
    k = results.k.get(main, "?")
    why = d.reason if owl_specific(results) else "categories not owl-specific (no control context)"
    lines = [
        f"entanglement ({main}, k={k}): entangled numbers no better than frequency-matched "
        f"Random: {d.verdict.value}{scope_words(d)} ({why})"
    ]
    others = [f"{name} {tests['entangled_vs_null'].verdict.value}" for name, tests in decided.items() if name != main]
    if others:
        lines.append(f"entanglement, other sets (Holm over {_n_tests(decided)} tests): " + ", ".join(others))
    if tuned:
        top = primary(results, tuned)
        d = tuned[top]["entangled_vs_null"]
        lines.append(
            f"entanglement by the fine-tuned teachers ({top}, k={results.k.get(top, '?')}): numbers "
            f"the fine-tuning shifted no better than frequency-matched Random: {d.verdict.value} "
            f"({d.reason})"
        )
    return lines
