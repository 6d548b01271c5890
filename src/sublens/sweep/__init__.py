"""Sweeps: one run of an experiment per grid point and seed, resumable, combined into one table.

    sublens sweep subliminal --preset quick --grid trainable=full,full+lora8 --seeds 0,1,2

A sweep folder holds ``sweep.json`` (the experiment, its base config and overrides, the grid,
the seeds and every point), one ordinary run folder per point under ``points/``, the job logs of
the executor under ``jobs/``, and, once every point has finished, ``sweep.parquet`` (one row per
point and comparison of the points' `comparisons` tables) and the effect table and figure (per
grid point and matched comparison: the ratio's geometric mean over seeds with a Student-t 95% CI
of the mean log ratio across seeds, each seed's ratio as a dot, and the verdict of
`sublens.claims`, Holm-adjusted across the sweep).

Points are run by submitit (https://github.com/facebookincubator/submitit): the ``local``
executor runs them as child processes on this machine, at most ``parallel`` at a time; the
``slurm`` executor submits them as one job array (``parallel`` jobs at once) and waits;
``debug`` runs them one after the other in this process. Running the same sweep command again
(or ``--resume FOLDER``) skips the points whose run finished and reruns the others into their
own run folders, where each experiment reuses what it had already saved.

Each point's seed goes into the experiment's ``seeds`` list (one training seed per run: the
unit of inference is the seed, so the across-seed interval is made here) or into ``seed``.

The package: `grid` (the grid axes, the seeds and the sweep files), `points` (the points, the
spec sweep.json records and every point's config), `folder` (the sweep folder and its point
folders), `executing` (running the points through submitit) and `combined` (the combined table
and the effect figure).
"""

from __future__ import annotations

from sublens.sweep.combined import (
    COMPARISONS_FILE,
    FIGURE_STEM,
    TABLE_FILE,
    StudentSides,
    chosen_rows,
    collect,
    combined_table,
    effect_by_grid_point,
    effect_figure,
    is_matched,
    student_sides,
)
from sublens.sweep.executing import (
    EXECUTORS,
    Executor,
    SweepOutcome,
    run_point,
    run_sweep,
)
from sublens.sweep.folder import (
    SWEEP_FILE,
    SweepError,
    default_folder,
    finished,
    open_folder,
    point_dir,
)
from sublens.sweep.grid import (
    Axis,
    SweepFile,
    check_required,
    parse_axis,
    parse_seeds,
    read_sweep_file,
)
from sublens.sweep.points import (
    Point,
    SweepSpec,
    grid_label,
    make_points,
    point_configs,
    seed_key,
)

__all__ = [
    "COMPARISONS_FILE",
    "EXECUTORS",
    "FIGURE_STEM",
    "SWEEP_FILE",
    "TABLE_FILE",
    "Axis",
    "Executor",
    "Point",
    "StudentSides",
    "SweepError",
    "SweepFile",
    "SweepOutcome",
    "SweepSpec",
    "check_required",
    "chosen_rows",
    "collect",
    "combined_table",
    "default_folder",
    "effect_by_grid_point",
    "effect_figure",
    "finished",
    "grid_label",
    "is_matched",
    "make_points",
    "open_folder",
    "parse_axis",
    "parse_seeds",
    "point_configs",
    "point_dir",
    "read_sweep_file",
    "run_point",
    "run_sweep",
    "seed_key",
    "student_sides",
]
