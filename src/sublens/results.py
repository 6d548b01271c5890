"""Typed results: the base of every experiment's results.json model, and reading one back.

An experiment's `results.py` declares what its run writes as a pydantic model derived from
`Results` (nested models wherever the shape is known); the run builds it, `Run.save_results`
writes it (``model_dump(mode="json")``), and the report section and claims code read it back
with `load_results`, parsed once, by attribute. These modules stay torch-free.

Each model carries ``schema_version`` (its class default is the version the code writes and
reads). A results.json without one was written before results were versioned and is read as
version 1. Another version, or a file that does not validate, is a `ResultsError` that names
the file, the model and the first problems: never a KeyError deep inside the report.

What is written, stated once here:
- in a `Sparse` record (every record of the pruning, hybrid, entanglement and mechanistic
  results) a key is left out when its field was never set: an optional key a run writes only
  in some cases stays absent where the run left it out, and absent and null stay different;
- a float that is not finite is written as JSON's NaN / Infinity constant (`Record`), except in
  a `Finite` record, which reads it as null so that its file stays strict JSON (mechanistic).
The measurement records several experiments share (`Summary`, `RatioEstimate`, ...) are in
`sublens.result_records`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sublens.errors import SublensError

UNVERSIONED = 1  # the schema version of a results.json written before versions were recorded


class ResultsError(SublensError):
    """A results.json of another schema version, or one that does not match its model."""


class Record(BaseModel):
    """A nested part of a results model: immutable, unknown keys refused; NaN written as NaN
    (JSON's NaN constant, as json.dumps writes it), not as null."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class Results(Record):
    """The results of one run. Subclasses set the class default of ``schema_version`` and
    raise it whenever a recorded results.json of theirs would no longer be read correctly."""

    schema_version: int

    @field_validator("schema_version")
    @classmethod
    def _current_version(cls, version: int) -> int:
        expected = schema_version_of(cls)
        if version != expected:
            raise ValueError(f"schema version {version}, but {cls.__name__} is version {expected}")
        return version


class Sparse(Record):
    """A record written as it was read. The rule: a field is written when it was set (present
    in the JSON read, null included; given when the record was built; or given to
    ``model_copy(update=...)``) or is named in ``always_written``; a field left at its class
    default is left out. So every optional field (default None) a run did not fill stays absent,
    and a recorded results.json is written back key for key."""

    always_written: ClassVar[frozenset[str]] = frozenset()

    def _is_written(self, key: str) -> bool:
        return key in self.model_fields_set or key in self.always_written

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if self._is_written(key)}

    def present(self) -> dict[str, Any]:
        """The fields that would be written, as keyword arguments (to build another record)."""
        return {key: getattr(self, key) for key in type(self).model_fields if self._is_written(key)}


def finite(value: Any) -> Any:
    """NaN / inf -> None, recursively through dicts, lists and tuples (tuples become lists)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Finite(Sparse):
    """A sparse record whose non-finite floats (NaN, inf; anywhere inside it) are read as None,
    so that it is written as null and its file is strict JSON."""

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        return finite(data) if isinstance(data, dict) else data


class SparseResults(Results, Sparse):
    """The results of a run written sparsely (`Sparse`); ``schema_version`` is always written."""

    always_written: ClassVar[frozenset[str]] = frozenset({"schema_version"})


R = TypeVar("R", bound=Results)


def schema_version_of(model_type: type[Results]) -> int:
    """The version a results model writes: the class default of its ``schema_version``."""
    default = model_type.model_fields["schema_version"].default
    if not isinstance(default, int):
        raise TypeError(f"{model_type.__name__} must give schema_version a class default (an int).")
    return default


def load_results(source: Path | str | Mapping[str, Any], model_type: type[R]) -> R:
    """A results.json (a path, or its already-read mapping) as `model_type`.

    Raises ResultsError when it cannot be read, has another schema version (none recorded
    counts as version 1), or does not validate (the message lists the first problems)."""
    where = "results" if isinstance(source, Mapping) else str(source)
    if isinstance(source, Mapping):
        data: Any = source
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResultsError(f"Cannot read {where}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ResultsError(f"{where} holds a JSON {type(data).__name__}, not the object of {model_type.__name__}.")
    expected = schema_version_of(model_type)
    version = data.get("schema_version", UNVERSIONED)
    if version != expected:
        raise ResultsError(
            f"{where} has results schema version {version!r}; this sublens reads version {expected} of "
            f"{model_type.__name__}. Rerun the experiment, or read the run with the sublens version that "
            "wrote it (its record.json names the commit)."
        )
    try:
        return model_type.model_validate({**data, "schema_version": version})
    except ValidationError as exc:
        problems = exc.errors()
        first = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ResultsError(
            f"{where} does not match {model_type.__name__} (schema version {expected}): {first}{more}."
        ) from None


def as_results(results: R | Mapping[str, Any], model_type: type[R]) -> R:
    """`results` as `model_type`: a model already parsed as it is, a results.json mapping
    validated by `load_results` (ResultsError)."""
    if isinstance(results, Mapping):
        return load_results(results, model_type)
    return results


def read_run_results(results: Mapping[str, Any], model_type: type[R], run_ok: bool) -> tuple[R | None, str | None]:
    """A run's results.json (its mapping; empty: none) parsed once, for a report section:
    (None, None) without any; (None, why) where an unfinished run (not `run_ok`, or
    ``partial``) left them unreadable. A finished run's unreadable results raise ResultsError."""
    if not results:
        return None, None
    try:
        return as_results(results, model_type), None
    except ResultsError as exc:
        if run_ok and not results.get("partial"):
            raise
        return None, str(exc)
