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
from sublens.claims import Decision, Verdict
from sublens.report.compile import compile_pdf, install_style
from sublens.report.latex import fmt, fmt_ci, fmt_fixed_ci
from sublens.report.sections import CITATION_KEYS, Section, figure_label
from sublens.report.sections import hybrid as hybrid_section
from sublens.report.sections import pruning as pruning_section
from sublens.report.stages import StageRun, load_stage
from sublens.report.verdicts import decisions_latex


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


def test_pruning_fixture_without_base_control_is_inconclusive(pruning_run: StageRun) -> None:
    """The recorded run predates the pruned-base control: it is described, never judged."""
    section = pruning_section.build(pruning_run)
    entropy = _step(pruning_run.results, 0.6, "entropy")["retention"]["p_trait"]
    assert entropy["ratio"] < 1e-6  # the fixture: P(owl) of the pruned biased model collapses ...
    assert "entropy $1077\\times$" in section.results  # ... and so does the model (perplexity x1077)
    assert fmt_ci(entropy["ratio"], entropy["ci_low"], entropy["ci_high"]) in section.results
    assert "the biased model's own P(owl) retention (pruned / unpruned, no base control)" in section.results
    assert section.results.count(r"\textbf{inconclusive") == 2
    assert "the pruned-base control was not measured" in section.results
    assert "To settle both: rerun the pruning stage with the unbiased base model" in section.results
    assert section.results.count("the pruned-base control was not measured") == 1  # one reason, said once
    for word in ("supported", "contradicted", "does \\emph{not} survive", "survives head pruning"):
        assert word not in section.results
    # the degradation bound, per criterion
    assert (
        "entropy pruning exceeds it already at the first pruned fraction (90\\% kept); reverse and "
        "random pruning stay inside it down to 90\\% of heads kept"
    ) in section.results
    assert "42 in layers 0--9, 52 in layers 10--19, 14 in layers 20--29" in section.results
    assert "every head of layer 0 is pruned" in section.results
    assert len(section.headline) == 2
    assert all(
        line.startswith("pruning: ") and ": inconclusive (the pruned-base control was not measured" in line
        for line in section.headline
    )


def test_pruning_methods_and_table_state_the_configuration(pruning_run: StageRun) -> None:
    section = pruning_section.build(pruning_run)
    assert "prompted teacher: the base model SmolLM2-135M-Instruct with" in section.methods
    assert "You love owls." in section.methods and "(1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)" in section.methods
    assert "3 seeded random draws" in section.methods and "no pruned-base control" in section.methods
    assert r"\citet{michel2019sixteen}" in section.methods and r"exceeds $1.5\times$" in section.methods
    table = section.tables["pruning_sweep"]
    assert r"\label{tab:pruning_sweep}" in table and "random: 3 draws" in table
    assert r"\textbf{kept} & \textbf{entropy} & \textbf{reverse} & \textbf{random} & \textbf{ppl ent.}" in table
    assert "no pruned-base control" in table
    # rows are kept fractions; tiny ratios share one power of ten with their CI; no zero-width CI
    row = next(line for line in table.splitlines() if line.startswith("0.60 &"))
    assert r"$6.9\,[4.7, 11]\times10^{-7}$" in row and "0.53 [0.41, 0.69]" in table
    assert row.rstrip(" \\").endswith(r"1077$^\dagger$ & 4.2$^\dagger$ & 26.8$^\dagger$")  # ppl x unpruned
    assert "[1.00, 1.00]" not in table
    assert "Re-measured in this stage: unpruned P(owl) = 12.5 [8.1, 16.9]\\%" in table
    assert [f.stem for f in section.figures] == ["pruning_retention", "pruning_entropy_heatmap"]


def _with_base_control(
    results: dict[str, Any], logs: list[float], ppl_ratio: float, random_logs: list[float]
) -> dict[str, Any]:
    """The fixture's 0.6 cells with a (synthetic) pruned-base control, and the unpruned base
    model's measurement: owl's share a fifth of the biased model's per question (a x5 bias)."""
    out = copy.deepcopy(results)
    out["base_unpruned"] = copy.deepcopy(out["unpruned"])
    per_question = out["base_unpruned"]["preference"]["probability"]["per_question"]
    per_question["share"] = [v / 5 * (1 + 0.01 * (i % 3)) for i, v in enumerate(per_question["share"])]
    for step in out["steps"]:
        if step["fraction"] != 0.6:
            continue
        n = step["n_draws"]
        mean = sum(logs) / len(logs)
        entry = {"ratio": math.exp(mean), "ci_low": None, "ci_high": None, "log_ratios": logs}
        step["controlled"] = {"panel_share": entry, "p_trait": entry}
        step["perplexity"].update(ratio=ppl_ratio, per_draw_ratio=[ppl_ratio] * n)
        step["base"] = {
            "perplexity": {"ratio": 1.1, "per_draw_ratio": [1.1] * n},
            "retention": {"p_trait": {"ratio": 0.5, "ci_low": 0.4, "ci_high": 0.6}},
        }
        if step["criterion"] == "random":
            step["n_draws"] = len(random_logs)
            step["perplexity"]["per_draw_ratio"] = [ppl_ratio] * len(random_logs)
            step["base"]["perplexity"]["per_draw_ratio"] = [1.1] * len(random_logs)
            step["controlled_per_draw"] = {"panel_share": random_logs}
    return out


LOGS = [0.02, -0.03, 0.01, 0.04, -0.02, 0.0]  # base-controlled log retention per question: ~1


def test_pruning_wording_comes_from_the_decisions(pruning_run: StageRun) -> None:
    results = _with_base_control(pruning_run.results, LOGS, 1.2, [-0.5 - 0.01 * i for i in range(80)])
    section = pruning_section.build(_with_results(pruning_run, results))
    survival, rank = pruning_section.decisions(results, pruning_run.config)
    assert survival.verdict.value == "supported" and rank.verdict.value == "supported"
    assert section.results.count(r"\textbf{supported}") == 2
    assert "unit of inference: the question ($n$ = 6)" in section.results
    assert "unit of inference: the draw ($n$ = 80)" in section.results
    assert r"margin $\times$1.25" in section.results and "one-sample $t$-test on the per-question" in section.results
    assert "Monte Carlo rank test" in section.results and "80 of 80 draws retain less" in section.results
    assert section.headline[0].startswith(
        "pruning: The bias survives pruning 40% of the attention heads (entropy criterion): supported"
    )

    degraded = _with_base_control(pruning_run.results, LOGS, 2.0, [-0.5] * 3)
    section = pruning_section.build(_with_results(pruning_run, degraded))
    assert section.results.count(r"\textbf{inconclusive") == 2
    assert r"degraded beyond $\times$1.5 perplexity" in section.results
    assert "supported" not in section.results

    wide = _with_base_control(pruning_run.results, [0.3, -0.4, 0.5, -0.2, 0.1, 0.6], 1.2, [-0.5])
    section = pruning_section.build(_with_results(pruning_run, wide))
    survival, rank = pruning_section.decisions(wide, pruning_run.config)
    assert survival.verdict.value == "inconclusive" and "CI neither excludes" in survival.reason
    # what would settle it, said once: in the power line (not again after "To settle it")
    assert "questions would detect $\\times$1.25" in section.results and "To settle it: about" not in section.results
    assert rank.verdict.value == "inconclusive" and "too few draws" in rank.reason


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
    h["vs_base"]["share_ratio"].update(
        ratio=math.exp(fraction * axis),
        ci_low=math.exp((fraction - 0.03) * axis),
        ci_high=math.exp((fraction + 0.03) * axis),
    )
    h["degraded"] = degraded


def _decision(run: StageRun, name: str) -> Decision:
    return next(d for d in hybrid_section.decisions(run.results, run.config.get("claims")) if d.claim.name == name)


def test_hybrid_fixture_numbers_and_verdicts(hybrid_run: StageRun) -> None:
    section = hybrid_section.build(hybrid_run)
    hybrids = hybrid_run.results["hybrids"]
    head_in = hybrids["base+biased.lm_head"]["bias_fraction"]
    assert fmt(head_in) == "0.43" and "0.43 [0.42, 0.44]" in section.results
    assert fmt(hybrids["biased+base.lm_head"]["bias_fraction"]) in section.results
    assert "40.87 [32.06, 49.40]$\\times$" in section.results  # the biased model's shift
    assert "No hybrid is degraded" in section.results
    # every verdict comes from sublens.claims and is printed with its estimand, unit, test, margin
    found = hybrid_section.decisions(hybrid_run.results, hybrid_run.config.get("claims"))
    assert [d.claim.name for d in found] == ["localisation.lm_head", "localisation.transplant", "localisation.patching"]
    assert all(d.claim.unit == "question" and d.claim.family == "hybrid" for d in found)
    for d in found:
        assert decisions_latex([d], test_stated=True) in section.results
        assert d.sentence().count("Estimand:") == 1 and "margin ×1.25" in d.sentence()
    head, transplant, patching = found
    assert head.claim.prediction == "none" and head.verdict is Verdict.CONTRADICTED  # the head moves it
    assert transplant.verdict is Verdict.SUPPORTED  # MLPs move more than attention in this fixture
    # the recorded run predates activation patching
    assert patching.verdict is Verdict.INCONCLUSIVE and patching.reason.startswith("not measured")
    assert "hybrid_patching" not in section.tables
    assert len(section.headline) == 3
    for line, d in zip(section.headline, found, strict=True):
        assert line.startswith("hybrid: ") and f"{d.claim.name} {d.verdict.value}" in line
    assert "the biased model owl-full (a local fine-tuned checkpoint)" in section.methods
    assert "/tmp" not in section.methods
    assert "per depth range (layers 0--9, 10--19 and 20--29)" in section.methods
    assert "the embeddings, attention, MLP, final norm and LM head" in section.methods
    assert "localisation" not in section.methods + section.results  # claims in words, not by name
    # the test, alpha and margin are the same for the three claims: stated once, in the methods
    assert r"margin $\times$" not in section.results and r"$\alpha = 0.05$" in section.methods


def test_hybrid_matrix_table(hybrid_run: StageRun) -> None:
    table = hybrid_section.build(hybrid_run).tables["hybrid_matrix"]
    assert r"\label{tab:hybrid_matrix}" in table and "Hybrid matrix" in table
    lines = {line.split(" & ")[0]: line for line in table.splitlines() if " & " in line}
    assert list(lines)[1:] == [
        "embeddings",
        "attention",
        "attention, layers 0--9",
        "attention, layers 10--19",
        "attention, layers 20--29",
        "MLP",
        "MLP, layers 0--9",
        "MLP, layers 10--19",
        "MLP, layers 20--29",
        "final norm",
        "LM head",
    ]
    assert lines["MLP, layers 20--29"] == r"MLP, layers 20--29 & 0.33 [0.32, 0.34] & 25.0 & 0.86 [0.80, 0.90] & 27.1 \\"
    # every fraction with two decimals, a near-zero one too (never a power of ten beside 0.33)
    fractions = [cell for line in list(lines.values())[1:] for cell in line.split(" & ")[1::2]]
    assert all(re.fullmatch(r"(\$-\$)?\d\.\d\d \[.*\]", f.split(r"\textsuperscript")[0]) for f in fractions), fractions
    assert "reference perplexity, re-measured in this stage on 510 tokens: base 24.4, biased 29.1" in table


def _set_shares(results: dict[str, Any], name: str, like: str, log_noise: list[float]) -> None:
    """Give a hybrid the per-question shares of `like` times exp(noise)."""
    reference = results["hybrids"][like]["probability"]["per_question"]["share"]
    shares = [v * math.exp(e) for v, e in zip(reference, log_noise, strict=True)]
    results["hybrids"][name]["probability"]["per_question"]["share"] = shares


SMALL = [0.02, -0.01, 0.015, -0.02, 0.0, 0.01, -0.015, 0.005, -0.005, 0.02, -0.01, 0.0]
WIDE = [0.6, -0.5, 0.4, -0.7, 0.2, -0.3, 0.5, -0.6, 0.3, -0.2, 0.45, -0.15]


def test_hybrid_verdicts_follow_the_data(hybrid_run: StageRun) -> None:
    clean = copy.deepcopy(hybrid_run.results)
    _set_shares(clean, "base+biased.lm_head", "base", SMALL)  # the biased head brings nothing
    _set_shares(clean, "biased+base.lm_head", "biased", SMALL[::-1])  # the base head removes nothing
    run = _with_results(hybrid_run, clean)
    head = _decision(run, "localisation.lm_head")
    assert head.verdict is Verdict.SUPPORTED and "inside" in head.reason
    assert decisions_latex([head], test_stated=True) in hybrid_section.build(run).results

    wide = copy.deepcopy(hybrid_run.results)
    _set_shares(wide, "base+biased.lm_head", "base", WIDE)
    _set_shares(wide, "biased+base.lm_head", "biased", [-e for e in WIDE])
    head = _decision(_with_results(hybrid_run, wide), "localisation.lm_head")
    assert head.estimate is not None and head.estimate.ci_low is not None and head.estimate.ci_high is not None
    assert head.estimate.ci_low < 1 < head.estimate.ci_high and head.estimate.ci_high > 1.25
    assert head.verdict is Verdict.INCONCLUSIVE and head.settle  # says what would settle it

    same = copy.deepcopy(hybrid_run.results)  # MLP and attention transplants move the bias alike
    for direction, like in (("base+biased", "base"), ("biased+base", "biased")):
        _set_shares(same, f"{direction}.mlp", like, SMALL)
        _set_shares(same, f"{direction}.attention", like, SMALL[::-1])
    transplant = _decision(_with_results(hybrid_run, same), "localisation.transplant")
    assert transplant.verdict is Verdict.EQUIVALENT


def test_hybrid_degraded_hybrids_are_not_evidence(hybrid_run: StageRun) -> None:
    broken = copy.deepcopy(hybrid_run.results)
    _set_fraction(broken, "base+biased.lm_head", 0.1, degraded=True)
    _set_fraction(broken, "biased+base.lm_head", 0.97)
    run = _with_results(hybrid_run, broken)
    section = hybrid_section.build(run)
    head = _decision(run, "localisation.lm_head")
    assert head.verdict is Verdict.INCONCLUSIVE and "degraded" in head.reason
    assert "Degraded hybrids" in section.results and "base + biased LM head" in section.results
    assert r"0.10 [0.07, 0.13]\textsuperscript{\dag}" in section.tables["hybrid_matrix"]
    assert "localisation.lm_head inconclusive" in section.headline[0]


def test_not_in_the_lm_head_needs_a_bias_large_against_the_margin(hybrid_run: StageRun) -> None:
    """The same flat LM-head effect that supports "not in the LM head" against the fixture's
    bias is inconclusive against a bias of x1.15 [1.05, 1.26]: an LM-head effect inside x1.25
    could then be all of it. The transplant claim (not a null) is untouched."""
    clean = copy.deepcopy(hybrid_run.results)
    _set_shares(clean, "base+biased.lm_head", "base", SMALL)
    _set_shares(clean, "biased+base.lm_head", "biased", SMALL[::-1])
    axis = clean["hybrids"]["biased"]["vs_base"]["share_ratio"]
    assert axis["ci_low"] > 1.25**2  # the fixture's bias: large against the margin
    assert _decision(_with_results(hybrid_run, clean), "localisation.lm_head").verdict is Verdict.SUPPORTED
    axis.update(ratio=1.15, ci_low=1.05, ci_high=1.26, underpowered=False)
    run = _with_results(hybrid_run, clean)
    head = _decision(run, "localisation.lm_head")
    assert head.verdict is Verdict.INCONCLUSIVE and head.estimate is not None
    assert "×1.15 [1.05, 1.26], is not shown beyond ×1.56 (the margin squared)" in head.reason
    assert "the margin squared" in head.settle
    assert "localisation.lm_head inconclusive" in hybrid_section.build(run).headline[0]


def test_hybrid_without_a_bias_is_inconclusive(hybrid_run: StageRun) -> None:
    flat = copy.deepcopy(hybrid_run.results)
    flat["hybrids"]["biased"]["vs_base"]["share_ratio"].update(ratio=1.05, ci_low=0.9, ci_high=1.2, underpowered=True)
    run = _with_results(hybrid_run, flat)
    for d in hybrid_section.decisions(run.results)[:2]:
        assert d.verdict is Verdict.INCONCLUSIVE and "no bias shown to locate" in d.reason
    assert "supported" not in " ".join(hybrid_section.build(run).headline)


def test_hybrid_partial_and_empty_results_do_not_raise(hybrid_run: StageRun) -> None:
    partial = copy.deepcopy(hybrid_run.results)
    keep = {"base", "biased", "biased+base.lm_head", "base+biased.lm_head"}
    partial["hybrids"] = {k: v for k, v in partial["hybrids"].items() if k in keep}
    for key in ("bias_axis", "lm_head_swap", "table", "figures"):
        partial.pop(key)
    partial["partial"] = True
    run = _with_results(hybrid_run, partial, status="failed")
    section = hybrid_section.build(run)
    assert "The hybrid stage is incomplete" in section.results
    head, transplant, _ = hybrid_section.decisions(run.results)
    assert head.verdict is Verdict.CONTRADICTED  # the LM-head swap is there
    assert transplant.verdict is Verdict.INCONCLUSIVE and transplant.reason.startswith("not measured")
    assert "Incomplete run" in section.tables["hybrid_matrix"]

    for results in ({}, {"partial": True, "hybrids": {}}):
        section = hybrid_section.build(_with_results(hybrid_run, results, status="failed"))
        assert isinstance(section, Section) and not section.tables and "incomplete" in section.results


def _with_patching(results: dict[str, Any], mlp_shift: float) -> dict[str, Any]:
    """A patching record in the experiment's schema: MLP patches move the logit difference by
    `mlp_shift` (of a gap of 2) more than attention patches, with question-level noise."""
    n = 12
    base = [0.1 * (i % 3) for i in range(n)]
    biased = [b + 2.0 + 0.05 * (i % 2) for i, b in enumerate(base)]
    noise = [0.03 * ((i * 7) % 5 - 2) for i in range(n)]
    labels = ["L0-9", "L10-19", "L20-29", "all"]
    into_base = {
        "mlp": {lab: [b + 0.5 + mlp_shift + e for b, e in zip(base, noise, strict=True)] for lab in labels},
        "attention": {lab: [b + 0.5 - e for b, e in zip(base, noise, strict=True)] for lab in labels},
    }
    into_biased = {
        "mlp": {lab: [b - 0.5 - mlp_shift - e for b, e in zip(biased, noise, strict=True)] for lab in labels},
        "attention": {lab: [b - 0.5 + e for b, e in zip(biased, noise, strict=True)] for lab in labels},
    }
    sweep = {
        "ranges": [[0, 10], [10, 20], [20, 30], [0, 30]],
        "labels": labels,
        "base": base,
        "biased": biased,
        "patched": {"into_base": into_base, "into_biased": into_biased},
    }
    from sublens.patching import gap_fractions

    record = {
        "metric": "logit difference ' owl' - ' dog' (first tokens)",
        "n_questions": n,
        "tokens": {"target": ["owl", 1, " owl"], "foil": ["dog", 2, " dog"]},
        "ranges": sweep["ranges"],
        "labels": labels,
        "components": ["mlp", "attention"],
        "directions": ["into_base", "into_biased"],
        "logit_difference": {"base": base, "biased": biased, "patched": sweep["patched"]},
        **gap_fractions(sweep),
    }
    return {**copy.deepcopy(results), "patching": record}


def test_hybrid_patching_table_and_claim(hybrid_run: StageRun) -> None:
    run = _with_results(hybrid_run, _with_patching(hybrid_run.results, 0.8))
    section = hybrid_section.build(run)
    table = section.tables["hybrid_patching"]
    assert r"\label{tab:hybrid_patching}" in table and "Holm p" in table
    assert r"\ref{tab:hybrid_patching}" in section.results and "Activation patching" in section.methods
    # the measure in words, defined once, from the tokens (the record's metric string has reprs)
    assert (
        "owl$-$dog logit difference: the logit of the first token of ``owl'' minus that of ``dog''" in section.methods
    )
    assert "the biased model's owl$-$dog logit difference exceeds" in section.results
    assert "(first tokens)" not in section.methods + section.results
    patching = _decision(run, "localisation.patching")
    assert patching.verdict is Verdict.SUPPORTED
    patched = run.results["patching"]["logit_difference"]["patched"]
    by_hand = [
        ((a - b) - (c - d)) / 2
        for a, b, c, d in zip(
            patched["into_base"]["mlp"]["all"],
            patched["into_base"]["attention"]["all"],
            patched["into_biased"]["mlp"]["all"],
            patched["into_biased"]["attention"]["all"],
            strict=True,
        )
    ]
    assert patching.estimate is not None
    assert patching.estimate.ratio == pytest.approx(math.exp(sum(by_hand) / len(by_hand)))
    assert decisions_latex([patching], test_stated=True) in section.results
    cell = next(
        c
        for c in run.results["patching"]["cells"]
        if (c["direction"], c["component"], c["layers"]) == ("into_base", "mlp", "all")
    )
    assert fmt_fixed_ci(cell["fraction"], cell["ci_low"], cell["ci_high"]) in table
    assert table.startswith(r"\begin{table*}")  # both directions: six columns need the page width
    same = _decision(_with_results(hybrid_run, _with_patching(hybrid_run.results, 0.0)), "localisation.patching")
    assert same.verdict is Verdict.EQUIVALENT


# ---- LaTeX ----------------------------------------------------------------------------------
def _figure_env(stage: str, stem: str, caption: str, wide: bool) -> str:
    env = "figure*" if wide else "figure"
    return (
        f"\\begin{{{env}}}[t]\\centering\\includegraphics[width=\\linewidth]{{{stage}-{stem}.pdf}}"
        f"\\caption{{{caption}}}\\label{{{figure_label(stage, stem)}}}\\end{{{env}}}"
    )


@needs_tex
def test_both_sections_compile_inside_the_style(tmp_path: Path, pruning_run: StageRun, hybrid_run: StageRun) -> None:
    body = []
    for run, build in ((pruning_run, pruning_section.build), (hybrid_run, hybrid_section.build)):
        section = build(run)
        body += [f"\\section{{{section.title}}}", section.methods, "", section.results, ""]
        body += list(section.tables.values())
        for figure in section.figures:
            shutil.copyfile(run.figures()[figure.stem], tmp_path / f"{run.stage}-{figure.stem}.pdf")
            body.append(_figure_env(run.stage, figure.stem, figure.caption, figure.wide))
    (tmp_path / "references.bib").write_text(
        "\n".join(
            f"@misc{{{key}, author = {{Author, A.}}, title = {{{key}}}, year = {{2025}}}}" for key in CITATION_KEYS
        ),
        encoding="utf-8",
    )
    package = install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text(
        "\n".join(
            [
                r"\documentclass[11pt]{article}",
                rf"\usepackage[review]{{{package}}}",
                r"\title{Localisation}",
                r"\author{A}",
                r"\begin{document}",
                r"\maketitle",
                *body,
                r"\bibliography{references}",
                r"\end{document}",
            ]
        ),
        encoding="utf-8",
    )
    pdf = compile_pdf(tex)
    assert pdf is not None and pdf.stat().st_size > 10_000
    log = tex.with_suffix(".log").read_text(errors="replace")
    assert not re.search(r"(Reference|Citation) `[^']+' .*undefined", log)
    cited = set(re.findall(r"\\cite[a-z]*\{([^}]+)\}", "\n".join(body)))
    assert {k.strip() for keys in cited for k in keys.split(",")} <= set(CITATION_KEYS)


def test_an_undefined_answer_rate_retention_names_the_model_that_never_named_the_trait() -> None:
    from sublens.experiments.pruning.results import ArmRates, ControlledRateRetention
    from sublens.report.sections.pruning.results_prose import _undefined_rate

    rate = ControlledRateRetention(
        rates=ArmRates(biased=0.1, biased_unpruned=0.2, base=0.0, base_unpruned=0.0),
        n_questions=4,
        ratio=None,
        ci_low=None,
        ci_high=None,
    )
    text = _undefined_rate(rate, "owl")
    assert text == (
        "undefined: no sampled answer of the pruned base model or the unpruned base model named "
        "the owl, so a denominator is 0"
    )
    assert "(" not in text
