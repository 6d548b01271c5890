"""One run folder for a multi-process launch (sublens.runs.Team), without models: two processes
(torch.multiprocessing, forked; gloo on CPU; the environment a launcher gives them, rank 0
hosting the store as under launchers other than torchrun) run a stand-in experiment through
`run_experiment`.

- Rank 0 makes the folder and holds the lock; rank 1 gets the same path, never locks (the
  lock is rank 0's while rank 1 works), writes nothing, and returns rank 0's results.
- A failure on either rank ends the other's wait at once (no hang, no timeout to sit out):
  rank 0 records the run as failed and names the rank that failed first.
- An experiment that cannot run data-parallel, or a config with worker processes of its own
  (parallel > 1), is refused before any folder exists.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch.multiprocessing as mp

from sublens.config import Config

WORKER_TIMEOUT = 120.0  # seconds for both processes together (imports included)


class Demo(Config):
    device: str = "cpu"
    fail_on: int | None = None  # rank whose execute raises
    parallel: int = 1  # worker processes of its own (subliminal's key)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _execute(config: Demo, run: Any) -> dict[str, Any]:
    from sublens.errors import RunLockedError
    from sublens.runs import RunLock, holder_pid
    from sublens.runs import team as current_team

    team = current_team()
    pids = team.share("rank 0 pid", os.getpid)
    if config.fail_on == team.rank:
        raise ValueError(f"boom on rank {team.rank}")
    if not team.is_main and config.fail_on is None:
        # the lock is rank 0's (it holds it while rank 1 works): rank 1 would be refused, and
        # never tries (FollowerRun)
        assert holder_pid(run.path / ".lock") == pids
        with pytest.raises(RunLockedError):
            RunLock(run.path).acquire()
        assert type(run).__name__ == "FollowerRun"
        run.save_results({"from": "rank 1"})  # a no-op: results.json is rank 0's
        run.note(anything=1)
    team.sync("worked")  # rank 0 waits here for a failed rank 1
    return {"value": 42, "rank": team.rank}


def _worker(rank: int, port: int, out: str, name: str, config: dict[str, Any], report: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
        }
    )
    from accelerate.state import AcceleratorState

    import sublens.experiments as experiments
    import sublens.runs as runs
    from sublens.experiments import Experiment, run_experiment
    from sublens.runs import failed_run_dir

    # forked: forget the one-process state earlier tests in this pytest process may have set up
    AcceleratorState._reset_state(reset_partial_state=True)
    runs.distributed._TEAM = None

    fake = Experiment(name, "stand-in", Demo, _execute)
    experiments.get = lambda _: fake
    outcome: dict[str, Any]
    try:
        result = run_experiment(name, Demo(**config), Path(out))
        outcome = {"path": str(result.path), "results": result.results}
    except Exception as exc:
        where = failed_run_dir(exc)
        outcome = {
            "error": type(exc).__name__,
            "message": str(exc),
            "where": str(where) if where else None,
            "traceback": "".join(traceback.format_exception(exc)),
        }
    Path(report, f"rank{rank}.json").write_text(json.dumps(outcome))


def launch(tmp_path: Path, name: str = "teacher", **config: Any) -> list[dict[str, Any]]:
    out, report = tmp_path / "runs", tmp_path / "report"
    report.mkdir()
    context = mp.start_processes(
        _worker, args=(_free_port(), str(out), name, config, str(report)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + WORKER_TIMEOUT
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two processes did not finish within {WORKER_TIMEOUT:.0f} s (a hang)")
    return [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_one_folder_rank0_writes_and_locks(tmp_path: Path) -> None:
    zero, one = launch(tmp_path)
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1, folders
    assert zero["path"] == one["path"] == str(folders[0])
    assert zero["results"] == one["results"] == {"value": 42, "rank": 0}  # rank 1 reads rank 0's
    record = json.loads((folders[0] / "record.json").read_text())
    assert record["status"] == "ok" and "anything" not in record
    assert json.loads((folders[0] / "results.json").read_text()) == {"value": 42, "rank": 0}
    assert (folders[0] / ".lock").read_text() == ""  # released by rank 0 when the run ended


@pytest.mark.parametrize("fail_on", [0, 1])
def test_a_failure_on_any_rank_fails_both_without_a_hang(tmp_path: Path, fail_on: int) -> None:
    started = time.monotonic()
    reports = launch(tmp_path, fail_on=fail_on)
    assert time.monotonic() - started < WORKER_TIMEOUT
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1
    record = json.loads((folders[0] / "record.json").read_text())
    assert record["status"] == "failed"
    assert f"boom on rank {fail_on}" in record["error"]
    failed, other = reports[fail_on], reports[1 - fail_on]
    assert failed["error"] == "ValueError", failed
    assert other["error"] == "RankFailedError", other
    assert f"Process {fail_on} of the 2 processes" in other["message"]
    if fail_on == 1:  # rank 0's record names the rank that failed first, not its own echo
        assert record["error"].startswith("RankFailedError: Process 1")
    else:  # and rank 1's echo of rank 0's failure is not mistaken for a cause
        assert record["error"] == "ValueError: boom on rank 0"
    assert {r["where"] for r in reports} == {str(folders[0])}  # both point at rank 0's record
    assert not (folders[0] / "results.json").exists()


def test_single_process_experiments_are_refused_before_any_folder(tmp_path: Path) -> None:
    reports = launch(tmp_path, name="mechanistic")
    assert [r["error"] for r in reports] == ["ConfigError", "ConfigError"]
    assert "runs in one process only" in reports[0]["message"]
    assert not (tmp_path / "runs").exists()


def test_worker_processes_of_its_own_are_refused_before_any_folder(tmp_path: Path) -> None:
    reports = launch(tmp_path, parallel=2)
    assert [r["error"] for r in reports] == ["ConfigError", "ConfigError"]
    assert "Set parallel: 1" in reports[1]["message"]
    assert not (tmp_path / "runs").exists()
