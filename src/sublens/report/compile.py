"""Compile a LaTeX bundle to PDF with latexmk, when TeX is installed."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

from sublens.errors import SublensError

TEX_INSTALL_HINT = (
    "Install TeX to get the PDF (Debian/Ubuntu: sudo apt-get install texlive-latex-base "
    "texlive-latex-recommended texlive-fonts-recommended latexmk), then run `sublens report RUN_DIR`."
)


def style_source(acl_sty: str | None = None) -> Path:
    """Our ACL-conformant style, or the user's copy of the official acl.sty."""
    if acl_sty:
        path = Path(acl_sty).expanduser()
        if not path.is_file() or path.suffix != ".sty":
            raise SublensError(f"acl_sty={acl_sty!r} is not a .sty file; give the path of your acl.sty.")
        return path
    return Path(str(resources.files("sublens.report").joinpath("style/sublens-acl.sty")))


def install_style(folder: Path, acl_sty: str | None = None) -> str:
    """Copy the style next to main.tex; returns the package name to \\usepackage."""
    source = style_source(acl_sty)
    shutil.copyfile(source, folder / source.name)
    return source.stem


def tex_available() -> bool:
    return shutil.which("latexmk") is not None and shutil.which("pdflatex") is not None


def latexmk_command(tex: Path) -> list[str]:
    """-norc: latexmk runs the Perl in any latexmkrc it finds (the bundle folder's own included),
    and a bundle folder may come from someone else; our build needs no rc file."""
    return ["latexmk", "-norc", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", tex.name]


def compile_pdf(tex: Path, timeout: int = 300) -> Path | None:
    """latexmk -pdf in the file's folder; None (and nothing raised) when TeX is missing."""
    if not tex_available():
        return None
    cmd = latexmk_command(tex)
    proc = subprocess.run(  # errors="replace": pdflatex prints 8-bit font bytes (e.g. an overfull "Martín")
        cmd, cwd=tex.parent, capture_output=True, text=True, errors="replace", timeout=timeout
    )
    pdf = tex.with_suffix(".pdf")
    if proc.returncode != 0 or not pdf.is_file():
        log = tex.with_suffix(".log")
        errors = [line for line in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
                  if line.startswith("!") or (":" in line and "error" in line.lower())]
        raise SublensError(
            f"LaTeX failed on {tex} (see {log}):\n" + "\n".join(errors[:10] or proc.stdout.splitlines()[-15:])
        )
    return pdf
