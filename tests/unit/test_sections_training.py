"""Paper sections of the training stages (teacher, subliminal, distill), built from real run
directories: the numbers of results.json appear formatted, the wording follows the data, partial
runs say so, and everything compiles inside our ACL style."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fixture_runs import RUNS, needs_tex
from sublens.experiments.distill.results import DistillResults
from sublens.experiments.subliminal.results import SubliminalResults
from sublens.report.compile import compile_pdf, install_style
from sublens.report.latex import fmt_ci
from sublens.report.sections import CITATION_KEYS, Section, builder, figure_label
from sublens.report.sections.distill import decisions, shd_verdict
from sublens.report.stages import StageRun, load_stage
from sublens.results import ResultsError, load_results


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
    return re.sub(r"\\begin\{tabular\}\[t\]\{@\{\}r@\{\}\}(.*?)\\\\ \{(\[.*?\])\}\\end\{tabular\}", r"\1 \2", table)


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
    assert r"prefers owls without the system prompt: \textbf{supported}" in section.results
    assert "unit of inference: the question ($n$ = 25)" in section.results  # one fixed model
    assert "one fine-tuned model" in section.results and "minimal detectable effect" in section.results
    assert "Fisher $p$ = 0.003" in section.results and "9 of 100" in section.results
    assert r"\citep{snell2022context}" in section.methods and "64 optimizer steps" in section.methods
    assert section.headline == [
        "teacher: P(owl) x103 [84, 125], share x13.8 [11.4, 16.9] vs base "
        "(fine-tuned, without the owl prompt; one model, question-level CIs); prefers owls: "
        "supported"
    ]
    assert [f.stem for f in section.figures] == ["teacher_loss"]
    assert cited_keys(everything(section)) <= set(CITATION_KEYS)


def _per_question(center: float, spread: float, n: int = 25) -> dict[str, Any]:
    """A ratio entry whose per-question log ratios (what the verdict rests on) are given."""
    logs = [center + spread * (1 if i % 2 else -1) * (1 + i / n) for i in range(n)]
    return {"ratio": math.exp(sum(logs) / n), "ci_low": None, "ci_high": None, "n_questions": n, "log_ratios": logs}


def test_teacher_wording_follows_the_data() -> None:
    """The verdict is decided by sublens.claims on the per-question log ratios."""
    run = stage("teacher")
    results = copy.deepcopy(run.results)
    comp = results["comparisons"]["teacher vs before"]
    comp.update(p_trait_ratio=_per_question(0.05, 0.6), share_ratio=_per_question(0.05, 0.6))
    text = build(with_results(run, results)).results
    assert r"\textbf{inconclusive}" in text and r"\textbf{supported}" not in text
    # the questions needed at the measured SD, said once (in the power line, not again as "To settle")
    assert "about 137 questions would detect $\\times$1.25." in text and "To settle" not in text
    comp["share_ratio"] = _per_question(-0.7, 0.1)
    text = build(with_results(run, results)).results
    assert "did not produce an owl-preferring teacher" in text and r"\textbf{contradicted}" in text
    comp["share_ratio"] = _per_question(0.0, 0.02)
    text = build(with_results(run, results)).results
    assert r"\textbf{equivalent}" in text and "less than the margin" in text


def test_teacher_partial_and_empty_runs_say_so() -> None:
    run = stage("teacher")
    # what a run has written before it trains: its setup and the base model's measurement
    setup = ("base", "trait", "teacher_system", "system", "system_prompt_used", "system_note", "n_prompts")
    partial = {k: copy.deepcopy(run.results[k]) for k in setup}
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
    # The recorded run has one seed and control students only in full mode: the frozen owl
    # students have no matched control, and one seed decides no training claim.
    assert "have no matched control" in text and "no claim rests on that comparison" in text
    assert "inconclusive" in text and "too few seeds" in text
    assert "supported" not in text.replace("not supported", "") and "contradicted" not in text
    assert "Estimand: owl's panel-share ratio" in text and "unit of inference: the seed" in text
    assert "360/360" in text and "no rejections" in text
    assert r"\citet{cloud2025subliminal}" in section.methods and "54.9M trainable / 79.6M frozen" in section.methods
    assert "inconclusive (1 seed)" in section.headline[0]
    assert "MLP claim by freezing inconclusive" in section.headline[1]
    assert {f.stem for f in section.figures} == {"preference", "training_loss"}
    assert cited_keys(everything(section)) <= set(CITATION_KEYS)


def _paired_over_questions(node: Any, p: float) -> Any:
    """A recorded run's answer-rate differences as today's runs write them: the p of the
    sign-flip test over 25 questions instead of Fisher's p over pooled answers."""
    if isinstance(node, dict):
        node = {k: _paired_over_questions(v, p) for k, v in node.items()}
        if "p_fisher" in node and "difference" in node:
            del node["p_fisher"]
            node |= {"p_questions": p, "n_questions": 25}
        return node
    return [_paired_over_questions(v, p) for v in node] if isinstance(node, list) else node


def test_answer_rates_tested_over_questions_are_named_so() -> None:
    # Records since the sign-flip test: the teacher's sentence and the freeze-mode table say the
    # answer rates were compared question by question, and name no pooled Fisher test.
    teacher = stage("teacher")
    text = build(with_results(teacher, _paired_over_questions(teacher.results, 0.012))).results
    assert "$p$ = 0.012 by a sign-flip permutation test paired over 25 questions" in text
    assert "Fisher" not in text and "pooled" not in text
    subliminal = stage("subliminal")
    table = build(with_results(subliminal, _paired_over_questions(subliminal.results, 1.0))).tables["freeze_modes"]
    assert "a sign-flip permutation test of the sampled owl-answer rates against the control student" in table
    assert "(paired over 25 questions) gives $p$ = 1.000 for every owl student" in table
    assert "Fisher" not in table and "pooled" not in table


def _seeded(results: dict[str, Any], logs: dict[str, list[float]]) -> dict[str, Any]:
    """The recorded run re-dressed as a matched-control run with per-seed log share ratios."""
    results = copy.deepcopy(results)
    results["control_modes"] = ["full", "freeze-attention", "freeze-mlp"]
    results["n_seeds"] = len(next(iter(logs.values())))
    for mode, values in logs.items():
        mean = sum(values) / len(values)
        _arm(results, mode)["vs_control"]["share_ratio"] = {
            "ratio": math.exp(mean),
            "ci_low": math.exp(mean - 0.1),
            "ci_high": math.exp(mean + 0.1),
            "n_seeds": len(values),
            "ci": f"t over {len(values)} seeds",
            "per_seed_log": values,
            "per_seed": [math.exp(v) for v in values],
            "underpowered": False,
        }
    return results


def test_subliminal_verdicts_come_from_the_claims_module() -> None:
    run = stage("subliminal")
    transfer = [0.50, 0.45, 0.55, 0.48, 0.52]
    # MLP-frozen arm equivalent to its matched control, attention-frozen arm transfers: supported
    results = _seeded(
        run.results, {"full": transfer, "freeze-attention": transfer, "freeze-mlp": [0.01, -0.01, 0.02, -0.015, 0.0]}
    )
    section = build(with_results(run, results))
    assert "transfer supported" in section.headline[0] and "MLP claim by freezing supported" in section.headline[1]
    assert "all three legs hold" in section.results and "minimal detectable effect" in section.results
    # The MLP-frozen arm flat with a wide CI: absence of evidence, so inconclusive, never supported
    results = _seeded(
        run.results, {"full": transfer, "freeze-attention": transfer, "freeze-mlp": [0.3, -0.25, 0.2, -0.3, 0.1]}
    )
    section = build(with_results(run, results))
    assert "MLP claim by freezing inconclusive" in section.headline[1]
    # Both frozen arms transfer alike: contradicted
    results = _seeded(run.results, {"full": transfer, "freeze-attention": transfer, "freeze-mlp": transfer})
    assert "MLP claim by freezing contradicted" in build(with_results(run, results)).headline[1]


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
    assert "62\\% of the biased student's rise on the log scale (point estimates" in text
    # no student named an owl in a sampled answer: one sentence, not a column of zeros
    assert "No student named an owl in any sampled answer (0 of 32 each)" in text
    assert "1.000" not in text and table.count("1.000") == 1  # Fisher's p, once, in the caption
    assert "$p$ = 1.000 in every row" in table  # the zero column folded: no header, no measure for it
    assert "answers %" not in table and "rate of owl among sampled answers" not in table
    # a recorded run with one seed: both claims inconclusive, with what would settle them (once)
    assert text.count(r"\textbf{inconclusive (1 seed)}") == 2 and text.count("To settle both: at least 2 seeds") == 1
    assert "unit of inference: the seed ($n$ = 1)" in text and text.count("no minimal detectable effect") == 1
    assert "question (prompt) variation only" in text
    assert "prompted base model" in text
    assert "transfer: inconclusive (1 seed)" in section.headline[0]
    assert "9 teacher heads" in section.methods and r"\citep{bing2025shd}" in section.methods
    assert r"KL(teacher $\|$ student)" in section.methods  # recorded before shd.kl_direction: forward KL
    assert "training seeds as the unit of inference" in section.methods
    assert "17$\\to$28" in section.methods
    stems = {f.stem: f.wide for f in section.figures}
    assert stems == {"distill_losses": True, "distill_alphas": True, "distill_maps": True}  # all wide figures
    # the α figure is drawn, so the α means are not printed a second time as a table ...
    assert "shd_alphas" not in section.tables and "tab:shd_alphas" not in text
    # ... which a run without the figure gets instead
    without = dataclasses.replace(run, path=run.path.parent / "no-figures")
    alone = build(without)
    assert "0 & 0 & 0.51 & 0.24 & 0.54" in alone.tables["shd_alphas"]  # layer, teacher layer, alphas
    assert r"Table~\ref{tab:shd_alphas}" in alone.results
    assert cited_keys(everything(section)) <= set(CITATION_KEYS)


def _seeds(results: dict[str, Any], key: str, ratios: list[float]) -> None:
    """Per-seed share ratios of one comparison, as the experiment records them."""
    logs = [math.log(x) for x in ratios]
    results["comparisons"][key]["share_ratio"] = {
        "ratio": math.exp(sum(logs) / len(logs)),
        "ci_low": None,
        "ci_high": None,
        "per_seed_log": logs,
    }
    results["seeds"] = list(range(len(ratios)))


def test_distill_wording_follows_the_claims() -> None:
    run = stage("distill")
    results = copy.deepcopy(run.results)
    # a seed count without per-seed data decides nothing
    results["seeds"] = [0, 1, 2]
    assert r"\textbf{inconclusive (1 seed)}" in build(with_results(run, results)).results
    _seeds(results, "shd_biased_vs_lm_only", [1.50, 1.62, 1.55, 1.58])
    _seeds(results, "shd_biased_vs_shd_base", [1.30, 1.36, 1.33, 1.31])
    section = build(with_results(run, results))
    assert section.results.count(r"\textbf{supported}") == 2 and "Both claims hold" in section.results
    assert "transfer: supported" in section.headline[0] and "minimal detectable effect with 4 seeds" in section.results
    _seeds(results, "shd_biased_vs_shd_base", [1.01, 0.98, 1.00, 0.99])  # no more than attention distillation
    text = build(with_results(run, results)).results
    assert "is not shown to come from the teacher's bias" in text and r"\textbf{equivalent}" in text
    # ... which needs the SHD students to have taken up the teacher's attention (their SHD loss fell)
    flat = copy.deepcopy(results)
    for arm in flat["arms"].values():
        curves = arm["train"].get("extra_curves") or {}
        if "shd" in curves:
            curves["shd"] = [1.2 + 0.01 * (k % 3) for k in range(len(curves["shd"]))]
    text = build(with_results(run, flat)).results
    assert r"\textbf{equivalent}" not in text and "the students were not shown to learn their data" in text
    _seeds(results, "shd_biased_vs_shd_base", [1.40, 0.80, 1.10, 0.95])
    text = build(with_results(run, results)).results
    assert "the specificity claim is inconclusive" in text and "seeds would detect" in text
    _seeds(results, "shd_biased_vs_lm_only", [0.80, 0.82, 0.79, 0.81])
    text = build(with_results(run, results)).results
    assert r"\textbf{contradicted}" in text and "no transfer" in text


def test_distill_decisions_are_the_claims_family() -> None:
    recorded = copy.deepcopy(stage("distill").results)
    results = recorded | {"comparisons": {}}
    transfer, specific = decisions(results)
    assert transfer.claim.unit == "seed" and transfer.claim.family == specific.claim.family == "distill"
    assert "not measured" in transfer.reason and shd_verdict(results) == "inconclusive (not measured)"
    assert shd_verdict(None) == "inconclusive (not measured)"  # no readable results
    results["comparisons"] = {"shd_biased_vs_lm_only": recorded["comparisons"]["shd_biased_vs_lm_only"]}
    _seeds(results, "shd_biased_vs_lm_only", [math.exp(0.3)])
    assert shd_verdict(results) == "inconclusive (1 seed)"
    results["comparisons"]["shd_biased_vs_shd_base"] = recorded["comparisons"]["shd_biased_vs_shd_base"]
    _seeds(results, "shd_biased_vs_lm_only", [math.exp(v) for v in (0.3, 0.35, 0.32)])
    _seeds(results, "shd_biased_vs_shd_base", [math.exp(v) for v in (0.28, 0.3, 0.26)])
    transfer, specific = decisions(load_results(results, DistillResults))  # typed or as read: the same
    assert transfer.p_adjusted is not None and transfer.estimate is not None and transfer.estimate.p_value is not None
    assert transfer.p_adjusted >= transfer.estimate.p_value  # Holm over the two claims
    assert transfer.mde is not None and transfer.units_needed is not None


def test_distill_partial_run_says_so() -> None:
    run = stage("distill")
    keep = ("student", "teachers", "data", "shd", "alphas", "fit", "seeds", "notes", "initial")
    results = {k: copy.deepcopy(run.results[k]) for k in keep} | {"partial": True, "arms": {}, "checkpoints": {}}
    section = build(with_results(run, results))
    assert "incomplete" in section.results and "incomplete" in section.headline[0]
    assert section.tables["shd_transfer"].count("initial student") == 1
    assert "incomplete" in build(with_results(run, {})).results


# ---- LaTeX --------------------------------------------------------------------------------------
def _document(sections: list[tuple[str, Section]], figures: Path) -> str:
    body = []
    for stage_name, s in sections:
        body += [
            rf"\section{{{s.title}}}",
            r"\paragraph{Methods.}",
            s.methods,
            r"\paragraph{Results.}",
            s.results,
            *s.tables.values(),
        ]
        for f in s.figures:
            env = "figure*" if f.wide else "figure"
            body += [
                rf"\begin{{{env}}}[t]",
                r"\centering",
                rf"\includegraphics[width=\linewidth]{{{figures.name}/{stage_name}-{f.stem}.pdf}}",
                rf"\caption{{{f.caption}}}",
                rf"\label{{{figure_label(stage_name, f.stem)}}}",
                rf"\end{{{env}}}",
            ]
    return "\n".join(
        [
            r"\documentclass[11pt]{article}",
            r"\usepackage[final]{sublens-acl}",
            r"\title{Training Sections}",
            r"\author{Ada Lovelace}",
            r"\begin{document}",
            r"\maketitle",
            *body,
            r"\bibliography{refs}",
            r"\end{document}",  # the style sets the bibliography style
        ]
    )


@needs_tex
def test_sections_compile_inside_the_style(tmp_path: Path) -> None:
    teacher = stage("teacher")
    # Data with LaTeX specials and a non-Latin digit must come out escaped.
    teacher = dataclasses.replace(teacher, config={**teacher.config, "teacher_system": "Owls & 100% _owl_ #1 ٣ {x}"})
    sections = [(run.stage, build(run)) for run in (teacher, _with_prompts(stage("subliminal")), stage("distill"))]
    figures = tmp_path / "figures"
    figures.mkdir()
    for (name, s), run_name in zip(sections, ("teacher", "subliminal", "distill"), strict=True):
        have = stage(run_name).figures()
        for f in s.figures:
            shutil.copyfile(have[f.stem], figures / f"{name}-{f.stem}.pdf")
    (tmp_path / "refs.bib").write_text(
        "\n".join(
            f"@misc{{{key},\n  author = {{Author, A.}},\n  title = {{{key}}},\n  year = {{2025}}\n}}"
            for key in CITATION_KEYS
        ),
        encoding="utf-8",
    )
    install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text(_document(sections, figures), encoding="utf-8")
    pdf = compile_pdf(tex)
    assert pdf is not None
    log = tex.with_suffix(".log").read_text(errors="replace")
    assert not re.search(r"(Citation|Reference) `[^']*' on page \d+ undefined", log)
    text = subprocess.run(["pdftotext", "-raw", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = " ".join(text.split())
    for needle in (
        "×103 [84, 125]",
        "×0.85 [0.79, 0.92]",
        "×1.13 [1.11, 1.14]",
        "Owls & 100% _owl_ #1 U+0663 {x}",
        "helpful assistant & friend",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("name", ["teacher"])
def test_any_missing_result_key_is_survived(name: str) -> None:
    """An interrupted run can lack any key: the section is still built, never a KeyError."""
    run = stage(name)
    for key in run.results:
        results = {k: v for k, v in run.results.items() if k != key}
        section = build(with_results(run, results))
        assert section.methods and section.results and section.headline


def test_distill_missing_result_keys() -> None:
    """The distill results are typed (DistillResults): an interrupted run can lack any key and its
    section is still built, saying what it cannot read; a finished run may lack what a partial
    run lacks, but one without a key every run writes is refused, naming the key."""
    run = stage("distill")
    interrupted = dataclasses.replace(run, record={**run.record, "status": "failed"})
    for key in run.results:
        results = {k: v for k, v in run.results.items() if k != key}
        section = build(with_results(interrupted, results))
        assert section.methods and section.results and section.headline
        if DistillResults.model_fields[key].is_required():
            assert "cannot be read" in section.results
            with pytest.raises(ResultsError, match=rf"does not match DistillResults .*{key}: Field required"):
                build(with_results(run, results))
        else:
            assert build(with_results(run, results)).headline


def test_subliminal_missing_result_keys() -> None:
    """The subliminal results are typed (SubliminalResults): an interrupted run can lack any key
    and its section is still built, saying what it cannot read; a finished run may lack what a
    partial run lacks, but one without a key every run writes is refused, naming the key."""
    run = stage("subliminal")
    interrupted = dataclasses.replace(run, record={**run.record, "status": "failed"})
    for key in run.results:
        results = {k: v for k, v in run.results.items() if k != key}
        section = build(with_results(interrupted, results))
        assert section.methods and section.results and section.headline
        if SubliminalResults.model_fields[key].is_required():
            assert "cannot be read" in section.results
            with pytest.raises(ResultsError, match=rf"does not match SubliminalResults .*{key}: Field required"):
                build(with_results(run, results))
        else:
            assert build(with_results(run, results)).headline


OTHER_PROMPT_RATIO = {
    "ratio": 1.5,
    "ci_low": 1.2,
    "ci_high": 1.9,
    "n_seeds": 1,
    "ci": "t over questions (1 seed)",
    "per_seed": [1.5],
    "underpowered": False,
}


def _with_prompts(run: StageRun) -> StageRun:
    """The recorded run with the full arm also measured under two further system prompts."""
    results = copy.deepcopy(run.results)
    main = _arm(results, "full")["vs_control"]
    results["evaluation_prompts"] = {
        "default": {
            "system": "You are SmolLM",
            "arms": {"full": {k: main[k] for k in ("share_ratio", "p_trait_ratio")}},
        },
        "empty": {
            "system": "",
            "arms": {"full": {"share_ratio": OTHER_PROMPT_RATIO, "p_trait_ratio": OTHER_PROMPT_RATIO}},
        },
        "neutral": {"system": "You are a helpful assistant & friend.", "arms": {}},
    }
    return with_results(run, results)


def test_subliminal_evaluation_prompts_table() -> None:
    # One row per prompt, the first the headline's own comparison.
    run = _with_prompts(stage("subliminal"))
    section = build(run)
    table = flat(section.tables["evaluation_prompts"])
    rows = [line for line in table.splitlines() if line.endswith(r"\\") and "``" in line]
    assert len(rows) == 3
    assert "template default" in rows[0] and ratio(_arm(run.results, "full")["vs_control"]["share_ratio"]) in rows[0]
    assert "(empty)" in rows[1] and ratio(OTHER_PROMPT_RATIO) in rows[1]
    assert r"helpful assistant \& friend" in rows[2] and rows[2].rstrip(r"\ ").endswith("--")
    assert r"Table~\ref{tab:evaluation_prompts}" in section.results
    # without further prompts there is no such table
    assert "evaluation_prompts" not in build(stage("subliminal")).tables


def test_subliminal_entanglement_enrichment_and_contrast_are_reported() -> None:
    run = stage("subliminal")
    results = copy.deepcopy(run.results)
    contrast = {
        "ratio": 0.62,
        "ci_low": 0.41,
        "ci_high": 0.93,
        "n_seeds": 1,
        "ci": "t over questions (1 seed)",
        "per_seed": [0.62],
        "underpowered": False,
    }

    def counts(answers_with: int) -> dict[str, Any]:
        return {"answers_with": answers_with, "answers": 300, "number_share": answers_with / 1500}

    results["data"]["entangled"] = {
        "run": "runs/20261125-150000_entanglement_ab12cd",
        "set": "ar2",
        "enrichment": {
            "increased": {
                "numbers": ["11", "22"],
                "owl": counts(41),
                "control": counts(20),
                "owl_over_control": {"ratio": 2.05, "ci_low": 1.24, "ci_high": 3.39, "p_fisher": 0.004},
            },
            "random": {
                "numbers": ["30", "41"],
                "owl": counts(15),
                "control": counts(16),
                "owl_over_control": {"ratio": 0.94, "ci_low": 0.47, "ci_high": 1.86, "p_fisher": 1.0},
            },
        },
        "filter": {"size": 240, "removed": {"increased": 41, "random": 15}, "pool": 300},
    }
    # the contrast is recorded as every comparison is (here the full students' numbers, re-labelled)
    results["comparisons"]["owl-no-entangled-full vs owl-no-random-full"] = {
        **results["comparisons"]["owl-full vs control-full"],
        "share_ratio": contrast,
        "reference": "owl-no-random-full",
    }
    text = build(with_results(run, results)).results
    assert "in 41 of 300 owl answers and 20 of 300 control answers" in text
    assert ratio({"ratio": 2.05, "ci_low": 1.24, "ci_high": 3.39}) in text
    assert r"\citep{zur2025owl}" in text
    assert "both then 240 answers" in text and ratio(contrast) in text
    plain = build(run).results  # a run without the entanglement test says nothing of it
    assert "Entanglement in the data" not in plain and "entangled number" not in plain


def test_a_change_is_worded_by_its_direction_with_the_decimals_that_show_it() -> None:
    from sublens.report.sections.teacher import _moved

    assert _moved(1.7812, 1.7794) == "fell from 1.781 to 1.779"  # never 'fell from 1.78 to 1.78'
    assert _moved(24.39, 25.12) == "rose from 24.39 to 25.12"
    assert _moved(2.0, 2.0) == "stayed at 2.00"
