"""The layout check of a compiled bundle: what pdflatex left behind, read back.

Overfull boxes come from the log (text or a table running into the margin, the line numbers or
off the page), tables that sublens-layout.sty had to scale down to fit also from the log, and
floats placed after the References heading from the positions sublens-layout.sty writes into
the .aux. `layout_report` gathers them for one compiled main.tex; `sublens.report.compile` runs
it after every compile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

OVERFULL_TOLERANCE_PT = 1.0  # an overfull box up to this much too wide is invisible in print
MIN_TABLE_SCALE = 0.9  # a table scaled below this (\small, 10 pt) would set its text under 9 pt


@dataclass(frozen=True)
class OverfullBox:
    """A line (or a table, a figure) wider than the space it was set in."""

    width_pt: float  # how much too wide
    file: str  # the source file, relative to the folder of main.tex where it lies there
    lines: tuple[int, int] | None  # source lines of the paragraph or alignment; None in the output routine
    float_label: str | None = None  # the \label of the table or figure it lies in, if any
    text: str = ""  # the start of the line, as pdflatex shows it (fonts left out)

    def where(self) -> str:
        lines = (
            ""
            if self.lines is None
            else f" line {self.lines[0]}" + (f"-{self.lines[1]}" if self.lines[1] != self.lines[0] else "")
        )
        inside = f" ({self.float_label})" if self.float_label else ""
        return f"{self.file}{lines}{inside}"


@dataclass(frozen=True)
class ScaledTable:
    """A table that sublens-layout's sublensfit scaled down to the width of its column or page."""

    natural_pt: float
    available_pt: float
    file: str
    line: int
    float_label: str | None = None

    @property
    def scale(self) -> float:
        return self.available_pt / self.natural_pt if self.natural_pt else 1.0


@dataclass(frozen=True)
class LateFloat:
    """A float of the paper's body placed after the References heading."""

    name: str  # "table 11"
    label: str | None
    page: int
    references_page: int


@dataclass(frozen=True)
class LayoutReport:
    overfull: tuple[OverfullBox, ...] = ()
    scaled_tables: tuple[ScaledTable, ...] = ()
    late_floats: tuple[LateFloat, ...] = ()
    references_page: int | None = None  # None: no marker found, floats not checked
    floats_seen: int = 0
    tolerance_pt: float = OVERFULL_TOLERANCE_PT
    notes: tuple[str, ...] = field(default=())
    unresolved: tuple[str, ...] = ()  # "reference sec:x", "citation key": what printed as ?? in the PDF

    def too_wide(self) -> list[OverfullBox]:
        """The overfull boxes beyond the tolerance, widest first."""
        return sorted((b for b in self.overfull if b.width_pt > self.tolerance_pt), key=lambda b: -b.width_pt)

    def too_small(self) -> list[ScaledTable]:
        return [t for t in self.scaled_tables if t.scale < MIN_TABLE_SCALE]

    @property
    def ok(self) -> bool:
        return not (self.too_wide() or self.too_small() or self.late_floats or self.unresolved)

    def problems(self) -> list[str]:
        """One warning per problem, for the report's message."""
        out = [
            f"Layout: {box.width_pt:.1f} pt into the margin at {box.where()}" + (f': "{box.text}"' if box.text else "")
            for box in self.too_wide()
        ]
        out += [
            f"Layout: table at {t.file} line {t.line}"
            + (f" ({t.float_label})" if t.float_label else "")
            + f" scaled to {t.scale:.2f} of its width to fit (text below 9 pt); give it more room"
            for t in self.too_small()
        ]
        out += [
            f"Layout: {f.name}"
            + (f" ({f.label})" if f.label else "")
            + f" is placed on page {f.page}, after the References (page {f.references_page})"
            for f in self.late_floats
        ]
        out += [f"Layout: {what} is undefined (printed as ??)" for what in self.unresolved]
        return out

    def as_dict(self) -> dict[str, Any]:
        """For the bundle's manifest."""
        return {
            "ok": self.ok,
            "tolerance_pt": self.tolerance_pt,
            "overfull": [
                {
                    "width_pt": round(b.width_pt, 2),
                    "file": b.file,
                    "lines": list(b.lines) if b.lines else None,
                    "float": b.float_label,
                    "text": b.text,
                }
                for b in self.overfull
            ],
            "scaled_tables": [
                {"file": t.file, "line": t.line, "float": t.float_label, "scale": round(t.scale, 3)}
                for t in self.scaled_tables
            ],
            "late_floats": [
                {"name": f.name, "label": f.label, "page": f.page, "references_page": f.references_page}
                for f in self.late_floats
            ],
            "references_page": self.references_page,
            "floats_checked": self.floats_seen,
            "unresolved": list(self.unresolved),
            "notes": list(self.notes),
        }


def layout_report(tex: Path) -> LayoutReport:
    """The layout of the compiled `tex`, from its .log and .aux (empty when they are missing)."""
    log, aux = tex.with_suffix(".log"), tex.with_suffix(".aux")
    text = log.read_text(errors="replace") if log.is_file() else ""
    report = parse_log(text, tex.parent) if text else LayoutReport()
    report = replace(report, unresolved=unresolved_references(text))
    if not aux.is_file():
        return report
    late, references_page, seen = parse_float_positions(aux.read_text(errors="replace"))
    notes = report.notes
    if references_page is None and seen:
        notes += ("floats not checked: no References heading found (no sublens-layout marker)",)
    return LayoutReport(
        report.overfull,
        report.scaled_tables,
        tuple(late),
        references_page,
        seen,
        notes=notes,
        unresolved=report.unresolved,
    )


_UNDEFINED = re.compile(
    r"(?:LaTeX|Package natbib) Warning: (?P<kind>Reference|Citation) `(?P<key>[^']+)'"
    r"(?: on page \d+)? undefined"
)


def unresolved_references(log_text: str) -> tuple[str, ...]:
    """Every \\ref and \\cite the final pdflatex pass could not resolve, once each, in order."""
    found = [f"{m['kind'].lower()} {m['key']}" for m in _UNDEFINED.finditer(_unwrapped(log_text))]
    return tuple(dict.fromkeys(found))


LOG_LINE = 79  # pdflatex breaks log lines at this many characters (max_print_line)


def _unwrapped(log_text: str) -> str:
    """The log with pdflatex's hard line breaks undone: a line of exactly LOG_LINE characters
    continues on the next one."""
    out: list[str] = []
    for line in log_text.splitlines():
        if out and len(out[-1]) % LOG_LINE == 0 and out[-1]:
            out[-1] += line
        else:
            out.append(line)
    return "\n".join(out)


_BOX = re.compile(r"^(?:Overfull|Underfull) \\[hv]box ")
_OVERFULL = re.compile(
    r"^Overfull \\hbox \((?P<pt>[\d.]+)pt too wide\) (?:in (?:paragraph|alignment) at lines "
    r"(?P<first>\d+)--(?P<last>\d+)|detected at line (?P<line>\d+)|has occurred while \\output is active)"
)
_SCALED = re.compile(
    r"^sublens-layout: scaled natural=(?P<natural>[\d.]+)pt available=(?P<available>[\d.]+)pt line=(?P<line>\d+)"
)
_FILE = re.compile(r"\(([^\s()]+\.[A-Za-z0-9]+)")
_FONT = re.compile(r"\\[A-Za-z0-9]+/[^\s]+(?: \([+-]?\d+\))? ?")


def parse_log(text: str, folder: Path | None = None) -> LayoutReport:
    """Overfull hboxes and scaled tables in a pdflatex log, each with the file it comes from.

    The file is followed the way pdflatex reports it: "(./tables/x.tex" when it opens a file
    and ")" when it closes one. Every "(" is pushed (a file, or None for other text) and every
    ")" pops, so balanced parentheses in messages do no harm; the text of a box that a message
    shows (up to the next empty line) is skipped, since it may hold unbalanced ones. `folder`,
    the folder of main.tex, is where file names are looked up and what they are made relative
    to; the float a box lies in is read from that source file.
    """
    stack: list[str | None] = []
    overfull: list[OverfullBox] = []
    scaled: list[ScaledTable] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if _BOX.match(line):
            shown = []
            i += 1
            while i < len(lines) and lines[i].strip():
                shown.append(lines[i])
                i += 1
            match = _OVERFULL.match(line)
            if match:
                overfull.append(_overfull(match, _current(stack, folder), shown, folder))
            continue
        match = _SCALED.match(line)
        if match:
            file = _current(stack, folder)
            at = int(match["line"])
            scaled.append(
                ScaledTable(
                    float(match["natural"]), float(match["available"]), file, at, _float_label(folder, file, at)
                )
            )
        else:
            _track_files(line, stack, folder)
        i += 1
    return LayoutReport(tuple(overfull), tuple(scaled))


def _track_files(line: str, stack: list[str | None], folder: Path | None) -> None:
    pos = 0
    while True:
        opening, closing = line.find("(", pos), line.find(")", pos)
        if opening < 0 and closing < 0:
            return
        if closing < 0 or 0 <= opening < closing:
            match = _FILE.match(line, opening)
            name = match[1] if match and _is_file(match[1], folder) else None
            stack.append(name)
            pos = opening + 1
        else:
            if stack:
                stack.pop()
            pos = closing + 1


def _is_file(name: str, folder: Path | None) -> bool:
    """Whether "(name" opens a file: it exists (relative to `folder`); without a folder, any name
    with an extension."""
    if folder is None:
        return True
    path = Path(name)
    return (path if path.is_absolute() else folder / path).is_file()


def _current(stack: list[str | None], folder: Path | None) -> str:
    name = next((n for n in reversed(stack) if n is not None), "?")
    return name.removeprefix("./") if not Path(name).is_absolute() else name


def _overfull(match: re.Match[str], file: str, shown: list[str], folder: Path | None) -> OverfullBox:
    if match["first"]:
        lines: tuple[int, int] | None = (int(match["first"]), int(match["last"]))
    elif match["line"]:
        lines = (int(match["line"]), int(match["line"]))
    else:
        lines = None
    text = _FONT.sub("", shown[0] if shown else "").replace("[]", "").strip()
    label = _float_label(folder, file, lines[0]) if lines else None
    return OverfullBox(float(match["pt"]), file, lines, label, text[:80])


_ENV = re.compile(r"\\(begin|end)\{((?:table|figure)\*?)\}")
_LABEL = re.compile(r"\\label\{([^}]*)\}")


def _float_label(folder: Path | None, file: str, line: int) -> str | None:
    """The label (else the environment) of the table or figure around `line` of `file`."""
    if folder is None or Path(file).is_absolute() or not (folder / file).is_file():
        return None
    source = (folder / file).read_text(errors="replace").splitlines()
    open_envs: list[tuple[str, int]] = []
    for number, text in enumerate(source[:line], start=1):
        for match in _ENV.finditer(text):
            if match[1] == "begin":
                open_envs.append((match[2], number))
            elif open_envs:
                open_envs.pop()
    if not open_envs:
        return None
    env, begin = open_envs[-1]
    for text in source[begin - 1 :]:
        label = _LABEL.search(text)
        if label:
            return label[1]
        if f"\\end{{{env}}}" in text:
            break
    return env


_POS = re.compile(r"^\\sublenspos\{([^}]*)\}\{([^}]*)\}\{(\d+)\}\{(-?\d+)\}\{(-?\d+)\}\{([\d.]+)pt\}", re.M)
_NEWLABEL = re.compile(r"^\\newlabel\{((?:tab|fig):[^}]*)\}\{\{([^}]*)\}", re.M)


def parse_float_positions(aux: str) -> tuple[list[LateFloat], int | None, int]:
    """Floats of the body placed after the References heading, from sublens-layout's markers in
    the .aux: (late floats, the heading's page or None, how many body floats were marked).

    On the heading's page a float is after it when it lies in a later column, or in the same
    column (or across both) below the heading; positions come from \\pdfsavepos at shipout.
    """
    marks = [(m[1], m[2], int(m[3]), int(m[4]), int(m[5]), float(m[6])) for m in _POS.finditer(aux)]
    labels = {
        (("table" if key.startswith("tab:") else "figure"), number): key for key, number in _NEWLABEL.findall(aux)
    }
    references = next((m for m in marks if m[0] == "references"), None)
    body = [m for m in marks if m[0] == "float"]
    if references is None:
        return [], None, len(body)
    _, _, ref_page, ref_x, ref_y, ref_hsize = references
    half_column = ref_hsize * 65536 / 2  # sp
    late = []
    for _, name, page, x, y, hsize in body:
        if page < ref_page:
            continue
        if page == ref_page:
            spans = hsize > ref_hsize + 1
            if not spans and x < ref_x - half_column:
                continue  # an earlier column
            if (spans or abs(x - ref_x) <= half_column) and y > ref_y:
                continue  # above the heading, in its column or across both
        kind, _, number = name.partition(" ")
        late.append(LateFloat(name, labels.get((kind, number)), page, ref_page))
    return late, ref_page, len(body)
