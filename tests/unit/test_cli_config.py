"""`sublens config EXPERIMENT [--preset P] [--json]`: every key of an experiment's config with its
type, default, the preset's value and documentation; nested models as dotted keys; usage errors
on stderr with exit status 2.

The subliminal experiment is the real one (its config and quick preset); a stand-in covers what
it lacks (a required key, a Literal of numbers)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner, Result

import sublens.experiments as registry
from sublens.cli import EXIT_USAGE, app
from sublens.config import Config, describe_fields, load_config, preset_path, type_name
from sublens.experiments import Experiment
from sublens.experiments.subliminal import EXPERIMENT as SUBLIMINAL
from sublens.experiments.subliminal import SubliminalConfig
from sublens.training import TrainConfig


class Inner(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(default=3, description="how big")


class DemoConfig(Config):
    name: str = Field(description="required: no default")
    level: Literal[1, 2] = 1
    inner: Inner | None = None
    tags: tuple[str, ...] = ()


def execute(config: Config, run: Any) -> dict[str, Any]:
    return {}


@pytest.fixture(autouse=True)
def experiments(monkeypatch: pytest.MonkeyPatch) -> None:
    # only the modules under test are imported, not every experiment
    table = {"subliminal": SUBLIMINAL, "demo": Experiment("demo", "a stand-in", DemoConfig, execute)}
    monkeypatch.setattr(registry, "_registry", lambda: table)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["config", *args])


def table(result: Result) -> dict[str, list[str]]:
    """Plain output as key -> its cells (columns are two or more spaces apart)."""
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["key", "type", "default", *(["preset"] if "preset" in header else []), "description"]
    return {cells[0]: cells for cells in (re.split(r" {2,}", line) for line in lines)}


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in rows}


def test_lists_every_key_with_type_and_default() -> None:
    rows = table(invoke("subliminal"))
    assert rows["n_examples"][:3] == ["n_examples", "int | None", "500"]
    assert "subsampled" in rows["n_examples"][3]  # its documentation
    assert rows["train.lr"][:3] == ["train.lr", "float", "5.0e-05"]
    assert rows["data.n_prompts"][:3] == ["data.n_prompts", "int", "600"]
    assert rows["seed"][:3] == ["seed", "int", "0"] and "random draw" in rows["seed"][3]


def test_preset_value_is_shown_next_to_the_default() -> None:
    rows = table(invoke("subliminal", "--preset", "quick"))
    assert rows["n_examples"][:4] == ["n_examples", "int | None", "500", "600"]
    assert rows["data.n_prompts"][2:4] == ["600", "660"]
    assert rows["train.warmup_steps"][2:4] == ["5", "3"]
    assert rows["device"][2:4] == ["auto", "cpu"]


def test_nested_defaults_come_from_the_parent_default() -> None:
    """subliminal's train default sets lr=5e-5 and warmup_steps=5: a run without those keys gets
    these, not TrainConfig's own defaults."""
    rows = by_key(json.loads(invoke("subliminal", "--json").stdout))
    assert rows["train.lr"]["default"] == 5e-05 != TrainConfig().lr
    assert rows["train.warmup_steps"]["default"] == 5
    assert rows["train"]["nested"] and rows["train"]["type"] == "TrainConfig"
    assert "set per student" in rows["train"]["description"]


def test_nested_and_literal_types_render_as_written_in_a_config() -> None:
    rows = table(invoke("subliminal"))
    assert rows["train.freeze"][1:3] == ["trainable set", "full"]
    assert rows["modes"][1:3] == ["list[student arm]", "[full, freeze-attention, freeze-mlp]"]
    assert rows["data.top_p"][1:3] == ["float | None", "null"]
    assert rows["train.adam_betas"][1:3] == ["tuple[float, float]", "[0.9, 0.999]"]
    assert rows["train.lora"][1:3] == ["LoraConfig | None", "null"]
    assert rows["train.lora.rank"][1:3] == ["int", "8"]  # what the key gets once lora is given
    assert rows["train.mixed_precision"][2] == "'no'"  # quoted: YAML would read a bare no as false
    assert rows["data"][1:3] == ["NumberData", "{...}"]  # its keys follow on rows of their own


def test_json_matches_describe_fields() -> None:
    result = invoke("subliminal", "--preset", "quick", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    preset = load_config(SubliminalConfig, preset_path("subliminal/quick.yaml"))
    expected = describe_fields(SubliminalConfig, preset)
    assert [row["key"] for row in rows] == [f.key for f in expected]
    for row, field in zip(rows, expected, strict=True):
        assert row == {
            "key": field.key,
            "type": field.type,
            "default": field.default,
            "required": field.required,
            "nested": field.nested,
            "preset": field.value,
            "description": field.description,
        }
    assert by_key(rows)["n_examples"]["preset"] == 600


def test_json_without_preset_has_no_preset_key() -> None:
    rows = json.loads(invoke("subliminal", "--json").stdout)
    assert rows and all("preset" not in row for row in rows)


def test_long_values_and_keys_are_printed_whole_when_piped() -> None:
    result = invoke("subliminal")
    rows = table(result)
    assert SubliminalConfig().teacher_system in rows["teacher_system"]
    assert {f.key for f in describe_fields(SubliminalConfig)} == set(rows)


def test_required_keys_literals_of_numbers_and_optional_models() -> None:
    rows = by_key(json.loads(invoke("demo", "--json").stdout))
    assert rows["name"]["required"] and rows["name"]["default"] is None
    assert rows["level"]["type"] == "1 | 2"
    assert rows["inner"] == {
        "key": "inner",
        "type": "Inner | None",
        "default": None,
        "required": False,
        "nested": True,
        "description": "",
    }
    assert rows["inner.size"]["default"] == 3 and rows["inner.size"]["description"] == "how big"
    assert rows["tags"]["type"] == "tuple[str, ...]" and rows["tags"]["default"] == []
    assert table(invoke("demo"))["name"][2] == "(required)"


def test_type_name() -> None:
    assert type_name(int | None) == "int | None"
    assert type_name(list[Literal["a", "b"]] | None) == "list[a | b] | None"
    assert type_name(dict[str, str | None]) == "dict[str, str | None]"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nope"], "unknown experiment 'nope'"),
        (["subliminal", "--preset", "nope"], "preset file 'subliminal/nope.yaml' not found"),
        (["demo", "--preset", "quick"], "preset file 'demo/quick.yaml' not found"),
    ],
)
def test_unknown_experiment_or_preset_is_a_usage_error(args: list[str], expected: str) -> None:
    result = invoke(*args)
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and expected in result.stderr.lower()
