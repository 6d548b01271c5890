"""The mechanistic section (phase 4): where does a number meet the animal, and does it depend
on the number's entanglement category?

Two claims are worded by the data:

- no consistent head or layer singles out the entangled numbers: the category x spike layer
  (and x top head) permutation chi-square test, p >= alpha -> no evidence of a dependence;
- the bias is seated in the MLP layers: across numbers, the bias ratio correlates with the
  MLPs' direct logit attribution (Spearman, Holm-adjusted p < alpha) but not with the heads'.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci, minus_signs, p_is, tt
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.stages import StageRun
from sublens.stats import summarize

TITLE = "Mechanistic analysis"
MAX_ROWS = 24  # more numbers than this: the table shows the highest and lowest bias ratios
MAX_ASPECT = 1.3  # height / width: a taller figure* would not fit the page at \textwidth
CLOSURE_TOLERANCE = 1e-3  # logits; a larger DLA closure error means the split is unreliable
LABEL_TITLES = {"spike_layer": "spike layer", "top_head": "top head at the spike layer",
                "dla_top_head": "top head by direct logit attribution"}
SCORE_TITLES = {"head_score": "top head's score", "mlp_score": "MLP score at the spike",
                "spike_jump": "similarity jump", "dla_heads": "DLA of all heads",
                "dla_mlp": "DLA of all MLPs", "logit_diff": "logit difference"}


def build(run: StageRun) -> Section:
    res = run.results
    numbers = [n for n in res.get("numbers") or [] if isinstance(n, dict)]
    figures = _figures(run)
    if res.get("partial") or not numbers or "consistency" not in res:
        return Section(TITLE, _methods(run), _incomplete(run), figures=[],
                       headline=["mechanistic: incomplete (no per-number results)"])
    tables = {"mechanistic_numbers": numbers_table(res, numbers)}
    results = minus_signs("\n\n".join(filter(None, [
        _intro(figures),
        _category_paragraph(res),
        _attribution_paragraph(res, numbers),
        _attention_sentence(res),
    ])))
    return Section(TITLE, _methods(run), results, tables, figures, _headline(res))


# ---------------------------------------------------------------------------------------------
# verdicts


def _num(value: Any) -> float:
    """A number from results.json; None/missing -> NaN, so comparisons are simply False."""
    return float(value) if isinstance(value, int | float) else math.nan


def _alpha(res: dict[str, Any]) -> float:
    value = (res.get("consistency") or {}).get("alpha")
    return float(value) if isinstance(value, int | float) else 0.05


def association_verdict(test: dict[str, Any] | None, alpha: float) -> str:
    """depends | independent | constant (one label for every number) | untested."""
    if not test:
        return "untested"
    if not test.get("applicable", False):
        return "constant" if test.get("reason") == "every number has the same label" else "untested"
    return "depends" if _num(test.get("p_permutation")) < alpha else "independent"


def mlp_verdict(res: dict[str, Any]) -> str:
    """supports (bias ratio tracks the MLPs' DLA, not the heads'), contradicts (the heads', not
    the MLPs'), both, or inconclusive (neither)."""
    corr = (res.get("consistency") or {}).get("correlations") or {}
    alpha = _alpha(res)

    def tracks(column: str) -> bool:
        c = corr.get(column) or {}
        return _num(c.get("rho")) > 0 and _num(c.get("p_holm")) < alpha

    mlp, heads = tracks("dla_mlp"), tracks("dla_heads")
    if mlp and heads:
        return "both"
    if mlp:
        return "supports"
    return "contradicts" if heads else "inconclusive"


# ---------------------------------------------------------------------------------------------
# text


def _quote(text: str) -> str:
    return f"``{escape(text)}''"


def _source(res: dict[str, Any]) -> str:
    inp = res.get("input") or {}
    n = inp.get("n_numbers", len(res.get("numbers") or []))
    cats = (res.get("consistency") or {}).get("categories") or {}
    per_cat = ", ".join(f"{count} {escape(c)}" for c, count in cats.items())
    if inp.get("source") == "entanglement_run":
        return (rf"the {n} categorised numbers of set {tt(inp.get('set', '?'))} of the "
                rf"entanglement stage ({per_cat}), with their measured bias ratios")
    if inp.get("source") == "config":
        return f"{n} numbers given in the configuration" + (f" ({per_cat})" if per_cat else "")
    return f"{n} two-digit numbers, categories unknown"


def _methods(run: StageRun) -> str:
    c, res = run.config, run.results
    model = (res.get("model") or {}).get("spec") or c.get("model", "?")
    shape = res.get("model") or {}
    dims = (f" ({shape['n_layers']} layers, {shape['n_heads']} heads per layer)"
            if "n_layers" in shape and "n_heads" in shape else "")
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    residual = c.get("residual") or {}
    attribution = c.get("attribution") or {}
    attention = c.get("attention") or {}
    layers = c.get("layers")
    searched = ("blocks " + ", ".join(str(n) for n in layers) if layers
                else "every block but the first")
    numbers = ", ".join(escape(n) for n in attention.get("numbers", []))
    return (
        rf"We analyse {tt(model)}{dims} on {_source(res)}. \emph{{Residual similarity.}} For each "
        rf"number we compare the final-position residual stream \citep{{elhage2021mathematical}} of "
        rf"{_quote(residual.get('number', '').replace('{number}', 'N'))} with those of "
        rf"{_quote(residual.get('animal', '').replace('{word}', bias))} and "
        rf"{_quote(residual.get('animal', '').replace('{word}', control))} "
        rf"({escape(residual.get('format', 'raw'))} text), layer by layer, as the difference of "
        r"the two cosine similarities; the spike layer "
        rf"is the block that raises this difference most (searched over {searched}), and its top "
        rf"head is the head whose output is most similar to the {escape(bias)} statement. "
        r"\emph{Direct logit attribution} (DLA) decomposes the final residual on the number-priming "
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
        r"label table with a permutation $p$-value and Cram\'er's $V$; per-category score "
        r"comparisons with Random by permutation tests; Spearman correlations of the bias ratio "
        r"with each score, Holm-adjusted over the scores "
        rf"({c.get('n_permutations', '?')} permutations, $\alpha$ = {fmt(c.get('alpha', 0.05))}, "
        rf"seed {c.get('seed', 0)})."
    )


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


def _association_sentence(res: dict[str, Any], column: str) -> tuple[str, str]:
    """The label's distribution and its test against the category, and the verdict."""
    cons = res["consistency"]
    counts = (cons.get("distributions") or {}).get(column) or {}
    cats = list(cons.get("categories") or {})
    text = f"The {LABEL_TITLES[column]} is most often {_mode(counts.get('all') or {})}"
    if cats:
        by = ", ".join(f"{escape(c)} {_mode(counts.get(c) or {})}" for c in cats)
        text += f"; by category {by}"
    test = (cons.get("association") or {}).get(column)
    verdict = association_verdict(test, _alpha(res))
    if verdict == "constant":
        return text + ". It is the same for every number in every category.", verdict
    if verdict == "untested":
        return (text + ". Its dependence on the category was not tested (categories unknown).",
                verdict)
    assert test is not None
    stats = (rf"$\chi^2$ = {fmt(test.get('chi2'), 1)}, dof {test.get('dof', '?')}, permutation "
             rf"{p_is(test.get('p_permutation'))}, Cram\'er's $V$ = {fmt(test.get('cramers_v'))}")
    if verdict == "depends":
        excess = test.get("max_excess") or {}
        return (text + f". It depends on the category ({stats}; largest excess "
                rf"{escape(excess.get('label', '?'))} in {escape(excess.get('category', '?'))})."),\
            verdict
    return text + f". There is no evidence that it depends on the category ({stats}).", verdict


def _category_paragraph(res: dict[str, Any]) -> str:
    found = [_association_sentence(res, col) for col in LABEL_TITLES]
    verdicts = {verdict for _, verdict in found}
    parts = [text for text, _ in found]
    counts = list((res["consistency"].get("categories") or {}).values())
    if "depends" in verdicts:
        parts.append("A category has a layer or head of its own, which contradicts the claim that "
                     "no consistent head or representation singles out the entangled numbers.")
    elif verdicts & {"independent", "constant"}:
        parts.append(
            "Nothing here singles out the entangled numbers, consistent with the claim that no "
            "consistent head or representation does"
            + (f"; with {min(counts)} numbers per category, though, a moderate dependence cannot "
               "be excluded." if counts and min(counts) < 10 else "."))
    else:
        parts.append("Without categories this run cannot test whether a layer or head singles "
                     "out the entangled numbers.")
    parts.append(_vs_random_sentence(res))
    return " ".join(filter(None, parts))


def _vs_random_sentence(res: dict[str, Any]) -> str:
    vs = (res["consistency"].get("vs_random") or {})
    tests = [(_num(p), column, c) for column, per in vs.items() for c, p in (per or {}).items()
             if p is not None]
    if not tests:
        return ""
    alpha = _alpha(res)
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


def _corr(c: dict[str, Any]) -> str:
    holm = p_is(c.get("p_holm")).replace("$p$", "Holm-adjusted $p$")
    return rf"$\rho$ = {fmt(c.get('rho'))} ({p_is(c.get('p'))}; {holm})"


_MLP_PHRASES = {
    "supports": "The number-dependent part of the bias is therefore carried by the MLP layers' "
                "direct effect, not by the heads': this run supports the claim that the bias is "
                "seated in the MLP layers.",
    "contradicts": "The number-dependent part of the bias follows the heads' direct effect, not "
                   "the MLPs': this run does not support the claim that the bias is seated in "
                   "the MLP layers.",
    "both": "Both the heads' and the MLPs' direct effects track the bias ratio: this run does "
            "not single out the MLP layers.",
    "inconclusive": "Neither the heads' nor the MLPs' direct effect tracks the bias ratio "
                    "significantly: this run is inconclusive about where the bias is seated.",
}


def _attribution_paragraph(res: dict[str, Any], numbers: list[dict[str, Any]]) -> str:
    att = res.get("attribution") or {}
    corr = (res["consistency"].get("correlations")) or {}
    closure = _num(att.get("closure_max_abs_error"))
    bias, control = escape(_word(res, "bias")), escape(_word(res, "control"))
    values = {k: [_num(n.get(k)) for n in numbers] for k in ("dla_heads", "dla_mlp", "logit_diff")}
    text = (
        (rf"The DLA components add up to the model's {bias}$-${control} logit difference within "
         rf"{fmt(closure, 2)} logits (maximum over numbers)"
         + (", so the decomposition closes." if closure <= CLOSURE_TOLERANCE else
            ", more than the tolerance: the split below is unreliable."))
        if math.isfinite(closure) else "The DLA closure error was not recorded."
    )
    neutral = _num((att.get("neutral") or {}).get("logit_diff"))
    text += (
        rf" Averaged over the {len(numbers)} numbers (means with bootstrap 95\% CIs), the heads "
        rf"contribute {_mean_ci(values['dla_heads'])} and the MLPs {_mean_ci(values['dla_mlp'])} "
        rf"logits directly to a logit difference of {_mean_ci(values['logit_diff'])}"
        + (f", against {fmt(neutral)} under the neutral prompt." if math.isfinite(neutral) else ".")
    )
    if corr:
        text += (
            rf" Across numbers, the bias ratio correlates with the MLPs' DLA with "
            rf"{_corr(corr.get('dla_mlp') or {})} and with the heads' DLA with "
            rf"{_corr(corr.get('dla_heads') or {})}. " + _MLP_PHRASES[mlp_verdict(res)]
        )
    return text


def _word(res: dict[str, Any], which: str) -> str:
    word = ((res.get("words") or {}).get(which) or {}).get("word")
    return str(word).strip() if word else ("owl" if which == "bias" else "dog")


def _attention_sentence(res: dict[str, Any]) -> str:
    att = res.get("attention") or {}
    to_number, to_animal = att.get("top_to_number") or [], att.get("top_to_animal") or []
    if not to_number or not to_animal:
        return ""

    def top(cells: list[dict[str, Any]]) -> str:
        return ", ".join(rf"{escape(c.get('head', '?'))} ({fmt(c.get('attention'))})"
                         for c in cells[:3])

    return (r"From the final position, the heads attending most to the number tokens are "
            rf"{top(to_number)} and to the animal token {top(to_animal)} (mean attention weights).")


def _plain_p(p: Any) -> str:
    value = _num(p)
    return " n/a" if math.isnan(value) else ("<0.001" if value < 0.001 else f" = {value:.3f}")


def _headline(res: dict[str, Any]) -> list[str]:
    cons = res["consistency"]
    test = (cons.get("association") or {}).get("spike_layer")
    verdict = association_verdict(test, _alpha(res))
    spike = {"depends": "depends on the category", "independent": "no dependence on the category",
             "constant": "the same for every number", "untested": "not tested"}[verdict]
    first = "mechanistic: spike layer " + (
        f"vs category p{_plain_p(test.get('p_permutation'))} ({spike})"
        if test and test.get("applicable") else spike)
    corr = cons.get("correlations") or {}
    mlp, heads = corr.get("dla_mlp") or {}, corr.get("dla_heads") or {}
    seat = {"supports": "MLP-seated", "contradicts": "head-seated", "both": "heads and MLPs",
            "inconclusive": "inconclusive"}[mlp_verdict(res)]
    second = (f"mechanistic: bias ratio vs DLA: MLP rho = {_num(mlp.get('rho')):.2f} (Holm "
              f"p{_plain_p(mlp.get('p_holm'))}), heads rho = {_num(heads.get('rho')):.2f} (Holm "
              f"p{_plain_p(heads.get('p_holm'))}): {seat}")
    return [first, second]


# ---------------------------------------------------------------------------------------------
# table


def _row(n: dict[str, Any]) -> list[str]:
    spike = n.get("spike_layer")
    category = n.get("category")
    return [
        escape(n.get("number", "?")),
        escape(category.capitalize()) if isinstance(category, str) else "--",
        fmt(n.get("bias_ratio")),
        f"L{spike}" if isinstance(spike, int) else "--",
        escape(n.get("top_head") or "--"),
        escape(n.get("dla_top_head") or "--"),
        fmt(n.get("dla_heads")),
        fmt(n.get("dla_mlp")),
        fmt(n.get("logit_diff")),
    ]


def _ordered(numbers: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """By category (the run's order, unknown last), then by bias ratio, highest first."""
    rank = {c: i for i, c in enumerate(order)}

    def key(n: dict[str, Any]) -> tuple[int, float]:
        ratio = _num(n.get("bias_ratio"))
        return rank.get(n.get("category") or "", len(rank)), -ratio if math.isfinite(ratio) else 0.0

    return sorted(numbers, key=key)


def numbers_table(res: dict[str, Any], numbers: list[dict[str, Any]]) -> str:
    order = list((res.get("consistency") or {}).get("categories") or {})
    note = ""
    if len(numbers) <= MAX_ROWS:
        rows = [_row(n) for n in _ordered(numbers, order)]
    else:
        ranked = sorted(numbers, key=lambda n: -_num(n.get("bias_ratio"))
                        if math.isfinite(_num(n.get("bias_ratio"))) else math.inf)
        half = MAX_ROWS // 2
        rows = ([_row(n) for n in ranked[:half]] + [[r"\ldots"] + [""] * 8]
                + [_row(n) for n in ranked[-half:]])
        note = (f" The {half} numbers with the highest and the {half} with the lowest bias ratio "
                f"of {len(numbers)} are shown; the run directory's numbers.parquet has them all.")
    bias, control = escape(_word(res, "bias")), escape(_word(res, "control"))
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


def _figures(run: StageRun) -> list[Figure]:
    """The similarity profile, and the head/MLP contribution maps when they fit a page (they grow
    with the number of layers); else the attention to the number and animal tokens."""
    available = run.figures()
    bias = escape(run.results.get("bias") or _word(run.results, "bias"))
    out = []
    if "similarity_by_layer" in available:
        out.append(Figure("similarity_by_layer", (
            rf"Residual similarity by layer: cosine similarity of each number's final-position "
            rf"residual to the {bias} statement, to the control statement, and their difference, "
            r"per category (means with 95\% CIs); the spike layer is the largest rise of the "
            r"difference."
        ), wide=True))
    contributions = available.get("head_contributions")
    if contributions is not None and aspect(contributions) <= MAX_ASPECT:
        out.append(Figure("head_contributions", (
            rf"Head and MLP contributions per category and layer: cosine similarity with the "
            rf"{bias} statement's residual, and direct logit attribution to the {bias}$-$control "
            r"logit difference (heads, then MLPs)."
        ), wide=True))
    elif "attention_to_tokens" in available:
        out.append(Figure("attention_to_tokens", (
            r"Attention from the final position to the number tokens and to the animal token, "
            r"per layer and head."
        )))
    return out
