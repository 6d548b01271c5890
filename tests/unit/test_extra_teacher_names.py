"""Extra teacher names become file and folder names in the run folder (data/<name>.train.jsonl,
students/<name>-full-seed<k>/): a name that could leave the run folder, or overwrite a built-in
data set's files, is refused when the config is validated, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from sublens.cli import EXIT_USAGE, app
from sublens.config import load_config
from sublens.errors import ConfigError
from sublens.experiments.subliminal import SubliminalConfig


def teachers(*names: str) -> dict[str, dict[str, str]]:
    return {"extra_teachers": {name: f"You love {name or 'nothing'}." for name in names}}


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/x", "..", "", "eagle ", "a.b", "a\\b", "é"])
def test_extra_teacher_name_that_is_not_a_plain_file_name_is_refused(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SubliminalConfig.model_validate(teachers(name))
    message = str(caught.value)
    assert repr(name) in message  # which name is bad
    assert "letters, digits, '-' and '_'" in message  # and what is allowed


@pytest.mark.parametrize("name", ["owl", "control", "base", "teacher", "Owl", "CONTROL"])
def test_extra_teacher_name_of_a_builtin_data_set_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="taken by a built-in data set"):
        SubliminalConfig.model_validate(teachers(name))


def test_extra_teacher_names_differing_only_by_case_are_refused() -> None:
    with pytest.raises(ValidationError, match="differ only by case"):
        SubliminalConfig.model_validate(teachers("eagle", "Eagle"))


def test_plain_extra_teacher_names_are_accepted() -> None:
    config = SubliminalConfig.model_validate(teachers("eagle", "red_fox", "dog-2", "X9"))
    assert list(config.extra_teachers) == ["eagle", "red_fox", "dog-2", "X9"]


def test_load_config_turns_a_bad_teacher_name_into_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"extra teacher name '\.\./x' is not allowed"):
        load_config(SubliminalConfig, None, ['extra_teachers={"../x": "You love x."}'])


def test_cli_refuses_a_bad_teacher_name_before_any_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sublens.experiments.subliminal.data as data
    import sublens.experiments.subliminal.run as run
    import sublens.experiments.subliminal.students as students
    import sublens.models as models

    def no_model(*args: object, **kwargs: object) -> None:
        pytest.fail("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    for module in (run, data, students):  # where the experiment loads its models
        monkeypatch.setattr(module, "load_model", no_model)
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["run", "subliminal", "--set", 'extra_teachers={"a/b": "You love b."}', "--out", str(out)]
    )
    assert result.exit_code == EXIT_USAGE
    message = " ".join(result.stderr.split())
    assert "extra teacher name 'a/b' is not allowed" in message
    assert not out.exists()  # no run folder, nothing written
