"""The points of a sweep: every combination of grid values with every seed, each with the
folder name that says it and the overrides that make its config; `SweepSpec`, what sweep.json
records to rerun every point exactly; the config key a point's seed goes into; and every
point's config, validated before anything runs."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sublens.config import Config, load_config
from sublens.errors import ConfigError
from sublens.sweep.grid import Axis

NO_GRID = "(no grid)"  # the label of a sweep over seeds alone


# ---- the points ----------------------------------------------------------------------------------
class Point(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str  # also the run folder's name under points/
    values: dict[str, str]  # grid key -> the value's YAML text
    seed: int
    settings: dict[str, list[str]] = {}  # axis of settings -> the overrides its value stands for

    def overrides(self, seed_key: str) -> list[str]:
        seed = f"{seed_key}=[{self.seed}]" if seed_key == "seeds" else f"{seed_key}={self.seed}"
        grid = [
            override
            for key, value in self.values.items()
            for override in self.settings.get(key) or [f"{k}={value}" for k in key.split("+")]
        ]
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
        settings = {
            axis.key: list(axis.settings[i])
            for axis, i in zip(grid, combination, strict=True)
            if axis.settings is not None
        }
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


def grid_label(values: dict[str, str], settings: dict[str, list[str]] | None = None) -> str:
    """A grid point without its seed, as the table and the figure name it. A value of an axis
    of settings is named by its first setting, so the other settings that say something more
    follow it ('arm=[layers.1+lora8], train.lr=0.001, train.epochs=3'): two arms that differ in
    rate or epochs must not read alike. Settings that repeat the first one's value (the matched
    control's trainable set) add nothing and are left out."""
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value}")
        parts.extend(_saying_more(value, (settings or {}).get(key, [])))
    return ", ".join(parts) or NO_GRID


def _saying_more(value: str, settings: list[str]) -> list[str]:
    """The settings after the first whose value is not the label's own."""
    if value == ", ".join(settings):  # the label is already every setting (first values clashed)
        return []
    return [s for s in settings[1:] if _bare(s.partition("=")[2]) != _bare(value)]


def _bare(text: str) -> str:
    return text.strip().strip("[]").strip()


def point_configs(spec: SweepSpec, config_type: type[Config]) -> dict[str, Config]:
    """Every point's config, validated before anything runs (a bad value fails here, naming it)."""
    configs = {}
    for point in spec.points:
        try:
            configs[point.id] = load_config(
                config_type, _path(spec.config), [*spec.overrides, *point.overrides(spec.seed_key)]
            )
        except ConfigError as exc:
            raise ConfigError(f"sweep point {point.id}: {exc}") from exc
    return configs


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None
