"""The bundle's section on sweeps (`sublens report RUN --sweep FOLDER`): the powered designs
that one run per seed cannot decide. Each sweep folder gives a table of its grid points'
comparisons across seeds (ratio, 95% CI, Holm p, verdict, minimal detectable effect), its
effect figure, a paragraph in words, and its design verbatim in the appendix. Everything is
read from what `sublens sweep` wrote (sweep.json, sweep-effect.parquet and the figure);
nothing is recomputed here, so the verdicts are those the sweep printed."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sublens.errors import SublensError
from sublens.report.bundle_appendix import _verbatim_lines
from sublens.report.latex import booktabs_table, counted, escape, fmt, fmt_ci, fmt_p
from sublens.report.names import display_name
from sublens.report.verdicts import claim_text
from sublens.runs import read_json
from sublens.sweep import StudentSides, student_sides
from sublens.sweep.points import NO_GRID
from sublens.trainable import describe_trainable

SWEEP_SPEC = "sweep.json"
EFFECT_TABLE = "sweep-effect.parquet"
EFFECT_FIGURE = "sweep-effect.pdf"


@dataclass(frozen=True)
class EffectRow:
    """One grid point's comparison across seeds, as `sublens sweep` decided it."""

    grid: str
    comparison: str
    n_seeds: int
    ratio: float
    ci_low: float
    ci_high: float
    prediction: str
    verdict: str
    p_holm: float
    reason: str
    minimal_detectable: float
    seeds_for_margin: float
    margin: float
    students_learned: str = "not recorded"  # yes / not shown: the students' loss fell (sublens.learning)
    owl_specific: str = ""  # the grid point's yes / no / not tested (sweep.combined.owl_specific)
    owl_specific_why: str = ""

    @property
    def trained(self) -> str:
        return self.comparison.partition(" vs ")[0]

    @property
    def _sides(self) -> StudentSides:
        """The row's students as the sweep read them (`sublens.sweep.student_sides`); a
        comparison named with `--comparison` that is not between students keeps its names."""
        trained, _, reference = self.comparison.partition(" vs ")
        return student_sides(self.comparison) or StudentSides(trained, reference, reference)

    @property
    def is_specificity(self) -> bool:
        """The owl student over another teacher's student of the same trainable set
        ('owl-full vs eagle-full'), not over its matched control."""
        return self._sides.is_specificity

    @property
    def arm(self) -> str:
        """The trainable set ('full+lora8')."""
        return self._sides.arm

    @property
    def teacher(self) -> str:
        """The data set of the trained student: 'owl', 'eagle', 'dog-2', 'owl-no-random'."""
        return self._sides.trained

    @property
    def other(self) -> str:
        """A specificity row's other teacher ('eagle'); '' for a row over the control."""
        return self._sides.reference if self.is_specificity else ""


@dataclass(frozen=True)
class LoadedSweep:
    name: str  # the sweep folder's name: 20261202-181447_subliminal
    folder: Path
    spec: dict[str, Any]  # sweep.json without its points
    rows: list[EffectRow]
    base: str | None  # the base model spec of the points, when they agree
    examples: int | None  # training examples per data set, when the points agree
    prompts: int | None  # number prompts per data seed, when the points agree

    @property
    def figure(self) -> Path:
        return self.folder / EFFECT_FIGURE

    @property
    def label(self) -> str:
        return "sweep-" + re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-")


def load_sweep(folder: Path) -> LoadedSweep:
    """A finished sweep folder, checked before any bundle file is written."""
    spec_file, table = folder / SWEEP_SPEC, folder / EFFECT_TABLE
    if not spec_file.is_file():
        raise SublensError(f"{folder} is not a sweep folder (no {SWEEP_SPEC}); give what `sublens sweep` printed.")
    if not table.is_file() or not (folder / EFFECT_FIGURE).is_file():
        raise SublensError(
            f"{folder} has no effect table or figure yet: no point has finished. Continue it with "
            f"`sublens sweep ... --folder {folder}`."
        )
    import pandas as pd

    spec = read_json(spec_file)
    effect = pd.read_parquet(table)
    if effect.empty or "verdict" not in effect.columns:
        raise SublensError(f"{table} has no verdicts (written by an older sublens): run `sublens sweep` on it again.")
    rows = [_row(record) for record in effect.to_dict("records")]
    points = [p for p in spec.get("points", []) if (folder / "points" / p["id"] / "config.yaml").is_file()]
    configs = [yaml.safe_load((folder / "points" / p["id"] / "config.yaml").read_text()) for p in points]
    return LoadedSweep(
        name=folder.resolve().name,
        folder=folder,
        spec={k: v for k, v in spec.items() if k != "points"},
        rows=rows,
        base=_shared(configs, "base"),
        examples=_shared(configs, "n_examples"),
        prompts=_shared([c.get("data") or {} for c in configs], "n_prompts"),
    )


def _row(record: dict[str, Any]) -> EffectRow:
    return EffectRow(
        grid=str(record["grid"]),
        comparison=str(record["comparison"]),
        n_seeds=int(record["n_seeds"]),
        ratio=float(record["share_ratio"]),
        ci_low=float(record["share_ratio_ci_low"]),
        ci_high=float(record["share_ratio_ci_high"]),
        prediction=str(record["prediction"]),
        verdict=str(record["verdict"]),
        p_holm=float(record["p_holm"]),
        reason=str(record["reason"]),
        minimal_detectable=float(record["minimal_detectable"]),
        seeds_for_margin=float(record["seeds_for_margin"]),
        margin=float(record["margin"]),
        students_learned=str(record.get("students_learned") or "not recorded"),
        owl_specific=str(record.get("owl_specific") or ""),
        owl_specific_why=str(record.get("owl_specific_why") or ""),
    )


def _shared(configs: Sequence[dict[str, Any]], key: str) -> Any:
    values = {repr(c.get(key)) for c in configs}
    return configs[0].get(key) if configs and len(values) == 1 else None


# ---- the section ----------------------------------------------------------------------------------
def sweeps_section(sweeps: Sequence[LoadedSweep]) -> tuple[str, dict[str, str], dict[str, Path], list[str]]:
    """The section's LaTeX, its tables (stem -> float), its figures (bundle path -> source) and
    headline lines, for the sweeps in the order given."""
    lines = [r"\section{Powered designs}", r"\label{sec:sweeps}", "", _methods(sweeps), ""]
    tables: dict[str, str] = {}
    figures: dict[str, Path] = {}
    headline: list[str] = []
    for sweep in sweeps:
        lines += [rf"\paragraph{{{escape(_title(sweep))}.}}", _results(sweep), ""]
        tables[sweep.label] = _table(sweep)
        lines += [rf"\input{{tables/{sweep.label}}}", ""]
        figures[f"figures/{sweep.label}.pdf"] = sweep.figure
        lines += _figure(sweep)
        headline += [_headline(row) for row in sweep.rows if row.teacher == "owl" and not row.is_specificity]
    return "\n".join(lines), tables, figures, headline


def _methods(sweeps: Sequence[LoadedSweep]) -> str:
    margins = sorted({row.margin for sweep in sweeps for row in sweep.rows})
    margin = ", ".join(f"$\\times${m:g}" for m in margins)
    return (
        "Each design below runs the subliminal experiment once per grid point and training seed; "
        "each seed re-samples the number prompts and every teacher's data and trains the students "
        "from the base model, so the seed is the unit of inference. At every grid point each "
        "trained student is compared with the control student of the same trainable set and seed. "
        "The estimand is owl's panel-share ratio, trained student over control student; the "
        "interval is a Student-$t$ 95\\% CI of the mean log ratio across seeds, and the test a "
        "one-sample $t$-test on the per-seed log ratios, Holm-adjusted across the rows of one design "
        f"\\citep{{holm1979simple}}. The margin, the smallest effect of interest, is {margin}. A student "
        "of the owl data is predicted to rise (supported: significant and not wholly inside the "
        "margin; equivalent: the row's CI inside the margin, even where it excludes 1, and its "
        "equivalence test, two one-sided $t$-tests against the margin, Holm-adjusted across the design's "
        "rows); a student of "
        "another animal's teacher (e.g. eagle) is predicted to leave owl's share unchanged (a rise there is "
        "one that any animal's numbers cause), and the owl student is predicted to rise over that student "
        "(per seed, the owl student's ratio over the other's: the control cancels); that row, not the other "
        "student's own, decides specificity. "
        "Owl-specific transfer needs both rises, over the control and over every other animal's student, "
        "supported; its absence needs one of them shown absent (equivalent or contradicted), and a rise "
        "left undecided makes the point inconclusive. Each design's grid and settings are in "
        "Appendix~\\ref{sec:reproducibility}."
    )


def _title(sweep: LoadedSweep) -> str:
    """'Trainable sets: full fine-tuning, LoRA rank 1; full fine-tuning, LoRA rank 64'."""
    arms = list(dict.fromkeys(describe_trainable(row.arm) for row in sweep.rows))
    return "Trainable sets: " + "; ".join(arms) if len(arms) <= 4 else f"{len(arms)} trainable sets"


def _results(sweep: LoadedSweep) -> str:
    where = display_name(sweep.base) if sweep.base else "the base model"
    scale = []
    if sweep.prompts:
        scale.append(counted(int(sweep.prompts), "number prompt"))
    if sweep.examples:
        scale.append(f"{counted(int(sweep.examples), 'training example')} per data set")
    seeds = counted(len(sweep.spec.get("seeds") or []), "seed")
    sentences = [
        f"{escape(where)}, {', '.join(scale) + ', ' if scale else ''}{seeds} per grid point "
        f"(Table~\\ref{{tab:{sweep.label}}}, Figure~\\ref{{fig:{sweep.label}}})."
    ]
    for row in sweep.rows:
        sentences.append(f"{escape(_student(row))}: {claim_text(row.reason)} ({_verdict(row)}).")
    for row in _one_per_grid_point(sweep.rows):
        sentences.append(_specific_sentence(row))
    return " ".join(sentences)


def _one_per_grid_point(rows: Sequence[EffectRow]) -> list[EffectRow]:
    """The first row of each grid point that has an owl-specific verdict (it is the point's)."""
    first: dict[str, EffectRow] = {}
    for row in rows:
        if row.owl_specific:
            first.setdefault(row.grid, row)
    return list(first.values())


def _specific_sentence(row: EffectRow) -> str:
    """'Owl-specific transfer with full fine-tuning: \\textbf{inconclusive} (the owl student over
    its control: inconclusive).' The word (`sublens.sweep.combined.owl_specific`): yes where the
    owl rise and its rise over every other animal's student are supported, no where one is shown
    absent."""
    settings = "" if _only_arm(row.grid) else f" ({row.grid})"
    where = escape(describe_trainable(row.arm) + settings)
    return (
        f"Owl-specific transfer with {where}: \\textbf{{{escape(row.owl_specific)}}} ({escape(row.owl_specific_why)})."
    )


def _student(row: EffectRow) -> str:
    who = "the owl student" if row.teacher == "owl" else f"the {row.teacher} student"
    if row.is_specificity:
        who = f"the owl student over the {row.other} student"
    words = describe_trainable(row.arm)
    settings = "" if _only_arm(row.grid) else f" ({row.grid})"
    return f"With {words}{settings}, {who}"


def _only_arm(grid: str) -> bool:
    """Whether a grid point says no more than its trainable set (the arm the row names)."""
    if grid == NO_GRID:
        return True
    return all(
        key.split("=")[0].strip() in ("arm", "modes", "modes+control_modes", "trainable") for key in grid.split(", ")
    )


def _verdict(row: EffectRow) -> str:
    return f"\\textbf{{{escape(row.verdict)}}}, {counted(row.n_seeds, 'seed')}"


def _table(sweep: LoadedSweep) -> str:
    header = ["Trainable set", "Teacher", "Seeds", "Learned", "Ratio [95% CI]", "Holm p", "Verdict", "Detectable"]
    rows = [
        [
            escape(describe_trainable(row.arm) + ("" if _only_arm(row.grid) else f" ({row.grid})")),
            escape(f"owl over {row.other}" if row.is_specificity else row.teacher),
            str(row.n_seeds),
            "--" if row.students_learned == "not recorded" else escape(row.students_learned),
            fmt_ci(row.ratio, _finite(row.ci_low), _finite(row.ci_high)),
            fmt_p(row.p_holm),
            escape(row.verdict),
            "--" if not math.isfinite(row.minimal_detectable) else f"$\\times${fmt(row.minimal_detectable)}",
        ]
        for row in sweep.rows
    ]
    caption = (
        "Owl's panel-share ratio, each trained student over the control student of the same "
        "trainable set and seed: geometric mean over seeds with its Student-$t$ 95\\% CI, Holm-adjusted $p$, "
        "the verdict, and the smallest ratio the seeds would detect at the measured between-seed SD "
        "(power 0.8). Owl data predict a rise; another animal's data no change; owl over another animal's "
        "student (the owl student's ratio over that student's, same seed) a rise. Learned: yes where the "
        "students' training loss fell significantly (the last quarter of the steps against the first, "
        "every seed pooled), else not shown; a null of students not shown to learn is inconclusive."
    )
    return booktabs_table(header, rows, caption, f"tab:{sweep.label}", align="llrrrrlr", wide=True)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _figure(sweep: LoadedSweep) -> list[str]:
    return [
        r"\begin{figure*}[t]",
        r"\centering",
        rf"\includegraphics[width=\textwidth,height=0.35\textheight,keepaspectratio]{{figures/{sweep.label}.pdf}}",
        r"\caption{Each grid point's trained students over their matched control students: each seed's "
        r"ratio (grey), the geometric mean and its 95\% CI across seeds (black), the margin shaded.}",
        rf"\label{{fig:{sweep.label}}}",
        r"\end{figure*}",
        "",
    ]


def _headline(row: EffectRow) -> str:
    ci = "" if not math.isfinite(row.ci_low) else f" [{row.ci_low:.3g}, {row.ci_high:.3g}]"
    specific = f"; owl-specific: {row.owl_specific}" if row.owl_specific else ""
    return (
        f"sweep, {describe_trainable(row.arm)}: {row.trained} x{row.ratio:.3g}{ci} over {row.n_seeds} seeds, "
        f"{row.verdict}{specific}"
    )


def sweeps_appendix(sweeps: Sequence[LoadedSweep]) -> tuple[str, dict[str, str]]:
    """Each design verbatim (experiment, base config, shared settings, grid, seeds) for the
    appendix, and the files the bundle keeps (configs/<label>.yaml)."""
    lines = [r"\subsection{Sweeps}", ""]
    files = {}
    for sweep in sweeps:
        text = yaml.safe_dump(sweep.spec, sort_keys=False, allow_unicode=True, width=90)
        files[f"configs/{sweep.label}.yaml"] = text
        lines += [
            rf"\paragraph{{{escape(sweep.name)}}} (\texttt{{configs/{escape(sweep.label)}.yaml}})",
            r"{\scriptsize",
            r"\begin{verbatim}",
            *_verbatim_lines(text),
            r"\end{verbatim}",
            "}",
            "",
        ]
    return "\n".join(lines), files
