"""The token-entanglement section (phases 1-3): do 'entangled' numbers raise P(owl) more?

The claim under test is that token entanglement (Zur et al. 2025) does not explain the
transfer: numbers the owl context favours (Increased) raise P(owl | 'You love N') no more than
numbers it disfavours or leaves alone, or than Random numbers of the same baseline frequency.

Reads an `entanglement` run directory: its results.json parsed once into `EntanglementResults`
(`sublens.experiments.entanglement.results`). This module decides nothing itself: every verdict
word comes from a ``sublens.claims`` Decision. A run records its claims (``claims``: claim,
estimand, unit = numbers, estimate per set and test); the section re-decides them (Holm over
every set x test, as ``sublens.entanglement.decide_recorded``) and words the text from the
Decisions (verdict, reason, what would settle it). A run without the control-animal context
(recorded before categories were owl-specific) has no claims: each one is decided on no
estimate ("not measured") and the text says why.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sublens.claims import MIN_UNITS, ClaimSettings, Decision, Verdict, decide_family
from sublens.entanglement import CATEGORIES, TESTS, animal_context, fill, set_claims
from sublens.experiments.entanglement.analysis import set_title
from sublens.experiments.entanglement.results import (
    EntanglementResults,
    LengthEntry,
    RatioSummary,
    SetStatistics,
)
from sublens.report.latex import (
    booktabs_table,
    counted,
    escape,
    fmt,
    fmt_ci,
    fmt_p,
    minus_signs,
    p_is,
    tt,
)
from sublens.report.names import display_name
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.stages import StageRun
from sublens.results import read_run_results

TITLE = "Token entanglement"
LABELS = {"increased": "Increased", "decreased": "Decreased", "unchanged": "Unchanged",
          "random": "Random", "template": "Template words"}
Decided = dict[str, dict[str, Decision]]  # set -> test -> Decision


def build(run: StageRun) -> Section:
    results, unreadable = read_run_results(run.results, EntanglementResults, run.ok)
    if results is None or not results.category_stats:
        return Section(TITLE, _methods(run, results), _incomplete(run, results, unreadable),
                       headline=["entanglement: incomplete (no phase-2 statistics)"])
    decided = decisions(results, run.config)
    figures = _figures(run, results)
    tables = {
        "entanglement_categories": categories_table(results, decided),
        **({"entanglement_claims": claims_table(results, decided)} if owl_specific(results) else {}),
        **({"entanglement_reverse": reverse_table(results)} if results.neutral is not None else {}),
        **({"entanglement_length": length_table(results)} if _per_length(results) else {}),
    }
    text = _results(results, decided, set(tables), figures)
    return Section(TITLE, _methods(run, results), text, tables, figures, _headline(results, decided))


# ---------------------------------------------------------------------------------------------
# reading the results


def _stats(results: EntanglementResults) -> dict[str, SetStatistics]:
    return results.category_stats or {}


# ---------------------------------------------------------------------------------------------
# decisions (sublens.claims)


def owl_specific(results: EntanglementResults) -> bool:
    """Whether the run's categories come from the owl-minus-control shift (and its claims are
    recorded): runs before the control-animal context have neither."""
    return (results.design is not None and results.design.owl_specific
            and results.claims is not None and bool(results.claims.tests))


def _settings(config: dict[str, Any]) -> ClaimSettings:
    raw = config.get("claims")
    return ClaimSettings(**raw) if isinstance(raw, dict) else ClaimSettings()


def decisions(results: EntanglementResults, config: dict[str, Any] | None = None) -> Decided:
    """Every claim of every set, decided by sublens.claims with Holm over all of them (one
    family, as sublens.entanglement.decide_recorded). Without owl-specific categories each claim
    has no estimate and is decided as not measured."""
    out: Decided = {}
    if owl_specific(results) and results.claims is not None:
        tests = results.claims.tests
        for entry, d in zip(tests, decide_family([(t.claim, t.estimate) for t in tests]), strict=True):
            out.setdefault(entry.set, {})[entry.test] = d
        return out
    settings = _settings(config or {})
    bias = results.bias
    names = list(_stats(results))
    pairs = [(name, test, claim) for name in names
             for test, (claim, _) in zip(TESTS, set_claims(name, {}, settings, bias), strict=True)]
    decided = decide_family([(claim, None) for _, _, claim in pairs])
    for (name, test, _), d in zip(pairs, decided, strict=True):
        out.setdefault(name, {})[test] = d
    return out


def primary(results: EntanglementResults, decided: Decided) -> str:
    """The set of the paper claim: as recorded (fixed before any ratio was seen), else the one
    with the most numbers per category."""
    recorded = results.claims.primary_set if results.claims is not None else None
    if recorded is not None and recorded in decided:
        return recorded
    return max(decided, key=lambda name: results.k.get(name, 0))


def set_name(name: str) -> str:
    """A candidate set in the prose and tables: 'the 2-digit set' reads, 'ar2' is a key."""
    return escape(set_title(name))


def _sets_phrase(names: list[str]) -> str:
    """'the vocabulary set', 'the vocabulary and 1-digit sets'."""
    titles = [set_name(n) for n in names]
    if len(titles) == 1:
        return f"the {titles[0]} set"
    return f"the {', '.join(titles[:-1])} and {titles[-1]} sets"


def _tex(text: str) -> str:
    """Plain text from sublens.claims (reasons, statements) as LaTeX: escaped, × kept."""
    return r"\texttimes{}".join(escape(part) for part in str(text).split("×"))


def decision_text(d: Decision, lead: str | None = None) -> str:
    """One Decision in words: the claim, its verdict and reason, then estimand, unit and test; an
    inconclusive verdict adds what would settle it. The Holm family and the margin, the same for
    every claim, are stated once in the methods."""
    c, e = d.claim, d.estimate
    n = e.n if e else 0
    test = (f"{e.interval} (two-sided)" if e is not None and e.has_interval
            else c.test.removesuffix(f", Holm within {c.family}"))  # the paired or Welch form where used
    text = (rf"{lead or _statement(c.statement)}: \emph{{{d.verdict.value}}} ({_tex(d.reason)}). "
            rf"Estimand: {_tex(c.estimand)}; unit: {c.unit}s ($n = {n}$); test: {_tex(test)}.")
    if d.verdict is Verdict.INCONCLUSIVE and d.settle:
        text += rf" To settle it: {_tex(d.settle)}."
    return text


_IN_SET = re.compile(r"^In (\w+), ")


def _statement(statement: str) -> str:
    """A claim's statement (sublens.entanglement words it 'In ar2, ...') with the set named as
    the text names it ('In the 2-digit set, ...')."""
    return _tex(_IN_SET.sub(lambda m: f"In the {set_title(m[1])} set, ", statement))


# ---------------------------------------------------------------------------------------------
# text


def _num(value: Any) -> float:
    """A number from the config; None/missing -> NaN, so comparisons are simply False."""
    return float(value) if isinstance(value, int | float) else math.nan


def _too_few(s: RatioSummary) -> bool:
    return s.n < MIN_UNITS["number"] or not (
        math.isfinite(s.geo_ci_low) and math.isfinite(s.geo_ci_high))


def _geo(s: RatioSummary, unit: str = "number") -> str:
    if _too_few(s):
        return rf"{fmt(s.geo_mean)}\texttimes{{}} (too few {unit}s for a CI, $n = {s.n}$)"
    low, high = fmt(s.geo_ci_low), fmt(s.geo_ci_high)
    return rf"{fmt(s.geo_mean)}\texttimes{{}} [{low}, {high}]"


def _quote(text: str) -> str:
    return f"``{escape(text)}''"


def _default_system(results: EntanglementResults | None) -> str:
    """The neutral prompt's system prompt as the run recorded it, quoted verbatim."""
    recorded = results.prompts.phase1_neutral if results is not None else None
    system, source = (recorded.system, recorded.system_source) if recorded else (None, None)
    if system is None:
        return "no system prompt (the chat template inserts none)"
    if source == "template_default":
        return ("the system prompt the chat template inserts when none is given, "
                + _quote(str(system)))
    return "the system prompt " + _quote(str(system))


def _methods(run: StageRun, results: EntanglementResults | None) -> str:
    c = run.config
    model = (results.model if results is not None else None) or c.get("model", "?")
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    plural = c.get("bias_plural") or f"{bias}s"
    control_plural = c.get("control_plural") or f"{control}s"
    p = c.get("prompts") or {}
    bias_system = animal_context(p.get("bias_system", ""), plural)
    control_system = animal_context(p.get("bias_system", ""), control_plural)
    number_system = fill(p.get("number_system", ""), num="N")
    lengths = [str(n) for n in c.get("lengths", [])]
    lengths_text = (", ".join(lengths[:-1]) + "- and " + lengths[-1] if len(lengths) > 1
                    else "".join(lengths))
    sets = []
    if "vocab" in c.get("sets", []):
        vocab = results.sets.get("vocab") if results is not None else None
        n_vocab = vocab.n_candidates if vocab is not None else None
        sets.append("the vocabulary set (every single-token number"
                    + (f", {n_vocab} tokens" if n_vocab else "") + ")")
    if "autoregressive" in c.get("sets", []):
        zeros = "with" if c.get("leading_zeros", True) else "without"
        sets.append(f"autoregressive sets of all {lengths_text}-digit strings "
                    f"({zeros} leading zeros)")
    settings = _settings(c)
    cumulative = c.get("cumulative_orders", 0)
    neutral = _default_system(results)
    if results is not None and owl_specific(results):
        phase1 = (
            rf"Phase~1 scores every candidate number as the answer to "
            rf"{_quote(p.get('number_question', ''))} (prefilled "
            rf"{_quote(p.get('number_prefill', ''))}) under three system prompts: {neutral} "
            rf"(neutral), {_quote(bias_system)} (the {escape(bias)} context) and "
            rf"{_quote(control_system)} (the {escape(control)} context, the matched control). "
            rf"The candidates are " + " and ".join(sets) + ". Each set is normalised on its own; "
            r"a number's owl-specific shift is the change of its log probability under the "
            rf"{escape(bias)} context minus that under the {escape(control)} context. Each set is "
            rf"split into disjoint categories of $k = {c.get('k', '?')}$ numbers: Increased "
            r"(largest shift), Decreased (smallest), Unchanged (smallest $|\text{shift}|$ of the "
            r"rest), and Random, matched to Increased on baseline frequency: for each Increased "
            r"number, a number drawn with the seed among the unused ones within "
            rf"{fmt(_num(c.get('match_caliper', 0.1)))} nats of its neutral log probability (else "
            r"the nearest), without replacement; $k$ shrinks for small sets. "
        )
        claims = (
            r"Verdicts are decided on numbers as the unit, on log bias ratios with Student-$t$ "
            r"intervals: Increased against its frequency-matched Random partner (paired), Decreased "
            r"and Unchanged against Increased (Welch), each predicted to make no difference, which "
            rf"counts as shown only when the whole 95\% CI of the ratio lies inside "
            rf"[1/{settings.margin:g}, {settings.margin:g}] (a CI that merely includes 1 is "
            r"inconclusive); and each category's bias ratio against the neutral prompt "
            r"(one-sample, predicted to rise). $p$-values are Holm-adjusted over every set and "
            rf"test (Holm's step-down method, \citealp{{holm1979simple}}) at $\alpha = {settings.alpha:g}$ and given beside "
            rf"the raw ones; with fewer than {MIN_UNITS['number']} numbers per category no "
            r"interval is formed (too few numbers). "
        )
    else:
        phase1 = (
            rf"Phase~1 scores every candidate number as the answer to "
            rf"{_quote(p.get('number_question', ''))} (prefilled "
            rf"{_quote(p.get('number_prefill', ''))}) under {neutral} and under "
            rf"{_quote(bias_system)}. The candidates are " + " and ".join(sets) + ". This run "
            r"predates the control-animal context: its categories (Increased, Decreased, Unchanged "
            r"by the change of normalised probability against the neutral prompt only; Random drawn "
            rf"uniformly from the rest; $k = {c.get('k', '?')}$) are not specific to the "
            rf"{escape(bias)} and Random is not matched on frequency. "
        )
        claims = ""
    return (
        rf"We test token entanglement \citep{{zur2025owl}} on {escape(display_name(model))}, with "
        rf"the {escape(bias)} as the bias animal and the {escape(control)} as the control. " + phase1
        + rf"Phase~2 measures the reverse link: $P(\mathrm{{{escape(bias)}}})$ and "
        rf"$P(\mathrm{{{escape(control)}}})$ in answer to {_quote(p.get('animal_question', ''))} "
        rf"(prefilled {_quote(p.get('animal_prefill', ''))}) with the system prompt "
        rf"{_quote(number_system)} for each categorised number $N$; the bias ratio is "
        rf"$P(\mathrm{{{escape(bias)}}} \mid N) / P(\mathrm{{{escape(bias)}}} \mid "
        r"\mathrm{neutral})$. " + claims
        + r"A template control puts non-number words in the slot of $N$"
        + (f", and cumulative priming puts all $k$ numbers of a category in one prompt, "
           f"{_orders(cumulative)}; both are descriptive." if cumulative else " (descriptive).")
        + r" Phase~3 repeats the description per digit length "
        rf"(seed {c.get('seed', 0)})."
    )


def _orders(n: int) -> str:
    return "in one order" if n == 1 else f"in {counted(n, 'order')}, averaged"


def _incomplete(run: StageRun, results: EntanglementResults | None, unreadable: str | None) -> str:
    status = run.record.get("status", "unknown")
    phase = results.phase if results is not None else None
    done = f" it stopped after phase~{phase}" if phase else " it saved no statistics"
    text = (
        rf"The entanglement stage is incomplete (run status {tt(status)};{done}), so this draft "
        r"has no results for token entanglement; rerun the stage to fill this section."
    )
    return text + (f" Its results cannot be read: {escape(unreadable)}" if unreadable else "")


def _paper_claim(results: EntanglementResults, decided: Decided) -> str:
    main = primary(results, decided)
    d = decided[main]["entangled_vs_null"]
    bias = escape(results.bias)
    lead = (rf"The paper's claim, tested in the {set_name(main)} set ($k = {results.k.get(main, '?')}$"
            rf"), that entangled numbers raise $P(\mathrm{{{bias}}})$ no more than "
            r"frequency-matched Random ones")
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
    return (rf"For that reason no claim is decided on this run: {lead[0].lower()}{lead[1:]}, is {word} "
            rf"in every set, and so are the claims that Decreased and Unchanged numbers raise the bias "
            r"ratio as much as Increased ones and that each category raises it over the neutral "
            r"prompt. Rerunning the stage, which scores the control-animal context and matches "
            r"Random numbers on frequency, would decide them.")


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
        return (rf"In the {set_name(main)} set every category raises $P(\mathrm{{{bias}}})$ over the neutral "
                r"prompt (each category's claim supported after Holm), Decreased and Unchanged "
                r"numbers included.")
    listed = "; ".join(rf"{LABELS[c]} {d.verdict.value} ({_tex(d.reason)})" for c, d in own.items())
    return (rf"Whether each category raises $P(\mathrm{{{bias}}})$ over the neutral prompt in the "
            rf"{set_name(main)} set: {listed}.")


def _template_sentence(results: EntanglementResults, name: str) -> str:
    control = results.template_control
    if control is None or control.stats is None:
        return ""
    return (rf"Non-number template words in the same prompt give {_geo(control.stats.bias_ratio, 'word')}: "
            r"the rise the prompt gives without any number.")


def _matching_sentence(results: EntanglementResults, name: str) -> str:
    info = results.sets.get(name)
    m = info.matching if info is not None else None
    if m is None:
        return ""
    return (rf"In the {set_name(name)} set the Random numbers' neutral probability is \texttimes{{}}"
            rf"{fmt(m.median_frequency_ratio)} that of their Increased partners "
            rf"(median; largest log difference {fmt(m.max_abs_log_difference)} nats, "
            rf"{m.n_outside_caliper} of {m.n_pairs} pairs outside the "
            rf"caliper; Kolmogorov-Smirnov {p_is(m.ks_p_value)}).")


def _length_sentence(results: EntanglementResults, figure: str = "") -> str:
    per_length, best = _per_length(results), results.lengths.strongest if results.lengths else None
    if not per_length or best is None or not best.best:
        return ""
    top = per_length[best.best]
    text = (rf"By digit length (Table~\ref{{tab:entanglement_length}}{' and ' + figure if figure else ''}, "
            r"descriptive), "
            rf"{best.best}-digit numbers give the largest bias ratio "
            rf"({_geo(top.bias_ratio)})")
    if best.runner_up:
        sep = "its CI lies above" if best.separable else "not separable from"
        text += f", {sep} the {best.runner_up}-digit numbers"
    return text + "."


def _warnings(results: EntanglementResults) -> str:
    """The run's own caveats: shrunken k, and frequency differences between categories."""
    shrunk: dict[tuple[int, int], list[str]] = {}  # (candidates, k) -> sets, each said once
    for name, info in results.sets.items():
        if info.k_requested != info.k:
            shrunk.setdefault((info.n_candidates, info.k), []).append(name)
    parts = []
    if shrunk:
        groups = [rf"{_sets_phrase(names)} ({info[0]} candidates{' each' if len(names) > 1 else ''}, "
                  rf"$k = {info[1]}$)" for info, names in shrunk.items()]
        parts.append("$k$ shrank for " + " and ".join(groups) + ", whose statistics rest on very few numbers")
    rare = [w for w in results.warnings
            if "how common their numbers are" in str(w) or "caliper" in str(w)]
    parts.extend(escape(w).rstrip(".") for w in rare)
    return ("Caveats: " + "; ".join(parts) + ".") if parts else ""


def _figure_ref(figures: list[Figure], stem: str) -> str:
    return (rf"Figure~\ref{{{figure_label('entanglement', stem)}}}"
            if any(f.stem == stem for f in figures) else "")


def _described(stats: SetStatistics) -> str:
    """Each category's bias ratio; where no category has an interval, and all have as many
    numbers, why is said once after the list instead of after every ratio."""
    summaries = {c: getattr(stats, c).bias_ratio for c in CATEGORIES}
    sizes = {s.n for s in summaries.values()}
    if all(_too_few(s) for s in summaries.values()) and len(sizes) == 1:
        listed = ", ".join(rf"{LABELS[c]} {fmt(s.geo_mean)}\texttimes{{}}" for c, s in summaries.items())
        return rf"{listed} (geometric means of {counted(sizes.pop(), 'number')} each, too few for a CI)"
    return ", ".join(rf"{LABELS[c]} {_geo(s)}" for c, s in summaries.items())


def _n_tests(decided: Decided) -> int:
    return sum(len(tests) for tests in decided.values())


def _results(results: EntanglementResults, decided: Decided, tables: set[str],
             figures: list[Figure]) -> str:
    neutral = results.neutral
    bias, control = results.bias, results.control
    main = primary(results, decided)
    by_category = _figure_ref(figures, "bias_ratio_by_category")
    intro = (r"Table~\ref{tab:entanglement_categories} gives the bias ratios per category"
             + (r", Table~\ref{tab:entanglement_claims} every claim with raw and Holm-adjusted "
                rf"$p$ ({_n_tests(decided)} tests)" if "entanglement_claims" in tables else "")
             + (", Table~\\ref{tab:entanglement_reverse} the reverse-link probabilities"
                if "entanglement_reverse" in tables else "")
             + (f" and {by_category} the ratios with the single numbers" if by_category else "") + ".")
    if neutral is not None:
        intro += (rf" Under the neutral prompt $P(\mathrm{{{escape(bias)}}})$ = "
                  rf"{fmt(neutral.p_bias, 3)} and $P(\mathrm{{{escape(control)}}})$ = "
                  rf"{fmt(neutral.p_control, 3)}.")
    if results.partial:
        intro += (rf" The run is incomplete (it stopped after phase~{results.phase}); "
                  r"what follows is what it saved.")
    if not owl_specific(results):
        intro += (r" This run has no control-animal context: its categories are not "
                  rf"owl-specific (a number may rise under any animal context, not the "
                  rf"{escape(bias)} one in particular) and its Random numbers are not matched on "
                  r"frequency, so the numbers below are descriptive.")
    main_stats = _stats(results).get(main)
    described = _described(main_stats) if main_stats is not None else ""
    paragraphs = [
        " ".join(filter(None, [
            intro,
            rf"In the {set_name(main)} set the bias ratios are {described}." if described else "",
            _template_sentence(results, main), _matching_sentence(results, main)])),
        " ".join(filter(None, [_paper_claim(results, decided)] + (
            [_between_categories(results, decided), _all_raise(results, decided)] if owl_specific(results)
            else []))),
        " ".join(filter(None, [_length_sentence(results, _figure_ref(figures, "bias_ratio_by_length")),
                               _warnings(results)])),
    ]
    return minus_signs("\n\n".join(p for p in paragraphs if p))


def _headline(results: EntanglementResults, decided: Decided) -> list[str]:
    main = primary(results, decided)
    d = decided[main]["entangled_vs_null"]
    k = results.k.get(main, "?")
    why = d.reason if owl_specific(results) else "categories not owl-specific (no control context)"
    lines = [f"entanglement ({main}, k={k}): entangled numbers no better than frequency-matched "
             f"Random: {d.verdict.value} ({why})"]
    others = [f"{name} {tests['entangled_vs_null'].verdict.value}"
              for name, tests in decided.items() if name != main]
    if others:
        lines.append(f"entanglement, other sets (Holm over {_n_tests(decided)} tests): "
                     + ", ".join(others))
    return lines


# ---------------------------------------------------------------------------------------------
# tables


def _blocks(rows_by_set: list[list[list[str]]]) -> list[list[str]]:
    """Per-set row blocks, the set named once, a rule between blocks (booktabs rules may open
    a row)."""
    out: list[list[str]] = []
    for i, block in enumerate(rows_by_set):
        for j, row in enumerate(block):
            first = (r"\midrule " if i and not j else "") + (row[0] if not j else "")
            out.append([first, *row[1:]])
    return out


def _ci(summary: RatioSummary) -> str:
    """The geometric mean with its CI; 'too few' instead of an interval."""
    if _too_few(summary):
        return f"{fmt(summary.geo_mean)} (too few)"
    return fmt_ci(summary.geo_mean, summary.geo_ci_low, summary.geo_ci_high)


def _estimate_cell(d: Decision) -> str:
    """The claim's ratio with its CI; 'too few' (or why there is none) instead of an interval."""
    e = d.estimate
    if e is None or e.ratio is None:
        return "not measured"
    if not e.has_interval:
        return f"{fmt(e.ratio)} (too few)" if e.n < MIN_UNITS[d.claim.unit] else f"{fmt(e.ratio)} (--)"
    return fmt_ci(e.ratio, e.ci_low, e.ci_high)


def _p_cells(d: Decision) -> list[str]:
    raw = d.estimate.p_value if d.estimate else None
    return [fmt_p(raw), fmt_p(d.p_adjusted) if raw is not None else "--"]


def _tight(columns: str) -> str:
    """A tabular spec with narrow gaps and no outer padding, so the table fits one column."""
    return "@{}" + r"@{\hspace{5pt}}".join(columns) + "@{}"


SHORT = {"increased": "Inc.", "decreased": "Dec.", "unchanged": "Unch.", "random": "Rand."}


def _k_note(results: EntanglementResults) -> str:
    ks = results.k
    if not ks:
        return ""
    return "$k$ per set: " + ", ".join(rf"{set_name(n)} {k}" for n, k in ks.items()) + "."


def categories_table(results: EntanglementResults, decided: Decided) -> str:
    """Across the page (six columns with a CI and a verdict are wider than a column, 255 pt
    against 219 pt): per set and category, the bias ratio (geometric mean [t CI on log
    ratios]) with raw and Holm p and the verdict of the category's own claim (it rises)."""
    blocks = []
    specific = owl_specific(results)
    for name, stats in _stats(results).items():
        block = []
        for c in CATEGORIES:
            d = (decided.get(name) or {}).get(f"raises.{c}")
            if specific and d is not None:
                block.append([set_name(name), SHORT[c], _estimate_cell(d), *_p_cells(d), d.verdict.value])
            else:
                verdict = d.verdict.value if d is not None else "--"
                block.append([set_name(name), SHORT[c], _ci(getattr(stats, c).bias_ratio), "--", "--",
                              verdict])
        blocks.append(block)
    template = results.template_control.stats if results.template_control is not None else None
    if template is not None:
        blocks.append([["all", "Templ.", _ci(template.bias_ratio), "--", "--", "--"]])
    bias = escape(results.bias)
    design = (r"Categories by the owl-minus-control shift; Random matched to Increased on "
              r"baseline frequency. " if specific else
              r"Categories against the neutral prompt only (not owl-specific); Random uniform. ")
    caption = (
        rf"Probability categories: bias ratio $P(\mathrm{{{bias}}} \mid N)/P(\mathrm{{{bias}}} \mid "
        r"\mathrm{neutral})$, geometric mean [95\% $t$-interval on log ratios] over the $k$ numbers "
        r"of each category (Templ.: non-number words, descriptive); raw and Holm-adjusted $p$ and "
        r"verdict of the claim that the category raises it; too few: fewer than "
        rf"{MIN_UNITS['number']} numbers, no interval. " + design + _k_note(results)
    )
    return booktabs_table(["Set", "Cat.", "Bias ratio [95% CI]", "p", "Holm p", "Verdict"],
                          _blocks(blocks), caption, "tab:entanglement_categories",
                          align="llrrrl", wide=True)


TEST_LABELS = {"entangled_vs_null": "Inc./Rand. (paired)",
               "decreased_vs_increased": "Dec./Inc. (Welch)",
               "unchanged_vs_increased": "Unch./Inc. (Welch)"}


def claims_table(results: EntanglementResults, decided: Decided) -> str:
    """Across the page, as the categories table: per set, the between-category claims
    (predicted: no difference) with the ratio and CI, raw and Holm p, and the verdict."""
    blocks = []
    for name, tests in decided.items():
        blocks.append([[set_name(name), escape(TEST_LABELS[t]), _estimate_cell(tests[t]),
                        *_p_cells(tests[t]), tests[t].verdict.value]
                       for t in TEST_LABELS if t in tests])
    margin = (results.claims.settings if results.claims is not None else ClaimSettings()).margin
    caption = (
        r"Between-category claims, each predicting no difference: ratio of bias ratios "
        r"(geometric mean [95\% $t$-interval]; Increased against its frequency-matched Random "
        r"partner, paired; Decreased and Unchanged against Increased, Welch), raw and "
        rf"Holm-adjusted $p$ (Holm over all {_n_tests(decided)} tests of the study) and the verdict: "
        rf"supported only when the CI lies inside [1/{margin:g}, {margin:g}]. " + _k_note(results)
    )
    return booktabs_table(["Set", "Claim", "Ratio [95% CI]", "p", "Holm p", "Verdict"],
                          _blocks(blocks), caption, "tab:entanglement_claims",
                          align="llrrrl", wide=True)


def _scale(p: float) -> int:
    """The power of ten that brings the largest probability shown into [1, 10)."""
    return -math.floor(math.log10(p)) if p > 0 and math.isfinite(p) else 0


def reverse_table(results: EntanglementResults) -> str:
    """Across both columns: mean P(bias | N) and P(control | N) with CIs, the relative ratio,
    and cumulative priming (all k numbers of a category in one prompt)."""
    neutral = results.neutral
    if neutral is None:
        raise ValueError("reverse_table needs the neutral probabilities (phase 2)")
    p0, c0 = neutral.p_bias, neutral.p_control
    means = [getattr(st, c).bias_ratio.mean * p0 for st in _stats(results).values() for c in CATEGORIES]
    s = _scale(max([m for m in means if math.isfinite(m)], default=p0))
    cumulative = results.cumulative.sets if results.cumulative is not None else {}

    def mean_p(summary: RatioSummary, p: float) -> str:
        mean, low, high = (v * p * 10.0**s for v in (summary.mean, summary.ci_low, summary.ci_high))
        return fmt_ci(mean, low, high)

    def cum(name: str, c: str) -> str:
        group = (cumulative.get(name) or {}).get(c)
        if group is None:
            return "--"
        br = group.bias_ratio
        return _ci(br) if br.n > 1 else fmt(br.geo_mean)

    blocks = [[["--", "neutral", fmt(p0 * 10.0**s), fmt(c0 * 10.0**s), "1.00", "--"]]]
    for name, stats in _stats(results).items():
        block = []
        for c in CATEGORIES:
            st = getattr(stats, c)
            block.append([set_name(name), LABELS[c], mean_p(st.bias_ratio, p0),
                          mean_p(st.control_ratio, c0), _ci(st.relative_ratio), cum(name, c)])
        blocks.append(block)
    bias, control = results.bias, results.control
    caption = (
        rf"Reverse-link averages: mean $P(\mathrm{{{escape(bias)}}} \mid N)$ and "
        rf"$P(\mathrm{{{escape(control)}}} \mid N)$ in units of $10^{{-{s}}}$ [bootstrap 95\% CI of "
        r"the mean] over the category's numbers under the system prompt `You love the number $N$'; "
        rf"the {escape(bias)}/{escape(control)} relative ratio (geometric mean [95\% CI]); and the "
        r"bias ratio with all numbers of the category in one prompt (cumulative priming). "
        + _k_note(results)
    )
    header = ["Set", "Category", f"P({bias}|N)", f"P({control}|N)",
              f"{bias}/{control} ratio", "All in one prompt"]
    return booktabs_table(header, _blocks(blocks), caption, "tab:entanglement_reverse",
                          align="llrrrr", wide=True)


def _per_length(results: EntanglementResults) -> dict[str, LengthEntry]:
    return dict(results.lengths.per_length) if results.lengths is not None else {}


def length_table(results: EntanglementResults) -> str:
    """One column wide: per digit length, all categorised numbers, Increased and Random."""
    rows = []
    for n, entry in sorted(_per_length(results).items(), key=lambda item: int(item[0])):
        rows.append([escape(n), str(entry.n), _ci(entry.bias_ratio),
                     fmt(entry.categories.increased.geo_mean),
                     fmt(entry.categories.random.geo_mean)])
    best = results.lengths.strongest if results.lengths is not None else None
    strongest = ""
    if best is not None and best.best:
        strongest = rf" Strongest: {escape(best.best)} digits" + (
            "." if not best.runner_up else
            (" (CI above the runner-up's)." if best.separable
             else " (not separable from the runner-up).")
        )
    caption = (
        r"Digit length: bias ratio of the $n$ categorised numbers of each autoregressive set "
        r"(geometric mean [95\% CI]) and of its Increased and Random numbers (geometric means)."
        + strongest
    )
    header = ["Digits", "n", "Bias ratio [95% CI]", "Inc.", "Rand."]
    return booktabs_table(header, rows, caption, "tab:entanglement_length", align=_tight("lrrrr"))


# ---------------------------------------------------------------------------------------------
# figures


def _figures(run: StageRun, results: EntanglementResults) -> list[Figure]:
    """The captions say what every mark of the figures (sublens.experiments.entanglement.figures)
    means: the by-category figure across the page, the by-length one in a column."""
    available = run.figures()
    bias, control = escape(results.bias), escape(results.control)
    few = MIN_UNITS["number"]
    means = (r"Coloured markers: geometric means with 95\% $t$-intervals on the log ratios; an open "
             rf"marker, without an interval, where fewer than {few} numbers allow none")
    out = []
    if "bias_ratio_by_category" in available:
        template = results.template_control is not None and results.template_control.stats is not None
        out.append(Figure("bias_ratio_by_category", (
            rf"Bias ratio $P(\mathrm{{{bias}}} \mid N)/P(\mathrm{{{bias}}} \mid \mathrm{{neutral}})$ "
            rf"(top) and {bias}/{control} relative ratio (bottom) of the Increased (Inc.), Decreased "
            r"(Dec.), Unchanged (Unch.) and Random (Rand.) numbers of each set, $k$ numbers per "
            rf"category (log scales, one per row). {means}; grey dots: the single numbers"
            + ("; dotted grey line (and grey band, where it has an interval): the non-number template "
               "words' geometric mean" if template else "")
            + "; dashed line: ratio 1, no change."
        ), wide=True))
    if "bias_ratio_by_length" in available:
        out.append(Figure("bias_ratio_by_length", (
            r"Bias ratio by digit length (log scale): all categorised numbers of each "
            r"length (black) and each category (colours as in the by-category figure), side by side "
            rf"at each length. {means}; dashed line: ratio 1, no change."
        )))
    return out
