"""Listing commands (`sublens models`, `sublens experiments`) never cut an identifier: piped or on a
narrow terminal they print plain aligned columns, on a wide terminal a table, and with --json a
list of objects holding every column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

import sublens.cli as cli
import sublens.experiments as registry
from sublens.config import Config
from sublens.experiments import Experiment
from sublens.models.embedded import EMBEDDED

LONG_NAME = "a-rather-long-experiment-name-that-a-narrow-table-would-crop"
SUMMARY = "A stand-in whose summary is longer than forty columns, so it cannot fit on one line"


def execute(config: Config, run: Any) -> dict[str, Any]:
    return {}


@pytest.fixture(autouse=True)
def setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUBLENS_CACHE", str(tmp_path / "cache"))  # never the user's model cache
    table = {
        LONG_NAME: Experiment(LONG_NAME, SUMMARY, Config, execute),
        "demo": Experiment("demo", "a stand-in", Config, execute),
    }
    monkeypatch.setattr(registry, "_registry", lambda: table)


def invoke(monkeypatch: pytest.MonkeyPatch, *args: str, width: int = 40, terminal: bool = False) -> Result:
    # Console() reads the width once; the CLI's console is swapped for one of the width under test
    # (it still writes to sys.stdout, which the runner captures).
    monkeypatch.setattr(cli, "console", Console(width=width, force_terminal=terminal))
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output
    return result


def model_identifiers() -> list[str]:
    return [v for m in EMBEDDED.values() for v in (m.name, m.architecture, m.paper_counterpart)]


def test_models_json_lists_every_model_with_every_column(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = json.loads(invoke(monkeypatch, "models", "--json").stdout)
    assert [row["name"] for row in rows] == list(EMBEDDED)
    assert all(list(row) == list(cli.MODEL_COLUMNS) for row in rows)
    first = EMBEDDED[rows[0]["name"]]
    assert rows[0]["architecture"] == first.architecture
    assert rows[0]["paper_counterpart"] == first.paper_counterpart
    assert rows[0]["cache"] == "not converted (`sublens fetch`)"


def test_experiments_json_lists_full_names_and_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = json.loads(invoke(monkeypatch, "experiments", "--json").stdout)
    assert rows == [{"name": LONG_NAME, "summary": SUMMARY}, {"name": "demo", "summary": "a stand-in"}]


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "narrow-terminal"])
def test_listings_at_width_40_keep_every_identifier_whole(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    models = invoke(monkeypatch, "models", terminal=terminal).stdout
    experiments = invoke(monkeypatch, "experiments", terminal=terminal).stdout
    for identifier in model_identifiers():
        assert identifier in models
    assert any(line.startswith(f"{LONG_NAME}  {SUMMARY}") for line in experiments.splitlines())
    assert "…" not in models + experiments and "┃" not in models + experiments  # plain, not a cropped table


def test_plain_listing_is_aligned_with_a_header(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = invoke(monkeypatch, "experiments").stdout.splitlines()
    assert lines[0].split() == ["name", "summary"]
    assert lines[2] == "demo".ljust(len(LONG_NAME)) + "  a stand-in"


def test_a_wide_terminal_gets_a_table_with_whole_identifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    models = invoke(monkeypatch, "models", width=400, terminal=True).stdout
    assert "┃" in models and "Embedded models" in models
    for identifier in model_identifiers():
        assert identifier in models
