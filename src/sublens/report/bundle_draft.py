"""The draft's front matter and its sections: what main.tex holds before the Limitations, built
in memory (`_Draft`) so that writing is one careful step."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sublens.report.compile import LAYOUT_PACKAGE
from sublens.report.latex import escape
from sublens.report.names import note_words
from sublens.report.sections import Figure, Section, builder, figure_label
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_text

# Section titles for stages whose builder gave no Section (missing run, builder failure).
_TITLES = {
    "teacher": "The biased teacher",
    "entanglement": "Token entanglement",
    "mechanistic": "Where the bias lives: residual stream and heads",
    "pruning": "Head pruning",
    "subliminal": "Subliminal transfer",
    "distill": "Cross-architecture transfer by attention distillation",
    "hybrid": "Head-swap hybrids and component transplants",
}


@dataclass
class _Draft:
    """Everything the bundle will hold, built in memory first so writing is one careful step."""

    texts: dict[str, str] = field(default_factory=dict)  # bundle-relative path -> content
    copies: dict[str, Path] = field(default_factory=dict)  # bundle-relative path -> source file
    headline: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    measured: dict[str, str] = field(default_factory=dict)  # a section's shared definition -> the stage that printed it

    def add_text(self, rel: str, text: str, owner: str) -> None:
        if rel in self.texts and self.texts[rel] != text:
            self.problems.append(f"{owner}: {rel} is already written by another stage; kept the first.")
            return
        self.texts[rel] = text


def _build_section(stage: str, run: StageRun, draft: _Draft) -> Section | None:
    try:
        build = builder(stage)
        return build(run) if build is not None else None
    except Exception as exc:  # one section's failure must not lose the whole draft; reported
        draft.problems.append(f"{stage}: no section from run {run.run_id} ({type(exc).__name__}: {exc}).")
        return None


def _unfinished(stage: str, run: StageRun | None, meta: dict[str, Any]) -> str:
    """The sentence an author must not miss: this stage has no (complete) result."""
    if run is None:
        entry = ((meta.get("paper") or {}).get("stages") or {}).get(stage) or {}
        status = entry.get("status", "not run")
        return (
            rf"\textbf{{This stage did not finish}}: the bundle has no run directory for it "
            rf"(status \texttt{{{escape(status)}}}). Run \texttt{{sublens run {escape(stage)}}} "
            r"and rebuild the bundle with \texttt{sublens report}."
        )
    status = run.record.get("status") or "unknown"
    error = str(run.record.get("error") or "").strip().splitlines()
    detail = f": {escape(_clip(error[0], 300))}" if error else ""
    partial = " The text below uses its partial results." if run.results else ""
    return (
        rf"\textbf{{This stage did not finish}} (run \texttt{{{escape(run.run_id)}}}, "
        rf"status \texttt{{{escape(status)}}}{detail}).{partial} Resume it with "
        rf"\texttt{{sublens run {escape(stage)} -{{}}-resume RUN\_DIR}} and rebuild the bundle."
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _figure_tex(stage: str, run: StageRun, figure: Figure, draft: _Draft) -> list[str]:
    source = run.figures().get(figure.stem)
    if source is None:
        draft.problems.append(f"{stage}: figure {figure.stem!r} is not among the figures of run {run.run_id}.")
        return [f"% figure {figure.stem} missing from run {run.run_id}", ""]
    name = f"{stage}-{figure.stem}"
    draft.copies[f"figures/{name}.pdf"] = source
    if source.with_suffix(".png").is_file():
        draft.copies[f"figures/{name}.png"] = source.with_suffix(".png")
    env, width = ("figure*", r"\textwidth") if figure.wide else ("figure", r"\columnwidth")
    return [
        rf"\begin{{{env}}}[t]",
        r"\centering",
        rf"\includegraphics[width={width},height=0.45\textheight,keepaspectratio]{{figures/{name}.pdf}}",
        rf"\caption{{{figure.caption}}}",
        rf"\label{{{figure_label(stage, figure.stem)}}}",
        rf"\end{{{env}}}",
        "",
    ]


def _stage_tex(stage: str, run: StageRun | None, meta: dict[str, Any], draft: _Draft) -> str:
    section = _build_section(stage, run, draft) if run is not None else None
    title = section.title if section is not None else escape(_TITLES.get(stage, stage.capitalize()))
    lines = [rf"\section{{{title}}}", rf"\label{{sec:{stage}}}", ""]
    if run is None or not run.ok:
        lines += [_unfinished(stage, run, meta), ""]
        status = "no run" if run is None else (run.record.get("status") or "unknown")
        draft.headline.append(f"{stage}: did not finish ({status})")
    if section is None or run is None:
        if run is not None and run.ok:
            lines += [
                r"\textit{[No text could be generated for this stage: see the message of"
                r" \texttt{sublens report}.]}",
                "",
            ]
        return "\n".join(lines)
    lines += [r"\paragraph{Setup.}", _methods_tex(stage, section, draft), ""]
    lines += [r"\paragraph{Results.}", section.results.strip(), ""]
    for stem, table in section.tables.items():
        draft.add_text(f"tables/{stem}.tex", table, stage)
        lines.append(rf"\input{{tables/{stem}}}")
    if section.tables:
        lines.append("")
    for figure in section.figures:
        lines += _figure_tex(stage, run, figure, draft)
    draft.headline += [note_words(line) for line in section.headline]  # claims and sets in words
    return "\n".join(lines)


def _methods_tex(stage: str, section: Section, draft: _Draft) -> str:
    """The section's methods, then its shared definition (`Section.measurement`): in full in the
    first section that has it, as a reference to that section in every later one."""
    methods = section.methods.strip()
    if not section.measurement:
        return methods
    first = draft.measured.setdefault(section.measurement, stage)
    if first == stage:
        return f"{methods} {section.measurement.strip()}"
    return (
        f"{methods} The three measures (P(owl), the panel share $s$ and the answer rate) are defined "
        rf"in Section~\ref{{sec:{first}}}."
    )


_TIMES = re.compile(r"(?<![\w.\\])x(?=\d)")


_NUMBER_RANGE = re.compile(r"(?<=\d)-(?=\d)")


def headline_item(line: str) -> str:
    """A plain-text headline line (terminal wording: x1.37, 9.83e-19, ×, layers 20-29) as LaTeX
    for the abstract's notes: $\times$1.37, $9.83\times10^{-19}$, layers 20--29."""
    return _NUMBER_RANGE.sub("--", _TIMES.sub(lambda _: r"$\times$", claim_text(line)))


def _preamble(package: str, mode: str, headline: list[str]) -> str:
    items = [rf"\item {headline_item(line)}" for line in headline]
    notes = ["{\\raggedright", r"\begin{itemize}", *items, r"\end{itemize}", r"\par}"] if headline else []
    return "\n".join(
        [
            "% main.tex -- generated by `sublens report` from the run directories listed in the appendix.",
            "% Rebuilding rewrites this file; a copy you edited is kept as main.tex.edited.",
            "% Parts marked TODO(author) are yours to write; everything else says what the runs measured.",
            r"\documentclass[11pt]{article}",
            rf"\usepackage[{mode}]{{{package}}}",
            "% sublens-acl loads these already; repeated so the draft also works with the official acl.sty.",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage{times}",
            r"\usepackage{latexsym}",
            r"\usepackage{graphicx}",
            r"\usepackage{booktabs}",
            r"\usepackage{amsmath}",
            r"\usepackage{url}",
            "% sublens-layout: lines and tables kept inside their column, floats before the References,",
            "% and the markers with which `sublens report` checks that in the compiled PDF.",
            rf"\usepackage{{{LAYOUT_PACKAGE}}}",
            "",
            "% TODO(author): title and authors.",
            r"\title{\textit{[Author: write the title]}}",
            r"\author{\textit{[Author: names and affiliations]}}",
            "",
            r"\begin{document}",
            r"\maketitle",
            "",
            r"\begin{abstract}",
            "% TODO(author): write the abstract; the measured headline results below are notes for you.",
            r"\textit{[Author: write the abstract. Measured headline results, as notes:]}",
            *notes,
            r"\end{abstract}",
            "",
            r"\section{Introduction}",
            r"\label{sec:introduction}",
            "% TODO(author): write the introduction.",
            r"\textit{[Author: write the introduction. Background: subliminal learning \citep{cloud2025subliminal}"
            r" and the token-entanglement explanation \citep{zur2025owl}. Each section below tests one claim"
            r" and says, from the measured numbers, whether this run supports it.]}",
            "",
        ]
    )


def _conclusion() -> str:
    return "\n".join(
        [
            r"\section{Conclusion}",
            r"\label{sec:conclusion}",
            "% TODO(author): write the conclusion from the results paragraphs above.",
            r"\textit{[Author: write the conclusion. The results paragraphs above state which claims"
            r" the measured numbers support, contradict, or leave open.]}",
            "",
        ]
    )
