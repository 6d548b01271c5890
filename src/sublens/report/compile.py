"""Compile a LaTeX bundle to PDF with latexmk, when TeX is installed, and check its layout
(`sublens.report.layout`: overfull boxes, scaled tables and floats after the References)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sublens.errors import SublensError
from sublens.report.layout import LayoutReport, layout_report

TEX_INSTALL_HINT = (
    "Install TeX to get the PDF (Debian/Ubuntu: sudo apt-get install texlive-latex-base "
    "texlive-latex-recommended texlive-fonts-recommended latexmk), then run `sublens report RUN_DIR`."
)
LAYOUT_PACKAGE = "sublens-layout"
# pdflatex wraps its log at 79 characters, which splits file names and messages; a wide log
# keeps each on one line for the parser (a texmf.cnf variable, read from the environment).
_LOG_ENV = {"max_print_line": "10000"}


def style_source(acl_sty: str | None = None) -> Path:
    """Our ACL-conformant style, or the user's copy of the official acl.sty."""
    if acl_sty:
        path = Path(acl_sty).expanduser()
        if not path.is_file() or path.suffix != ".sty":
            raise SublensError(f"acl_sty={acl_sty!r} is not a .sty file; give the path of your acl.sty.")
        return path
    return Path(str(resources.files("sublens.report").joinpath("style/sublens-acl.sty")))


def layout_source() -> Path:
    """sublens-layout.sty: the layout safeguards and the markers of the layout check. sublens-acl
    loads it; main.tex loads it too, so a draft set with the official acl.sty has them."""
    return Path(str(resources.files("sublens.report").joinpath(f"style/{LAYOUT_PACKAGE}.sty")))


def install_style(folder: Path, acl_sty: str | None = None) -> str:
    """Copy the style (and sublens-layout.sty) next to main.tex; returns the package name to
    \\usepackage."""
    source = style_source(acl_sty)
    shutil.copyfile(source, folder / source.name)
    shutil.copyfile(layout_source(), folder / f"{LAYOUT_PACKAGE}.sty")
    return source.stem


def tex_available() -> bool:
    return shutil.which("latexmk") is not None and shutil.which("pdflatex") is not None


def latexmk_command(tex: Path) -> list[str]:
    """-norc: latexmk runs the Perl in any latexmkrc it finds (the bundle folder's own included),
    and a bundle folder may come from someone else; our build needs no rc file."""
    return ["latexmk", "-norc", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", tex.name]


def compile_pdf(tex: Path, timeout: int = 300) -> Path | None:
    """latexmk -pdf in the file's folder; None (and nothing raised) when TeX is missing."""
    result = compile_tex(tex, timeout)
    return result.pdf if result is not None else None


@dataclass(frozen=True)
class CompileResult:
    pdf: Path
    log: Path
    layout: LayoutReport


def compile_tex(tex: Path, timeout: int = 300) -> CompileResult | None:
    """latexmk -pdf in the file's folder, then the layout check of the result; None (and nothing
    raised) when TeX is missing, SublensError when LaTeX fails."""
    if not tex_available():
        return None
    cmd = latexmk_command(tex)
    proc = subprocess.run(  # errors="replace": pdflatex prints 8-bit font bytes (e.g. an overfull "Martín")
        cmd,
        cwd=tex.parent,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env={**os.environ, **_LOG_ENV},
    )
    pdf = tex.with_suffix(".pdf")
    log = tex.with_suffix(".log")
    if proc.returncode != 0 or not pdf.is_file():
        errors = [
            line
            for line in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
            if line.startswith("!") or (":" in line and "error" in line.lower())
        ]
        raise SublensError(
            f"LaTeX failed on {tex} (see {log}):\n" + "\n".join(errors[:10] or proc.stdout.splitlines()[-15:])
        )
    return CompileResult(pdf, log, layout_report(tex))
