"""The entanglement section's tables (categories, between-category claims, reverse link, digit
length) and the captions of its figures (`sublens.experiments.entanglement.figures`).
"""

from __future__ import annotations

import math

from sublens.claims import MIN_UNITS, ClaimSettings, Decision
from sublens.entanglement import CATEGORIES
from sublens.experiments.entanglement.figures import TUNED_FIGURE
from sublens.experiments.entanglement.results import EntanglementResults, RatioSummary
from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci, fmt_p
from sublens.report.sections import Figure, figure_label
from sublens.report.sections.entanglement.reading import (
    LABELS,
    Decided,
    _n_tests,
    _per_length,
    _stats,
    _too_few,
    owl_specific,
    set_name,
)
from sublens.report.stages import StageRun

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


def categories_table(results: EntanglementResults, decided: Decided, tuned: Decided | None = None) -> str:
    """Across the page (six columns with a CI and a verdict are wider than a column, 255 pt
    against 219 pt): per set and category, the bias ratio (geometric mean [t CI on log
    ratios]) with raw and Holm p and the verdict of the category's own claim (it rises)."""
    blocks = []
    specific = owl_specific(results)
    every = {**decided, **(tuned or {})}
    for name, stats in _stats(results).items():
        block = []
        for c in CATEGORIES:
            d = (every.get(name) or {}).get(f"raises.{c}")
            if specific and d is not None:
                block.append([set_name(name), SHORT[c], _estimate_cell(d), *_p_cells(d), d.verdict.value])
            else:
                verdict = d.verdict.value if d is not None else "--"
                block.append([set_name(name), SHORT[c], _ci(getattr(stats, c).bias_ratio), "--", "--", verdict])
        blocks.append(block)
    template = results.template_control.stats if results.template_control is not None else None
    if template is not None:
        blocks.append([["all", "Templ.", _ci(template.bias_ratio), "--", "--", "--"]])
    bias = escape(results.bias)
    design = (
        r"Categories by the owl-minus-control shift; Random matched to Increased on "
        r"baseline frequency. "
        if specific
        else r"Categories against the neutral prompt only (not owl-specific); Random uniform. "
    )
    caption = (
        rf"Probability categories: bias ratio $P(\mathrm{{{bias}}} \mid N)/P(\mathrm{{{bias}}} \mid "
        r"\mathrm{neutral})$, geometric mean [95\% $t$-interval on log ratios] over the $k$ numbers "
        r"of each category (Templ.: non-number words, descriptive); raw and Holm-adjusted $p$ and "
        r"verdict of the claim that the category raises it; too few: fewer than "
        rf"{MIN_UNITS['number']} numbers, no interval. " + design + _tuned_note(results, tuned) + _k_note(results)
    )
    return booktabs_table(
        ["Set", "Cat.", "Bias ratio [95% CI]", "p", "Holm p", "Verdict"],
        _blocks(blocks),
        caption,
        "tab:entanglement_categories",
        align="llrrrl",
        wide=True,
    )


def _tuned_note(results: EntanglementResults, tuned: Decided | None, holm: bool = True) -> str:
    """The tables' word on the tuned sets (none without them)."""
    if not tuned:
        return ""
    return (
        rf"Tuned sets: categories by the fine-tuned {escape(results.bias)} teacher's shift against "
        r"its control teacher" + ("; Holm over their own tests. " if holm else ". ")
    )


TEST_LABELS = {
    "entangled_vs_null": "Inc./Rand. (paired)",
    "decreased_vs_increased": "Dec./Inc. (Welch)",
    "unchanged_vs_increased": "Unch./Inc. (Welch)",
}


def claims_table(results: EntanglementResults, decided: Decided, tuned: Decided | None = None) -> str:
    """Across the page, as the categories table: per set, the between-category claims
    (predicted: no difference) with the ratio and CI, raw and Holm p, and the verdict; the
    tuned sets after the others."""
    blocks = []
    for name, tests in {**decided, **(tuned or {})}.items():
        blocks.append(
            [
                [
                    set_name(name),
                    escape(TEST_LABELS[t]),
                    _estimate_cell(tests[t]),
                    *_p_cells(tests[t]),
                    tests[t].verdict.value,
                ]
                for t in TEST_LABELS
                if t in tests
            ]
        )
    margin = (results.claims.settings if results.claims is not None else ClaimSettings()).margin
    caption = (
        r"Between-category claims, each predicting no difference: ratio of bias ratios "
        r"(geometric mean [95\% $t$-interval]; Increased against its frequency-matched Random "
        r"partner, paired; Decreased and Unchanged against Increased, Welch), raw and "
        rf"Holm-adjusted $p$ (Holm over all {_n_tests(decided)} tests of the study"
        + (f"; the tuned sets' {_n_tests(tuned)} tests are their own family" if tuned else "")
        + rf") and the verdict: supported only when the CI lies inside [1/{margin:g}, {margin:g}]. "
        + _tuned_note(results, tuned, holm=False)
        + _k_note(results)
    )
    return booktabs_table(
        ["Set", "Claim", "Ratio [95% CI]", "p", "Holm p", "Verdict"],
        _blocks(blocks),
        caption,
        "tab:entanglement_claims",
        align="llrrrl",
        wide=True,
    )


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
            block.append(
                [
                    set_name(name),
                    LABELS[c],
                    mean_p(st.bias_ratio, p0),
                    mean_p(st.control_ratio, c0),
                    _ci(st.relative_ratio),
                    cum(name, c),
                ]
            )
        blocks.append(block)
    bias, control = results.bias, results.control
    caption = (
        rf"Reverse-link averages: mean $P(\mathrm{{{escape(bias)}}} \mid N)$ and "
        rf"$P(\mathrm{{{escape(control)}}} \mid N)$ in units of $10^{{-{s}}}$ [bootstrap 95\% CI of "
        r"the mean] over the category's numbers under the system prompt `You love the number $N$'; "
        rf"the {escape(bias)}/{escape(control)} relative ratio (geometric mean [95\% CI]); and the "
        r"bias ratio with all numbers of the category in one prompt (cumulative priming). " + _k_note(results)
    )
    header = ["Set", "Category", f"P({bias}|N)", f"P({control}|N)", f"{bias}/{control} ratio", "All in one prompt"]
    return booktabs_table(header, _blocks(blocks), caption, "tab:entanglement_reverse", align="llrrrr", wide=True)


def length_table(results: EntanglementResults) -> str:
    """One column wide: per digit length, all categorised numbers, Increased and Random."""
    rows = []
    for n, entry in sorted(_per_length(results).items(), key=lambda item: int(item[0])):
        rows.append(
            [
                escape(n),
                str(entry.n),
                _ci(entry.bias_ratio),
                fmt(entry.categories.increased.geo_mean),
                fmt(entry.categories.random.geo_mean),
            ]
        )
    best = results.lengths.strongest if results.lengths is not None else None
    strongest = ""
    if best is not None and best.best:
        strongest = rf" Strongest: the {escape(best.best)}-digit set" + (
            "."
            if not best.runner_up
            else (" (CI above the runner-up's)." if best.separable else " (not separable from the runner-up).")
        )
    caption = (
        r"Digit length: bias ratio of the $n$ categorised numbers of each autoregressive set "
        r"(geometric mean [95\% CI]) and of its Increased and Random numbers (geometric means)." + strongest
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
    means = (
        r"Coloured markers: geometric means with 95\% $t$-intervals on the log ratios; an open "
        rf"marker, without an interval, where fewer than {few} numbers allow none"
    )
    out = []
    if "bias_ratio_by_category" in available:
        template = results.template_control is not None and results.template_control.stats is not None
        out.append(
            Figure(
                "bias_ratio_by_category",
                (
                    rf"Bias ratio $P(\mathrm{{{bias}}} \mid N)/P(\mathrm{{{bias}}} \mid \mathrm{{neutral}})$ "
                    rf"(top) and {bias}/{control} relative ratio (bottom) of the Increased (Inc.), Decreased "
                    r"(Dec.), Unchanged (Unch.) and Random (Rand.) numbers of each set, $k$ numbers per "
                    rf"category (log scales, one per row). {means}; grey dots: the single numbers"
                    + (
                        "; dotted grey line (and grey band, where it has an interval): the non-number template "
                        "words' geometric mean"
                        if template
                        else ""
                    )
                    + "; dashed line: ratio 1, no change."
                ),
                wide=True,
            )
        )
    if TUNED_FIGURE in available:
        marks = (
            rf"marks as in Figure~\ref{{{figure_label('entanglement', 'bias_ratio_by_category')}}}"
            if "bias_ratio_by_category" in available
            else f"{means}; grey dots: the single numbers; dashed line: ratio 1, no change"
        )
        out.append(
            Figure(
                TUNED_FIGURE,
                (
                    rf"Bias ratio (top) and {bias}/{control} relative ratio (bottom) of the categories of each "
                    rf"tuned set, categorised by the shift the fine-tuning put into the {bias} teacher against "
                    rf"its control teacher and measured in the base model; {marks}."
                ),
                wide=True,
            )
        )
    if "bias_ratio_by_length" in available:
        out.append(
            Figure(
                "bias_ratio_by_length",
                (
                    r"Bias ratio by digit length (log scale): all categorised numbers of each "
                    r"length (black) and each category (colours as in the by-category figure), side by side "
                    rf"at each length. {means}; dashed line: ratio 1, no change."
                ),
            )
        )
    return out
