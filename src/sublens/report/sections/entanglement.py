"""The token-entanglement section (phases 1-3): do 'entangled' numbers raise P(owl) more?

The claim under test is that token entanglement (Zur et al. 2025) does not explain the
transfer. Its test here: the numbers whose probability rises most under an owl context
(Increased) against numbers drawn at random (Random), on the bias ratio
P(owl | 'You love N') / P(owl | neutral). The verdict per candidate set:

- contradicts: Increased beats Random (permutation p < ALPHA), or the bias ratio rises with
  the phase-1 probability shift (Spearman rho > 0, p < ALPHA): entanglement could contribute;
- supports: Increased does significantly worse than Random, or no significant difference and
  the CI of Increased/Random excludes an advantage of EQUIVALENCE or more;
- inconclusive: no significant difference, but the CI still allows such an advantage;
- underpowered: so few numbers per category that no permutation p could fall below ALPHA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sublens.entanglement import CATEGORIES
from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci, fmt_p, minus_signs, p_is, tt
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.stages import StageRun

TITLE = "Token entanglement"
ALPHA = 0.05
EQUIVALENCE = 1.25  # Increased/Random ratio below this upper CI bound counts as "no better"
LABELS = {"increased": "Increased", "decreased": "Decreased", "unchanged": "Unchanged",
          "random": "Random", "template": "Template words"}
Summary = dict[str, Any]


@dataclass(frozen=True)
class SetVerdict:
    """Increased vs Random in one candidate set, and what it says about the claim."""

    name: str
    k: int
    increased: Summary  # geometric-mean summary of the bias ratio
    random: Summary
    comparison: Summary  # ratio of geometric means, CI, permutation p (log scale)
    correlation: Summary  # Spearman(prob_diff, log bias ratio)
    verdict: str  # contradicts | supports | inconclusive | underpowered | untested


def build(run: StageRun) -> Section:
    res = run.results
    stats: dict[str, Any] = res.get("category_stats") or {}
    if not stats:
        return Section(TITLE, _methods(run), _incomplete(run),
                       headline=["entanglement: incomplete (no phase-2 statistics)"])
    verdicts = [set_verdict(name, s, res) for name, s in stats.items()]
    figures = _figures(run)
    tables = {
        "entanglement_categories": categories_table(res),
        **({"entanglement_reverse": reverse_table(res)} if res.get("neutral") else {}),
        **({"entanglement_length": length_table(res)} if _per_length(res) else {}),
    }
    results = _results(run, verdicts, set(tables), figures)
    return Section(TITLE, _methods(run), results, tables, figures, _headline(verdicts))


# ---------------------------------------------------------------------------------------------
# verdicts


def _num(value: Any) -> float:
    """A number from results.json; None/missing -> NaN, so comparisons are simply False."""
    return float(value) if isinstance(value, int | float) else math.nan


def smallest_p(comparison: Summary) -> float:
    """The smallest two-sided permutation p that groups of these sizes can reach."""
    sizes = comparison.get("n") or []
    if len(sizes) != 2 or min(sizes) < 1:
        return math.nan
    return min(1.0, 2 / math.comb(sizes[0] + sizes[1], sizes[0]))


def comparison_verdict(comparison: Summary, correlation: Summary) -> str:
    """See the module docstring."""
    ratio, high = _num(comparison.get("ratio")), _num(comparison.get("ci_high"))
    p = _num(comparison.get("p_value"))
    rho, rho_p = _num(correlation.get("rho")), _num(correlation.get("p_value"))
    if (p < ALPHA and ratio > 1) or (rho_p < ALPHA and rho > 0):
        return "contradicts"
    if math.isnan(p) or math.isnan(ratio):
        return "untested"
    if smallest_p(comparison) >= ALPHA:
        return "underpowered"  # too few numbers: no outcome could be significant
    if (p < ALPHA and ratio < 1) or high < EQUIVALENCE:
        return "supports"
    return "inconclusive"


def set_verdict(name: str, stats: dict[str, Any], res: dict[str, Any]) -> SetVerdict:
    increased, random = stats.get("increased") or {}, stats.get("random") or {}
    comparison = (increased.get("vs_random") or {}).get("bias_ratio") or {}
    correlation = stats.get("correlation_prob_diff_log_bias_ratio") or {}
    k = (res.get("k") or {}).get(name, increased.get("n", 0))
    return SetVerdict(name, int(k), increased.get("bias_ratio") or {},
                      random.get("bias_ratio") or {}, comparison, correlation,
                      comparison_verdict(comparison, correlation))


def primary(verdicts: list[SetVerdict]) -> SetVerdict:
    """The set the headline reports: the most numbers per category among the tested ones."""
    tested = [v for v in verdicts if v.verdict != "untested"] or verdicts
    return max(tested, key=lambda v: v.k)


def overall(verdicts: list[SetVerdict]) -> str:
    kinds = {v.verdict for v in verdicts} - {"untested"}
    kinds = {"inconclusive" if k == "underpowered" else k for k in kinds}
    if "contradicts" in kinds:
        return "contradicts"
    if kinds == {"supports"}:
        return "supports"
    return "mixed" if "supports" in kinds else "inconclusive"


# ---------------------------------------------------------------------------------------------
# text


def _geo(s: Summary) -> str:
    low, high = fmt(s.get("geo_ci_low")), fmt(s.get("geo_ci_high"))
    return rf"{fmt(s.get('geo_mean'))}\texttimes{{}} [{low}, {high}]"


def _fill(template: str, **slots: str) -> str:
    for name, value in slots.items():
        template = template.replace("{" + name + "}", value)
    return template


def _quote(text: str) -> str:
    return f"``{escape(text)}''"


def _methods(run: StageRun) -> str:
    c, res = run.config, run.results
    model = res.get("model") or c.get("model", "?")
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    plural = c.get("bias_plural") or f"{bias}s"
    p = c.get("prompts") or {}
    capital = plural[:1].upper() + plural[1:]
    bias_system = _fill(p.get("bias_system", ""), plural=plural, Plural=capital)
    number_system = _fill(p.get("number_system", ""), num="N")
    lengths = [str(n) for n in c.get("lengths", [])]
    lengths_text = (", ".join(lengths[:-1]) + "- and " + lengths[-1] if len(lengths) > 1
                    else "".join(lengths))
    sets = []
    if "vocab" in c.get("sets", []):
        n_vocab = (res.get("sets") or {}).get("vocab", {}).get("n_candidates")
        sets.append("the vocabulary set (every single-token number"
                    + (f", {n_vocab} tokens" if n_vocab else "") + ")")
    if "autoregressive" in c.get("sets", []):
        zeros = "with" if c.get("leading_zeros", True) else "without"
        sets.append(f"autoregressive sets of all {lengths_text}-digit strings "
                    f"({zeros} leading zeros)")
    unchanged = ("the $k$ smallest $|\\Delta p|$ of the rest, a choice that favours rare numbers"
                 if c.get("unchanged_by", "prob_diff") == "prob_diff"
                 else "the $k$ smallest $|\\log(p_\\mathrm{bias}/p_\\mathrm{neutral})|$ of the rest")
    cumulative = c.get("cumulative_orders", 0)
    return (
        rf"We test token entanglement \citep{{zur2025owl}} on {tt(model)}, with {tt(bias)} as the "
        rf"bias animal and {tt(control)} as the control. Phase~1 scores every candidate number "
        rf"as the answer to {_quote(p.get('number_question', ''))} (prefilled "
        rf"{_quote(p.get('number_prefill', ''))}) under the model's default system prompt and under "
        rf"{_quote(bias_system)}. The candidates are " + " and ".join(sets) + ". Each set is "
        r"normalised on its own, $\Delta p$ is the change of a number's normalised probability, and "
        rf"each set is split into four disjoint categories of $k = {c.get('k', '?')}$ numbers: "
        r"Increased (largest $\Delta p$), Decreased (smallest), Unchanged (" + unchanged + "), "
        r"and Random (drawn with the seed from what is left); $k$ shrinks for small sets. "
        rf"Phase~2 measures the reverse link: $P(\mathrm{{{escape(bias)}}})$ and "
        rf"$P(\mathrm{{{escape(control)}}})$ in answer to {_quote(p.get('animal_question', ''))} "
        rf"(prefilled {_quote(p.get('animal_prefill', ''))}) with the system prompt "
        rf"{_quote(number_system)} for each categorised number $N$; the bias ratio is "
        rf"$P(\mathrm{{{escape(bias)}}} \mid N) / P(\mathrm{{{escape(bias)}}} \mid "
        r"\mathrm{neutral})$. "
        r"A template control puts non-number words in the slot of $N$"
        + (f", and cumulative priming puts all $k$ numbers of a category in one prompt "
           f"({cumulative} order{'s' if cumulative != 1 else ''})" if cumulative else "")
        + ". Phase~3 repeats the comparison per digit length. We report geometric means with "
        r"bootstrap 95\% CIs \citep{efron1994bootstrap} and compare categories on log ratios by a "
        rf"two-sided permutation test ({c.get('permutations', '?')} permutations; seed "
        rf"{c.get('seed', 0)})."
    )


def _incomplete(run: StageRun) -> str:
    status = run.record.get("status", "unknown")
    phase = run.results.get("phase")
    done = f" it stopped after phase~{phase}" if phase else " it saved no statistics"
    return (
        rf"The entanglement stage is incomplete (run status {tt(status)};{done}), so this draft "
        r"has no results for token entanglement; rerun the stage to fill this section."
    )


def _finding(v: SetVerdict) -> str:
    """What the Increased/Random comparison says, in the words its verdict calls for."""
    cmp = v.comparison
    p, ratio = _num(cmp.get("p_value")), _num(cmp.get("ratio"))
    if math.isnan(p) or math.isnan(ratio):
        return "no comparison could be made"
    if p < ALPHA:
        relation = "more" if ratio > 1 else "less"
        return (f"Increased numbers raise the bias ratio significantly {relation} than Random ones"
                + (", so token entanglement could contribute" if ratio > 1 else ""))
    if v.verdict == "underpowered":
        return (f"with {v.k} numbers per category no difference could reach significance (smallest "
                f"attainable {p_is(smallest_p(cmp))}), so this set cannot decide")
    if v.verdict == "inconclusive":
        return (rf"no significant difference, but the CI still allows an advantage of up to "
                rf"{fmt(cmp.get('ci_high'))}\texttimes{{}} for entangled numbers")
    return (rf"entangled numbers are no better than random ones (the CI excludes an advantage "
            rf"of {fmt(EQUIVALENCE)}\texttimes{{}} or more)")


def _set_sentence(v: SetVerdict) -> str:
    cmp, corr = v.comparison, v.correlation
    text = (
        rf"In {tt(v.name)} ($k = {v.k}$), Increased numbers give {_geo(v.increased)} and Random "
        rf"numbers {_geo(v.random)}; Increased/Random = "
        rf"{fmt_ci(cmp.get('ratio'), cmp.get('ci_low'), cmp.get('ci_high'))}, permutation "
        rf"{p_is(cmp.get('p_value'))}: {_finding(v)}."
    )
    rho, rho_p = _num(corr.get("rho")), _num(corr.get("p_value"))
    if not math.isnan(rho):
        trend = ("the bias ratio rises with $\\Delta p$" if rho > 0 and rho_p < ALPHA
                 else "no significant monotone relation links $\\Delta p$ to the bias ratio")
        text += (
            rf" Across its numbers, {trend} (Spearman $\rho$ = {fmt(rho)}, {p_is(rho_p)}, "
            rf"$n = {corr.get('n', '?')}$)."
        )
    return text


def _all_raise(stats: dict[str, Any], name: str) -> str:
    """Whether every category raises P(bias) (CI above 1): the effect is not specific."""
    lows = [_num((stats[c].get("bias_ratio") or {}).get("geo_ci_low")) for c in CATEGORIES
            if c in stats]
    if lows and all(low > 1 for low in lows):
        return (rf"In {tt(name)} every category raises the bias probability (all CIs above 1), "
                r"Decreased and Unchanged numbers included.")
    return ""


def _template_sentence(res: dict[str, Any], name: str) -> str:
    template = ((res.get("template_control") or {}).get("stats") or {}).get("bias_ratio")
    random = (res.get("category_stats") or {}).get(name, {}).get("random") or {}
    cmp = (random.get("vs_template") or {}).get("bias_ratio") or {}
    if not template or not cmp:
        return ""
    p = _num(cmp.get("p_value"))
    from_prompt = p >= ALPHA and _num(template.get("geo_ci_low")) > 1
    relation = ("differs significantly from" if p < ALPHA
                else "is indistinguishable from")
    return (rf"Non-number template words in the same prompt give {_geo(template)}; Random numbers' "
            rf"ratio {relation} it ({p_is(cmp.get('p_value'))})"
            + (", so the rise comes largely from the prompt itself rather than from the number."
               if from_prompt else "."))


def _overall_sentence(verdicts: list[SetVerdict]) -> str:
    verdict = overall(verdicts)
    groups = {"supports": ("supports",), "contradicts": ("contradicts",),
              "inconclusive": ("inconclusive", "underpowered")}
    names = {key: ", ".join(tt(v.name) for v in verdicts if v.verdict in kinds)
             for key, kinds in groups.items()}
    if verdict == "contradicts":
        return (rf"Overall, entanglement-selected numbers beat random ones in {names['contradicts']}: "
                r"the data do not support the claim that token entanglement plays no part.")
    if verdict == "supports":
        return (r"Overall, in every set the entangled numbers are no better than random numbers, "
                r"which supports the claim that token entanglement does not explain the transfer.")
    if verdict == "mixed":
        return (rf"Overall, the sets that can decide ({names['supports']}) support the claim that "
                rf"token entanglement does not explain the transfer; {names['inconclusive']} "
                r"cannot decide it.")
    return (r"Overall, the comparisons are inconclusive: no set shows entangled numbers beating "
            r"random ones, but none rules out a sizeable advantage either.")


def _length_sentence(res: dict[str, Any]) -> str:
    per_length, best = _per_length(res), (res.get("lengths") or {}).get("strongest") or {}
    if not per_length or not best.get("best"):
        return ""
    top = per_length.get(str(best["best"]), {})
    text = (rf"By digit length (Table~\ref{{tab:entanglement_length}}), {best['best']}-digit numbers "
            rf"raise the bias ratio most ({_geo(top.get('bias_ratio') or {})})")
    if best.get("runner_up"):
        sep = "its CI lies above" if best.get("separable") else "not separable from"
        text += f", {sep} the {best['runner_up']}-digit numbers"
    return text + "."


def _warnings(res: dict[str, Any]) -> str:
    """The run's own caveats: shrunken k, and categories far rarer than Random (Unchanged)."""
    shrunk = [name for name, info in (res.get("sets") or {}).items()
              if info.get("k") is not None and info.get("k_requested") not in (None, info.get("k"))]
    parts = []
    if shrunk:
        parts.append("$k$ shrank for " + ", ".join(
            rf"{tt(n)} ({res['sets'][n]['n_candidates']} candidates, $k = {res['sets'][n]['k']}$)"
            for n in shrunk) + ", whose statistics rest on very few numbers")
    rare = [w for w in res.get("warnings", []) if "how common its numbers are" in str(w)]
    parts.extend(escape(w).rstrip(".") for w in rare)
    return ("Caveats: " + "; ".join(parts) + ".") if parts else ""


def _results(run: StageRun, verdicts: list[SetVerdict], tables: set[str],
             figures: list[Figure]) -> str:
    res = run.results
    neutral = res.get("neutral") or {}
    bias, control = res.get("bias", "owl"), res.get("control", "dog")
    main = primary(verdicts)
    intro = (r"Table~\ref{tab:entanglement_categories} gives the bias ratios per category"
             + (", Table~\\ref{tab:entanglement_reverse} the reverse-link probabilities"
                if "entanglement_reverse" in tables else "")
             + (rf" and Figure~\ref{{{figure_label('entanglement', figures[0].stem)}}} the numbers"
                if figures else "") + ".")
    if neutral:
        intro += (rf" Under the neutral prompt $P(\mathrm{{{escape(bias)}}})$ = "
                  rf"{fmt(neutral.get('p_bias'), 3)} and $P(\mathrm{{{escape(control)}}})$ = "
                  rf"{fmt(neutral.get('p_control'), 3)}.")
    if res.get("partial"):
        intro += (rf" The run is incomplete (it stopped after phase~{res.get('phase', '?')}); "
                  r"what follows is what it saved.")
    paragraphs = [
        " ".join(filter(None, [intro, _all_raise(res["category_stats"][main.name], main.name),
                               _template_sentence(res, main.name)])),
        " ".join(_set_sentence(v) for v in verdicts),
        " ".join(filter(None, [_overall_sentence(verdicts), _length_sentence(res),
                               _warnings(res)])),
    ]
    return minus_signs("\n\n".join(paragraphs))


def _plain(s: Summary) -> str:
    def num(key: str) -> str:
        value = _num(s.get(key))
        return "n/a" if math.isnan(value) else f"{value:.2f}"
    return f"x{num('geo_mean')} [{num('geo_ci_low')}, {num('geo_ci_high')}]"


_SHORT = {
    "contradicts": "entangled numbers beat random: entanglement could contribute",
    "supports": "entangled numbers no better than random",
    "inconclusive": "no significant difference, CI too wide to decide",
    "underpowered": "too few numbers to reach significance",
    "untested": "not tested",
}


def _headline(verdicts: list[SetVerdict]) -> list[str]:
    v = primary(verdicts)
    p = _num(v.comparison.get("p_value"))
    p_text = "n/a" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")
    lines = [f"entanglement ({v.name}, k={v.k}): Increased {_plain(v.increased)} vs Random "
             f"x{_num(v.random.get('geo_mean')):.2f} (p = {p_text}): {_SHORT[v.verdict]}"]
    others = [f"{o.name} {o.verdict}" for o in verdicts if o is not v]
    if others:
        verdict = overall(verdicts)
        lines.append(f"entanglement, other sets: {', '.join(others)}; overall: "
                     + ("supports where decidable" if verdict == "mixed" else verdict))
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


def _ci(summary: Summary, prefix: str = "geo_") -> str:
    mean = "geo_mean" if prefix else "mean"
    low, high = summary.get(f"{prefix}ci_low"), summary.get(f"{prefix}ci_high")
    return fmt_ci(summary.get(mean), low, high)


def _tight(columns: str) -> str:
    """A tabular spec with narrow gaps and no outer padding, so the table fits one column."""
    return "@{}" + r"@{\hspace{5pt}}".join(columns) + "@{}"


SHORT = {"increased": "Inc.", "decreased": "Dec.", "unchanged": "Unch.", "random": "Rand."}


def _k_note(res: dict[str, Any]) -> str:
    ks = res.get("k") or {}
    if not ks:
        return ""
    return "$k$ per set: " + ", ".join(rf"{tt(n)} {k}" for n, k in ks.items()) + "."


def categories_table(res: dict[str, Any]) -> str:
    """One column wide: per set and category, the bias ratio and the test against Random."""
    blocks = []
    for name, stats in res["category_stats"].items():
        block = []
        for c in CATEGORIES:
            s = stats.get(c) or {}
            vs_r = (s.get("vs_random") or {}).get("bias_ratio") or {}
            block.append([tt(name), SHORT[c], _ci(s.get("bias_ratio") or {}),
                          fmt_p(vs_r.get("p_value")) if vs_r else "--"])
        blocks.append(block)
    template = (res.get("template_control") or {}).get("stats") or {}
    if template:
        blocks.append([["all", "Templ.", _ci(template.get("bias_ratio") or {}), "--"]])
    bias = escape(res.get("bias", "owl"))
    caption = (
        rf"Probability categories: bias ratio $P(\mathrm{{{bias}}} \mid N)/P(\mathrm{{{bias}}} \mid "
        r"\mathrm{neutral})$, geometric mean [bootstrap 95\% CI] over the $k$ numbers of each "
        r"category (Increased, Decreased, Unchanged, Random; Templ.: non-number words), and the "
        r"two-sided permutation $p$ of the mean log ratio against Random. " + _k_note(res)
    )
    return booktabs_table(["Set", "Cat.", "Bias ratio [95% CI]", "p"], _blocks(blocks), caption,
                          "tab:entanglement_categories", align=_tight("llrr"))


def _scale(p: float) -> int:
    """The power of ten that brings the largest probability shown into [1, 10)."""
    return -math.floor(math.log10(p)) if p > 0 and math.isfinite(p) else 0


def reverse_table(res: dict[str, Any]) -> str:
    """Across both columns: mean P(bias | N) and P(control | N) with CIs, the relative ratio,
    and cumulative priming (all k numbers of a category in one prompt)."""
    neutral = res["neutral"]
    p0, c0 = _num(neutral.get("p_bias")), _num(neutral.get("p_control"))
    means = [_num((st.get(c) or {}).get("bias_ratio", {}).get("mean")) * p0
             for st in res["category_stats"].values() for c in CATEGORIES if c in st]
    s = _scale(max([m for m in means if math.isfinite(m)], default=p0))
    cumulative = (res.get("cumulative") or {}).get("sets") or {}

    def mean_p(summary: Summary, p: float) -> str:
        keys = ("mean", "ci_low", "ci_high")
        mean, low, high = (_num(summary.get(k)) * p * 10.0**s for k in keys)
        return fmt_ci(mean, low, high)

    def cum(name: str, c: str) -> str:
        br = ((cumulative.get(name) or {}).get(c) or {}).get("bias_ratio") or {}
        if not br:
            return "--"
        return _ci(br) if br.get("n", 1) > 1 else fmt(br.get("geo_mean"))

    blocks = [[["--", "neutral", fmt(p0 * 10.0**s), fmt(c0 * 10.0**s), "1.00", "--"]]]
    for name, stats in res["category_stats"].items():
        block = []
        for c in CATEGORIES:
            st = stats.get(c) or {}
            block.append([tt(name), LABELS[c], mean_p(st.get("bias_ratio") or {}, p0),
                          mean_p(st.get("control_ratio") or {}, c0),
                          _ci(st.get("relative_ratio") or {}), cum(name, c)])
        blocks.append(block)
    bias, control = res.get("bias", "owl"), res.get("control", "dog")
    caption = (
        rf"Reverse-link averages: mean $P(\mathrm{{{escape(bias)}}} \mid N)$ and "
        rf"$P(\mathrm{{{escape(control)}}} \mid N)$ in units of $10^{{-{s}}}$ [bootstrap 95\% CI of "
        r"the mean] over the category's numbers under the system prompt `You love the number $N$'; "
        rf"the {escape(bias)}/{escape(control)} relative ratio (geometric mean [95\% CI]); and the "
        r"bias ratio with all numbers of the category in one prompt (cumulative priming). "
        + _k_note(res)
    )
    header = ["Set", "Category", f"P({bias}|N)", f"P({control}|N)",
              f"{bias}/{control} ratio", "All in one prompt"]
    return booktabs_table(header, _blocks(blocks), caption, "tab:entanglement_reverse",
                          align="llrrrr", wide=True)


def _per_length(res: dict[str, Any]) -> dict[str, Any]:
    return dict((res.get("lengths") or {}).get("per_length") or {})


def length_table(res: dict[str, Any]) -> str:
    """One column wide: per digit length, all categorised numbers, Increased and Random."""
    rows = []
    for n, entry in sorted(_per_length(res).items(), key=lambda item: int(item[0])):
        cats = entry.get("categories") or {}
        rows.append([escape(n), str(entry.get("n", "--")), _ci(entry.get("bias_ratio") or {}),
                     fmt((cats.get("increased") or {}).get("geo_mean")),
                     fmt((cats.get("random") or {}).get("geo_mean"))])
    best = (res.get("lengths") or {}).get("strongest") or {}
    strongest = ""
    if best.get("best"):
        strongest = rf" Strongest: {escape(best['best'])} digits" + (
            "." if not best.get("runner_up") else
            (" (CI above the runner-up's)." if best.get("separable")
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


def _figures(run: StageRun) -> list[Figure]:
    available = run.figures()
    bias = escape(run.results.get("bias", "owl"))
    out = []
    if "bias_ratio_by_category" in available:
        out.append(Figure("bias_ratio_by_category", (
            rf"Bias ratio (top) and {bias}/control relative ratio (bottom) per category and set: "
            r"geometric means with bootstrap 95\% CIs, single numbers in grey; dashed: no change."
        ), wide=True))
    if "bias_ratio_by_length" in available:
        out.append(Figure("bias_ratio_by_length", (
            r"Bias ratio by digit length: all categorised numbers (black) and per category, "
            r"geometric means with 95\% CIs."
        )))
    return out
