"""Sweeps: one run of an experiment per grid point and seed, resumable, combined into one table.

    sublens sweep subliminal --preset quick --grid trainable=full,full+lora8 --seeds 0,1,2

A sweep folder holds ``sweep.json`` (the experiment, its base config and overrides, the grid,
the seeds and every point), one ordinary run folder per point under ``points/``, the job logs of
the executor under ``jobs/``, and, once every point has finished, ``sweep.parquet`` (one row per
point and comparison of the points' `comparisons` tables) and the effect figure (per grid point:
the chosen comparison's ratio, its geometric mean over seeds with a Student-t 95% CI of the mean
log ratio across seeds, and each seed's ratio as a dot).

Points are run by submitit (https://github.com/facebookincubator/submitit): the ``local``
executor runs them as child processes on this machine, at most ``parallel`` at a time; the
``slurm`` executor submits them as one job array (``parallel`` jobs at once) and waits;
``debug`` runs them one after the other in this process. Running the same sweep command again
(or ``--resume FOLDER``) skips the points whose run finished and reruns the others into their
own run folders, where each experiment reuses what it had already saved.

Each point's seed goes into the experiment's ``seeds`` list (one training seed per run: the
unit of inference is the seed, so the across-seed interval is made here) or into ``seed``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from sublens.config import Config, load_config
from sublens.errors import ConfigError, SublensError
from sublens.runs import atomic_write_json, atomic_write_parquet, read_json
from sublens.stats import t_interval

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.parquet"
FIGURE_STEM = "sweep-effect"
COMPARISONS_FILE = "comparisons.parquet"  # what sublens.tables writes in a run folder
Executor = Literal["local", "slurm", "debug"]
EXECUTORS: tuple[str, ...] = ("local", "slurm", "debug")


class SweepError(SublensError):
    """A sweep that cannot start or finish as asked."""


# ---- the grid ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    key: str  # a config key as --set takes it (dotted: train.lr); 'a+b': keys that take the same value
    values: tuple[str, ...]  # each value as YAML text, as --set takes it
    # A sweep file's axis of settings: per value, the overrides it stands for (its value is then
    # the first override's value, as a label); None: the key takes the value.
    settings: tuple[tuple[str, ...], ...] | None = None


def parse_axis(text: str) -> Axis:
    """'key=v1,v2' (commas inside [...] or {...} belong to a value: modes=[full,freeze-mlp],[full]).
    'modes+control_modes=[full],[layers.0]' sets both keys to each value: an owl arm and its
    matched control student move together."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ConfigError(f"--grid {text!r} is not KEY=VALUE1,VALUE2,... (e.g. --grid train.lr=1e-4,2e-4).")
    parts = _split_top_level(values)
    if any(not p for p in parts):
        raise ConfigError(f"--grid {text!r} has an empty value; separate values with single commas.")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"--grid {text!r} names a value twice.")
    return Axis(key, tuple(parts))


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-2' (a range, both ends included)."""
    try:
        if re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", text):
            low, high = (int(v) for v in text.split("-"))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(v) for v in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} is not a list of distinct whole numbers >= 0 (e.g. 0,1,2 or 0-4).")
    return seeds


class SweepFile(BaseModel):
    """A sweep written down (configs/sweeps/*.yaml): what `sublens sweep --file` runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str
    preset: str | None = None  # configs/<experiment>/<preset>.yaml
    config: str | None = None  # or a config file (relative to the sweep file's folder)
    set: dict[str, Any] = {}  # overrides every point shares (dotted keys)
    # axis key ('a+b': linked keys) -> its values; or axis name -> a list of mappings of settings
    # ({modes: [layers.1], control_modes: [layers.1, full]}), each one grid value
    grid: dict[str, list[Any]]
    seeds: list[int] | str = [0]  # a list, or '0-2'
    required: list[str] = []  # keys the user must give with --set (e.g. entangled.run), null otherwise


def check_required(config: Config, keys: Sequence[str], file: Path) -> None:
    """Refuse a sweep file's point whose required key (dotted) is still null."""
    for key in keys:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part, None)
        if value is None:
            raise ConfigError(f"{file} needs {key}: give it with --set {key}=... (see the file's comment).")


def read_sweep_file(path: Path) -> tuple[SweepFile, Path | None, list[str], list[Axis], list[int]]:
    """A sweep file as the command line would give it: the base config file, the shared
    overrides, the grid and the seeds."""
    from pydantic import ValidationError

    from sublens.config import preset_path, read_yaml

    try:
        sweep = SweepFile.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a sweep file: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    if sweep.preset and sweep.config:
        raise ConfigError(f"{path}: give preset or config, not both.")
    config = (preset_path(f"{sweep.experiment}/{sweep.preset}.yaml") if sweep.preset
              else (path.parent / sweep.config) if sweep.config else None)
    overrides = [f"{key}={_yaml_text(value)}" for key, value in sweep.set.items()]
    axes = [_file_axis(path, key, values) for key, values in sweep.grid.items()]
    seeds = parse_seeds(sweep.seeds) if isinstance(sweep.seeds, str) else parse_seeds(",".join(map(str, sweep.seeds)))
    return sweep, config, overrides, axes, seeds


def _file_axis(path: Path, key: str, values: list[Any]) -> Axis:
    if not values:
        raise ConfigError(f"{path}: grid axis {key!r} has no values.")
    if not all(isinstance(v, dict) for v in values):
        if any(isinstance(v, dict) for v in values):
            raise ConfigError(f"{path}: grid axis {key!r} mixes mappings of settings with plain values.")
        return Axis(key, tuple(_yaml_text(v) for v in values))
    settings = tuple(tuple(f"{k}={_yaml_text(v)}" for k, v in value.items()) for value in values)
    if any(not s for s in settings):
        raise ConfigError(f"{path}: grid axis {key!r} has an empty mapping of settings.")
    labels = tuple(s[0].partition("=")[2] for s in settings)
    if len(set(labels)) != len(labels):  # the label is the first setting's value
        labels = tuple(", ".join(s) for s in settings)
    return Axis(key, labels, settings)


def _yaml_text(value: Any) -> str:
    """A value as --set takes it (YAML flow style on one line)."""
    import yaml

    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# ---- the points ----------------------------------------------------------------------------------
class Point(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str  # also the run folder's name under points/
    values: dict[str, str]  # grid key -> the value's YAML text
    seed: int
    settings: dict[str, list[str]] = {}  # axis of settings -> the overrides its value stands for

    def overrides(self, seed_key: str) -> list[str]:
        seed = f"{seed_key}=[{self.seed}]" if seed_key == "seeds" else f"{seed_key}={self.seed}"
        grid = [override for key, value in self.values.items()
                for override in self.settings.get(key) or [f"{k}={value}" for k in key.split("+")]]
        return [*grid, seed]


class SweepSpec(BaseModel):
    """What sweep.json records: enough to rerun every point exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str
    config: str | None  # the base config file (a preset resolves to its file)
    overrides: list[str]  # --set overrides every point shares
    grid: list[tuple[str, list[str]]]
    seeds: list[int]
    seed_key: str
    points: list[Point]


def seed_key(config_type: type[Config]) -> str:
    """The config field a point's seed goes into: ``seeds`` (a list: one seed per run) or ``seed``."""
    for key in ("seeds", "seed"):
        if key in config_type.model_fields:
            return key
    raise ConfigError(f"{config_type.__name__} has no seed or seeds key, so it cannot be swept over seeds.")


def make_points(grid: Sequence[Axis], seeds: Sequence[int]) -> list[Point]:
    """Every combination of grid values, each with every seed, in the order given."""
    keys = [axis.key for axis in grid]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid names a key twice ({', '.join(keys)}).")
    points = []
    for combination in itertools.product(*(range(len(axis.values)) for axis in grid)):
        values = {axis.key: axis.values[i] for axis, i in zip(grid, combination, strict=True)}
        settings = {axis.key: list(axis.settings[i]) for axis, i in zip(grid, combination, strict=True)
                    if axis.settings is not None}
        for seed in seeds:
            points.append(Point(id=_point_id(values, seed), values=values, seed=seed, settings=settings))
    if len({p.id for p in points}) < len(points):  # values that differ only in punctuation
        points = [p.model_copy(update={"id": f"p{i:03d}_{p.id}"}) for i, p in enumerate(points)]
    return points


def _point_id(values: dict[str, str], seed: int) -> str:
    """A folder name that says the point: 'lr=1e-4_modes=full_seed=0' (the last key part)."""
    parts = [f"{key.split('+')[0].split('.')[-1]}={_safe(value)}" for key, value in values.items()]
    parts.append(f"seed={seed}")
    return "_".join(parts)[:150]


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", value.strip("[]{}'\" ")) or "empty"


def grid_label(values: dict[str, str]) -> str:
    """A grid point without its seed, as the table and the figure name it."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "(no grid)"


def point_configs(spec: SweepSpec, config_type: type[Config]) -> dict[str, Config]:
    """Every point's config, validated before anything runs (a bad value fails here, naming it)."""
    configs = {}
    for point in spec.points:
        try:
            configs[point.id] = load_config(config_type, _path(spec.config), [*spec.overrides, *point.overrides(spec.seed_key)])
        except ConfigError as exc:
            raise ConfigError(f"sweep point {point.id}: {exc}") from exc
    return configs


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


# ---- the folder ----------------------------------------------------------------------------------
def default_folder(out: Path, experiment: str) -> Path:
    return out / "sweeps" / f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}_{experiment}"


def open_folder(folder: Path, spec: SweepSpec) -> None:
    """Write sweep.json, or check that an earlier sweep in this folder is the same sweep."""
    saved = folder / SWEEP_FILE
    if saved.is_file():
        earlier = SweepSpec.model_validate(read_json(saved))
        if earlier != spec:
            raise SweepError(
                f"{folder} holds another sweep ({saved}: {earlier.experiment}, grid {earlier.grid}, seeds "
                f"{earlier.seeds}); continue it with the same command, or give another --folder."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, spec.model_dump(mode="json"))


def point_dir(folder: Path, point: Point) -> Path:
    return folder / "points" / point.id


def finished(run_dir: Path) -> bool:
    try:
        return read_json(run_dir / "record.json").get("status") == "ok"
    except (OSError, ValueError):
        return False


# ---- running one point (in a worker process) ----------------------------------------------------
def run_point(experiment: str, config: Config, run_dir: str, threads: int) -> str:
    """The job submitit runs: one ordinary run of `experiment` into `run_dir` (resumed if it was
    started before). Module-level, so that it pickles by reference."""
    import torch  # here, so that planning and collecting a sweep never imports torch

    from sublens.experiments import run_experiment

    torch.set_num_threads(max(1, threads))
    outcome = run_experiment(experiment, config, Path(run_dir).parent, run_dir=Path(run_dir))
    return str(outcome.path)


def _executor(kind: Executor, jobs_dir: Path, parallel: int, timeout_min: int, slurm: dict[str, Any]) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=str(jobs_dir), cluster=kind)
    executor.update_parameters(timeout_min=timeout_min)
    if kind == "slurm":
        executor.update_parameters(slurm_array_parallelism=parallel, **slurm)
    return executor


@dataclass
class SweepOutcome:
    folder: Path
    ran: list[str]  # point ids run now
    skipped: list[str]  # point ids that had already finished
    failed: dict[str, str]  # point id -> the error
    table: Path | None
    figure: list[Path]


def run_sweep(
    spec: SweepSpec,
    folder: Path,
    executor: Executor = "local",
    parallel: int = 1,
    timeout_min: int = 24 * 60,
    slurm: dict[str, Any] | None = None,
    comparison: str | None = None,
    say: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every unfinished point of `spec` into `folder`, then combine the finished ones."""
    from sublens.experiments import get

    configs = point_configs(spec, get(spec.experiment).config)
    open_folder(folder, spec)
    todo = [p for p in spec.points if not finished(point_dir(folder, p))]
    skipped = [p.id for p in spec.points if p not in todo]
    if skipped:
        say(f"{len(skipped)} of {len(spec.points)} points already finished; running the other {len(todo)}")
    threads = max(1, (os.cpu_count() or 1) // max(1, parallel)) if executor == "local" else (os.cpu_count() or 1)
    failed: dict[str, str] = {}
    if todo:
        runner = _executor(executor, folder / "jobs", parallel, timeout_min, slurm or {})
        limit = parallel if executor == "local" else len(todo)
        failed = _submit_all(runner, spec.experiment, todo, configs, folder, threads, limit, say)
    table, figure = collect(folder, spec, comparison)
    return SweepOutcome(folder, [p.id for p in todo], skipped, failed, table, figure)


def _submit_all(runner: Any, experiment: str, todo: list[Point], configs: dict[str, Config], folder: Path,
                threads: int, limit: int, say: Callable[[str], None]) -> dict[str, str]:
    """Keep at most `limit` points running; report each as it ends. Returns the failures."""
    waiting, running, failed = list(todo), dict[str, Any](), dict[str, str]()
    done = 0
    while waiting or running:
        while waiting and len(running) < limit:
            point = waiting.pop(0)
            run_dir = point_dir(folder, point)
            running[point.id] = runner.submit(run_point, experiment, configs[point.id], str(run_dir), threads)
            say(f"started {point.id} (job {running[point.id].job_id})")
        for point_id, job in list(running.items()):
            if not job.done():
                continue
            del running[point_id]
            done += 1
            error = job.exception()
            if error is not None:
                failed[point_id] = _recorded_error(point_dir(folder, _by_id(todo, point_id))) or _first_line(error)
                say(f"[{done}/{len(todo)}] {point_id} failed: {failed[point_id]} (log: {job.paths.stderr})")
            else:
                say(f"[{done}/{len(todo)}] {point_id} finished")
        if running:
            time.sleep(0.5)
    return failed


def _by_id(points: list[Point], point_id: str) -> Point:
    return next(p for p in points if p.id == point_id)


def _recorded_error(run_dir: Path) -> str | None:
    """The error the point's run recorded (its record.json), the clearest account of a failure."""
    try:
        error = read_json(run_dir / "record.json").get("error")
    except (OSError, ValueError):
        return None
    return str(error) if error else None


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ---- the combined table and the figure ------------------------------------------------------------
def combined_table(folder: Path, spec: SweepSpec) -> pd.DataFrame:
    """One row per finished point and comparison: the grid values, the seed, the point's run
    folder and the comparison's columns (sublens.tables); a point without a comparisons table
    (an experiment that writes none, or an unfinished run) contributes one row with its status."""
    frames = []
    for point in spec.points:
        run_dir = point_dir(folder, point)
        head = {"point": point.id, "grid": grid_label(point.values), **point.values, "seed": point.seed,
                "run_dir": str(run_dir), "finished": finished(run_dir)}
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
        effect.append({"grid": grid, "comparison": " / ".join(dict.fromkeys(group["comparison"])),
                       "n_seeds": len(logs), column: math.exp(mean) if logs else math.nan,
                       f"{column}_ci_low": math.exp(low), f"{column}_ci_high": math.exp(high),
                       "per_seed": sorted(math.exp(v) for v in logs)})
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
            ax.scatter(np.log(row["per_seed"]), [y] * len(row["per_seed"]), s=10, color="0.6", zorder=2,
                       label="one seed" if first else None)
            low, high = row[f"{column}_ci_low"], row[f"{column}_ci_high"]
            if math.isfinite(low) and math.isfinite(high):
                ax.plot(np.log([low, high]), [y, y], color="black", linewidth=1.2, zorder=3)
            ax.scatter(np.log([row[column]]), [y], s=22, color="black", zorder=4,
                       label="geometric mean and 95% CI across seeds" if first else None)
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
