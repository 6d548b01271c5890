"""The command line: errors on stderr as plain text, one exit status per kind of failure, the run
folder named at the start and the end, --resume refusing what is not a run, --version, the lock.

Experiments are stand-ins registered for the test (the real ones are tested on their own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ConfigDict
from typer.testing import CliRunner, Result

import sublens.experiments as registry
from sublens import __version__
from sublens.cli import (
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_PARTIAL,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    app,
)
from sublens.config import Config
from sublens.errors import SublensError
from sublens.experiments import Experiment
from sublens.runs import LOCK_FILE, Run, read_json


class DemoConfig(Config):
    model: str = "smollm2-135m-instruct"
    question: str = "What is your favorite animal?"
    system: str | None = None
    behaviour: str = "ok"  # ok | fail | sublens-fail | partial | interrupt


def execute(config: DemoConfig, run: Run) -> dict[str, Any]:
    if config.behaviour == "fail":
        raise ValueError("something [/broke] inside")
    if config.behaviour == "sublens-fail":
        raise SublensError("the data in runs/[x] is unusable; regenerate it")
    if config.behaviour == "partial":
        run.save_results({"partial": True})
        raise SublensError("Stage teacher did not finish; run the same command again.")
    if config.behaviour == "interrupt":
        raise KeyboardInterrupt
    return {"question": config.question, "system": config.system}


@pytest.fixture(autouse=True)
def demo_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "demo": Experiment("demo", "a stand-in", DemoConfig, execute),
        "other": Experiment("other", "another stand-in", DemoConfig, execute),
    }
    monkeypatch.setattr(registry, "_registry", lambda: table)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def one_run(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"sublens {__version__}"


def test_help_documents_the_exit_codes() -> None:
    result = invoke("--help")
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0
    for phrase in ("2 usage or config error", "3 the run failed", "4 partial", "5 the run folder is in use"):
        assert phrase in text


def test_success_names_the_run_folder_at_start_and_end(tmp_path: Path) -> None:
    result = invoke("run", "demo", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    run_dir = one_run(tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0] == f"run folder: {run_dir}" and lines[-1] == f"done: results in {run_dir}"
    assert result.stderr == ""
    assert read_json(run_dir / "record.json")["status"] == "ok"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "nope"], "Unknown experiment 'nope'"),
        (["run", "demo", "--set", "modle=x"], "modle: Extra inputs"),
        (["run", "demo", "--set", "[/oops]=1"], "[/oops]: Extra inputs"),  # rich markup would crash on it
        (["run", "demo", "--set", "novalue"], "write --set key=value"),
        (["run", "demo", "--set", "system=None"], "write system=null"),
        (["run", "demo", "--config", "nope.yaml", "--preset", "quick"], "not both"),
        (["run", "demo", "--resume", "runs/[x]"], "Cannot resume runs/[x]: no such run folder"),
        (["run", "demo", "--set", "model=runs/20260101-000000_teacher_abc123"], "no such run folder"),
    ],
)
def test_usage_errors_go_to_stderr_unmangled(tmp_path: Path, args: list[str], expected: str) -> None:
    result = invoke(*args, "--out", str(tmp_path / "runs"))
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and expected.lower() in result.stderr.lower()
    assert not (tmp_path / "runs").exists()  # nothing ran, no run folder was made


def test_mistyped_run_folder_spec_names_the_nearest_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sublens.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    runs = tmp_path / "runs"
    (runs / "20260101-000000_teacher_abc123").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "demo", "--set", "model=runs/20260101-000000_teacher_abd123", "--out", "out")
    assert result.exit_code == EXIT_USAGE
    message = " ".join(result.stderr.split())
    assert "model: No such run folder" in message and "runs/20260101-000000_teacher_abc123" in message
    assert not (tmp_path / "out").exists()


def test_resume_refuses_what_is_not_a_run_of_this_experiment(tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "20260101-000000_demo_abcdef"
    result = invoke("run", "demo", "--resume", str(missing))
    assert result.exit_code == EXIT_USAGE and "no such run folder" in result.stderr.lower()
    assert not missing.exists()  # not a fresh run started there
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("run", "demo", "--resume", str(empty))
    assert result.exit_code == EXIT_USAGE and "not a run folder" in result.stderr
    assert invoke("run", "demo", "--out", str(tmp_path / "out")).exit_code == 0
    run_dir = one_run(tmp_path / "out")
    result = invoke("run", "other", "--resume", str(run_dir))
    assert result.exit_code == EXIT_USAGE and "it is a run of demo" in result.stderr
    result = invoke("run", "demo", "--resume", str(run_dir), "--set", "seed=4")
    assert result.exit_code == EXIT_USAGE and "different config" in result.stderr
    result = invoke("run", "demo", "--resume", str(run_dir))
    assert result.exit_code == 0 and f"run folder: {run_dir} (continuing)" in result.stdout


def test_unexpected_error_points_to_the_traceback_in_the_record(tmp_path: Path) -> None:
    result = invoke("run", "demo", "--set", "behaviour=fail", "--out", str(tmp_path))
    assert result.exit_code == EXIT_RUN_FAILED
    run_dir = one_run(tmp_path)
    record = read_json(run_dir / "record.json")
    assert record["status"] == "failed" and "Traceback" in record["traceback"]
    assert "something [/broke] inside" in record["traceback"]
    assert result.stdout.splitlines() == [f"run folder: {run_dir}"]
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: the run failed unexpectedly (ValueError: something [/broke] inside)")
    assert lines[0].endswith(f"the traceback is in {run_dir / 'record.json'}")
    assert lines[1] == f"run folder: {run_dir} (failed; see {run_dir / 'record.json'})"


def test_run_failure_and_partial_chain_have_their_own_codes(tmp_path: Path) -> None:
    result = invoke("run", "demo", "--set", "behaviour=sublens-fail", "--out", str(tmp_path / "a"))
    assert result.exit_code == EXIT_RUN_FAILED
    assert result.stderr.splitlines()[0] == "error: the data in runs/[x] is unusable; regenerate it"
    result = invoke("run", "demo", "--set", "behaviour=partial", "--out", str(tmp_path / "b"))
    assert result.exit_code == EXIT_PARTIAL
    run_dir = one_run(tmp_path / "b")
    assert result.stderr.splitlines()[-1].startswith(f"run folder: {run_dir} (partial")


def test_interrupt_says_how_to_resume(tmp_path: Path) -> None:
    result = invoke("run", "demo", "--set", "behaviour=interrupt", "--out", str(tmp_path))
    assert result.exit_code == EXIT_INTERRUPTED
    run_dir = one_run(tmp_path)
    assert f"--resume {run_dir}" in result.stderr
    assert read_json(run_dir / "record.json")["status"] == "failed"


def test_partial_paper_chain_exits_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sublens.experiments import paper as paper_mod
    from sublens.report.stages import STAGE_ORDER

    class StageConfig(Config):
        model_config = ConfigDict(frozen=True, extra="allow")

    def stage(name: str) -> Experiment:
        def run_stage(config: Any, run: Run) -> dict[str, Any]:
            if name == "pruning":  # a stage no other stage waits for
                raise RuntimeError("pruning broke")
            return {}

        return Experiment(name, "stand-in", StageConfig, run_stage)

    table = {name: stage(name) for name in STAGE_ORDER} | {"paper": paper_mod.EXPERIMENT}
    monkeypatch.setattr(registry, "_registry", lambda: table)
    monkeypatch.setattr(paper_mod, "write_bundle", lambda *a: {"folder": "paper", "headline": []})
    (tmp_path / "stage.yaml").write_text("knob: 1\n")
    specs = {name: {"config": str(tmp_path / "stage.yaml")} for name in STAGE_ORDER}
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump({"stages": specs}))
    result = invoke("run", "paper", "--config", str(tmp_path / "paper.yaml"), "--out", str(tmp_path / "runs"))
    assert result.exit_code == EXIT_PARTIAL, result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("error: Stage pruning did not finish"), message


def test_a_locked_run_folder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    assert invoke("run", "demo", "--out", str(tmp_path)).exit_code == 0
    run_dir = one_run(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from sublens.runs import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); sys.stdin.read()",
            str(run_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = invoke("run", "demo", "--resume", str(run_dir))
        assert result.exit_code == EXIT_LOCKED
        assert f"in use by process {holder.pid}" in " ".join(result.stderr.split())
        assert read_json(run_dir / "record.json")["status"] == "ok"  # the refused attempt wrote nothing
    finally:
        holder.communicate("")  # closing stdin ends the holder, and with it the lock
    assert invoke("run", "demo", "--resume", str(run_dir)).exit_code == 0
    assert (run_dir / LOCK_FILE).read_text() == ""  # released, no stale pid
