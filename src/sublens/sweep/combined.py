"""The combined table and the effect figure of a sweep: one row per finished point and
comparison (sweep.parquet), the rows the effect is read from (a named comparison, or each
point's first matched one), per grid point the geometric mean of the seeds' ratios with a
Student-t 95% CI across seeds, and the figure that draws it with each seed's ratio as a dot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sublens.runs import atomic_write_parquet
from sublens.stats import t_interval
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
            "grid": grid_label(point.values),
            **point.values,
            "seed": point.seed,
            "run_dir": str(run_dir),
            "finished": finished(run_dir),
        }
        table = run_dir / COMPARISONS_FILE
        if head["finished"] and table.is_file():
            rows = pd.read_parquet(table)
            frames.append(pd.concat([pd.DataFrame([head] * len(rows)), rows.reset_index(drop=True)], axis=1))
        else:
            frames.append(pd.DataFrame([head]))
    return pd.concat(frames, ignore_index=True)


def is_matched(name: str) -> bool:
    """A comparison of a trained model against its matched control: not against the base
    model, and not a control model's own comparison ('owl-full vs control-full')."""
    return not name.endswith(" vs base") and not name.startswith("control") and not name.startswith("teacher")


def chosen_rows(table: pd.DataFrame, comparison: str | None) -> pd.DataFrame:
    """The rows the effect is read from: the named comparison of every point, or (None) each
    point's first matched comparison (the arm a grid point changes names its comparison)."""
    if "comparison" not in table:
        return table.iloc[0:0]
    if comparison is not None:
        return table[table["comparison"] == comparison]
    matched = table[table["comparison"].map(lambda n: isinstance(n, str) and is_matched(n))]
    return matched.groupby("point", sort=False).head(1)


def effect_by_grid_point(rows: pd.DataFrame, column: str = "share_ratio") -> pd.DataFrame:
    """Per grid point: seeds, the geometric mean of the seeds' ratios and its Student-t 95% CI
    (the mean log ratio across seeds; the seed is the unit). Fewer than two seeds: no interval."""
    effect = []
    for grid, group in rows.groupby("grid", sort=False):
        logs = [math.log(v) for v in group[column] if isinstance(v, float) and v > 0 and math.isfinite(v)]
        mean, low, high = t_interval(logs)
        effect.append(
            {
                "grid": grid,
                "comparison": " / ".join(dict.fromkeys(group["comparison"])),
                "n_seeds": len(logs),
                column: math.exp(mean) if logs else math.nan,
                f"{column}_ci_low": math.exp(low),
                f"{column}_ci_high": math.exp(high),
                "per_seed": sorted(math.exp(v) for v in logs),
            }
        )
    return pd.DataFrame(effect)


def collect(folder: Path, spec: SweepSpec, comparison: str | None = None) -> tuple[Path | None, list[Path]]:
    """Write sweep.parquet and the effect figure from the points finished so far."""
    table = combined_table(folder, spec)
    table_path = folder / TABLE_FILE
    atomic_write_parquet(table_path, table)
    effect = effect_by_grid_point(chosen_rows(table, comparison))
    if effect.empty:
        if comparison is not None:
            raise SweepError(f"no finished point has a comparison named {comparison!r}; see {table_path}.")
        return table_path, []
    atomic_write_parquet(folder / f"{FIGURE_STEM}.parquet", effect)
    label = comparison or "trained model over its matched control"
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
        _ratio_ticks(ax)
        ax.set_yticks(positions, [f"{g} (n = {n})" for g, n in zip(effect["grid"], effect["n_seeds"], strict=True)])
        ax.set_ylim(-0.6, len(effect) - 0.4)
        ax.set_xlabel(f"{column.replace('_', ' ')}, {comparison} (log scale)")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, frameon=False)
    return save_figure(fig, stem)


def _ratio_ticks(ax: Any) -> None:
    """Round ratios as ticks on an axis of log ratios."""
    from matplotlib.ticker import MaxNLocator

    low, high = (math.exp(v) for v in ax.get_xlim())
    ticks = [t for t in MaxNLocator(6).tick_values(low, high) if low <= t <= high and t > 0]
    ax.set_xticks([math.log(t) for t in ticks], [f"{t:g}" for t in ticks])
