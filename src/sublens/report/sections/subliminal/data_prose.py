"""The training data in words, for the results paragraph of the subliminal section: the
filter's keep rates and rejection reasons per data set, how the teachers' numbers differ
(distribution distances and per-answer statistics), the divergence tokens per data set, and
how often the entanglement study's numbers occur in the owl data against the control data."""

from __future__ import annotations

from sublens.experiments.entanglement.analysis import increased_phrase, set_title
from sublens.experiments.subliminal.results import DataRecord, DivergenceSummary, EntangledRecord
from sublens.report.latex import counted, escape
from sublens.report.names import words
from sublens.report.sections.common import count, finite, fnum, p_value, pct, ratio_cell
from sublens.report.sections.subliminal.reading import FEATURE_WORDS


# ---- data ---------------------------------------------------------------------------------------
def data_sentence(data: DataRecord | None) -> str:
    """Keep rates and rejection reasons per data set, and how the teachers' numbers differ."""
    if data is None or not data.datasets:
        return ""
    parts = []
    for name, d in data.datasets.items():
        f = d.filter
        low, high = f.keep_rate_ci
        rejected = {k: v for k, v in f.reasons.items() if k != "ok"}
        why = (
            "no rejections"
            if not rejected
            else "rejected: " + ", ".join(f"{escape(words(k))} {count(v)}" for k, v in rejected.items())
        )
        parts.append(
            f"{count(f.n_kept)}/{count(f.n_answers)} {escape(name)} answers "
            f"({pct(f.keep_rate)} [{pct(low)}, {pct(high)}]; {why})"
        )
    text = "The filter kept " + ("; ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."
    defined = False  # TVD is defined where it is first used
    for name, c in data.comparisons.items():
        digits, lengths = c.digit_distribution_tvd, c.length_distribution_tvd
        differ = [
            f"{escape(FEATURE_WORDS.get(k, words(k)))} ({fnum(v.difference)}, {p_value(v.p_permutation)})"
            for k, v in c.features.items()
            if finite(v.p_permutation) and v.p_permutation < 0.05
        ]
        shown_name = escape(str(name).replace(" vs ", " against "))
        tvd = (
            "total variation distance (TVD: half the summed absolute difference of two distributions; "
            "0 when they are identical, 1 when disjoint)"
            if not defined
            else "TVD"
        )
        defined = True
        text += (
            f" Comparing the data sets ({shown_name}), the {tvd} of their digit distributions is "
            f"{fnum(digits.tvd, 3)} (permutation {p_value(digits.p_permutation)}) and of their answer "
            f"lengths {fnum(lengths.tvd, 3)} ({p_value(lengths.p_permutation)}); "
        )
        text += (
            "per-answer statistics differing at $p<0.05$ (uncorrected): " + ", ".join(differ) + "."
            if differ
            else "no per-answer number statistic differs at $p<0.05$ (uncorrected), which does not show the "
            "data sets alike."
        )
    pooled = data.sampling.samples_per_prompt > 1
    return text + divergence_sentence(data.divergence) + enrichment_sentence(data.entangled, pooled)


def enrichment_sentence(entangled: EntangledRecord | None, pooled: bool = False) -> str:
    """How often the entanglement study's increased numbers (and its matched random set) occur
    in the owl data against the control data, by answer. Fisher's test takes the answers as
    independent, as they are with one answer per prompt; `pooled`: several answers per prompt,
    so the p is named descriptive."""
    if entangled is None:
        return ""
    parts = []
    over = ", over answers pooled across each prompt's samples: descriptive" if pooled else ""
    for category, label in (
        ("increased", f"entangled numbers ({escape(increased_phrase(entangled.set))})"),
        ("random", "the size-matched random set"),
    ):
        e = entangled.enrichment.get(category)
        if e is None:
            continue
        ratio = e.owl_over_control
        parts.append(
            f"{label}: in {count(e.owl.answers_with)} of {count(e.owl.answers)} owl answers "
            f"and {count(e.control.answers_with)} of {count(e.control.answers)} control answers "
            f"(ratio {ratio_cell(ratio)}, Fisher {p_value(ratio.p_fisher)}{over})"
        )
    if not parts:
        return ""
    return (
        " Entanglement in the data, with the numbers of the entanglement study "
        f"\\citep{{zur2025owl}} ({escape(set_title(entangled.set))} set), counted by answer: " + "; ".join(parts) + "."
    )


def divergence_sentence(divergence: dict[str, DivergenceSummary] | None) -> str:
    """How many training answer tokens are divergence tokens, per data set."""
    parts = [
        f"{escape(name)} data {count(d.n_divergent)} of {count(d.n_tokens)} answer tokens "
        f"({pct(d.rate)}), in {count(d.examples_with_any)} of {counted(d.n_examples, 'answer')}"
        for name, d in (divergence or {}).items()
    ]
    if not parts:
        return ""
    return (
        " Divergence tokens \\citep{schrodi2026understanding}, the answer tokens at which the owl and the "
        "control teacher, reading the same prefix, would choose different most probable tokens: "
        + "; ".join(parts)
        + "."
    )
