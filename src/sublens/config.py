"""Frozen pydantic configs from YAML files plus `--set key=value` overrides.

Unknown keys are errors (a typo must not silently fall back to a default). An override's value
is YAML, except for a key whose field is a string: there the text is taken as written (`010`
stays "010", `yes` stays "yes"); quote it or write `null` (where the field allows none) for
anything else. Model specs that look like paths must exist (check_model_specs, before any model loads).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from sublens.errors import ConfigError, ModelSpecError
from sublens.kv_budget import DEFAULT_SCORING_MEMORY_MB


class Config(BaseModel):
    """Base of every experiment config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(
        default=0,
        description="the run's seed: every random draw of the experiment (data, sampling, "
        "random controls) derives from it",
    )
    scoring_memory_mb: float = Field(
        default=DEFAULT_SCORING_MEMORY_MB,
        gt=0,
        description="MiB the key/value buffers of one scoring or sampling batch may take: rows "
        "beyond it run in smaller batches (a config value, not the machine's free memory, so the "
        "batches and numbers depend on the config alone)",
    )


C = TypeVar("C", bound=Config)


_NULLS = frozenset({"null", "Null", "NULL", "~"})
_UNION_TYPES: tuple[Any, ...] = (Union, types.UnionType)


def _members(annotation: Any) -> tuple[list[Any], bool]:
    """The non-None members of an annotation (one, unless it is a union) and whether None is allowed."""
    if get_origin(annotation) in _UNION_TYPES:
        args = get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], annotation is type(None)


def field_annotation(cls: type[BaseModel] | None, keys: list[str]) -> Any:
    """The annotation of the field at a dotted key path of a config class (through nested models
    and dicts), or None where it cannot be told (then the value is plain YAML)."""
    annotation: Any = cls
    for key in keys:
        members, _ = _members(annotation)
        if len(members) != 1:
            return None
        (current,) = members
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(key)
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(current) is dict and len(get_args(current)) == 2:
            annotation = get_args(current)[1]
        else:
            return None
    return annotation


def _is_text(annotation: Any) -> tuple[bool, bool]:
    """(whether a field holds text only: str, or a Literal of strings, optionally None; nullable)"""
    members, nullable = _members(annotation)
    if len(members) != 1:
        return False, nullable
    (member,) = members
    if member is str:
        return True, nullable
    if get_origin(member) is Literal and all(isinstance(a, str) for a in get_args(member)):
        return True, nullable
    return False, nullable


def _node_value(node: yaml.Node, annotation: Any) -> Any:
    """A YAML node as a value of `annotation`: plain scalars of text fields keep their text."""
    text, _ = _is_text(annotation)
    if text and isinstance(node, yaml.ScalarNode):
        if node.style is None and node.value in _NULLS:
            return None
        return node.value
    members, _ = _members(annotation)
    if len(members) == 1 and isinstance(node, yaml.SequenceNode):
        origin, args = get_origin(members[0]), get_args(members[0])
        if origin in (list, set, frozenset) and len(args) == 1:
            return [_node_value(child, args[0]) for child in node.value]
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) == len(node.value):
            return [_node_value(child, arg) for child, arg in zip(node.value, args, strict=True)]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return [_node_value(child, args[0]) for child in node.value]
    if len(members) == 1 and isinstance(node, yaml.MappingNode) and get_origin(members[0]) is dict:
        args = get_args(members[0])
        if len(args) == 2:
            return {_node_value(k, None): _node_value(v, args[1]) for k, v in node.value}
    return yaml.safe_load(yaml.serialize(node))


def parse_override(item: str, cls: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """'a.b=[1,2]' -> (['a', 'b'], [1, 2]); the value is read as YAML (so 3 is an int).

    With the config class, a value for a text field (str, str | None, a Literal of strings; also
    inside lists and dicts) keeps its literal text: `010` is "010", not 8, and `yes` is "yes".
    `null` (or `~`) is None; a bare `None` in a field that allows none is refused as ambiguous.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Bad override {item!r}: write --set key=value (e.g. --set seed=3).")
    keys = key.strip().split(".")
    if not raw.strip():
        return keys, ""
    annotation = field_annotation(cls, keys) if cls is not None else None
    text, nullable = _is_text(annotation) if annotation is not None else (False, False)
    stripped = raw.strip()
    if text and stripped[0] not in "'\"[{":
        if stripped in _NULLS:
            return keys, None
        if nullable and stripped.lower() == "none":
            raise ConfigError(
                f"Ambiguous override {item!r}: write {key.strip()}=null for no value, or quote the "
                f"text ({key.strip()}='\"None\"' in the shell) to mean the word None."
            )
        return keys, stripped  # the text as written: YAML would turn 010 into 8 and yes into True
    try:
        node = yaml.compose(raw)
        value = _node_value(node, annotation) if node is not None and annotation is not None else yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Bad value in override {item!r}: {exc}") from exc
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type[BaseModel] | None = None) -> dict[str, Any]:
    data = dict(data)
    for item in overrides:
        keys, value = parse_override(item, cls)
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


# Config keys (at any depth, also inside dicts such as a paper stage's `set`) that hold model specs.
MODEL_SPEC_FIELDS = frozenset(
    {"model", "models", "base", "biased", "student", "teacher", "control_teacher", "tuned_teacher"}
)
# Of those, keys that only ever hold a run folder: checked as a path even when the spec does not
# look like one (a bare folder name is never a hub id there).
RUN_FOLDER_FIELDS = frozenset({"tuned_teacher"})


def _spec_values(value: Any, key: str = "", name: str = "") -> list[tuple[str, str]]:
    """(dotted key, spec) for every string under a key named in MODEL_SPEC_FIELDS."""
    if isinstance(value, BaseModel):
        return [
            f
            for field in type(value).model_fields
            for f in _spec_values(getattr(value, field), f"{key}.{field}".lstrip("."), field)
        ]
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _spec_values(v, f"{key}.{k}", str(k).split(".")[-1])]
    if isinstance(value, list | tuple):
        return [f for i, v in enumerate(value) for f in _spec_values(v, f"{key}[{i}]", name)]
    return [(key, value)] if isinstance(value, str) and name in MODEL_SPEC_FIELDS else []


def check_model_specs(config: BaseModel) -> None:
    """Refuse model specs that look like paths (a run folder, a checkpoint, a .gguf file) but
    exist nowhere, before any model loads: such a spec must never be sent to the hub; a key of
    RUN_FOLDER_FIELDS must name an existing folder, whatever it looks like. The CLI
    calls it on every config it runs (not load_config: a paper stage's config is built, wired
    to run folders of stages still to come, before those exist)."""
    specs = _spec_values(config)
    if not specs:
        return
    # imports torch: only when there is a spec to check
    from sublens.models import check_spec, looks_like_path

    for key, spec in specs:
        if key.rsplit(".", 1)[-1] in RUN_FOLDER_FIELDS and not looks_like_path(spec):
            spec = f"./{spec}"
        try:
            check_spec(spec)
        except ModelSpecError as exc:
            raise ModelSpecError(f"{key}: {exc}") from exc


def load_config(cls: type[C], path: Path | None = None, overrides: list[str] | None = None) -> C:
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [], cls)
    try:
        config = cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        fields = ", ".join(cls.model_fields)
        where = f" in {path}" if path else ""
        raise ConfigError(f"Invalid {cls.__name__}{where}: {problems}. Valid keys: {fields}.") from exc
    return config


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


# ---- describing a config class (`sublens config`) --------------------------------------------
@dataclass(frozen=True)
class FieldInfoRow:
    """One settable key of a config class: what `sublens config` prints for it."""

    key: str  # dotted, as --set and a YAML file's nesting take it (e.g. train.lr)
    type: str  # readable: int, float | None, list[str], full | freeze-attention | freeze-mlp
    default: Any  # JSON-ready (tuples as lists); None where the key is required
    required: bool  # no default: every config must give it
    description: str  # the field's documentation; "" where it has none
    value: Any = None  # JSON-ready, in the values given to describe_fields (e.g. a loaded preset)
    nested: bool = False  # a model whose own keys follow as rows (its default: all of their values)


_NO_DEFAULT: Any = object()  # a required field's default


@dataclass(frozen=True)
class ReadAs:
    """Metadata for `Annotated[str, ReadAs("trainable set"), ...]`: how `sublens config` names a
    string type whose values follow a grammar (the validator's message gives the grammar)."""

    words: str


def _read_as(metadata: Any) -> str | None:
    return next((m.words for m in metadata if isinstance(m, ReadAs)), None)


def type_name(annotation: Any) -> str:
    """An annotation as a reader writes it: `float | None`, `list[str]`, a Literal's values
    joined by `|` (`full | freeze-attention | freeze-mlp`), a class by its name."""
    if annotation is None or annotation is type(None):
        return "None"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _read_as(annotation.__metadata__) or type_name(args[0])
    if origin in _UNION_TYPES:
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:  # the values themselves: they are what a config file writes
        return " | ".join(a if isinstance(a, str) else repr(a) for a in args)
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class whose keys a field nests (`train: TrainConfig`, `lora: LoraConfig | None`)."""
    members, _ = _members(annotation)
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return None


def _field_default(field: FieldInfo) -> Any:
    if field.is_required():
        return _NO_DEFAULT
    return field.get_default(call_default_factory=True)


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=str)


def describe_fields(model_cls: type[BaseModel], values: BaseModel | None = None) -> list[FieldInfoRow]:
    """Every key of a config class, in declaration order, nested models flattened to dotted keys
    (`data.n_prompts`, `train.lr`), each with its type, default, description and, with `values`
    (an instance, e.g. a loaded preset), its value there.

    A nested model has a row of its own (nested=True: its documentation, e.g. that a student's
    train.seed is set per student) and then one row per key. Those keys take their defaults from
    the field's default instance, not from the nested class: subliminal's `train.lr` is 5e-05
    (its `_default_train`), not TrainConfig's own 1e-05, which is what a run gets when it leaves
    the key out. Under a field that is None by default (`lora: LoraConfig | None`) they are the
    class defaults, what the keys get once the field is given.
    """
    return _describe(model_cls, "", None, values)


def _describe(
    cls: type[BaseModel], prefix: str, defaults: BaseModel | None, values: BaseModel | None
) -> list[FieldInfoRow]:
    rows: list[FieldInfoRow] = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        default = getattr(defaults, name) if defaults is not None else _field_default(field)
        value = getattr(values, name, None)
        nested = _nested_model(field.annotation)
        required = default is _NO_DEFAULT
        rows.append(
            FieldInfoRow(
                key=key,
                type=_read_as(field.metadata) or type_name(field.annotation),
                default=None if required else _jsonable(default),
                required=required,
                description=" ".join((field.description or "").split()),
                value=_jsonable(value),
                nested=nested is not None,
            )
        )
        if nested is not None:
            rows += _describe(
                nested,
                f"{key}.",
                default if isinstance(default, BaseModel) else None,
                value if isinstance(value, BaseModel) else None,
            )
    return rows
