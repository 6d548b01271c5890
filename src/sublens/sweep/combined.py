"""The combined table and the effect figure of a sweep: one row per finished point and
comparison (sweep.parquet), the rows the effect is read from (a named comparison, or every
matched comparison of each point: the owl student's and any extra teacher's, each over its
matched control), per grid point and comparison the geometric mean of the seeds' ratios with a
Student-t 95% CI across seeds and its verdict (`sublens.claims`, Holm across the sweep's rows),
and the figure that draws it with each seed's ratio as a dot and the margin shaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sublens.claims import (
    Claim,
    ClaimSettings,
    Decision,
    Prediction,
    decide_family,
    estimate_log_ratio,
    unless_learned,
)
from sublens.learning import LearningCheck, Quarters, pooled_check, quarters
from sublens.runs import atomic_write_parquet, read_json
from sublens.sweep.folder import SweepError, finished, point_dir
from sublens.sweep.points import SweepSpec, grid_label

TABLE_FILE = "sweep.parquet"
FIGURE_STEM = "sweep-effect"
COMPARISONS_FILE = "comparisons.parquet"  # what sublens.tables writes in a run folder


# ---- the combined table and the figure ------------------------------------------------------------
def combined_table(folder: Path, spec: SweepSpec) -> pd.DataFrame:
    """One row per finished point and comparison: the grid values, the seed, the point's run
    folder and the comparison's columns (sublens.tables); a point without a comparisons table
    (an experiment that writes none, or an unfinished run) contributes one row with its status."""
    frames = []
    for point in spec.points:
        run_dir = point_dir(folder, point)
        head = {
            "point": point.id,
            "grid": grid_label(point.values, point.settings),
            **point.values,
            "seed": point.seed,
            "run_dir": str(run_dir),
            "finished": finished(run_dir),
        }
        table = run_dir / COMPARISONS_FILE
        if head["finished"] and table.is_file():
            rows = pd.read_parquet(table).reset_index(drop=True)
            by_model = student_quarters(run_dir)
            learning = pd.DataFrame([_learning_columns(name, by_model) for name in rows["comparison"]])
            rows = pd.concat([rows, learning], axis=1)
            rows = pd.concat([rows, specificity_quotients(rows, by_model)], ignore_index=True)
            frames.append(pd.concat([pd.DataFrame([head] * len(rows)), rows], axis=1))
        else:
            frames.append(pd.DataFrame([head]))
    return pd.concat(frames, ignore_index=True)


def student_quarters(run_dir: Path) -> dict[str, list[Quarters | None]]:
    """Per trained model of a run ('owl-full'), each of its students' first and last quarter of
    training losses (`sublens.learning`; None for a curve too short to tell); empty for a run
    that trains no students."""
    results = run_dir / "results.json"
    students = read_json(results).get("students") if results.is_file() else None
    out: dict[str, list[Quarters | None]] = {}
    for name, student in (students or {}).items():
        curve = (student.get("training") or {}).get("loss_curve") or []
        out.setdefault(name.rsplit("-seed", 1)[0], []).append(quarters(curve))
    return out


OWL_DATA, CONTROL_DATA = "owl", "control"
FILTERED_OWL_DATA = ("owl-no-entangled", "owl-no-random")  # owl data, not another teacher's


@dataclass(frozen=True)
class StudentSides:
    """What a comparison of trained students compares: 'eagle-full+lora8 vs control-full+lora8'
    is ('eagle', 'full+lora8', 'control'); a specificity row 'owl-full vs eagle-full' is
    ('owl', 'full', 'eagle')."""

    trained: str  # the trained student's data set: 'owl', 'eagle', 'dog-2', 'owl-no-random'
    arm: str  # the trainable set both students share
    reference: str  # 'control' (the matched control student), or another teacher's data set

    @property
    def is_specificity(self) -> bool:
        return self.reference != CONTROL_DATA


def student_sides(comparison: str) -> StudentSides | None:
    """The sides of a comparison between students of one trainable set, read from the
    reference's name where it is the matched control (a data set's name may itself hold a
    hyphen: dog-2, owl-no-random), else from the owl student's ('owl-A vs eagle-A', as
    `specificity_quotients` names it); None for any other (against the base model or the
    teacher, or a control model's own comparison)."""
    trained, _, reference = comparison.partition(" vs ")
    if not is_matched(comparison) or not reference:
        return None
    if reference.startswith(f"{CONTROL_DATA}-"):
        arm = reference.removeprefix(f"{CONTROL_DATA}-")
    elif trained.startswith(f"{OWL_DATA}-"):
        arm = trained.removeprefix(f"{OWL_DATA}-")
    else:
        return None
    if not (trained.endswith(f"-{arm}") and reference.endswith(f"-{arm}")):
        return None
    return StudentSides(trained.removesuffix(f"-{arm}"), arm, reference.removesuffix(f"-{arm}"))


def specificity_quotients(rows: pd.DataFrame, by_model: dict[str, list[Quarters | None]]) -> pd.DataFrame:
    """One run's specificity comparisons, 'owl-A vs eagle-A': for every other teacher whose
    student shares the owl student's trainable set A, the owl student's ratio over the control
    student divided by that student's ratio over the same control (the control cancels: owl's
    share in the owl student over that in the eagle student). Predicted to rise (`predicted`):
    a rise any animal-loving teacher's numbers cause is not owl transfer. Every '..._ratio'
    column is divided; intervals are left empty (the sweep's interval is across seeds). The
    learning columns are the two trained students'."""
    ratios = [c for c in rows.columns if c.endswith("_ratio")]
    by_data: dict[str, dict[str, pd.Series]] = {}
    for _, row in rows.iterrows():
        sides = student_sides(str(row["comparison"]))
        if sides is not None and not sides.is_specificity:
            by_data.setdefault(sides.arm, {})[sides.trained] = row
    out = []
    for arm, students in by_data.items():
        owl = students.get(OWL_DATA)
        if owl is None:
            continue
        for other in [d for d in students if d != OWL_DATA and d not in FILTERED_OWL_DATA]:
            name = f"{OWL_DATA}-{arm} vs {other}-{arm}"
            quotient = {c: _quotient(owl[c], students[other][c]) for c in ratios}
            reference = {"reference": f"{other}-{arm}", "n_seeds": owl.get("n_seeds")}
            out.append({"comparison": name, **quotient, **reference, **_learning_columns(name, by_model)})
    return pd.DataFrame(out)


def _quotient(top: Any, bottom: Any) -> float:
    try:
        value = float(top) / float(bottom)
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _learning_columns(comparison: str, by_model: dict[str, list[Quarters | None]]) -> dict[str, Any]:
    """Both sides' students of 'owl-full vs control-full': each curve's first- and last-quarter
    losses and how many curves were too short; None where neither side is a student (the base
    model and the teacher need no check)."""
    parts = [q for side in comparison.split(" vs ") for q in by_model.get(side, [])]
    if not parts:
        return {"loss_first": None, "loss_last": None, "loss_unchecked": None}
    known = [q for q in parts if q is not None]
    return {
        "loss_first": [q.first for q in known],  # per student curve
        "loss_last": [q.last for q in known],
        "loss_unchecked": len(parts) - len(known),
    }


def is_matched(name: str) -> bool:
    """A comparison of a trained model against its matched control: not against the base
    model, and not a control model's own comparison ('owl-full vs control-full')."""
    return not name.endswith(" vs base") and not name.startswith("control") and not name.startswith("teacher")


def chosen_rows(table: pd.DataFrame, comparison: str | None) -> pd.DataFrame:
    """The rows the effect is read from: the named comparison of every point, or (None) every
    matched comparison of each point (the owl student's over its control, and an extra
    teacher's, e.g. eagle's, over the same control: the specificity check)."""
    if "comparison" not in table:
        return table.iloc[0:0]
    if comparison is not None:
        return table[table["comparison"] == comparison]
    return table[table["comparison"].map(lambda n: isinstance(n, str) and is_matched(n))]


def predicted(comparison: str) -> Prediction:
    """What a comparison is expected to show: the owl data's students (also filtered ones) a
    rise in the trait's share over their control; any other teacher's students (eagle, dog...)
    no change of the trait's share, so that a rise there says the transfer is not owl-specific."""
    return "increase" if comparison.startswith("owl-") else "none"


def _claim(comparison: str, grid: str, settings: ClaimSettings) -> Claim:
    trained, _, control = comparison.partition(" vs ")
    prediction = predicted(comparison)
    statement = (
        f"{trained} raises the trait's panel share over {control}"
        if prediction == "increase"
        else f"{trained} leaves the trait's panel share within ×{settings.margin:g} of {control}"
    )
    return Claim(
        name=f"{grid}: {comparison}",
        statement=statement,
        estimand=f"the trait's panel-share ratio, {trained} over {control}, same seed",
        unit="seed",
        prediction=prediction,
        family="sweep",
        settings=settings,
    )


def effect_by_grid_point(
    rows: pd.DataFrame, column: str = "share_ratio", settings: ClaimSettings | None = None
) -> pd.DataFrame:
    """Per grid point and comparison: seeds, the geometric mean of the seeds' ratios and its
    Student-t 95% CI (the mean log ratio across seeds; the seed is the unit; fewer than two
    seeds: no interval), and the verdict of its claim (`predicted`), Holm-adjusted across every
    row of the sweep (its equivalence tests too, `sublens.claims.decide_family`), with the minimal detectable ratio and the seeds the margin would need."""
    settings = settings or ClaimSettings()
    groups = []
    for (grid, comparison), group in rows.groupby(["grid", "comparison"], sort=False):
        logs = [math.log(v) for v in group[column] if isinstance(v, float) and v > 0 and math.isfinite(v)]
        groups.append((str(grid), str(comparison), logs, group))
    claims = [
        (_claim(comparison, grid, settings), estimate_log_ratio(logs, "seed")) for grid, comparison, logs, _ in groups
    ]
    decisions = decide_family(claims)
    rows_out = []
    for (grid, comparison, logs, group), decision in zip(groups, decisions, strict=True):
        recorded, learning = _group_learning(group)
        # a null of students (of either kind of row) not shown to learn is inconclusive, a student
        # without a recorded curve counting as not shown; the base model and the teacher need no
        # check. Holm is unchanged.
        if recorded or student_sides(comparison) is not None:
            decision = unless_learned(decision, learning)
        rows_out.append(_effect_row(grid, comparison, logs, decision, column) | _learning_row(recorded, learning))
    effect = pd.DataFrame(rows_out)
    specific = {grid: owl_specific(group) for grid, group in effect.groupby("grid", sort=False)}
    effect["owl_specific"] = [specific[g][0] for g in effect["grid"]]
    effect["owl_specific_why"] = [specific[g][1] for g in effect["grid"]]
    return effect


SHOWN_ABSENT = ("equivalent", "contradicted")  # a leg shown not to rise (no effect of interest, or a fall)


def owl_specific(point: pd.DataFrame) -> tuple[str, str]:
    """Whether a grid point shows owl-specific transfer, from its decided rows. Two legs: the
    owl student's rise over its control, and for every other teacher's student in the same
    trainable set the owl student's rise over that student (a rise any animal's numbers cause
    is not owl transfer).
    - 'yes': every leg supported;
    - 'no': some leg shown absent (equivalent: no rise as large as the margin; or contradicted);
    - 'not tested': the owl rise supported, but no other teacher's student trained beside it;
    - 'inconclusive': otherwise, a leg undecided and none shown absent. Like every verdict, a
      leg that was not shown to rise is not a leg shown not to rise.
    ('', '') for a point without an owl student over its control."""
    verdicts = dict(zip(point["comparison"], point["verdict"], strict=True))
    sides = {c: student_sides(c) for c in verdicts}
    transfer = [v for c, v in verdicts.items() if (s := sides[c]) and s.trained == OWL_DATA and not s.is_specificity]
    if not transfer:
        return "", ""
    specificity = {
        s.reference: verdicts[c] for c, s in sides.items() if s and s.trained == OWL_DATA and s.is_specificity
    }
    legs = [("the owl student over its control", v) for v in transfer]
    legs += [(f"over the {other} student", v) for other, v in specificity.items()]
    absent = [f"{leg}: {v}" for leg, v in legs if v in SHOWN_ABSENT]
    if absent:
        return "no", "; ".join(absent)
    undecided = [f"{leg}: {v}" for leg, v in legs if v != "supported"]
    if undecided:
        return "inconclusive", "; ".join(undecided)
    if not specificity:
        return "not tested", "no other animal's student was trained in the same trainable set"
    others = ", ".join(f"the {other} student" for other in specificity)
    return "yes", f"the owl student rises over its control and over {others}"


def _group_learning(group: pd.DataFrame) -> tuple[bool, LearningCheck | None]:
    """Whether a grid point's comparison has students' curves at all (another experiment's
    comparisons have none), and their learning check: every seed's two sides pooled."""
    if "loss_first" not in group:
        return False, None
    parts: list[Quarters | None] = []
    for first, last, unchecked in zip(group["loss_first"], group["loss_last"], group["loss_unchecked"], strict=True):
        if first is None or (isinstance(unchecked, float) and math.isnan(unchecked)):
            continue
        parts += [Quarters(list(f), list(la)) for f, la in zip(first, last, strict=True)]
        parts += [None] * int(unchecked)
    return bool(parts), pooled_check(parts)


def _learning_row(recorded: bool, learning: LearningCheck | None) -> dict[str, str]:
    if not recorded:
        return {"students_learned": "not recorded", "learning": ""}
    # "not shown", not "no": a fall that misses significance does not show the students unmoved
    if learning is None:
        return {"students_learned": "not shown", "learning": "every loss curve too short to read"}
    return {"students_learned": "yes" if learning.learned else "not shown", "learning": learning.words()}


def _effect_row(grid: str, comparison: str, logs: list[float], decision: Decision, column: str) -> dict[str, Any]:
    est = decision.estimate
    assert est is not None
    return {
        "grid": grid,
        "comparison": comparison,
        "n_seeds": len(logs),
        column: est.ratio if est.ratio is not None else math.nan,
        f"{column}_ci_low": est.ci_low if est.ci_low is not None else math.nan,
        f"{column}_ci_high": est.ci_high if est.ci_high is not None else math.nan,
        "per_seed": sorted(math.exp(v) for v in logs),
        "prediction": decision.claim.prediction,
        "verdict": decision.verdict.value,
        "p_holm": decision.p_adjusted if decision.p_adjusted is not None else math.nan,
        # the equivalence test's (Holm across the rows), where the CI lies inside the margin
        "p_equivalence_holm": (
            decision.equivalence_p_adjusted if decision.equivalence_p_adjusted is not None else math.nan
        ),
        "reason": decision.reason,
        "settle": decision.settle,  # what would decide an open verdict
        "minimal_detectable": decision.mde if decision.mde is not None else math.nan,
        "seeds_for_margin": decision.units_needed if decision.units_needed is not None else math.nan,
        "margin": decision.claim.settings.margin,
    }


def collect(
    folder: Path, spec: SweepSpec, comparison: str | None = None, settings: ClaimSettings | None = None
) -> tuple[Path | None, list[Path]]:
    """Write sweep.parquet, the effect table (sweep-effect.parquet, with verdicts) and the
    effect figure from the points finished so far."""
    table = combined_table(folder, spec)
    table_path = folder / TABLE_FILE
    atomic_write_parquet(table_path, table)
    effect = effect_by_grid_point(chosen_rows(table, comparison), settings=settings)
    if effect.empty:
        if comparison is not None:
            raise SweepError(f"no finished point has a comparison named {comparison!r}; see {table_path}.")
        return table_path, []
    atomic_write_parquet(folder / f"{FIGURE_STEM}.parquet", effect)
    label = comparison or "trained model over its matched control or the model the row names"
    return table_path, effect_figure(effect, label, folder / FIGURE_STEM)


def effect_figure(effect: pd.DataFrame, comparison: str, stem: Path, column: str = "share_ratio") -> list[Path]:
    """One row per grid point: each seed's ratio (grey), the geometric mean and its 95% CI across
    seeds (black), on a log axis (drawn as log ratios, labelled as ratios) with 1 dashed."""
    import matplotlib.pyplot as plt

    from sublens.figures import DOUBLE_COLUMN_IN, PAPER_RC, save_figure

    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(DOUBLE_COLUMN_IN, 1.1 + 0.3 * len(effect)))
        positions = np.arange(len(effect))[::-1]
        for y, (_, row) in zip(positions, effect.iterrows(), strict=True):
            first = y == positions[0]
            ax.scatter(
                np.log(row["per_seed"]),
                [y] * len(row["per_seed"]),
                s=10,
                color="0.6",
                zorder=2,
                label="one seed" if first else None,
            )
            low, high = row[f"{column}_ci_low"], row[f"{column}_ci_high"]
            if math.isfinite(low) and math.isfinite(high):
                ax.plot(np.log([low, high]), [y, y], color="black", linewidth=1.2, zorder=3)
            ax.scatter(
                np.log([row[column]]),
                [y],
                s=22,
                color="black",
                zorder=4,
                label="geometric mean and 95% CI across seeds" if first else None,
            )
        ax.axvline(0.0, color="0.4", linestyle="--", linewidth=0.8, label="no effect")
        if "margin" in effect:
            margin = math.log(float(effect["margin"].iloc[0]))
            ax.axvspan(-margin, margin, color="0.92", zorder=0, label="inside the margin")
        _ratio_ticks(ax)
        ax.set_yticks(positions, [_row_label(row) for _, row in effect.iterrows()])
        ax.set_ylim(-0.6, len(effect) - 0.4)
        ax.set_xlabel(f"{column.replace('_', ' ')}, {comparison} (log scale)")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    return save_figure(fig, stem)


def _row_label(row: pd.Series) -> str:
    """'arm=full+lora8: owl-full+lora8 (n = 3), equivalent': the grid point, the trained model
    (and what it is divided by, when that is not its matched control: the owl student over the
    eagle student), the seeds and the verdict. A row predicted to show no change says so beside
    'supported', which alone would read as a transfer."""
    comparison = str(row["comparison"])
    trained, _, other = comparison.partition(" vs ")
    who = trained if other.startswith("control") else f"{trained} over {other}"
    verdict = ""
    if "verdict" in row:
        no_change = row["verdict"] == "supported" and predicted(comparison) == "none"
        verdict = ", no change (supported)" if no_change else f", {row['verdict']}"
    return f"{row['grid']}: {who} (n = {row['n_seeds']}){verdict}"


def _ratio_ticks(ax: Any) -> None:
    """Round ratios as ticks on an axis of log ratios."""
    from matplotlib.ticker import MaxNLocator

    low, high = (math.exp(v) for v in ax.get_xlim())
    ticks = [t for t in MaxNLocator(6).tick_values(low, high) if low <= t <= high and t > 0]
    ax.set_xticks([math.log(t) for t in ticks], [f"{t:g}" for t in ticks])
