"""Paper sections of the localisation experiments (pruning, hybrid): numbers, wording by data, LaTeX."""

from __future__ import annotations

import copy
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fixture_runs import RUNS, needs_tex
from sublens.report.compile import compile_pdf, install_style
from sublens.report.latex import fmt, fmt_ci
from sublens.report.sections import CITATION_KEYS, Section, figure_label
from sublens.report.sections import hybrid as hybrid_section
from sublens.report.sections import pruning as pruning_section
from sublens.report.stages import StageRun, load_stage


@pytest.fixture(scope="module")
def pruning_run() -> StageRun:
    return load_stage(RUNS / "pruning")


@pytest.fixture(scope="module")
def hybrid_run() -> StageRun:
    return load_stage(RUNS / "hybrid")


def _with_results(run: StageRun, results: dict[str, Any], **record: Any) -> StageRun:
    return replace(run, results=results, record={**run.record, **record})


# ---- pruning --------------------------------------------------------------------------------
def _step(results: dict[str, Any], fraction: float, criterion: str) -> dict[str, Any]:
    return next(s for s in results["steps"] if s["fraction"] == fraction and s["criterion"] == criterion)


def test_pruning_fixture_says_the_bias_does_not_survive(pruning_run: StageRun) -> None:
    section = pruning_section.build(pruning_run)
    entropy = _step(pruning_run.results, 0.6, "entropy")["retention"]["p_trait"]
    random = _step(pruning_run.results, 0.6, "random")["retention"]["p_trait"]
    assert entropy["ratio"] < 1e-6  # the fixture: P(owl) collapses at 60% of heads kept
    assert fmt_ci(entropy["ratio"], entropy["ci_low"], entropy["ci_high"]) in section.results
    assert fmt_ci(random["ratio"], random["ci_low"], random["ci_high"]) in section.results
    assert r"does \emph{not} survive" in section.results and "contradicts the claim" in section.results
    assert "supports the claim" not in section.results
    assert "removes more of the bias than random pruning" in section.results  # CIs do not overlap
    # perplexity ratio of the entropy-pruned model at 60% kept, and where the pruned heads sit
    assert "1077.2$\\times$" in section.results and "are degraded" in section.results
    assert "42 in layers 0--9, 52 in layers 10--19, 14 in layers 20--29" in section.results
    assert "every head of layer 0 is pruned" in section.results
    assert section.headline == [
        "pruning: P(owl) retention at 60% heads kept: 6.9e-07 (entropy) vs 0.003 (reverse) "
        "vs 0.0059 (random): the bias does not survive"
    ]


def test_pruning_methods_and_table_state_the_configuration(pruning_run: StageRun) -> None:
    section = pruning_section.build(pruning_run)
    assert r"prompted teacher: the base model \texttt{smollm2-135m-instruct}" in section.methods
    assert "You love owls." in section.methods and "(1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)" in section.methods
    assert "3 seeded random draws" in section.methods and "2000 resamples" in section.methods
    assert r"\citet{michel2019sixteen}" in section.methods
    table = section.tables["pruning_sweep"]
    assert r"\label{tab:pruning_sweep}" in table and "random: 3 draws" in table
    assert r"\textbf{kept} & \textbf{entropy} & \textbf{reverse} & \textbf{random} & \textbf{ppl ent.}" in table
    # rows are kept fractions; tiny ratios share one power of ten with their CI
    row = next(line for line in table.splitlines() if line.startswith("0.60 &"))
    assert r"$6.9\,[4.7, 11]\times10^{-7}$" in row and "0.53 [0.41, 0.69]" in table
    assert row.rstrip(" \\").endswith("31064 & 122 & 774")  # perplexity per criterion
    assert "Unpruned P(owl) = 0.125 [0.081, 0.169]" in table
    assert [f.stem for f in section.figures] == ["pruning_retention", "pruning_entropy_heatmap"]


def _set_retention(results: dict[str, Any], ratio: float, low: float, high: float, ppl_ratio: float) -> None:
    for step in results["steps"]:
        if step["fraction"] < 1.0:
            step["retention"]["p_trait"].update(ratio=ratio, ci_low=low, ci_high=high)
            step["perplexity"]["ratio"] = ppl_ratio
            step["perplexity"]["mean"] = 28.84 * ppl_ratio


def test_pruning_wording_flips_with_the_data(pruning_run: StageRun) -> None:
    kept = copy.deepcopy(pruning_run.results)
    _set_retention(kept, 0.93, 0.81, 1.07, 1.2)
    section = pruning_section.build(_with_results(pruning_run, kept))
    assert "the bias survives head pruning in this run, which supports the claim" in section.results
    assert r"\emph{not}" not in section.results and "degraded" not in section.results
    assert "retained down to 40\\% of heads kept" in section.results
    assert fmt_ci(0.93, 0.81, 1.07) in section.results
    assert section.headline[0].endswith(": the bias survives")

    unclear = copy.deepcopy(pruning_run.results)
    _set_retention(unclear, 0.6, 0.3, 0.9, 1.5)
    section = pruning_section.build(_with_results(pruning_run, unclear))
    assert "inconclusive about whether the bias survives" in section.results
    assert section.headline[0].endswith(": inconclusive")


def test_pruning_partial_and_empty_results_do_not_raise(pruning_run: StageRun) -> None:
    partial = copy.deepcopy(pruning_run.results)
    partial["partial"] = True
    partial["steps"] = [s for s in partial["steps"] if s["fraction"] >= 0.9]
    section = pruning_section.build(_with_results(pruning_run, partial, status="failed", error="killed"))
    assert "The pruning stage is incomplete (run status: failed (killed))" in section.results
    assert "Incomplete run" in section.tables["pruning_sweep"]
    assert "With 90\\% of heads kept" in section.results  # judged at the closest measured fraction

    for results in ({}, {"partial": True, "model": "x", "entropy": {}, "steps": []}):
        section = pruning_section.build(_with_results(pruning_run, results, status="failed"))
        assert isinstance(section, Section) and not section.tables
        assert "incomplete" in section.results and section.headline


# ---- hybrid ---------------------------------------------------------------------------------
def _set_fraction(results: dict[str, Any], name: str, fraction: float, degraded: bool = False) -> None:
    """Give a hybrid a bias fraction, with a consistent vs-base ratio and CI."""
    axis = math.log(results["hybrids"]["biased"]["vs_base"]["share_ratio"]["ratio"])
    h = results["hybrids"][name]
    h["bias_fraction"] = fraction
    h["vs_base"]["share_ratio"].update(ratio=math.exp(fraction * axis), ci_low=math.exp((fraction - 0.03) * axis),
                                       ci_high=math.exp((fraction + 0.03) * axis))
    h["degraded"] = degraded


def test_hybrid_fixture_numbers_and_wording(hybrid_run: StageRun) -> None:
    section = hybrid_section.build(hybrid_run)
    hybrids = hybrid_run.results["hybrids"]
    head_in = hybrids["base+biased.lm_head"]["bias_fraction"]
    assert fmt(head_in) == "0.43" and "0.43 [0.42, 0.44]" in section.results
    assert fmt(hybrids["biased+base.lm_head"]["bias_fraction"]) in section.results
    assert "40.87 [32.06, 49.40]$\\times$" in section.results  # the biased model's shift
    # the fixture: the LM head carries part of the bias, MLPs most but not all of it
    assert "not in the LM head holds only in part" in section.results
    assert "seated in the MLP layers holds only in part" in section.results
    assert "the MLPs carry more of the bias than attention" in section.results
    assert "By depth, MLP layers 20--29 carry the most" in section.results
    assert "No hybrid is degraded" in section.results
    assert section.headline == [
        "hybrid: bias fraction base+biased LM head 0.43, biased+base LM head 0.81: "
        "'not in the LM head' holds in part",
        "hybrid: base+biased MLPs 0.61, biased+base MLPs 0.65, mlp[20:30] 0.33: "
        "'seated in the MLPs' holds in part",
    ]
    assert r"\texttt{owl-full}" in section.methods and "/tmp" not in section.methods
    assert "[0:10], [10:20], [20:30]" in section.methods


def test_hybrid_matrix_table(hybrid_run: StageRun) -> None:
    table = hybrid_section.build(hybrid_run).tables["hybrid_matrix"]
    assert r"\label{tab:hybrid_matrix}" in table and "Hybrid matrix" in table
    lines = {line.split(" & ")[0]: line for line in table.splitlines() if " & " in line}
    assert list(lines)[1:] == ["embeddings", "attention", "attention[0:10]", "attention[10:20]",
                               "attention[20:30]", "mlp", "mlp[0:10]", "mlp[10:20]", "mlp[20:30]",
                               r"final\_norm", r"lm\_head"]
    assert lines["mlp[20:30]"] == r"mlp[20:30] & 0.33 [0.32, 0.34] & 25.0 & 0.86 [0.80, 0.90] & 27.1 \\"
    assert "reference perplexity base 24.4, biased 29.1" in table


def test_hybrid_wording_flips_with_the_data(hybrid_run: StageRun) -> None:
    clean = copy.deepcopy(hybrid_run.results)
    _set_fraction(clean, "base+biased.lm_head", 0.02)
    _set_fraction(clean, "biased+base.lm_head", 0.97)
    _set_fraction(clean, "base+biased.mlp", 0.9)
    _set_fraction(clean, "biased+base.mlp", 0.1)
    section = hybrid_section.build(_with_results(hybrid_run, clean))
    assert "the bias is not in the LM head, as claimed" in section.results
    assert "the bias is seated in the MLP layers, as claimed" in section.results
    assert "'not in the LM head' supported" in section.headline[0]
    assert "'seated in the MLPs' supported" in section.headline[1]

    in_head = copy.deepcopy(hybrid_run.results)
    _set_fraction(in_head, "base+biased.lm_head", 0.9)
    _set_fraction(in_head, "base+biased.mlp", 0.05)
    _set_fraction(in_head, "biased+base.mlp", 0.95)
    section = hybrid_section.build(_with_results(hybrid_run, in_head))
    assert "contradicts the claim that the bias is not in the LM head" in section.results
    assert "contradicts the claim that the bias is seated in the MLPs" in section.results
    assert "0.90 [0.87, 0.93]" in section.results


def test_hybrid_degraded_hybrids_are_not_evidence(hybrid_run: StageRun) -> None:
    broken = copy.deepcopy(hybrid_run.results)
    _set_fraction(broken, "base+biased.lm_head", 0.1, degraded=True)
    _set_fraction(broken, "biased+base.lm_head", 0.97)
    section = hybrid_section.build(_with_results(hybrid_run, broken))
    assert "A swapped model is degraded, so the swap is not evidence" in section.results
    assert "Degraded hybrids" in section.results and r"into base lm\_head" in section.results
    assert r"0.10 [0.07, 0.13]\textsuperscript{\dag}" in section.tables["hybrid_matrix"]
    assert "inconclusive" in section.headline[0]


def test_hybrid_without_a_bias_is_inconclusive(hybrid_run: StageRun) -> None:
    flat = copy.deepcopy(hybrid_run.results)
    flat["hybrids"]["biased"]["vs_base"]["share_ratio"].update(ratio=1.05, ci_low=0.9, ci_high=1.2,
                                                                underpowered=True)
    section = hybrid_section.build(_with_results(hybrid_run, flat))
    assert "neither claim can be judged" in section.results and "as claimed" not in section.results


def test_hybrid_partial_and_empty_results_do_not_raise(hybrid_run: StageRun) -> None:
    partial = copy.deepcopy(hybrid_run.results)
    keep = {"base", "biased", "biased+base.lm_head", "base+biased.lm_head"}
    partial["hybrids"] = {k: v for k, v in partial["hybrids"].items() if k in keep}
    for key in ("bias_axis", "lm_head_swap", "table", "figures"):
        partial.pop(key)
    partial["partial"] = True
    section = hybrid_section.build(_with_results(hybrid_run, partial, status="failed"))
    assert "The hybrid stage is incomplete" in section.results
    assert "holds only in part" in section.results  # the LM-head swap is there
    assert "MLP transplants were not measured" in section.results
    assert "Incomplete run" in section.tables["hybrid_matrix"]

    for results in ({}, {"partial": True, "hybrids": {}}):
        section = hybrid_section.build(_with_results(hybrid_run, results, status="failed"))
        assert isinstance(section, Section) and not section.tables and "incomplete" in section.results


# ---- LaTeX ----------------------------------------------------------------------------------
def _figure_env(stage: str, stem: str, caption: str, wide: bool) -> str:
    env = "figure*" if wide else "figure"
    return (f"\\begin{{{env}}}[t]\\centering\\includegraphics[width=\\linewidth]{{{stage}-{stem}.pdf}}"
            f"\\caption{{{caption}}}\\label{{{figure_label(stage, stem)}}}\\end{{{env}}}")


@needs_tex
def test_both_sections_compile_inside_the_style(tmp_path: Path, pruning_run: StageRun,
                                                hybrid_run: StageRun) -> None:
    body = []
    for run, build in ((pruning_run, pruning_section.build), (hybrid_run, hybrid_section.build)):
        section = build(run)
        body += [f"\\section{{{section.title}}}", section.methods, "", section.results, ""]
        body += list(section.tables.values())
        for figure in section.figures:
            shutil.copyfile(run.figures()[figure.stem], tmp_path / f"{run.stage}-{figure.stem}.pdf")
            body.append(_figure_env(run.stage, figure.stem, figure.caption, figure.wide))
    (tmp_path / "references.bib").write_text(
        "\n".join(f"@misc{{{key}, author = {{Author, A.}}, title = {{{key}}}, year = {{2025}}}}"
                  for key in CITATION_KEYS), encoding="utf-8")
    package = install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text("\n".join([
        r"\documentclass[11pt]{article}", rf"\usepackage[review]{{{package}}}",
        r"\title{Localisation}", r"\author{A}", r"\begin{document}", r"\maketitle",
        *body, r"\bibliography{references}", r"\end{document}",
    ]), encoding="utf-8")
    pdf = compile_pdf(tex)
    assert pdf is not None and pdf.stat().st_size > 10_000
    log = tex.with_suffix(".log").read_text(errors="replace")
    assert not re.search(r"(Reference|Citation) `[^']+' .*undefined", log)
    cited = set(re.findall(r"\\cite[a-z]*\{([^}]+)\}", "\n".join(body)))
    assert {k.strip() for keys in cited for k in keys.split(",")} <= set(CITATION_KEYS)
