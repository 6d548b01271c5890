"""Frozen pydantic configs from YAML files plus `--set key=value` overrides.

Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sublens.errors import ConfigError


class Config(BaseModel):
    """Base of every experiment config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0


C = TypeVar("C", bound=Config)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=[1,2]' -> (['a', 'b'], [1, 2]); the value is read as YAML (so 3 is an int)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Bad override {item!r}: write --set key=value (e.g. --set seed=3).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"Bad value in override {item!r}: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = dict(data)
    for item in overrides:
        keys, value = parse_override(item)
        target = data
        for key in keys[:-1]:
            nested = target.get(key)
            nested = dict(nested) if isinstance(nested, dict) else {}
            target[key] = nested
            target = nested
        target[keys[-1]] = value
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}.")
    return data


def load_config(cls: type[C], path: Path | None = None, overrides: list[str] | None = None) -> C:
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        fields = ", ".join(cls.model_fields)
        where = f" in {path}" if path else ""
        raise ConfigError(f"Invalid {cls.__name__}{where}: {problems}. Valid keys: {fields}.") from exc


def configs_roots() -> list[Path]:
    """Where preset files are looked up: ./configs, then the source checkout's configs."""
    here = Path(__file__).resolve()
    return [Path("configs"), here.parents[2] / "configs"]


def preset_path(relative: str) -> Path:
    given = Path(relative)
    if given.is_file():
        return given
    for root in configs_roots():
        if (root / relative).is_file():
            return root / relative
    raise ConfigError(
        f"Preset file {relative!r} not found in {', '.join(str(r) for r in configs_roots())}; "
        "run from the sublens checkout or give a path."
    )
