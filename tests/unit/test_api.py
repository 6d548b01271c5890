"""The Python API: lazy top-level exports, and load_run reading a run folder back."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import sublens
import sublens.experiments
from sublens.api import LoadedRun, load_run
from sublens.config import Config
from sublens.errors import SublensError
from sublens.runs import atomic_write_parquet, open_run


class Demo(Config):
    model: str = "smollm2-135m-instruct"
    k: int = 3


def make_run(out: Path) -> Path:
    """A finished run folder with two tables, one nested, plus files that are not its tables."""
    with open_run("demo", Demo(seed=5, k=7), out) as run:
        atomic_write_parquet(
            run.artifact("numbers.parquet"), pd.DataFrame({"number": ["7", "42"], "shift": [0.5, -1.0]})
        )
        atomic_write_parquet(run.artifact("figures/heads.parquet"), pd.DataFrame({"head": ["L0H1"]}))
        run.artifact(".numbers.parquet").write_bytes(b"half a file")  # hidden: not a table
        run.artifact(".hidden/old.parquet").write_bytes(b"ignored")
        with open_run("inner", Demo(), out, run_dir=run.path / "stages" / "inner") as inner:  # a nested run
            atomic_write_parquet(inner.artifact("inner.parquet"), pd.DataFrame({"x": [1]}))
        run.save_results({"answer": 42})
        return run.path


def test_load_run_reads_config_record_results_and_tables(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    loaded = load_run(str(run_dir))
    assert isinstance(loaded, LoadedRun)
    assert loaded.path == run_dir
    assert loaded.experiment == "demo"
    assert loaded.status == "ok"
    assert loaded.config == {"seed": 5, "scoring_memory_mb": 2048.0, "model": "smollm2-135m-instruct", "k": 7}
    assert loaded.record["seed"] == 5 and loaded.record["status"] == "ok"
    assert loaded.results == {"answer": 42}
    # the run's own tables only: no hidden files, no nested run's tables
    assert list(loaded.tables) == ["figures/heads", "numbers"]
    assert repr(loaded.tables) == "RunTables(['figures/heads', 'numbers'])"
    numbers = loaded.tables["numbers"]
    assert numbers.to_dict("list") == {"number": ["7", "42"], "shift": [0.5, -1.0]}
    assert loaded.tables["numbers"] is numbers  # read once, then kept
    assert loaded.tables["figures/heads"]["head"].tolist() == ["L0H1"]
    with pytest.raises(KeyError, match="tables: figures/heads, numbers"):
        loaded.tables["missing"]
    inner = load_run(run_dir / "stages" / "inner")
    assert inner.experiment == "inner" and list(inner.tables) == ["inner"]


def test_load_run_without_results_gives_none(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), open_run("demo", Demo(), tmp_path) as run:
        raise RuntimeError("stopped before any results")
    loaded = load_run(run.path)
    assert loaded.results is None
    assert loaded.status == "failed"
    assert "stopped before any results" in loaded.record["error"]
    assert len(loaded.tables) == 0


def test_not_a_run_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(
        SublensError, match=r"not a sublens run folder: it has no record\.json and config\.yaml"
    ) as info:
        load_run(tmp_path)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(SublensError, match=r"it has no record\.json\."):
        load_run(tmp_path)
    with pytest.raises(SublensError, match="not a sublens run folder"):
        load_run(tmp_path / "missing")


def test_torn_files_name_the_file(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    torn = run_dir / "numbers.parquet"
    torn.write_bytes(torn.read_bytes()[:20])
    loaded = load_run(run_dir)  # listing the tables reads none of them
    with pytest.raises(SublensError, match=rf"{re.escape(str(torn))}.*torn"):
        loaded.tables["numbers"]
    assert loaded.tables["figures/heads"]["head"].tolist() == ["L0H1"]  # the others still read
    (run_dir / "results.json").write_text('{"answer": 4')
    with pytest.raises(SublensError, match=re.escape(f"Cannot read {run_dir / 'results.json'}")):
        load_run(run_dir)


def test_import_sublens_does_not_import_torch() -> None:
    code = (
        "import sys, sublens\n"
        "from sublens import load_run\n"
        "assert 'torch' not in sys.modules, 'import sublens imported torch'\n"
        "assert 'pandas' not in sys.modules, 'load_run imported pandas before a table was read'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_top_level_names_are_their_home_modules_objects() -> None:
    from sublens import capture, load_model, load_run, run_experiment, score_strings
    from sublens.api import load_run as home_load_run
    from sublens.experiments import run_experiment as home_run_experiment
    from sublens.hooks import capture as home_capture
    from sublens.models import load_model as home_load_model
    from sublens.scoring import score_strings as home_score_strings

    assert load_model is home_load_model
    assert capture is home_capture
    assert score_strings is home_score_strings
    assert run_experiment is home_run_experiment
    assert load_run is home_load_run
    assert sorted(sublens.__all__) == ["capture", "load_model", "load_run", "run_experiment", "score_strings"]
    assert set(sublens.__all__) <= set(dir(sublens))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = sublens.not_a_name
    from sublens import runs  # submodules still import through `from sublens import ...`

    assert runs.open_run is open_run


def test_every_experiment_config_and_results_import_without_torch() -> None:
    """Reading, checking and showing a config, and reading results, must not load model code:
    a bad key is reported at once, and reports build on machines without torch."""
    packages = sorted(
        p.name for p in Path(sublens.experiments.__file__).parent.iterdir() if (p / "config.py").is_file()
    )
    assert {"teacher", "subliminal", "distill", "hybrid", "pruning"} <= set(packages)
    imports = "".join(
        f"import sublens.experiments.{name}.config, sublens.experiments.{name}.results\n" for name in packages
    )
    code = "import sys\n" + imports + "import sublens.settings\nassert 'torch' not in sys.modules, 'torch imported'\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_config_key_of_every_experiment_is_documented() -> None:
    """`sublens config NAME` shows each key's documentation: none may be blank, nested keys
    (train.lr, preference.panel) included."""
    from sublens.config import describe_fields
    from sublens.experiments import all_experiments

    experiments = all_experiments()
    assert {e.name for e in experiments} >= {"teacher", "subliminal", "distill", "hybrid", "pruning", "paper"}
    undocumented = [
        f"{e.name}: {row.key}" for e in experiments for row in describe_fields(e.config) if not row.description
    ]
    assert not undocumented, undocumented


def test_the_public_api_is_documented() -> None:
    import inspect

    undocumented = [name for name in sublens.__all__ if len(inspect.getdoc(getattr(sublens, name)) or "") < 40]
    assert not undocumented, undocumented
