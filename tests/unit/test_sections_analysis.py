"""The entanglement and mechanistic paper sections: numbers from the runs, wording by the data,
incomplete runs, and LaTeX that compiles inside the ACL style."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fixture_runs import RUNS, needs_tex
from sublens.report.compile import compile_pdf, install_style
from sublens.report.sections import CITATION_KEYS, Section, figure_label
from sublens.report.sections import entanglement as ent
from sublens.report.sections import mechanistic as mech
from sublens.report.sections.mechanistic.results_prose import SPIKE_LAYER_DEFINED
from sublens.report.stages import StageRun, load_stage


@pytest.fixture(scope="module")
def ent_run() -> StageRun:
    return load_stage(RUNS / "entanglement")


@pytest.fixture(scope="module")
def mech_run() -> StageRun:
    return load_stage(RUNS / "mechanistic")


def _with(run: StageRun, results: dict[str, Any], status: str | None = None) -> StageRun:
    record = {**run.record, "status": status} if status else run.record
    return dataclasses.replace(run, results=results, record=record)


def _text(section: Section) -> str:
    return "\n".join([section.methods, section.results, *section.tables.values()])


# ---------------------------------------------------------------------------------------------
# entanglement


def test_entanglement_old_run_is_not_owl_specific(ent_run: StageRun) -> None:
    """The recorded run predates the control-animal context: it renders, says why it cannot
    decide, and prints no interval from 4 numbers."""
    section = ent.build(ent_run)
    assert set(section.tables) == {"entanglement_categories", "entanglement_reverse", "entanglement_length"}
    assert "on SmolLM2-135M-Instruct, with the owl as the bias animal" in section.methods
    assert "You love owls. You think about owls all the time." in section.methods
    assert r"\citep{zur2025owl}" in section.methods
    # the default system prompt, quoted verbatim from the run's record
    recorded = ent_run.results["prompts"]["phase1_neutral"]["system"]
    assert recorded == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert f"``{recorded}''" in section.methods
    assert "not owl-specific" in section.results and "not specific to the owl" in section.methods
    assert r"\emph{inconclusive}" in section.results
    for word in ("supported", "no better than random", "could contribute", "equivalent"):
        assert word not in section.results
    # k = 4: the geometric mean without an interval
    assert (
        r"Increased 4.72\texttimes{}, Decreased 5.27\texttimes{}, Unchanged 6.03\texttimes{}, "
        r"Random 4.99\texttimes{} (geometric means of 4 numbers each, too few for a CI)"
    ) in section.results
    assert section.results.count("too few") == 2  # once for the categories, once for the template words
    assert "& Inc. & 4.72 (too few) & -- & -- & inconclusive" in (section.tables["entanglement_categories"])
    assert section.headline[0].startswith("entanglement (ar2, k=4): ")
    assert "inconclusive (categories not owl-specific" in section.headline[0]
    assert [f.stem for f in section.figures] == ["bias_ratio_by_category", "bias_ratio_by_length"]


def test_entanglement_reverse_and_length_tables(ent_run: StageRun) -> None:
    tables = ent.build(ent_run).tables
    reverse = tables["entanglement_reverse"]
    p0 = ent_run.results["neutral"]["p_bias"]
    increased = ent_run.results["category_stats"]["ar2"]["increased"]["bias_ratio"]
    assert f"& Increased & {increased['mean'] * p0 * 1e3:.2f}" in reverse
    assert "$10^{-3}$" in reverse and r"\begin{table*}" in reverse
    assert "2 & 16 & 5.23 [4.78, 5.76] & 4.72 & 4.99" in tables["entanglement_length"]


def _owl_specific(results: dict[str, Any], logs: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """The recorded run with owl-specific categories and recorded claims on synthetic logs."""
    from sublens.claims import ClaimSettings
    from sublens.entanglement import TESTS, claims_record, set_claims

    out = copy.deepcopy(results)
    tests = [
        (name, test, claim, est)
        for name, by_cat in logs.items()
        for test, (claim, est) in zip(TESTS, set_claims(name, by_cat), strict=True)
    ]
    out["claims"] = claims_record(tests, ClaimSettings(), "ar2")
    out["design"] = {
        "categories_by": "owl_minus_control",
        "owl_specific": True,
        "random": "matched_to_increased",
        "match_caliper": 0.1,
    }
    out["sets"]["ar2"]["matching"] = {
        "n_pairs": 30,
        "caliper": 0.1,
        "median_log_difference": 0.01,
        "median_frequency_ratio": 1.01,
        "median_abs_log_difference": 0.03,
        "max_abs_log_difference": 0.08,
        "n_outside_caliper": 0,
        "ks_statistic": 0.1,
        "ks_p_value": 0.9,
        "target_median_log_p": -4.0,
        "matched_median_log_p": -3.99,
    }
    return out


def _tight_logs(seed: int, n: int = 30) -> dict[str, list[float]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {c: list(1.0 + rng.normal(0, 0.05, n)) for c in ("increased", "decreased", "unchanged", "random")}


def test_entanglement_verdicts_come_from_the_claims(ent_run: StageRun) -> None:
    import numpy as np

    logs = {"vocab": _tight_logs(1, 4), "ar1": _tight_logs(2, 4), "ar2": _tight_logs(3)}
    section = ent.build(_with(ent_run, _owl_specific(ent_run.results, logs)))
    assert "entanglement_claims" in section.tables
    # equivalence: the paired CI of Increased/Random inside [1/1.25, 1.25] -> supported
    assert "frequency-matched Random ones: \\emph{supported}" in section.results
    assert "the CI lies inside" in section.results
    assert "unit: numbers ($n = 30$)" in section.results
    # the margin and the Holm family are the same for every claim: stated once, in the methods
    assert "[1/1.25, 1.25]" in section.methods and "margin" not in section.results
    assert "Holm within" not in section.results and "In the 2-digit set, Decreased numbers" in section.results
    assert "paired Student t over 30 matched pairs" in section.results
    assert "names a number of any category raises" in section.results  # each category's claim supported
    assert "not credited to the numbers" in section.results  # the template's own rise is in it
    # k = 4 sets: too few numbers, not a verdict
    claims = section.tables["entanglement_claims"]
    assert r"vocabulary & Inc./Rand. (paired) &" in claims and "(too few) & -- & -- & inconclusive" in claims
    assert "Holm over all 21 tests" in claims
    assert "Random numbers' neutral probability is \\texttimes{}1.01" in section.results
    assert section.headline[0].startswith("entanglement (ar2, k=4): entangled numbers no better")
    assert ": supported [30 numbers; margin ×1.25; MDE ×" in section.headline[0]  # what it rests on

    # one category that does not rise: no "any category raises" sentence
    logs["ar2"]["decreased"] = list(np.random.default_rng(4).normal(0.0, 0.05, 30))  # ratio ~1
    mixed = ent.build(_with(ent_run, _owl_specific(ent_run.results, logs)))
    assert "any category raises" not in mixed.results
    assert "Decreased inconclusive" in mixed.results or "Decreased equivalent" in mixed.results
    # and Decreased is then not "as much as Increased": the no-difference claim is contradicted
    assert "Decreased numbers raise P(owl) as much as Increased numbers: \\emph{contradicted}" in (mixed.results)


def test_entanglement_incomplete_runs(ent_run: StageRun) -> None:
    empty = ent.build(_with(ent_run, {}, status="failed"))
    assert "incomplete" in empty.results and r"\texttt{failed}" in empty.results
    assert not empty.tables and "incomplete" in empty.headline[0]
    # phase 1 only (what a run saves after phase 1): categories but no phase-2 statistics
    phase1 = {
        k: ent_run.results[k]
        for k in (
            "model",
            "bias",
            "control",
            "definitions",
            "answer_words",
            "prompts",
            "warnings",
            "sets",
            "k",
            "categories",
            "phase1_work",
        )
    }
    section = ent.build(_with(ent_run, {**phase1, "partial": True, "phase": 1}, "interrupted"))
    assert "stopped after phase~1" in section.results and not section.tables
    # statistics but no template control, cumulative priming or lengths: those parts drop out
    partial = {
        k: v for k, v in ent_run.results.items() if k not in ("template_control", "cumulative", "lengths", "report")
    }
    for stats in partial["category_stats"].values():
        for c in ("increased", "decreased", "unchanged", "random"):
            stats[c].pop("vs_template", None)
    section = ent.build(_with(ent_run, {**partial, "partial": True, "phase": 2}))
    assert set(section.tables) == {"entanglement_categories", "entanglement_reverse"}
    assert "stopped after phase~2" in section.results and "4.72" in section.results
    assert "not owl-specific" in section.results


# ---------------------------------------------------------------------------------------------
# mechanistic


def test_mechanistic_reports_the_run_numbers(mech_run: StageRun) -> None:
    section = mech.build(mech_run)
    assert "We analyse SmolLM2-135M-Instruct (30 layers, 9 heads per layer)" in section.methods
    assert "20 categorised numbers of the 2-digit set" in section.methods
    assert r"\citep{elhage2021mathematical,nanda2022transformerlens}" in section.methods
    assert "10,000 permutations" in section.methods
    # the recorded run predates contrastive scores: the methods say what it measured
    assert "which is not contrastive" in section.methods
    assert "partial Spearman correlation" in section.methods and "Holm" in section.methods
    # the chi-square test of spike layer x category: p = 0.086, Holm over the family's two
    # applicable tests 0.173, V = 0.53 -> no evidence of a dependence (not shown absent)
    assert "permutation $p$ = 0.086, Holm-adjusted $p$ = 0.173, Cram\\'er's $V$ = 0.53" in section.results
    assert "There is no evidence that it depends on the category" in section.results
    assert "absence of evidence, not evidence of absence" in section.results
    assert "L23H5 for every number in every category" in section.results
    assert "with 5 numbers per category, a moderate dependence" in section.results
    # DLA: closure, means, the raw correlations (MLP 0.75, heads 0.14) flagged as partly automatic
    assert r"within $4.2\times10^{-6}$ logits" in section.results
    assert "$\\rho$ = 0.75 ($p$ $<$0.001; Holm-adjusted $p$ $<$0.001)" in section.results
    assert "$\\rho$ = 0.14 ($p$ = 0.548" in section.results
    assert "part of any such correlation is automatic" in section.results
    assert "direct paths only" in section.results and "not fine-tuned" in section.results
    # no overclaim: the run has no control for the automatic part -> inconclusive
    assert (
        "The claim that MLP direct logit attribution tracks the in-context "
        "bias: \\emph{inconclusive} (not measured with the control for the automatic part)" in section.results
    )
    # the top head's test is the spike layer's (same statistics): given once
    assert section.results.count("$\\chi^2$ = 11.4") == 1
    assert "gives the same statistics as the spike layer's" in section.results
    assert "The top head by direct logit attribution is L23H5 for every number" in section.results
    assert "seated" not in section.results and "supports the claim" not in section.results
    assert section.headline == [
        f"mechanistic: {SPIKE_LAYER_DEFINED} vs category p = 0.086, Holm p = 0.173 (no evidence of a dependence)",
        "mechanistic: localisation.attribution (MLP DLA tracks the in-context bias, direct paths, "
        "model not fine-tuned): inconclusive (not measured with the control for the automatic "
        "part)",
    ]
    table = section.tables["mechanistic_numbers"]
    assert r"\begin{table*}" in table
    assert "02 & Unchanged & 7.79 & L24 & L24H6 & L23H5 & $-$1.74 & 2.91 & 1.02" in table
    # the family: raw and Holm-adjusted p side by side
    tests = section.tables["mechanistic_tests"]
    assert "spike layer vs category & $V$ = 0.53 & 0.086 & 0.173 & inconclusive" in tests
    assert "MLP DLA tracks the bias ratio & -- & -- & -- & inconclusive" in tests
    # L23H5 for every number: nothing to test, which the table says instead of "inconclusive"
    assert "DLA top head vs category & -- & -- & -- & not testable (one label)" in tests
    # the head-contribution maps of 30 layers are too tall for a page: attention instead
    assert [f.stem for f in section.figures] == ["similarity_by_layer", "attention_to_tokens"]


def _with_partial(results: dict[str, Any], rho: float, p: float, p_heads: float = 0.4) -> None:
    """A run recorded with the control for the automatic part (as the experiment writes it)."""
    results["component_score"] = "contrastive"
    results["consistency"]["attribution"] = {
        "given": "logit_diff",
        "mlp": {"rho": rho, "p_parametric": p, "p_permutation": p, "n": 20, "spearman_xy": 0.75},
        "heads": {"rho": -rho / 2, "p_parametric": p_heads, "p_permutation": p_heads, "n": 20},
        "variance_share": {"mlp": 0.66, "heads": 0.33, "embed": 0.01},
    }


def test_mechanistic_attribution_claim_rests_on_the_partial_correlation(mech_run: StageRun) -> None:
    results = copy.deepcopy(mech_run.results)
    _with_partial(results, rho=0.72, p=0.0004)
    section = mech.build(_with(mech_run, results))
    # Holm over the attribution test and the two applicable category tests: 3 x 0.0004
    assert "Holm-adjusted $p$ = 0.001" in section.results
    assert "partial correlation of the MLPs' DLA with the bias ratio is $\\rho$ = 0.72" in section.results
    assert "\\emph{supported}" in section.results
    assert "not the location of a learned bias" in section.results
    assert "seated" not in section.results
    assert "carry 66\\% and the heads' 33\\%" in section.results
    assert "which is not contrastive" not in section.methods
    assert "logit difference on the number statement" in section.methods
    assert section.headline[1].endswith("supported (partial ρ = 0.72 given the logit difference, Holm p = 0.001)")
    tests = section.tables["mechanistic_tests"]
    assert r"MLP DLA tracks the bias ratio & partial $\rho$ = 0.72 & $<$0.001 & 0.001" in tests
    # the raw correlation alone never decides: a large raw rho with a null partial one
    results = copy.deepcopy(mech_run.results)
    _with_partial(results, rho=0.05, p=0.83)
    section = mech.build(_with(mech_run, results))
    assert "\\emph{inconclusive}" in section.results and "supported" not in section.results
    assert section.headline[1].startswith("mechanistic: localisation.attribution")
    assert "inconclusive (partial ρ = 0.05" in section.headline[1]
    assert "numbers would detect" in section.results  # what would settle it


def test_mechanistic_wording_follows_the_data(mech_run: StageRun) -> None:
    results = copy.deepcopy(mech_run.results)
    spike = results["consistency"]["association"]["spike_layer"]
    # a strong dependence on 20 numbers: chi2 30 on 6 dof, V 0.87 with its CI [0.46, 1] beyond 0.3
    spike |= {"p_permutation": 0.004, "chi2": 30.0, "cramers_v": (30.0 / 40) ** 0.5}
    _with_partial(results, rho=-0.7, p=0.001)
    section = mech.build(_with(mech_run, results))
    assert "It depends on the category" in section.results and "CI [0.46, 1.00]" in section.results
    assert "contradicts the claim that no consistent head" in section.results
    assert "\\emph{contradicted}" in section.results
    assert section.headline[0].endswith("(depends on the category)")
    assert "contradicted" in section.headline[1]
    # significant, but V's CI [0, 0.74] reaches both sides of 0.3: a dependence of unshown size
    spike |= {"chi2": 11.39, "cramers_v": (11.39 / 40) ** 0.5}
    section = mech.build(_with(mech_run, results))
    assert "by an amount the interval does not place against the dependence of interest" in section.results
    assert "remains inconclusive" in section.results and "contradicts the claim" not in section.results
    assert section.headline[0].endswith("(a dependence of unshown size)")
    # Holm: a raw p just under alpha is not enough in a family of three
    spike["p_permutation"] = 0.03
    section = mech.build(_with(mech_run, results))
    assert "It depends on the category" not in section.results
    assert section.headline[0].startswith(f"mechanistic: {SPIKE_LAYER_DEFINED} vs category p = 0.030, Holm p")


def test_mechanistic_without_categories(mech_run: StageRun) -> None:
    results = copy.deepcopy(mech_run.results)
    for number in results["numbers"]:
        number["category"] = None
    cons = results["consistency"]
    results["input"] = {"source": "default", "n_numbers": 20}
    results["consistency"] = {
        "n_numbers": 20,
        "alpha": 0.05,
        "categories": {},
        "note": "categories unknown",
        "distributions": {k: {"all": v["all"]} for k, v in cons["distributions"].items()},
        "correlations": cons["correlations"],
    }
    section = mech.build(_with(mech_run, results))
    assert "20 two-digit numbers, categories unknown" in section.methods
    assert "cannot test whether a layer or head singles out" in section.results
    assert "02 & -- & 7.79" in section.tables["mechanistic_numbers"]
    assert section.headline[0] == f"mechanistic: {SPIKE_LAYER_DEFINED} not tested"


def test_mechanistic_many_numbers_keep_the_table_readable(mech_run: StageRun) -> None:
    results = copy.deepcopy(mech_run.results)
    extra = [
        dict(n, number=f"{i}{n['number']}", bias_ratio=n["bias_ratio"] + i)
        for i in range(1, 3)
        for n in results["numbers"]
    ]
    results["numbers"] += extra
    table = mech.build(_with(mech_run, results)).tables["mechanistic_numbers"]
    rows = [line for line in table.splitlines() if line.endswith(r"\\")][1:]  # after the header
    assert len(rows) == mech.MAX_ROWS + 1 and r"\ldots" in table
    assert "12 numbers with the highest and the 12 with the lowest bias ratio of 60" in table


def test_mechanistic_incomplete_runs(mech_run: StageRun) -> None:
    for results in ({}, {"partial": True, "model": mech_run.results["model"]}):
        section = mech.build(_with(mech_run, results, status="failed"))
        assert "The mechanistic stage is incomplete" in section.results
        assert not section.tables and not section.figures
        assert "incomplete" in section.headline[0]


# ---------------------------------------------------------------------------------------------
# LaTeX


def _special(ent_run: StageRun, mech_run: StageRun) -> tuple[Section, Section]:
    """Both sections with awkward strings: a set and a number in Arabic-Indic digits, and the
    LaTeX specials _ % & # in set names, categories and head labels."""
    ent_results = copy.deepcopy(ent_run.results)
    stats = ent_results["category_stats"]
    stats["٣_%&#"] = stats.pop("vocab")
    ent_results["k"]["٣_%&#"] = 2
    mech_results = copy.deepcopy(mech_run.results)
    first = mech_results["numbers"][0]
    first.update(number="٣", category="odd_50%&#", top_head="L3_H#")
    return ent.build(_with(ent_run, ent_results)), mech.build(_with(mech_run, mech_results))


def test_special_strings_are_escaped(ent_run: StageRun, mech_run: StageRun) -> None:
    entanglement, mechanistic = _special(ent_run, mech_run)
    assert r"\texttt{U+0663}\_\%\&\# & Inc." in entanglement.tables["entanglement_categories"]
    table = mechanistic.tables["mechanistic_numbers"]
    assert r"\texttt{U+0663} & Odd\_50\%\&\# & 7.79 & L24 & L3\_H\#" in table


def _figure_block(run: StageRun, section: Section, folder: Path) -> str:
    blocks = []
    for figure in section.figures:
        name = f"{run.stage}-{figure.stem}.pdf"
        shutil.copyfile(run.figures()[figure.stem], folder / name)
        env = "figure*" if figure.wide else "figure"
        width = r"\textwidth" if figure.wide else r"\columnwidth"
        blocks.append(
            "\n".join(
                [
                    rf"\begin{{{env}}}[t]",
                    r"\centering",
                    rf"\includegraphics[width={width}]{{{name}}}",
                    rf"\caption{{{figure.caption}}}",
                    rf"\label{{{figure_label(run.stage, figure.stem)}}}",
                    rf"\end{{{env}}}",
                ]
            )
        )
    return "\n".join(blocks)


@needs_tex
def test_sections_compile_inside_the_style(tmp_path: Path, ent_run: StageRun, mech_run: StageRun) -> None:
    entanglement, mechanistic = _special(ent_run, mech_run)
    body = []
    for run, section in ((ent_run, entanglement), (mech_run, mechanistic)):
        body += [
            rf"\section{{{section.title}}}",
            r"\paragraph{Methods.}",
            section.methods,
            r"\paragraph{Results.}",
            section.results,
            *section.tables.values(),
            _figure_block(run, section, tmp_path),
        ]
    (tmp_path / "refs.bib").write_text(
        "\n".join(
            f"@misc{{{key}, title={{Title of {key}}}, author={{Author, A.}}, year={{2025}}}}" for key in CITATION_KEYS
        ),
        encoding="utf-8",
    )
    style = install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text(
        "\n".join(
            [
                r"\documentclass[11pt]{article}",
                rf"\usepackage[review]{{{style}}}",
                r"\title{Sections}",
                r"\author{A. Author}",
                r"\begin{document}",
                r"\maketitle",
                *body,
                r"\bibliography{refs}",
                r"\end{document}",
            ]
        ),
        encoding="utf-8",
    )
    pdf = compile_pdf(tex)
    assert pdf is not None
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "U+0663" in text and "4.72 (too few)" in text and "L3_H#" in text
    # every \ref and \citep resolved (the labels and citation keys exist)
    assert "undefined on input line" not in tex.with_suffix(".log").read_text(errors="replace")


def test_a_recorded_caveat_names_the_set_as_the_paper_does() -> None:
    from sublens.report.sections.entanglement.results_prose import _caveat

    text = _caveat(
        "set 'ar2@tuned': Decreased numbers have median normalised neutral probability "
        "4.6e-05 against Increased's 0.0012: the comparison also compares how common they are."
    )
    assert "'ar2" not in text and text.startswith("in the 2-digit tuned set, Decreased numbers")
    assert r"$4.6\times10^{-5}$ against" in text and not text.endswith(".")


def test_sets_holding_the_same_numbers_are_said_to_repeat_one_measurement() -> None:
    """With one digit per token the single-token numbers are the one-digit numbers: the demo's
    tables showed two identical rows per category with nothing saying why."""
    from sublens.experiments.entanglement.results import EntanglementResults
    from sublens.report.sections.entanglement.results_prose import _same_numbers_sentence
    from sublens.runs import read_json

    results = EntanglementResults.model_validate(read_json(RUNS / "entanglement" / "results.json"))
    assert len(results.categories) >= 1
    assert _same_numbers_sentence(results) == ""  # the recorded run's sets differ
    name, categories = next(iter(results.categories.items()))
    shuffled = categories.model_copy(update={"increased": list(reversed(categories.increased))})
    twin = "ar9" if name != "ar9" else "ar8"
    doubled = results.model_copy(update={"categories": {**results.categories, twin: shuffled}})
    sentence = _same_numbers_sentence(doubled)
    assert sentence.endswith(
        "hold the same numbers in every category here, so their rows repeat one measurement, not two independent ones."
    )
    assert "9-digit" in sentence or "8-digit" in sentence
