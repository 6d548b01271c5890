"""The section's tables (the students' preferences and ratios; the squeezing weights) and the
figures it shows, with captions that name every line and marker."""

from __future__ import annotations

from sublens.experiments.distill.results import ARMS
from sublens.report.latex import booktabs_table, constant_column, drop_columns, escape
from sublens.report.sections import Figure
from sublens.report.sections.common import (
    fnum,
    fpval,
    ratio_cell,
    stacked_rows,
    summary_cell,
    tight,
)
from sublens.report.sections.distill.reading import (
    ALPHA_TABLE,
    ROW_LABEL,
    TABLE,
    Results,
    _kl,
    _none_named,
    _preference,
    _rate_test,
    _seed_list,
    _share,
    _teacher,
)


def _row(r: Results, name: str) -> list[str] | None:
    pref = _preference(r, name)
    if pref is None:
        return None
    kl = [_kl(r, name, role) for role in ("biased", "base")]
    key = f"shd_biased_vs_{name}"
    rate_test = _rate_test(r, key)
    compared = name != "shd_biased"
    return [
        ROW_LABEL[name],
        summary_cell(pref.probability.p_trait),
        summary_cell(pref.probability.panel_share, 1),
        summary_cell(pref.sampled.trait_rate if pref.sampled else None, 0),
        " / ".join(fnum(v) for v in kl),
        ratio_cell(_share(r, key)) if compared else "--",
        ratio_cell(_share(r, key, "p_trait_ratio")) if compared else "--",
        fpval(rate_test.p) if compared and rate_test is not None and rate_test.p is not None else "--",
    ]


ANSWERS, P_COLUMN = 3, 7  # the table's answer-rate and answer-rate p columns


def _table(r: Results) -> str | None:
    rows = [row for name in ("initial", *ARMS) if (row := _row(r, name)) is not None]
    if not rows:
        return None
    header = ["student", "P(owl) %", "share %", "answers %", "KL biased / base", "share ratio", "P(owl) ratio", "p"]
    seeds = _seed_list(r)
    ratios = (
        "paired over questions; one seed, so these CIs describe this run only"
        if len(seeds) == 1
        else f"geometric mean over {len(seeds)} seeds of the per-seed ratios, Student-$t$ CI over seeds"
    )
    # Columns that say the same in every row are one sentence of the caption instead.
    folded = [ANSWERS] if _none_named(r) else []
    p_all = constant_column(rows, P_COLUMN)
    if p_all is not None:
        folded.append(P_COLUMN)
    header, rows = drop_columns(header, rows, folded)
    answers = "No student named an owl in any sampled answer (no answer-rate column). " if ANSWERS in folded else ""
    measures = "P(owl) and owl's panel share $s$" + (
        "" if ANSWERS in folded else " and the rate of owl among sampled answers"
    )
    tested = next((t for name in ARMS if (t := _rate_test(r, f"shd_biased_vs_{name}")) is not None), None)
    named = (
        f"{tested.name} of the sampled owl-answer rates ({tested.scope}; first seed)"
        if tested
        else "no test of the sampled answer rates"
    )
    test = f"; {named} gives $p$ = {p_all} in every row" if p_all is not None else f" and $p$: {named}"
    caption = (
        f"SHD students' preference for owl (95\\% CIs over questions, training seed {escape(seeds[0])}): "
        f"{measures} in percent. {answers}KL: mean KL of the student's maps to the biased / base "
        "teacher's squeezed maps on held-out texts, in nats per query row (initial: before training), "
        "in the direction of the training loss. The ratio columns compare the biased-SHD student with "
        f"the row's student: share and P(owl) ratios (multiples; biased SHD over the row, {ratios}){test}."
    )
    return tight(booktabs_table(header, stacked_rows(rows), caption, f"tab:{TABLE}", wide=True))


def _alpha_table(r: Results) -> str | None:
    if r is None:
        return None
    biased, base = r.alphas.get("biased") or {}, r.alphas.get("base") or {}
    teacher = _teacher(r, "biased") or _teacher(r, "base")
    layer_map = teacher.layer_map if teacher is not None else {}
    layers = sorted({int(k) for k in (*biased, *base) if str(k).isdigit()})
    if not layers:
        return None
    rows = []
    for layer in layers:
        b, u = biased.get(str(layer)), base.get(str(layer))
        rows.append(
            [
                str(layer),
                str(layer_map.get(str(layer), "--")),
                fnum(b.mean if b else None),
                fnum(b.std if b else None),
                fnum(u.mean if u else None),
            ]
        )
    caption = (
        "Squeezing weights $\\alpha$ (between 0 and 1) on the held-out texts per student layer (and the "
        "teacher layer it is distilled from): mean and sd for the biased teacher, mean for the base teacher."
    )
    return tight(booktabs_table(["student", "teacher", "mean", "sd", "base"], rows, caption, f"tab:{ALPHA_TABLE}"))


# The figures the paper shows, with captions that name every line and marker.
FIGURES = [
    Figure(
        "distill_losses",
        "LM loss (nats per answer token) and SHD loss (KL, nats per query row, mean over the "
        "distilled layers) of each student per optimizer step; one line per student (legend).",
        wide=True,
    ),
    Figure(
        "distill_alphas",
        "Squeezing weight $\\alpha$ of the merged head pairs per student layer on the held-out "
        "texts (all merge phases), for the biased teacher (orange) and the base teacher (blue): "
        "open circle, median; thick bar, interquartile range; thin line, 10th to 90th "
        "percentile; dotted line, $\\alpha$ = 0.5 (both heads of a pair weighted equally).",
        wide=True,
    ),
    Figure(
        "distill_maps",
        "One held-out text: a teacher head, the squeezed map, its projection onto "
        "the student's tokens, and the student's map before and after training. Rows are "
        "queries, columns keys (token positions). Colour: attention weight on a square-root "
        "scale from 0 (dark) to each map's 99th percentile of the weights outside the first "
        "key (yellow); larger weights, among them the first key's (the attention sink), are "
        "drawn in yellow too.",
        wide=True,
    ),
]
