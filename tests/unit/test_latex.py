"""LaTeX output: escaping, number formats, and tables that compile inside our ACL style."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fixture_runs import needs_tex
from sublens.figures import new_figure, save_figure
from sublens.report.compile import compile_pdf, compile_tex, install_style
from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci, fmt_fixed_ci, fmt_p


def test_escaping_of_specials_and_non_ascii_digits() -> None:
    assert escape("L3_H2 & 50% #1 $x$") == r"L3\_H2 \& 50\% \#1 \$x\$"
    assert escape("٣٤") == r"\texttt{U+0663}\texttt{U+0664}"
    assert escape("café ~{x}") == r"café \textasciitilde{}\{x\}"


def test_number_formats() -> None:
    assert fmt(1.8349) == "1.83"
    assert fmt(0.00123) == r"$1.2\times10^{-3}$"
    assert fmt(float("nan")) == "--" and fmt(None) == "--"
    assert fmt_ci(1.8, 1.52, 2.1) == "1.80 [1.52, 2.10]"
    assert fmt(-0.4216) == "$-$0.42"  # a minus sign, not the hyphen text mode prints for '-'
    assert fmt_p(0.0001) == r"$<$0.001" and fmt_p(0.0456) == "0.046"


def _document(body: str, mode: str) -> str:
    return "\n".join(
        [
            r"\documentclass[11pt]{article}",
            rf"\usepackage[{mode}]{{sublens-acl}}",
            r"\title{A Test of the Style}",
            r"\author{Ada Lovelace}",
            r"\begin{document}",
            r"\maketitle",
            r"\begin{abstract}A short abstract.\end{abstract}",
            r"\section{Results}",
            "Text " * 200,
            body,
            r"\end{document}",
        ]
    )


@needs_tex
@pytest.mark.parametrize("mode", ["review", "final"])
def test_tables_compile_inside_the_style(tmp_path: Path, mode: str) -> None:
    rows = [
        [escape("Increased_top"), fmt_ci(1.8, 1.5, 2.1), fmt_p(0.0004)],
        [escape("٣ & 87%"), fmt_ci(0.0012, 0.0009, 0.0015, 4), fmt_p(0.2)],
    ]
    table = booktabs_table(["category", "bias ratio", "p"], rows, "Bias \\& tokens.", "tab:test")
    tex = tmp_path / "main.tex"
    assert install_style(tmp_path) == "sublens-acl"
    tex.write_text(_document(table, mode), encoding="utf-8")
    pdf = compile_pdf(tex)
    assert pdf is not None and pdf.stat().st_size > 1000
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert "Type 3" not in fonts
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert ("Anonymous ACL submission" in text) == (mode == "review")
    assert "U+0663" in text and "1.80 [1.50, 2.10]" in text


def test_figures_are_vector_pdfs_without_type3_fonts(tmp_path: Path) -> None:
    fig, ax = new_figure()
    ax.plot(np.arange(5), np.arange(5) ** 2, label="owl")  # type: ignore[attr-defined]
    ax.set_xlabel("layer")  # type: ignore[attr-defined]
    ax.legend()  # type: ignore[attr-defined]
    pdf, png = save_figure(fig, tmp_path / "curve")
    raw = pdf.read_bytes()
    assert raw.startswith(b"%PDF") and png.read_bytes().startswith(b"\x89PNG")
    assert b"/Type3" not in raw and re.search(rb"/Subtype\s*/(TrueType|CIDFontType2|Type0)", raw)


def test_counts_agree_with_their_nouns() -> None:
    from sublens.report.latex import counted, noun_for

    assert counted(1, "seed") == "1 seed" and counted(3, "seed") == "3 seeds"
    assert counted(1200, "example") == "1,200 examples" and counted(None, "seed") == "-- seeds"
    assert counted(2, "analysis", "analyses") == "2 analyses"
    assert noun_for(["full"], "mode") == "mode" and noun_for(["full", "freeze-mlp"], "mode") == "modes"


@needs_tex
def test_a_table_wider_than_its_column_is_scaled_to_fit_and_reported(tmp_path: Path) -> None:
    header = ["model", *(f"column {i}" for i in range(6))]
    rows = [[r"\texttt{smollm2-135m-instruct}", *(fmt_ci(1.83, 1.52, 2.1) for _ in range(6))]]
    wide = booktabs_table(header, rows, "Too wide for one column.", "tab:too-wide")
    fits = booktabs_table(["a", "b"], [["1", "2"]], "Fits.", "tab:fits")
    assert r"\begin{sublensfit}" in wide and wide.index(r"\end{sublensfit}") < wide.index(r"\caption")
    install_style(tmp_path)
    tex = tmp_path / "main.tex"
    tex.write_text(_document(wide + fits, "review"), encoding="utf-8")
    result = compile_tex(tex)
    assert result is not None
    (scaled,) = result.layout.scaled_tables
    assert scaled.float_label == "tab:too-wide" and scaled.file == "main.tex" and scaled.scale < 0.6
    assert scaled.available_pt == pytest.approx(219.1, abs=0.5)  # the column, 7.7 cm
    assert result.layout.too_small() == [scaled] and result.layout.too_wide() == []


def test_optimizer_steps_agree_with_their_count() -> None:
    from sublens.report.latex import counted, steps_text

    assert counted(1, "seed") == "1 seed" and counted(1200, "example") == "1,200 examples"
    assert counted(None, "seed") == "-- seeds"
    assert steps_text([1]) == "1 optimizer step" and steps_text([1, 1]) == "1/1 optimizer step"
    assert steps_text([12]) == "12 optimizer steps" and steps_text([12, 1400]) == "12/1,400 optimizer steps"


def test_plain_text_symbols_are_set_as_mathematics_not_code_points() -> None:
    from sublens.report.latex import escape

    assert escape("inside ±0.3") == r"inside $\pm$0.3" and escape("×1.25") == r"$\times$1.25"
    assert escape("ρ ≥ 0.3 − 1") == r"$\rho$ $\geq$ 0.3 $-$ 1"
    assert escape("٣") == r"\texttt{U+0663}"  # other scripts keep their code point


def test_an_interval_is_written_in_one_form() -> None:
    from sublens.report.latex import fmt_ci

    assert fmt_ci(-0.0066, -0.01, -0.00094) == "$-$0.00660 [$-$0.01000, $-$0.00094]"  # not -0.01 next to 9.4e-4
    assert fmt_ci(0.0012, 0.0009, 0.0015, 4) == "0.0012 [0.0009, 0.0015]"  # one form already
    assert fmt_ci(1e-5, 5e-6, 2e-5) == r"$1.0\times10^{-5}$ [$5.0\times10^{-6}$, $2.0\times10^{-5}$]"
    assert fmt_ci(0.5, 0.0, 1e-4) == "0.50000 [0.00000, 0.00010]"
    assert fmt_ci(None, 0.001, 0.2) == "-- [0.0010, 0.2000]"
    assert fmt_ci(0.23, None, float("nan")) == "0.23"  # no interval: no '[--, --]'


def test_claim_text_sets_negative_numbers_with_a_minus_sign() -> None:
    from sublens.report.verdicts import claim_text

    assert claim_text("LM-head swap bias fraction -0.01") == "LM-head swap bias fraction $-$0.01"
    assert claim_text("(partial ρ = -0.10)") == r"(partial $\rho$ = $-$0.10)"
    assert claim_text("layers 0-5, the 2-digit set") == "layers 0-5, the 2-digit set"  # ranges, words
    assert claim_text("p = 9.83e-19") == r"$p$ = $9.83\times10^{-19}$"  # mathematics already


def test_fixed_decimals_for_a_fraction_and_its_interval() -> None:
    """A bound near zero neither lengthens the other numbers nor turns into a power of ten."""
    assert fmt_ci(0.11, -0.0089, 0.229) == "0.1100 [$-$0.0089, 0.2290]"  # why fractions need their own
    assert fmt_fixed_ci(0.11, -0.0089, 0.229) == "0.11 [$-$0.01, 0.23]"
    assert fmt_fixed_ci(0.5, None, None) == "0.50"
    assert fmt_fixed_ci(None, 0.1, 0.2) == "-- [0.10, 0.20]"
    assert fmt_fixed_ci(0.123, 0.1, 0.15, decimals=1) == "0.1 [0.1, 0.1]"
