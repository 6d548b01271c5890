"""The mechanistic section's tables and figures: the tests table (raw and Holm-adjusted p side
by side), the per-number table (the highest and lowest bias ratios when there are many), and
the figures with their captions (the contribution maps only where they fit a page)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from sublens.claims import AssociationDecision
from sublens.experiments.mechanistic.results import (
    CategoryAssociation,
    Consistency,
    MechanisticResults,
    NumberRow,
)
from sublens.report.latex import booktabs_table, escape, fmt, p_is
from sublens.report.sections import Figure
from sublens.report.sections.mechanistic.deciding import (
    ATTRIBUTION,
    CLAIM_TITLES,
    LABEL_TITLES,
    _num,
    _test,
    _word,
    association_verdict,
    claim_settings,
)
from sublens.report.stages import StageRun

MAX_ROWS = 24  # more numbers than this: the table shows the highest and lowest bias ratios
# height / width of a figure* beyond which the bundle's cap (0.45 of the 24.7 cm text height)
# shrinks it below the 16 cm text width, and its fonts below their printed size
MAX_ASPECT = 0.45 * 24.7 / 16


def _verdict_cell(key: str, test: CategoryAssociation | None, d: AssociationDecision) -> str:
    """The verdict, or why there is none: a label the same for every number cannot depend on the
    category, which is not the same as a test that could not decide ("inconclusive")."""
    if key == ATTRIBUTION:
        return d.verdict.value
    return {"constant": "not testable (one label)", "untested": "not run"}.get(
        association_verdict(test, None), d.verdict.value
    )


def tests_table(consistency: Consistency, decisions: dict[str, AssociationDecision]) -> str:
    """The mechanistic family: each claim's statistic, raw and Holm-adjusted p, verdict."""
    tests: dict[str, CategoryAssociation | None] = {c: _test(consistency, c) for c in LABEL_TITLES}
    rows = []
    for key, d in decisions.items():
        est = d.estimate
        if key == ATTRIBUTION:
            stat = rf"partial $\rho$ = {fmt(est.rho)}" if est is not None and est.rho is not None else "--"
        else:
            test = tests[key]
            stat = rf"$V$ = {fmt(test.cramers_v)}" if test is not None and test.applicable else "--"
        raw = est.p_value if est is not None else None
        rows.append(
            [
                escape(CLAIM_TITLES.get(key, key)),
                stat,
                fmt_p_cell(raw),
                fmt_p_cell(d.p_adjusted),
                escape(_verdict_cell(key, tests.get(key), d)),
            ]
        )
    settings, _ = claim_settings(consistency)
    caption = (
        r"The mechanistic family of tests: the statistic, its raw $p$-value (permutation) "
        rf"and the Holm-adjusted one within the family (family-wise $\alpha$ = "
        rf"{fmt(settings.alpha)}), and the verdict. Tests not run (no categories, one label "
        r"for every number, or not recorded) have no $p$-value and do not count in the "
        r"adjustment."
    )
    return booktabs_table(
        ["Claim", "Statistic", "p", "Holm p", "Verdict"],
        rows,
        caption,
        "tab:mechanistic_tests",
        align="@{}llrrl@{}",
        wide=True,
    )


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
        ranked = sorted(numbers, key=lambda n: -_num(n.bias_ratio) if math.isfinite(_num(n.bias_ratio)) else math.inf)
        half = MAX_ROWS // 2
        rows = [_row(n) for n in ranked[:half]] + [[r"\ldots"] + [""] * 8] + [_row(n) for n in ranked[-half:]]
        note = (
            f" The {half} numbers with the highest and the {half} with the lowest bias ratio "
            f"of {len(numbers)} are shown; the run's per-number table has them all."
        )
    bias, control = escape(_word(results.words, "bias")), escape(_word(results.words, "control"))
    caption = (
        r"Mechanistic per-number table: number $N$, its category and bias ratio; the spike layer "
        rf"and its top head (residual similarity to the {bias} statement); the head with the "
        r"largest direct logit attribution (DLA top); the DLA of all heads and of all MLPs to the "
        rf"{bias}$-${control} logit difference on the number-priming prompt, and that logit "
        r"difference (the rest is the embedding and constant terms)." + note
    )
    header = ["N", "Category", "Ratio", "Spike", "Head", "DLA top", "Heads", "MLPs", "Logit"]
    return booktabs_table(header, rows, caption, "tab:mechanistic_numbers", align="@{}llrlllrrr@{}", wide=True)


# ---------------------------------------------------------------------------------------------
# figures


def aspect(pdf: Path) -> float:
    """Height / width of a PDF's first page (its MediaBox); NaN when it cannot be read."""
    box = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)", pdf.read_bytes())
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
        out.append(
            Figure(
                "similarity_by_layer",
                (
                    rf"Residual similarity by layer: cosine similarity of each number's final-position "
                    rf"residual with the {bias} statement's (left) and with the {control} statement's "
                    r"(middle), on one scale, and their difference (right); layer $-1$ is the embedding. One colour per "
                    r"category, $n$ numbers each: lines are means, bands 95\% CIs (normal approximation "
                    r"over the numbers). The spike layer is the block with the largest rise of the "
                    r"difference."
                ),
                wide=True,
            )
        )
    contributions = available.get("head_contributions")
    if contributions is not None and aspect(contributions) <= MAX_ASPECT:
        out.append(
            Figure(
                "head_contributions",
                (
                    rf"Head and MLP contributions per category (columns) and layer: the score on the number "
                    rf"statement (top) and the direct logit attribution to the {bias}$-${control} logit "
                    r"difference on the number-priming prompt (bottom), means over the category's numbers. "
                    r"In each map the columns are the heads and, after the black line, the MLP (M); red is "
                    rf"towards the {bias}, blue towards the {control}, on one colour scale per row."
                ),
                wide=True,
            )
        )
    elif "attention_to_tokens" in available:
        out.append(
            Figure(
                "attention_to_tokens",
                (
                    r"Attention from the final position to the number tokens (left) and to the animal token "
                    r"(right), per layer and head, averaged over the attention prompts; each map has its "
                    r"own colour scale."
                ),
            )
        )
    return out
