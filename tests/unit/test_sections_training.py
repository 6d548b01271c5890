"""Paper sections of the training stages (teacher, subliminal, distill), built from real run
directories: the numbers of results.json appear formatted, the wording follows the data, partial
runs say so, and everything compiles inside our ACL style."""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fixture_runs import RUNS, needs_tex
from sublens.report.compile import compile_pdf, install_style
from sublens.report.latex import fmt_ci
from sublens.report.sections import CITATION_KEYS, Section, builder, figure_label
from sublens.report.sections.distill import shd_verdict
from sublens.report.sections.subliminal import mlp_verdict
from sublens.report.stages import StageRun, load_stage


def stage(name: str) -> StageRun:
    return load_stage(RUNS / name)


def with_results(run: StageRun, results: dict[str, Any]) -> StageRun:
    return dataclasses.replace(run, results=results)


def build(run: StageRun) -> Section:
    make = builder(run.stage)
    assert make is not None
    return make(run)


def ratio(r: dict[str, Any], digits: int = 2) -> str:
    return r"$\times$" + fmt_ci(r["ratio"], r["ci_low"], r["ci_high"], digits)


def flat(table: str) -> str:
    """A table with its two-line cells (value over CI) joined back to 'value [low, high]'."""
    return re.sub(r"\\begin\{tabular\}\[t\]\{@\{\}r@\{\}\}(.*?)\\\\ \{(\[.*?\])\}\\end\{tabular\}",
                  r"\1 \2", table)


def everything(section: Section) -> str:
    return "\n".join([section.methods, section.results, *section.tables.values()])


def cited_keys(text: str) -> set[str]:
    return {k.strip() for group in re.findall(r"\\cite[tp]?\{([^}]*)\}", text) for k in group.split(",")}


# ---- teacher ------------------------------------------------------------------------------------
def test_teacher_reports_the_measured_preference() -> None:
    run = stage("teacher")
    comp = run.results["comparisons"]["teacher vs before"]
    section = build(run)
    table = flat(section.tables["teacher_preference"])
    assert ratio(comp["p_trait_ratio"], 0) == r"$\times$103 [84, 125]"
    assert ratio(comp["p_trait_ratio"], 0) in table and ratio(comp["p_trait_ratio"], 0) in section.results
    assert ratio(comp["share_ratio"], 1) in table  # x13.8 [11.4, 16.9]
    p = run.results["measurements"]["teacher"]["preference"]["probability"]["p_trait"]
    assert fmt_ci(100 * p["mean"], 100 * p["ci_low"], 100 * p["ci_high"]) == "11.13 [8.88, 13.43]"
    assert "11.13 [8.88, 13.43]" in table  # percent
    assert "clearly prefers owls" in section.results
    assert "Fisher $p$ = 0.003" in section.results and "9 of 100" in section.results
    assert r"\citep{snell2022context}" in section.methods and "64 optimizer steps" in section.methods
    assert section.headline == ["teacher: P(owl) x103 [84, 125], share x13.8 [11.4, 16.9] vs base "
                                "(fine-tuned, no system prompt)"]
    assert [f.stem for f in section.figures] == ["teacher_loss"]
    assert cited_keys(everything(section)) <= set(CITATION_KEYS)


def test_teacher_wording_follows_the_data() -> None:
    run = stage("teacher")
    results = copy.deepcopy(run.results)
    flat = {"ratio": 1.05, "ci_low": 0.91, "ci_high": 1.2, "n_questions": 25, "underpowered": True}
    results["comparisons"]["teacher vs before"].update(p_trait_ratio=flat, share_ratio=flat)
    text = build(with_results(run, results)).results
    assert "clearly prefers" not in text and "inconclusive" in text and r"$\times$1.05 [0.91, 1.20]" in text
    results["comparisons"]["teacher vs before"]["share_ratio"] = {"ratio": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    assert "did not produce an owl-preferring teacher" in build(with_results(run, results)).results


def test_teacher_partial_and_empty_runs_say_so() -> None:
    run = stage("teacher")
    partial = {k: copy.deepcopy(run.results[k]) for k in ("base", "trait", "n_prompts")}
    partial |= {"partial": True, "measurements": {"before": copy.deepcopy(run.results["measurements"]["before"])}}
    section = build(with_results(run, partial))
    assert "incomplete" in section.results and "teacher_preference" in section.tables
    table = flat(section.tables["teacher_preference"])
    assert "base model & 0.12 [0.09, 0.15]" in table and "fine-tuned teacher &" not in table
    empty = build(with_results(run, {}))
    assert "incomplete" in empty.results and not empty.tables and "incomplete" in empty.headline[0]


# ---- subliminal -------------------------------------------------------------------------------
def _arm(results: dict[str, Any], mode: str) -> dict[str, Any]:
    return next(r for r in results["headline"] if r["dataset"] == "owl" and r["mode"] == mode)


def test_subliminal_freeze_modes_table_and_wording() -> None:
    run = stage("subliminal")
    section = build(run)
    table = flat(section.tables["freeze_modes"])
    for mode in ("full", "freeze-attention", "freeze-mlp"):
        vs = _arm(run.results, mode)["vs_control"]
        assert ratio(vs["share_ratio"]) in table and ratio(vs["p_trait_ratio"]) in table
    assert ratio(_arm(run.results, "full")["vs_control"]["share_ratio"]) == r"$\times$0.85 [0.79, 0.92]"
    assert "54.9M" in table and "108.0M" in table and "134.5M" in table
    text = section.results
    # The fixture: the full student's share fell, both freeze modes rose slightly.
    assert "The fully fine-tuned owl student did not acquire the bias" in text
    assert "does not support the claim that the bias is seated in the MLP layers" in text
    assert "no transfer claim rests on them" in text  # one seed
    assert "360/360" in text and "no rejections" in text
    assert r"\citet{cloud2025subliminal}" in section.methods and "54.9M trainable / 79.6M frozen" in section.methods
    assert "MLP claim: not supported (freeze-mlp keeps the rise)" in section.headline[1]
    assert {f.stem for f in section.figures} == {"preference", "training_loss"}
    assert cited_keys(everything(section)) <= set(CITATION_KEYS)


def test_subliminal_wording_flips_when_freeze_mlp_loses_the_transfer() -> None:
    run = stage("subliminal")
    results = copy.deepcopy(run.results)
    up = {"ratio": 1.5, "ci_low": 1.3, "ci_high": 1.7, "n_seeds": 1}
    _arm(results, "full")["vs_control"]["share_ratio"] = dict(up)
    _arm(results, "freeze-attention")["vs_control"]["share_ratio"] = dict(up)
    # freeze-mlp: the same as the control student
    _arm(results, "freeze-mlp")["vs_control"]["share_ratio"] = {"ratio": 1.0, "ci_low": 0.9, "ci_high": 1.1}
    text = build(with_results(run, results)).results
    assert "acquired the bias in this run" in text
    assert "consistent with the claim, not evidence for it" in text and "does not support" not in text
    results["n_seeds"] = 3
    text = build(with_results(run, results)).results
    assert "The data support the MLP claim" in text and "Student-$t$ intervals over 3" in text


@pytest.mark.parametrize(("states", "seeds", "verdict"), [
    (("up", "up", "flat"), 3, "supported"),
    (("up", "up", "down"), 1, "consistent_one_seed"),
    (("flat", "up", "flat"), 3, "inconclusive_no_full_transfer"),
    (("up", "flat", "flat"), 3, "not_supported_attention_loses"),
    (("up", "up", "up"), 3, "not_supported_mlp_keeps"),
    (("up", "missing", "flat"), 3, "untested"),
])
def test_mlp_verdict(states: tuple[str, str, str], seeds: int, verdict: str) -> None:
    assert mlp_verdict(*states, seeds) == verdict


def test_subliminal_partial_run_says_so() -> None:
    run = stage("subliminal")
    results = {k: copy.deepcopy(v) for k, v in run.results.items() if k not in ("headline", "comparisons")}
    results["partial"] = True
    section = build(with_results(run, results))
    assert "incomplete" in section.results and not section.tables
    assert "360/360" in section.results  # the data stage finished: its keep rates are still reported
    assert "incomplete" in section.headline[0]
    assert "incomplete" in build(with_results(run, {})).results


# ---- distill ------------------------------------------------------------------------------------
def test_distill_transfer_table_and_wording() -> None:
    run = stage("distill")
    section = build(run)
    comps = run.results["comparisons"]
    table = flat(section.tables["shd_transfer"])
    assert ratio(comps["shd_biased_vs_lm_only"]["share_ratio"]) == r"$\times$1.37 [1.30, 1.45]"
    assert ratio(comps["shd_biased_vs_shd_base"]["share_ratio"]) == r"$\times$1.13 [1.11, 1.14]"
    for key in ("shd_biased_vs_lm_only", "shd_biased_vs_shd_base"):
        assert ratio(comps[key]["share_ratio"]) in table and ratio(comps[key]["share_ratio"]) in section.results
    assert "1.42 / 1.68" in table and "0.54 / 0.66" in table  # fit KL before / after
    text = section.results
    assert "most of the rise is attention distillation as such" in text
    assert "shd\\_biased 0/32" in text
    assert "cross-architecture transfer of the bias is not established" in text
    assert "prompted base model" in text
    assert "transfer: not established (one seed)" in section.headline[0]
    assert "9 teacher heads" in section.methods and r"\citep{bing2025shd}" in section.methods
    assert "17$\\to$28" in section.methods
    assert "0 & 0 & 0.51 & 0.24 & 0.54" in section.tables["shd_alphas"]  # layer, teacher layer, alphas
    stems = {f.stem: f.wide for f in section.figures}
    assert stems == {"distill_losses": True, "distill_alphas": True, "distill_maps": True}  # all wide figures
    assert cited_keys(everything(section)) <= set(CITATION_KEYS)


def test_distill_wording_follows_the_controls() -> None:
    run = stage("distill")
    results = copy.deepcopy(run.results)
    results["comparisons"]["shd_biased_vs_shd_base"]["share_ratio"] = {"ratio": 1.03, "ci_low": 0.95, "ci_high": 1.12}
    text = build(with_results(run, results)).results
    assert "does not beat the student distilled from the unbiased base model" in text
    assert r"$\times$1.03 [0.95, 1.12]" in text
    results = copy.deepcopy(run.results)
    results["seeds"] = [0, 1, 2]
    text = build(with_results(run, results)).results
    assert "the data support transfer of the bias across architectures" in text
    results["comparisons"]["shd_biased_vs_lm_only"]["share_ratio"] = {"ratio": 0.9, "ci_low": 0.8, "ci_high": 1.01}
    assert "this run shows no transfer" in build(with_results(run, results)).results


@pytest.mark.parametrize(("lm", "base", "seeds", "verdict"), [
    ("up", "up", 3, "supported"),
    ("up", "up", 1, "not_established_one_seed"),
    ("up", "flat", 3, "not_supported_shd_base"),
    ("flat", "up", 3, "not_supported_lm_only"),
    ("unknown", "up", 3, "untested"),
])
def test_shd_verdict(lm: str, base: str, seeds: int, verdict: str) -> None:
    assert shd_verdict(lm, base, seeds) == verdict


def test_distill_partial_run_says_so() -> None:
    run = stage("distill")
    keep = ("student", "teachers", "data", "shd", "alphas", "fit", "seeds", "initial")
    results = {k: copy.deepcopy(run.results[k]) for k in keep} | {"partial": True, "arms": {}}
    section = build(with_results(run, results))
    assert "incomplete" in section.results and "incomplete" in section.headline[0]
    assert section.tables["shd_transfer"].count("initial student") == 1
    assert "incomplete" in build(with_results(run, {})).results


# ---- LaTeX --------------------------------------------------------------------------------------
def _document(sections: list[tuple[str, Section]], figures: Path) -> str:
    body = []
    for stage_name, s in sections:
        body += [rf"\section{{{s.title}}}", r"\paragraph{Methods.}", s.methods, r"\paragraph{Results.}",
                 s.results, *s.tables.values()]
        for f in s.figures:
            env = "figure*" if f.wide else "figure"
            body += [rf"\begin{{{env}}}[t]", r"\centering",
                     rf"\includegraphics[width=\linewidth]{{{figures.name}/{stage_name}-{f.stem}.pdf}}",
                     rf"\caption{{{f.caption}}}", rf"\label{{{figure_label(stage_name, f.stem)}}}",
                     rf"\end{{{env}}}"]
    return "\n".join([
        r"\documentclass[11pt]{article}", r"\usepackage[final]{sublens-acl}",
        r"\title{Training Sections}", r"\author{Ada Lovelace}", r"\begin{document}", r"\maketitle",
        *body, r"\bibliography{refs}", r"\end{document}",  # the style sets the bibliography style
    ])


@needs_tex
def test_sections_compile_inside_the_style(tmp_path: Path) -> None:
    teacher = stage("teacher")
    # Data with LaTeX specials and a non-Latin digit must come out escaped.
    teacher = dataclasses.replace(teacher, config={**teacher.config, "teacher_system": "Owls & 100% _owl_ #1 ٣ {x}"})
    sections = [(run.stage, build(run)) for run in (teacher, stage("subliminal"), stage("distill"))]
    figures = tmp_path / "figures"
    figures.mkdir()
    for (name, s), run_name in zip(sections, ("teacher", "subliminal", "distill"), strict=True):
        have = stage(run_name).figures()
        for f in s.figures:
            shutil.copyfile(have[f.stem], figures / f"{name}-{f.stem}.pdf")
    (tmp_path / "refs.bib").write_text("\n".join(
        f"@misc{{{key},\n  author = {{Author, A.}},\n  title = {{{key}}},\n  year = {{2025}}\n}}"
        for key in CITATION_KEYS), encoding="utf-8")
    install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text(_document(sections, figures), encoding="utf-8")
    pdf = compile_pdf(tex)
    assert pdf is not None
    log = tex.with_suffix(".log").read_text(errors="replace")
    assert not re.search(r"(Citation|Reference) `[^']*' on page \d+ undefined", log)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = " ".join(text.split())
    for needle in ("×103 [84, 125]", "×0.85 [0.79, 0.92]", "×1.13 [1.11, 1.14]", "Owls & 100% _owl_ #1 U+0663 {x}"):
        assert needle in text, needle


@pytest.mark.parametrize("name", ["teacher", "subliminal", "distill"])
def test_any_missing_result_key_is_survived(name: str) -> None:
    """An interrupted run can lack any key: the section is still built, never a KeyError."""
    run = stage(name)
    for key in run.results:
        results = {k: v for k, v in run.results.items() if k != key}
        section = build(with_results(run, results))
        assert section.methods and section.results and section.headline
