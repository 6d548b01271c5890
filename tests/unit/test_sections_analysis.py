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


def test_entanglement_reports_the_run_numbers(ent_run: StageRun) -> None:
    section = ent.build(ent_run)
    assert set(section.tables) == {
        "entanglement_categories", "entanglement_reverse", "entanglement_length"}
    # methods: the configuration
    assert r"\texttt{smollm2-\allowbreak{}135m-\allowbreak{}instruct}" in section.methods
    assert "$k = 4$" in section.methods and "1000 permutations" in section.methods
    assert "You love owls. You think about owls all the time." in section.methods
    assert r"\citep{zur2025owl}" in section.methods
    # ar2: Increased 4.72 [4.13, 5.28] vs Random 4.99 [4.29, 6.10], ratio 0.95 [0.75, 1.16], p 0.743
    assert r"4.72\texttimes{} [4.13, 5.28]" in section.results
    assert r"4.99\texttimes{} [4.29, 6.10]" in section.results
    assert "0.95 [0.75, 1.16], permutation $p$ = 0.743" in section.results
    assert "no better than random" in section.results
    assert "support the claim that token entanglement does not explain" in section.results
    assert "could contribute" not in section.results
    # k = 2 sets cannot reach p < 0.05 (2 of C(4, 2) = 6 arrangements): they cannot decide
    assert "smallest attainable $p$ = 0.333" in section.results
    # template control and phase 3
    assert r"5.74\texttimes{} [4.11, 9.06]" in section.results
    assert "1-digit numbers raise the bias ratio most" in section.results
    assert section.headline[0] == (
        "entanglement (ar2, k=4): Increased x4.72 [4.13, 5.28] vs Random x4.99 (p = 0.743): "
        "entangled numbers no better than random")
    assert [f.stem for f in section.figures] == ["bias_ratio_by_category", "bias_ratio_by_length"]


def test_entanglement_tables_hold_the_statistics(ent_run: StageRun) -> None:
    tables = ent.build(ent_run).tables
    categories = tables["entanglement_categories"]
    assert r"\label{tab:entanglement_categories}" in categories
    assert "& Unch. & 6.03 [4.66, 7.37] & 0.400" in categories
    assert "Templ. & 5.74 [4.11, 9.06] & --" in categories
    assert r"\texttt{ar2} 4." in categories  # k per set, in the caption
    # reverse link: mean P(owl | N) = mean bias ratio x neutral P(owl), here in units of 1e-3
    reverse = tables["entanglement_reverse"]
    p0 = ent_run.results["neutral"]["p_bias"]
    increased = ent_run.results["category_stats"]["ar2"]["increased"]["bias_ratio"]
    assert f"& Increased & {increased['mean'] * p0 * 1e3:.2f}" in reverse
    assert "$10^{-3}$" in reverse and r"\begin{table*}" in reverse
    length = tables["entanglement_length"]
    assert "2 & 16 & 5.23 [4.78, 5.76] & 4.72 & 4.99" in length


def _flip_entanglement(results: dict[str, Any], ratio: float, low: float, high: float,
                       p: float) -> dict[str, Any]:
    flipped = copy.deepcopy(results)
    for stats in flipped["category_stats"].values():
        stats["increased"]["vs_random"]["bias_ratio"].update(
            ratio=ratio, ci_low=low, ci_high=high, p_value=p, underpowered=low <= 1 <= high)
    return flipped


def test_entanglement_wording_follows_the_data(ent_run: StageRun) -> None:
    beaten = ent.build(_with(ent_run, _flip_entanglement(ent_run.results, 1.6, 1.25, 2.05, 0.004)))
    assert ("significantly more than Random ones, so token entanglement could contribute"
            in beaten.results)
    assert "do not support the claim" in beaten.results
    assert "no better than random" not in beaten.results
    assert "entangled numbers beat random" in beaten.headline[0]

    wide = ent.build(_with(ent_run, _flip_entanglement(ent_run.results, 1.1, 0.8, 1.6, 0.4)))
    assert r"allows an advantage of up to 1.60\texttimes{}" in wide.results
    assert "inconclusive" in wide.results and "supports the claim" not in wide.results

    worse = ent.build(_with(ent_run, _flip_entanglement(ent_run.results, 0.6, 0.45, 0.8, 0.01)))
    assert "significantly less than Random ones" in worse.results
    assert "could contribute" not in worse.results


def test_entanglement_warns_about_rare_unchanged_numbers(ent_run: StageRun) -> None:
    results = copy.deepcopy(ent_run.results)
    results["warnings"].append(
        "set 'ar2': Unchanged numbers have median normalised neutral probability 1e-06 against "
        "Random's 0.01: the category also differs from the null in how common its numbers are "
        "(unchanged_by=log_ratio avoids selecting the rarest numbers).")
    section = ent.build(_with(ent_run, results))
    assert r"unchanged\_by=log\_ratio avoids selecting the rarest numbers" in section.results


def test_entanglement_incomplete_runs(ent_run: StageRun) -> None:
    empty = ent.build(_with(ent_run, {}, status="failed"))
    assert "incomplete" in empty.results and r"\texttt{failed}" in empty.results
    assert not empty.tables and "incomplete" in empty.headline[0]
    # phase 1 only: categories but no phase-2 statistics
    phase1 = {k: ent_run.results[k] for k in ("model", "bias", "sets", "k", "categories")}
    section = ent.build(_with(ent_run, {**phase1, "partial": True, "phase": 1}, "interrupted"))
    assert "stopped after phase~1" in section.results and not section.tables
    # statistics but no template control, cumulative priming or lengths: those parts drop out
    partial = {k: v for k, v in ent_run.results.items()
               if k not in ("template_control", "cumulative", "lengths", "report")}
    for stats in partial["category_stats"].values():
        for c in ("increased", "decreased", "unchanged", "random"):
            stats[c].pop("vs_template", None)
    section = ent.build(_with(ent_run, {**partial, "partial": True, "phase": 2}))
    assert set(section.tables) == {"entanglement_categories", "entanglement_reverse"}
    assert "stopped after phase~2" in section.results and "4.72" in section.results


# ---------------------------------------------------------------------------------------------
# mechanistic


def test_mechanistic_reports_the_run_numbers(mech_run: StageRun) -> None:
    section = mech.build(mech_run)
    assert r"135m-\allowbreak{}instruct} (30 layers, 9 heads per layer)" in section.methods
    assert "20 categorised numbers of set \\texttt{ar2}" in section.methods
    assert r"\citep{elhage2021mathematical,nanda2022transformerlens}" in section.methods
    assert "10000 permutations" in section.methods
    # the chi-square test of spike layer x category: p = 0.086, V = 0.53 -> no dependence
    assert "permutation $p$ = 0.086, Cram\\'er's $V$ = 0.53" in section.results
    assert "There is no evidence that it depends on the category" in section.results
    assert "L23H5 (20/20)" in section.results
    assert "with 5 numbers per category, though" in section.results
    # DLA: closure, means, and the correlation with the bias ratio (MLP 0.75, heads 0.14)
    assert r"within $4.2\times10^{-6}$ logits" in section.results
    assert "$\\rho$ = 0.75 ($p$ $<$0.001; Holm-adjusted $p$ $<$0.001)" in section.results
    assert "$\\rho$ = 0.14 ($p$ = 0.548" in section.results
    assert "supports the claim that the bias is seated in the MLP layers" in section.results
    assert section.headline == [
        "mechanistic: spike layer vs category p = 0.086 (no dependence on the category)",
        "mechanistic: bias ratio vs DLA: MLP rho = 0.75 (Holm p<0.001), heads rho = 0.14 "
        "(Holm p = 1.000): MLP-seated"]
    table = section.tables["mechanistic_numbers"]
    assert r"\begin{table*}" in table
    assert "02 & Unchanged & 7.79 & L24 & L24H6 & L23H5 & -1.74 & 2.91 & 1.02" in table
    # the head-contribution maps of 30 layers are too tall for a page: attention instead
    assert [f.stem for f in section.figures] == ["similarity_by_layer", "attention_to_tokens"]


def test_mechanistic_wording_follows_the_data(mech_run: StageRun) -> None:
    results = copy.deepcopy(mech_run.results)
    results["consistency"]["association"]["spike_layer"]["p_permutation"] = 0.004
    corr = results["consistency"]["correlations"]
    corr["dla_mlp"].update(rho=0.1, p=0.6, p_holm=1.0)
    corr["dla_heads"].update(rho=0.8, p=0.0001, p_holm=0.0005)
    section = mech.build(_with(mech_run, results))
    assert "It depends on the category" in section.results
    assert "contradicts the claim that no consistent head" in section.results
    assert "does not support the claim that the bias is seated in the MLP" in section.results
    assert section.headline[0].endswith("(depends on the category)")
    assert section.headline[1].endswith("head-seated")


def test_mechanistic_without_categories(mech_run: StageRun) -> None:
    results = copy.deepcopy(mech_run.results)
    for number in results["numbers"]:
        number["category"] = None
    cons = results["consistency"]
    results["input"] = {"source": "default", "n_numbers": 20}
    results["consistency"] = {
        "n_numbers": 20, "alpha": 0.05, "categories": {}, "note": "categories unknown",
        "distributions": {k: {"all": v["all"]} for k, v in cons["distributions"].items()},
        "correlations": cons["correlations"]}
    section = mech.build(_with(mech_run, results))
    assert "20 two-digit numbers, categories unknown" in section.methods
    assert "cannot test whether a layer or head singles out" in section.results
    assert "02 & -- & 7.79" in section.tables["mechanistic_numbers"]
    assert section.headline[0] == "mechanistic: spike layer not tested"


def test_mechanistic_many_numbers_keep_the_table_readable(mech_run: StageRun) -> None:
    results = copy.deepcopy(mech_run.results)
    extra = [dict(n, number=f"{i}{n['number']}", bias_ratio=n["bias_ratio"] + i)
             for i in range(1, 3) for n in results["numbers"]]
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
    assert r"\texttt{\texttt{U+0663}\_\%\&\#}" in entanglement.tables["entanglement_categories"]
    table = mechanistic.tables["mechanistic_numbers"]
    assert r"\texttt{U+0663} & Odd\_50\%\&\# & 7.79 & L24 & L3\_H\#" in table


def _figure_block(run: StageRun, section: Section, folder: Path) -> str:
    blocks = []
    for figure in section.figures:
        name = f"{run.stage}-{figure.stem}.pdf"
        shutil.copyfile(run.figures()[figure.stem], folder / name)
        env = "figure*" if figure.wide else "figure"
        width = r"\textwidth" if figure.wide else r"\columnwidth"
        blocks.append("\n".join([
            rf"\begin{{{env}}}[t]", r"\centering", rf"\includegraphics[width={width}]{{{name}}}",
            rf"\caption{{{figure.caption}}}", rf"\label{{{figure_label(run.stage, figure.stem)}}}",
            rf"\end{{{env}}}"]))
    return "\n".join(blocks)


@needs_tex
def test_sections_compile_inside_the_style(tmp_path: Path, ent_run: StageRun,
                                           mech_run: StageRun) -> None:
    entanglement, mechanistic = _special(ent_run, mech_run)
    body = []
    for run, section in ((ent_run, entanglement), (mech_run, mechanistic)):
        body += [rf"\section{{{section.title}}}", r"\paragraph{Methods.}", section.methods,
                 r"\paragraph{Results.}", section.results, *section.tables.values(),
                 _figure_block(run, section, tmp_path)]
    (tmp_path / "refs.bib").write_text("\n".join(
        f"@misc{{{key}, title={{Title of {key}}}, author={{Author, A.}}, year={{2025}}}}"
        for key in CITATION_KEYS), encoding="utf-8")
    style = install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text("\n".join([
        r"\documentclass[11pt]{article}", rf"\usepackage[review]{{{style}}}",
        r"\title{Sections}", r"\author{A. Author}", r"\begin{document}", r"\maketitle",
        *body, r"\bibliography{refs}", r"\end{document}"]), encoding="utf-8")
    pdf = compile_pdf(tex)
    assert pdf is not None
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "U+0663" in text and "4.72 [4.13, 5.28]" in text and "L3_H#" in text
    # every \ref and \citep resolved (the labels and citation keys exist)
    assert "undefined on input line" not in tex.with_suffix(".log").read_text(errors="replace")
