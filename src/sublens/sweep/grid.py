"""The grid of a sweep and the sweep files that write one down: a ``--grid`` axis parsed from
``key=v1,v2`` (commas inside brackets belong to a value; ``a+b`` keys move together), the seeds
from ``0,1,2`` or ``0-2``, and a sweep file (configs/sweeps/*.yaml) read into what the command
line would give: the base config file, the shared overrides, the axes (an axis of settings per
value included) and the seeds, with the keys it requires checked on every point's config."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sublens.config import Config
from sublens.errors import ConfigError


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
    config = (
        preset_path(f"{sweep.experiment}/{sweep.preset}.yaml")
        if sweep.preset
        else (path.parent / sweep.config)
        if sweep.config
        else None
    )
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

    return (
        value
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    )
