"""The paper bundle: an ACL draft assembled from run directories (never from a model).

    <out>/main.tex            the draft: author placeholders + one section per experiment
    <out>/tables/<stem>.tex   every section's tables (\\input by main.tex)
    <out>/figures/<stage>-<stem>.pdf (+ .png)   the runs' figures, copied
    <out>/configs/<stage>.yaml                  each run's config (typeset in the appendix)
    <out>/references.bib, <out>/<style>.sty, <out>/sublens-layout.sty, <out>/summary.txt (the headline lines)
    <out>/main.pdf            when TeX is installed; its layout check (overfull lines and tables,
                              floats after the References) is in the message and in the manifest

Rebuilding from the same runs gives byte-identical files: nothing depends on the date, the
machine or absolute paths. A file the author edited since the last build is kept as
`<name>.edited` instead of being overwritten (hashes of what was written live in
`.sublens-bundle.json`).

This module assembles main.tex and builds the bundle; the parts live beside it:
`bundle_runs` (loading run directories), `bundle_draft` (the front matter with the headline
notes, and the sections), `bundle_appendix` (Limitations and the reproducibility appendix),
`bundle_files` (writing, the manifest, the layout record). Everything other code imports is
importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sublens.errors import SublensError
from sublens.report.bundle_appendix import (
    VERBATIM_WIDTH,
    _appendix,
    _limitations,
    _short_path,
    _tt,
    _verbatim_lines,
)
from sublens.report.bundle_draft import _conclusion, _Draft, _preamble, _stage_tex, headline_item
from sublens.report.bundle_files import (
    MANIFEST,
    _inside,
    _install_style,
    _read_manifest,
    _record_layout,
    _targets,
    _write,
)
from sublens.report.bundle_runs import _ordered, load_runs, style_settings
from sublens.report.compile import (
    TEX_INSTALL_HINT,
    compile_tex,
    style_source,
    tex_available,
)
from sublens.report.layout import LayoutReport
from sublens.report.stages import STAGE_ORDER, StageRun
from sublens.report.sweeps import LoadedSweep, load_sweep, sweeps_appendix, sweeps_section

__all__ = [
    "MANIFEST",
    "MODES",
    "VERBATIM_WIDTH",
    "Bundle",
    "_short_path",
    "_tt",
    "_verbatim_lines",
    "build_bundle",
    "headline_item",
    "load_runs",
    "load_sweep",
    "references_bib",
    "style_settings",
]

MODES = ("review", "final", "preprint")


@dataclass(frozen=True)
class Bundle:
    folder: Path
    main_tex: Path
    pdf: Path | None
    headline: list[str]
    message: str
    problems: list[str] = field(default_factory=list)  # LaTeX or section failures; empty when all went well
    layout: LayoutReport | None = None  # the compiled PDF's layout check; None without a PDF

    @property
    def ok(self) -> bool:
        return not self.problems


def _main_tex(
    stages: dict[str, StageRun],
    meta: dict[str, Any],
    package: str,
    mode: str,
    draft: _Draft,
    sweeps: Sequence[LoadedSweep] = (),
) -> str:
    expected = _ordered(meta.get("expected") or STAGE_ORDER)
    body = [_stage_tex(stage, stages.get(stage), meta, draft) for stage in expected]
    if sweeps:
        body.append(_sweeps_tex(sweeps, draft))
    unfinished = [s for s in expected if s not in stages or not stages[s].ok]
    return "\n".join(
        [
            _preamble(package, mode, draft.headline),
            *body,
            _conclusion(),
            _limitations({s: stages[s] for s in expected if s in stages}, unfinished),
            r"\sublensflushfloats % every table and figure of the paper before the References",
            r"\bibliography{references}",
            "",
            _appendix({s: stages[s] for s in expected if s in stages}, expected, meta, draft),
            *([_sweeps_appendix_tex(sweeps, draft)] if sweeps else []),
            r"\end{document}",
            "",
        ]
    )


def _sweeps_tex(sweeps: Sequence[LoadedSweep], draft: _Draft) -> str:
    """The powered designs' section: its tables and figures go into the draft's files."""
    tex, tables, figures, headline = sweeps_section(sweeps)
    for stem, table in tables.items():
        draft.add_text(f"tables/{stem}.tex", table, "sweeps")
    draft.copies.update(figures)
    draft.headline += headline
    return tex


def _sweeps_appendix_tex(sweeps: Sequence[LoadedSweep], draft: _Draft) -> str:
    tex, files = sweeps_appendix(sweeps)
    for rel, text in files.items():
        draft.add_text(rel, text, "sweeps")
    return tex


def _assemble(
    stages: dict[str, StageRun], meta: dict[str, Any], package: str, mode: str, sweeps: Sequence[LoadedSweep] = ()
) -> _Draft:
    draft = _Draft()
    main = _main_tex(stages, meta, package, mode, draft, sweeps)
    draft.texts["main.tex"] = main
    draft.texts["references.bib"] = references_bib()
    draft.texts["summary.txt"] = "".join(f"{line}\n" for line in draft.headline)
    return draft


def references_bib() -> str:
    return resources.files("sublens.report").joinpath("references.bib").read_text(encoding="utf-8")


# ---- the bundle ----------------------------------------------------------------------------------


def build_bundle(
    stages: dict[str, StageRun],
    out: Path,
    *,
    mode: str = "review",
    acl_sty: str | None = None,
    compile: bool = True,
    meta: dict[str, Any] | None = None,
    sweeps: Sequence[LoadedSweep] = (),
) -> Bundle:
    """Write the bundle into `out` and compile it when TeX is present.

    A LaTeX failure does not lose the written bundle: it is reported in `message` and
    `problems` (so is a section that could not be built); SublensError is raised only for
    bad arguments (mode, acl_sty) and for a manifest or draft path that would lead out of `out`,
    before anything is written.
    """
    if mode not in MODES:
        raise SublensError(f"mode={mode!r}: choose one of {', '.join(MODES)}.")
    meta = meta or {"expected": _ordered(stages), "notes": []}
    package = style_source(acl_sty).stem  # validates acl_sty before anything is written
    draft = _assemble(stages, meta, package, mode, sweeps)
    # Before anything is written: no path of the manifest or of the draft may lead out of `out`.
    for rel in _targets(draft, acl_sty):
        _inside(out, rel, "The bundle")
    previous = _read_manifest(out)
    out.mkdir(parents=True, exist_ok=True)
    _install_style(out, acl_sty)
    notes = [*meta.get("notes", []), *_write(out, draft, previous)]
    main_tex = out / "main.tex"
    problems = list(draft.problems)
    pdf, layout = None, None
    if not compile:
        notes.append("LaTeX not run (--no-compile).")
    elif not tex_available():
        notes.append(TEX_INSTALL_HINT)
    else:
        try:
            compiled = compile_tex(main_tex)
        except SublensError as exc:
            problems.append(f"The bundle is written, but the PDF is not: {exc}")
        else:
            if compiled is not None:
                pdf, layout = compiled.pdf, compiled.layout
                notes += layout.problems()  # warnings: the PDF is there, an author can fix these
                _record_layout(out, layout)
    message = "\n".join([*problems, *notes])
    return Bundle(out, main_tex, pdf, list(draft.headline), message, problems, layout)
