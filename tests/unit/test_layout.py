"""The layout check of the compiled draft: overfull lines and tables, tables scaled to fit, and
floats placed after the References, read back from pdflatex's log and the .aux."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixture_runs import RUNS, needs_tex
from sublens.cli import app
from sublens.report import bundle as bundle_module
from sublens.report.bundle import MANIFEST, _tt, build_bundle, load_runs
from sublens.report.compile import CompileResult, compile_tex, install_style
from sublens.report.layout import (
    MIN_TABLE_SCALE,
    OVERFULL_TOLERANCE_PT,
    LateFloat,
    LayoutReport,
    OverfullBox,
    ScaledTable,
    parse_float_positions,
    parse_log,
    unresolved_references,
)

# ---- the log ---------------------------------------------------------------------------------------

MAIN_TEX = (
    "\n".join(
        [
            r"\documentclass{article}",
            r"\begin{document}",
            r"\section{Results}",
            "",
            r"\paragraph{Results.} Measured (under",
            "the training system prompt.",
            r"\input{tables/wide}",
            r"\input{tables/fine}",
            "",
            "",
            "",
            r"\url{https://example.org/(}",
            "",
            "almost) fits",
            r"\end{document}",
        ]
    )
    + "\n"
)

WIDE_TEX = (
    "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{sublensfit}",
            r"\begin{tabular}{lrrrrr}",
            r"a & b & c & d & e & f \\",
            r"a & b & c & d & e & f \\",
            r"a & b & c & d & e & f \\",
            r"a & b & c & d & e & f \\",
            r"\end{tabular}",
            r"\end{sublensfit}",
            r"\caption{Wide.}",
            r"\label{tab:wide}",
            r"\end{table}",
        ]
    )
    + "\n"
)

# As pdflatex writes it with max_print_line=10000 (compile.py sets it): one message a line.
LOG = r"""This is pdfTeX, Version 3.141592653-2.6-1.40.24 (TeX Live 2022/Debian) (preloaded format=pdflatex 2023.1.22)  26 NOV 2026 12:00
entering extended mode
 restricted \write18 enabled.
**main.tex
(./main.tex
LaTeX2e <2022-11-01> patch level 1
(/usr/share/texlive/texmf-dist/tex/latex/base/article.cls
Document Class: article 2022/07/02 v1.4n Standard LaTeX document class
(/usr/share/texlive/texmf-dist/tex/latex/base/size10.clo
File: size10.clo 2022/07/02 v1.4n Standard LaTeX file (size option)
))
Package microtype Info: Loading generic protrusion settings for font family
(microtype)             `pcr' (encoding: T1).

Overfull \hbox (13.70142pt too wide) in paragraph at lines 5--6
 []\T1/ptm/b/n/10.95 (-20) Results.[] \T1/ptm/m/n/10.95 (-20) Mea-sured (un-der
 []

[1{/var/lib/texmf/fonts/map/pdftex/updmap/pdftex.map}]
(./tables/wide.tex
Overfull \hbox (35.64209pt too wide) in paragraph at lines 4--9
 [][]
 []

sublens-layout: scaled natural=254.72823pt available=219.08614pt line=10
) (./tables/fine.tex)
Underfull \hbox (badness 10000) in paragraph at lines 12--12
[]\T1/pcr/m/n/10 https : / / example . org / (
 []

Overfull \hbox (0.5pt too wide) in paragraph at lines 14--14
\T1/ptm/m/n/10.95 (-20) almost) fits
 []

Overfull \hbox (3.0pt too wide) has occurred while \output is active
\T1/ptm/m/n/10.95 Header
 []

[2] (./main.aux) )
Output written on main.pdf (2 pages, 12345 bytes).
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "tables").mkdir()
    (tmp_path / "main.tex").write_text(MAIN_TEX)
    (tmp_path / "tables" / "wide.tex").write_text(WIDE_TEX)
    (tmp_path / "tables" / "fine.tex").write_text("% fits\n")
    return tmp_path


def test_the_log_gives_each_overfull_box_with_its_file_lines_and_float(folder: Path) -> None:
    report = parse_log(LOG, folder)
    assert report.overfull == (
        OverfullBox(13.70142, "main.tex", (5, 6), None, "Results. Mea-sured (un-der"),
        OverfullBox(35.64209, "tables/wide.tex", (4, 9), "tab:wide", ""),
        # after a box whose text opens a parenthesis it never closes: still main.tex
        OverfullBox(0.5, "main.tex", (14, 14), None, "almost) fits"),
        OverfullBox(3.0, "main.tex", None, None, "Header"),
    )
    assert report.scaled_tables == (ScaledTable(254.72823, 219.08614, "tables/wide.tex", 10, "tab:wide"),)
    assert report.scaled_tables[0].scale == pytest.approx(0.86, abs=0.005)


def test_tolerance_and_warnings(folder: Path) -> None:
    report = parse_log(LOG, folder)
    assert OVERFULL_TOLERANCE_PT == 1.0 and MIN_TABLE_SCALE == 0.9
    assert [box.width_pt for box in report.too_wide()] == [35.64209, 13.70142, 3.0]  # widest first; not 0.5
    assert not report.ok
    problems = report.problems()
    assert problems[0] == "Layout: 35.6 pt into the margin at tables/wide.tex line 4-9 (tab:wide)"
    assert 'Layout: 13.7 pt into the margin at main.tex line 5-6: "Results. Mea-sured (un-der"' in problems
    assert any("tables/wide.tex line 10 (tab:wide) scaled to 0.86" in p for p in problems)
    record = report.as_dict()
    assert record["ok"] is False and record["overfull"][1]["float"] == "tab:wide"
    json.dumps(record)  # goes into the manifest as it is
    slight = LayoutReport((OverfullBox(0.9, "main.tex", (1, 1)),), (ScaledTable(220.0, 219.0, "main.tex", 3),))
    assert slight.ok and slight.problems() == []


def test_without_the_source_files_the_log_still_names_them() -> None:
    report = parse_log(LOG)
    assert [box.file for box in report.overfull] == ["main.tex", "tables/wide.tex", "main.tex", "main.tex"]
    assert report.overfull[1].float_label is None  # the source is not at hand


# ---- floats after the References ------------------------------------------------------------------

LEFT, RIGHT, COLUMN, PAGE = 4661699, 20138548, "219.08614pt", "455.24411pt"


def _aux(*marks: tuple[str, str, int, int, int, str]) -> str:
    lines = [
        r"\relax",
        r"\newlabel{tab:early}{{1}{2}{Early.\relax }{table.caption.1}{}}",
        r"\newlabel{fig:right}{{3}{2}{On the right.\relax }{figure.caption.3}{}}",
        r"\newlabel{tab:late}{{2}{3}{Late.\relax }{table.caption.2}{}}",
    ]
    lines += [
        rf"\sublenspos{{{kind}}}{{{name}}}{{{page}}}{{{x}}}{{{y}}}{{{hsize}}}"
        for kind, name, page, x, y, hsize in marks
    ]
    return "\n".join(lines) + "\n"


def test_floats_after_the_references_heading_by_page_column_and_height() -> None:
    aux = _aux(
        ("float", "figure 1", 1, RIGHT, 36752014, COLUMN),  # an earlier page
        ("float", "table 1", 2, LEFT, 41401086, PAGE),  # across both columns, above the heading
        ("float", "figure 2", 2, LEFT, 45000000, COLUMN),  # the heading's column, above it
        ("float", "figure 3", 2, RIGHT, 45000000, COLUMN),  # the next column: after
        ("float", "figure 4", 2, LEFT, 10000000, COLUMN),  # the heading's column, below it: after
        ("references", "References", 2, LEFT, 30000000, COLUMN),
        ("float", "table 2", 3, LEFT, 41401086, PAGE),  # a later page: after
        ("appendix-float", "table 3", 4, LEFT, 41401086, PAGE),  # the appendix: where it belongs
    )
    late, references_page, seen = parse_float_positions(aux)
    assert references_page == 2 and seen == 6
    assert [(f.name, f.label, f.page) for f in late] == [
        ("figure 3", "fig:right", 2),
        ("figure 4", None, 2),
        ("table 2", "tab:late", 3),
    ]
    report = LayoutReport(late_floats=tuple(late), references_page=2)
    assert "Layout: table 2 (tab:late) is placed on page 3, after the References (page 2)" in report.problems()


def test_references_in_the_right_column_and_no_markers() -> None:
    aux = _aux(
        ("float", "figure 1", 2, LEFT, 10000000, COLUMN),  # the left column, lower: before
        ("references", "References", 2, RIGHT, 30000000, COLUMN),
    )
    assert parse_float_positions(aux) == ([], 2, 1)
    assert parse_float_positions(r"\relax" + "\n") == ([], None, 0)


# ---- the report ------------------------------------------------------------------------------------


def test_the_cli_warns_and_the_manifest_keeps_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = LayoutReport(
        (OverfullBox(264.2, "main.tex", (240, 241), None, "The runs used"),),
        late_floats=(LateFloat("table 11", "tab:hybrid_matrix", 17, 16),),
        references_page=16,
        floats_seen=14,
    )

    def compiled(tex: Path) -> CompileResult:
        tex.with_suffix(".pdf").write_bytes(b"%PDF-1.5\n")
        return CompileResult(tex.with_suffix(".pdf"), tex.with_suffix(".log"), layout)

    monkeypatch.setattr(bundle_module, "tex_available", lambda: True)
    monkeypatch.setattr(bundle_module, "compile_tex", compiled)
    out = tmp_path / "paper"
    result = CliRunner().invoke(app, ["report", str(RUNS / "teacher"), "--out", str(out)])
    assert result.exit_code == 0, result.output  # warnings: the PDF is there
    output = " ".join(result.output.split())
    assert 'Layout: 264.2 pt into the margin at main.tex line 240-241: "The runs used"' in output
    assert "Layout: table 11 (tab:hybrid_matrix) is placed on page 17, after the References (page 16)" in output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["layout"]["ok"] is False and manifest["layout"]["overfull"][0]["lines"] == [240, 241]
    assert "main.tex" in manifest["files"]  # the hashes are still there
    # a build without LaTeX leaves no stale check behind
    assert CliRunner().invoke(app, ["report", str(RUNS / "teacher"), "--out", str(out), "--no-compile"]).exit_code == 0
    assert "layout" not in json.loads((out / MANIFEST).read_text())


# ---- compiled (TeX) ----------------------------------------------------------------------------------


def _document(flush: bool) -> str:
    big = [
        rf"\begin{{figure*}}[t]\centering\rule{{0.5\textwidth}}{{0.6\textheight}}"
        rf"\caption{{Big {n}.}}\label{{fig:big{n}}}\end{{figure*}}"
        for n in range(4)
    ]
    return (
        "\n".join(
            [
                r"\documentclass[11pt]{article}",
                r"\usepackage[review]{sublens-acl}",
                r"\title{Layout}",
                r"\author{A. Author}",
                r"\begin{document}",
                r"\maketitle",
                r"\section{Body}",
                r"A name that cannot break: \mbox{\texttt{averyveryverylongidentifierthatcannotbreakanywhere}}.",
                "",
                r"A name that can: \texttt{smollm2-135m-instruct-with-a-long-suffix\_and\_underscores\_too}. " * 3,
                "",
                # the Limitations' Scale paragraph with long model names (a reviewer found one 264 pt wide)
                rf"\textbf{{Scale.}} The runs used {_tt('HuggingFaceTB/SmolLM2-135M-Instruct')}, "
                rf"{_tt('runs/20261125-161300_paper_938f62/stages/teacher/checkpoint_final_weights')}, "
                r"\texttt{gemma3-270m} and \texttt{smollm2-135m-instruct}; whether the effects hold at scale "
                "is not tested here.",
                "",
                *big,
                "Some text. " * 50,
                r"\sublensflushfloats" if flush else "",
                r"\begin{thebibliography}{1}",
                r"\bibitem[Author(2025)]{a} A. Author. 2025. A paper.",
                r"\end{thebibliography}",
                r"\end{document}",
            ]
        )
        + "\n"
    )


@needs_tex
@pytest.mark.parametrize("flush", [False, True])
def test_the_check_finds_what_it_is_for_in_a_compiled_pdf(tmp_path: Path, flush: bool) -> None:
    install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text(_document(flush))
    result = compile_tex(tex)
    assert result is not None
    layout = result.layout
    (box,) = layout.too_wide()  # the \mbox; the other names break after their - and _
    assert box.file == "main.tex" and box.lines is not None and box.lines[0] == 8 and box.width_pt > 100
    assert layout.references_page is not None and layout.floats_seen == 4
    if flush:
        assert layout.late_floats == ()
    else:
        assert {f.label for f in layout.late_floats} >= {"fig:big3"}
        assert all(f.page > layout.references_page for f in layout.late_floats)


@needs_tex
def test_the_bundle_of_the_recorded_runs_fits_its_pages(tmp_path: Path) -> None:
    """The draft from the fixture runs (every stage, as tests/unit/test_bundle.py builds it):
    no line or table beyond the tolerance, no table scaled to unreadable, every float before
    the References. Nothing is allow-listed."""
    stages, meta = load_runs(RUNS)
    result = build_bundle(stages, tmp_path / "paper", meta=meta)
    assert result.ok and result.pdf is not None, result.message
    layout = result.layout
    assert layout is not None
    assert layout.too_wide() == [], layout.problems()
    assert layout.too_small() == [], layout.problems()
    assert layout.late_floats == (), layout.problems()
    assert layout.references_page is not None and layout.floats_seen >= 20  # the check did look
    assert layout.unresolved == (), layout.problems()  # every \\ref and \\cite resolved
    assert layout.ok and "Layout:" not in result.message
    manifest = json.loads((tmp_path / "paper" / MANIFEST).read_text())
    assert manifest["layout"]["ok"] is True and manifest["layout"]["late_floats"] == []
    assert manifest["layout"]["references_page"] == layout.references_page


def test_unresolved_references_and_citations_are_found_across_wrapped_log_lines() -> None:
    wrapped = "LaTeX Warning: Reference `sec:a-rather-long-label-that-makes-the-line-wrap' on "
    assert len(wrapped) == 79
    log = "\n".join(
        [
            "LaTeX Warning: Citation `holm1979simple' on page 2 undefined on input line 40.",
            wrapped,
            "page 3 undefined on input line 51.",
            "LaTeX Warning: Citation `holm1979simple' on page 4 undefined on input line 90.",
            "Package natbib Warning: Citation `fisher1922' on page 5 undefined on input line 7.",
            "LaTeX Warning: There were undefined references.",
        ]
    )
    assert unresolved_references(log) == (
        "citation holm1979simple",
        "reference sec:a-rather-long-label-that-makes-the-line-wrap",
        "citation fisher1922",
    )
    assert unresolved_references("LaTeX Warning: Label `x' multiply defined.") == ()


@needs_tex
def test_a_compiled_pdf_with_a_dangling_ref_fails_the_check(tmp_path: Path) -> None:
    install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text("\\documentclass{article}\n\\begin{document}\nSee Section~\\ref{sec:nowhere}.\n\\end{document}\n")
    result = compile_tex(tex)
    assert result is not None
    assert result.layout.unresolved == ("reference sec:nowhere",) and not result.layout.ok
    assert "Layout: reference sec:nowhere is undefined (printed as ??)" in result.layout.problems()
