"""The draft as a program committee reads it (teacher, subliminal, distill sections, the front
matter, the Limitations): no config keys, file names, paths or Python values in the prose; models
by the names a paper uses; a column that says the same in every row folded into one sentence;
each measurement defined once; one quantity, one number."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from fixture_runs import RUNS
from sublens.claims import Claim, decide_family, estimate_log_ratio
from sublens.report.bundle import build_bundle, headline_item, load_runs
from sublens.report.latex import constant_column, drop_columns, ratio_digits, scientific
from sublens.report.names import FINE_TUNED_TEACHER, data_source_name, display_name, is_teacher_run
from sublens.report.sections import Section, builder
from sublens.report.stages import StageRun, load_stage
from sublens.report.verdicts import claim_text, decisions_latex

STAGES = ("teacher", "subliminal", "distill")


def _build(run: StageRun) -> Section:
    make = builder(run.stage)
    assert make is not None
    return make(run)


def _with(run: StageRun, results: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> StageRun:
    return dataclasses.replace(
        run,
        results=results if results is not None else run.results,
        config=config if config is not None else run.config,
    )


# ---- what a reader must not see in the prose --------------------------------------------------
_ARGUMENT = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
_NOT_PROSE = re.compile(
    r"\$[^$]*\$"  # math
    r"|\\\[.*?\\\]"  # display math
    r"|\\(?:texttt|label|ref|citep|citet|cite|input|includegraphics|url|begin|end)(?:\[[^]]*\])?" + _ARGUMENT,
    re.S,
)
MACHINE = {
    "underscore in a word (a config key)": re.compile(r"\w\\?_\w"),
    "a JSON file name": re.compile(r"\.jsonl?\b"),
    "a YAML file name": re.compile(r"\w\.ya?ml\b"),
    "a path": re.compile(r"(?<![\w<])(?:~|\.{0,2})/\w[\w.-]*/|\b\w[\w.-]*/\w[\w.-]*/\w"),
    "a Python value": re.compile(r"\b(?:None|True|False|null|nan)\b"),
    "e notation": re.compile(r"\b\d(?:\.\d+)?e-?\d+\b"),
    "a run folder": re.compile(r"\d{8}-\d{6}_"),
    "a model spec": re.compile(r"smollm2-135m-instruct|gemma3-270m|meta-llama/|openai-community/"),
}


def prose(tex: str) -> str:
    """LaTeX with what is not prose removed: math, typewriter text, labels, references, citations."""
    text = re.sub(r"(?m)(?<!\\)%.*$", "", tex)
    return _NOT_PROSE.sub(" ", text)


def machine_words(tex: str) -> list[str]:
    text = prose(tex)
    return [
        f"{what}: ...{text[max(0, m.start() - 50) : m.end() + 30]}..."
        for what, pattern in MACHINE.items()
        for m in pattern.finditer(text)
    ]


def _everything(section: Section) -> str:
    return "\n".join(
        [
            section.title,
            section.methods,
            section.results,
            section.measurement,
            *section.tables.values(),
            *(f.caption for f in section.figures),
        ]
    )


def test_the_check_finds_machine_wording() -> None:
    found = machine_words(
        r"Arms: shd\_biased; see control.train.jsonl in runs/x/data/ (system None); "
        r"p = 9.83e-19; the base model smollm2-135m-instruct."
    )
    assert len(found) >= 6, found
    assert not machine_words(
        r"$m_\mathrm{base}$ and \texttt{configs/teacher.yaml}, \ref{tab:shd_transfer}, "
        r"P(owl) $\times$1.37 [1.30, 1.45], SmolLM2-135M-Instruct, 0/32."
    )


@pytest.mark.parametrize("name", STAGES)
def test_no_config_keys_file_names_or_paths_in_the_prose(name: str) -> None:
    section = _build(load_stage(RUNS / name))
    assert not machine_words(_everything(section)), machine_words(_everything(section))
    assert all("_" not in line.split(":", 1)[1] for line in section.headline)  # the abstract's notes too


def test_a_teacher_run_and_a_data_file_are_named_not_shown() -> None:
    """A fine-tuned teacher given as a run directory, a distill data file of a subliminal run."""
    run = load_stage(RUNS / "subliminal")
    teacher_dir = "/home/ada/runs/20261125-161300_teacher_4f87f6"
    teacher = {**run.results["teacher"], "kind": "model", "model": teacher_dir}
    results = copy.deepcopy(run.results) | {"teacher": teacher}
    section = _build(_with(run, results, {**run.config, "teacher": teacher_dir}))
    assert f"{FINE_TUNED_TEACHER} made by context distillation" in section.methods
    assert not machine_words(_everything(section)), machine_words(_everything(section))

    run = load_stage(RUNS / "distill")
    results = copy.deepcopy(run.results)
    results["data"]["source"] = "/home/ada/runs/20261125-170000_subliminal_ab12cd/data/control.train.jsonl"
    results["teachers"]["biased"]["spec"] = "/home/ada/runs/20261125-161300_teacher_4f87f6#teacher"
    section = _build(_with(run, results))
    assert "the control teacher's number sequences of a subliminal run" in section.methods
    assert f"The biased teacher is {FINE_TUNED_TEACHER}" in section.methods
    assert not machine_words(_everything(section)), machine_words(_everything(section))


# ---- display names ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("smollm2-135m-instruct", "SmolLM2-135M-Instruct"),
        ("gemma3-270m", "Gemma-3-270M"),
        ("meta-llama/Llama-3.2-1B-Instruct", "Llama-3.2-1B-Instruct"),
        ("openai-community/gpt2-medium", "GPT-2 Medium"),
        ("gpt2-medium", "GPT-2 Medium"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
        ("some-org/Owl-Model-7B", "Owl-Model-7B"),
        ("runs/20261125-161300_teacher_4f87f6", FINE_TUNED_TEACHER),
        ("/tmp/x/20261125-182234_paper_938f62/stages/teacher/", FINE_TUNED_TEACHER),
        ("/data/runs/20261125-170000_subliminal_ab12cd#teacher", FINE_TUNED_TEACHER),
        ("/tmp/x/20261125-182234_paper_938f62/stages/teacher#control_teacher", "the control teacher"),
        ("/home/me/ckpt/owl-full", "owl-full"),
        ("runs/20261125-170000_subliminal_ab12cd#owl-full-seed0", "owl-full-seed0"),
        ("tiny:llama?layers=2&hidden=64", "a tiny randomly initialised Llama model"),
        (None, "?"),
    ],
)
def test_display_names(spec: str | None, name: str) -> None:
    assert display_name(spec) == name


def test_teacher_runs_and_data_sources() -> None:
    assert is_teacher_run("runs/20261125-161300_teacher_4f87f6")
    assert not is_teacher_run("meta-llama/Llama-3.2-1B-Instruct") and not is_teacher_run("teacher")
    assert data_source_name("/r/data/owl.train.jsonl") == "the owl teacher's number sequences of a subliminal run"
    assert "jsonl" not in data_source_name("/r/my-texts.jsonl")


@pytest.fixture(scope="module")
def draft(tmp_path_factory: pytest.TempPathFactory) -> str:
    stages, meta = load_runs(RUNS)
    return build_bundle(
        stages, tmp_path_factory.mktemp("draft") / "paper", compile=False, meta=meta
    ).main_tex.read_text()


def _section_tex(main: str, stage: str) -> str:
    start = main.index(rf"\label{{sec:{stage}}}")
    end = main.index(r"\section", start)
    return main[start:end]


def _front_matter(main: str) -> str:
    return main[main.index(r"\begin{abstract}") : main.index(r"\end{abstract}")]


def _limitations(main: str) -> str:
    return main[main.index(r"\section*{Limitations}") : main.index(r"\bibliography")]


def test_display_names_in_the_draft(draft: str) -> None:
    for stage in STAGES:
        text = _section_tex(draft, stage)
        assert not machine_words(text), (stage, machine_words(text))
    assert "The base model SmolLM2-135M-Instruct answers" in _section_tex(draft, "teacher")
    assert "trains the student Gemma-3-270M" in _section_tex(draft, "distill")
    assert "Gemma-3-270M and SmolLM2-135M-Instruct" in _limitations(draft)
    assert not machine_words(_limitations(draft))
    # the appendix keeps the exact specs that load the models (reproducibility)
    assert r"\texttt{smollm2-135m-instruct}" in draft[draft.index(r"\appendix") :]


def test_the_abstract_notes_read_as_latex(draft: str) -> None:
    front = _front_matter(draft)
    assert r"P(owl) $\times$103 [84, 125]" in front and "U+00D7" not in front
    assert not re.search(r"\d(?:\.\d+)?e-\d", front)  # 1.59e-13 -> $1.59\times10^{-13}$
    notes = [
        line
        for line in front.splitlines()
        if line.startswith(r"\item") and line.split()[1].rstrip(":") in {f"{s}" for s in STAGES}
    ]
    assert notes and not machine_words("\n".join(notes))
    assert headline_item("distill: share x1.37 [1.30, 1.45]; Holm p = 1.59e-13 (×3.19)") == (
        r"distill: share $\times$1.37 [1.30, 1.45]; Holm $p$ = $1.59\times10^{-13}$ ($\times$3.19)"
    )
    # an opening quote in plain text is LaTeX's ` (' prints as a closing quote); an apostrophe stays
    assert claim_text("P(owl | 'You love the number N') over the model's") == (
        "P(owl | `You love the number N') over the model's"
    )
    assert headline_item("hybrid: MLP layers 20-29 0.36, p = 2.5e-3") == (
        r"hybrid: MLP layers 20--29 0.36, $p$ = $2.5\times10^{-3}$"
    )


# ---- repetition ---------------------------------------------------------------------------------
def test_an_all_zero_column_is_one_sentence() -> None:
    run = load_stage(RUNS / "distill")
    section = _build(run)
    table = section.tables["shd_transfer"]
    assert r"\textbf{answers" not in table and r"\textbf{p}" not in table  # all zero / all 1.000: folded
    assert "No student named an owl in any sampled answer (no answer-rate column)" in table
    assert "No student named an owl in any sampled answer (0 of 32 each)" in section.results
    assert (section.results + table).count("1.000") == 1  # Fisher's p = 1.000: once, not per row
    # one student naming an owl: the column carries information and is back
    results = copy.deepcopy(run.results)
    results["arms"]["shd_biased"]["preference"]["sampled"]["trait_rate"] |= {"count": 2, "rate": 2 / 32}
    again = _build(_with(run, results))
    assert r"\textbf{answers \%}" in again.tables["shd_transfer"]
    assert "No student named an owl" not in again.results and "the biased-SHD student 2 of 32" in again.results


def test_subliminal_folds_the_constant_p_column_and_keeps_the_informative_answers() -> None:
    section = _build(load_stage(RUNS / "subliminal"))
    table = section.tables["freeze_modes"]
    assert r"\textbf{p}" not in table and "$p$ = 1.000 for every owl student" in table
    assert r"\textbf{answers \%}" in table  # the prompted teacher's 13%: not all zero, kept
    assert "No student, owl or control, named an owl in any sampled answer (0 of 100 each)" in section.results
    assert "1.000" not in section.results


def test_constant_and_dropped_columns() -> None:
    rows = [["a", "0", "--"], ["b", "0", "1.000"], ["c", "1", "1.000"]]
    assert constant_column(rows, 2) == "1.000" and constant_column(rows, 1) is None
    assert constant_column([["a", "--"]], 1) is None
    header, body = drop_columns(["x", "n", "p"], rows, [2])
    assert header == ["x", "n"] and body[2] == ["c", "1"]


def test_the_measurement_is_defined_once(draft: str) -> None:
    formula = r"$s = P(\mathrm{owl}) / \sum_{a} P(a)$"
    assert draft.count(formula) == 1 and formula in _section_tex(draft, "teacher")
    for stage in ("subliminal", "distill"):
        text = _section_tex(draft, stage)
        assert r"are defined in Section~\ref{sec:teacher}" in text and "Wilson 95" not in text
    assert draft.count(r"\citep{wilson1927probable}") == 1


def test_without_the_teacher_the_next_section_defines_the_measurement(tmp_path: Path) -> None:
    stages, meta = load_runs(RUNS)
    del stages["teacher"]
    main = build_bundle(stages, tmp_path / "paper", compile=False, meta=meta).main_tex.read_text()
    assert r"$s = P(\mathrm{owl})" in _section_tex(main, "subliminal")
    assert r"defined in Section~\ref{sec:subliminal}" in _section_tex(main, "distill")


def test_shared_parts_of_a_claim_family_are_said_once() -> None:
    def claim(name: str) -> Claim:
        return Claim(
            name=name, statement=f"Claim {name}", estimand="a ratio", unit="seed", prediction="increase", family="demo"
        )

    decided = decide_family(
        [(claim("a"), estimate_log_ratio([0.3], "seed")), (claim("b"), estimate_log_ratio([0.2], "seed"))]
    )
    text = decisions_latex(decided)
    assert text.count("one-sample $t$-test") == 1 and text.count("To settle both: at least 2 seeds") == 1
    # two seeds give an SD, not a decision: the settle line says the power analysis sizes the run
    assert "at least 2 seeds for a between-seed SD, then as many seeds as a power analysis on that SD asks for" in text
    assert text.count("no minimal detectable effect") == 1 and text.count(r"\textbf{inconclusive (1 seed)}") == 2
    assert "(1 < 2)" not in text and "Holm within demo" not in text


# ---- one quantity, one number -------------------------------------------------------------------
def test_the_teacher_ratio_and_perplexity_are_one_number_each() -> None:
    run = load_stage(RUNS / "teacher")
    section = _build(run)
    table, text = section.tables["teacher_preference"], section.results
    # the verdict does not print a second interval (Student t over questions) of the ratio the
    # text and table give (bootstrap over questions): x13.8 [11.4, 16.9] only
    assert r"$\times$13.8 [11.4, 16.9]" in text and "[11.1, 17.2]" not in text and "[83.2, 127]" not in text
    assert "Holm-adjusted $p$ $<$0.001" in text and not re.search(r"\de-\d", text)
    # perplexity: the stored value of each model, printed where it is measured, once per model
    m = run.results["measurements"]
    before, after = m["before"]["perplexity"]["perplexity"], m["teacher"]["perplexity"]["perplexity"]
    assert f"from {before:.2f} to {after:.2f}" in text
    assert table.count(f"{before:.2f}") == 1 and table.count(f"{after:.2f}") == 1  # not repeated for the prompted row
    # the answer-rate difference in the unit of the table's column (percent), not as a proportion
    assert "a difference of 9 [4, 15] percentage points" in text


def test_claim_text_and_formats() -> None:
    assert claim_text("×13.8 [11.1, 17.2], Holm p = 9.83e-19") == (
        r"$\times$13.8 [11.1, 17.2], Holm $p$ = $9.83\times10^{-19}$"
    )
    assert scientific("1e3 apples, 2.5e-05") == r"$1\times10^{3}$ apples, $2.5\times10^{-5}$"
    assert ratio_digits(103.0, 84.1) == 0 and ratio_digits(13.8, 11.4) == 1 and ratio_digits(1.37, 1.3) == 2
