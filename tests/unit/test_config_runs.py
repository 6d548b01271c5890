"""Configs reject what they do not know; run directories record success and failure."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from sublens.config import Config, apply_overrides, load_config
from sublens.errors import ConfigError
from sublens.runs import cached_json, open_run, read_json


class Demo(Config):
    model: str = "smollm2-135m-instruct"
    k: int = 15
    weights: list[float] = Field(default_factory=lambda: [1.0])


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: x\nkk: 3\n")
    with pytest.raises(ConfigError, match=r"kk: Extra inputs.*Valid keys: seed, scoring_memory_mb, model, k, weights"):
        load_config(Demo, path)
    with pytest.raises(ConfigError, match="kk"):
        load_config(Demo, None, ["kk=3"])


def test_overrides_are_yaml_values_and_configs_are_frozen(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("k: 3\n")
    config = load_config(Demo, path, ["seed=7", "weights=[0.5, 2]", "model=gemma3-270m"])
    assert (config.k, config.seed, config.weights, config.model) == (3, 7, [0.5, 2.0], "gemma3-270m")
    with pytest.raises(Exception, match="frozen"):
        config.k = 4  # type: ignore[misc]
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize("text", ["k: [unclosed", "- a list\n- not a mapping\n", "k: notanint\n"])
def test_malformed_config_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(Demo, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Demo, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Demo, None, ["novalue"])


def test_run_directory_records_ok(tmp_path: Path) -> None:
    config = Demo(seed=3)
    with open_run("demo", config, tmp_path) as run:
        with run.timed("step"):
            pass
        run.save_results({"answer": 42})
    record = read_json(run.path / "record.json")
    assert record["status"] == "ok" and record["seed"] == 3 and record["error"] is None
    assert record["schema_version"] == 1 and "step" in record["timings"] and record["wall_seconds"] >= 0
    assert record["versions"]["torch"].startswith("2.13")
    assert "commit" in record["git"]
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == config.model_dump()
    assert read_json(run.path / "results.json") == {"answer": 42}
    assert run.path.name.split("_")[1] == "demo"
    assert not list(run.path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_failed_run_keeps_its_record(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad"), open_run("demo", Demo(), tmp_path) as run:
        run.save_results({"partial": True})
        raise ValueError("bad")
    record = read_json(run.path / "record.json")
    assert record["status"] == "failed"
    assert record["error"] == "ValueError: bad" and "Traceback" in record["traceback"]
    assert read_json(run.path / "results.json") == {"partial": True}  # nothing computed is lost


def test_resuming_needs_the_same_config(tmp_path: Path) -> None:
    with open_run("demo", Demo(seed=1), tmp_path) as run:
        pass
    with open_run("demo", Demo(seed=1), tmp_path, run_dir=run.path):
        pass  # same config: the run directory is reopened
    with (
        pytest.raises(ConfigError, match="different config"),
        open_run("demo", Demo(seed=2), tmp_path, run_dir=run.path),
    ):
        pass


def test_newest_finished_run_skips_failed_and_checkpointless_runs(tmp_path: Path) -> None:
    from sublens.experiments.hybrid import default_biased
    from sublens.runs import atomic_write_json, newest_finished_run

    def make(name: str, status: str, checkpoints: dict[str, str] | None) -> Path:
        folder = tmp_path / name
        atomic_write_json(folder / "record.json", {"status": status})
        atomic_write_json(folder / "results.json", {"checkpoints": checkpoints} if checkpoints else {})
        return folder

    ok = make("20260101-000000_teacher_aaa", "ok", {"teacher": "checkpoints/teacher"})
    make("20260102-000000_teacher_bbb", "failed", {"teacher": "checkpoints/teacher"})
    make("20260103-000000_teacher_ccc", "ok", None)
    make("20260104-000000_subliminal_ddd", "ok", {"s": "checkpoints/s"})
    (tmp_path / "20260105-000000_teacher_eee").mkdir()  # interrupted before any record
    assert newest_finished_run(tmp_path, "teacher") == ok
    assert default_biased(tmp_path) == str(ok)
    assert newest_finished_run(tmp_path / "nothing", "teacher") is None
    with pytest.raises(ConfigError, match="sublens run teacher"):
        default_biased(tmp_path / "nothing")


class Texts(Config):
    question: str = "q"
    system: str | None = "s"
    words: list[str] = Field(default_factory=list)
    systems: dict[str, str | None] = Field(default_factory=dict)
    count: int = 0
    ratio: float | None = None


def test_overrides_keep_the_text_of_string_fields() -> None:
    config = load_config(
        Texts,
        None,
        [
            "question=010",
            "system=yes",
            "words=[010, no, 'x y']",
            "systems.owl=1e3",
            "count=010",
            "ratio=1e-3",
        ],
    )
    assert config.question == "010" and config.system == "yes"  # not 8 and True
    assert config.words == ["010", "no", "x y"] and config.systems == {"owl": "1e3"}
    assert config.count == 8 and config.ratio == 0.001  # non-text fields are YAML as before
    config = load_config(Texts, None, ["question=Be brief: one word # really", "system='quoted: x'"])
    assert config.question == "Be brief: one word # really" and config.system == "quoted: x"
    assert load_config(Texts, None, ["system=null", "systems.owl=~", "ratio=null"]).model_dump() == {
        "seed": 0,
        "scoring_memory_mb": 2048.0,
        "question": "q",
        "system": None,
        "words": [],
        "systems": {"owl": None},
        "count": 0,
        "ratio": None,
    }
    assert load_config(Texts, None, ["system='None'", "question=None"]).system == "None"
    with pytest.raises(ConfigError, match=r"Ambiguous override 'system=None': write system=null"):
        load_config(Texts, None, ["system=None"])
    with pytest.raises(ConfigError, match="systems.owl=null"):
        load_config(Texts, None, ["systems.owl=none"])
    with pytest.raises(ConfigError, match="question: Input should be a valid string"):
        load_config(Texts, None, ["question=null"])  # null is no text, and this field needs one
    assert apply_overrides({}, ["question=010"]) == {"question": 8}  # without a class: plain YAML


def test_model_specs_that_look_like_paths_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sublens.config import check_model_specs
    from sublens.errors import ModelSpecError

    class Specs(Config):
        model: str = "smollm2-135m-instruct"
        models: list[str] = Field(default_factory=lambda: ["meta-llama/Llama-3.2-1B-Instruct"])
        teacher: str = "prompted"
        set: dict[str, str] = Field(default_factory=dict)
        note: str = "runs/not/a/spec"  # not a spec field: never checked

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "20260101-000000_teacher_abc123").mkdir(parents=True)
    check_model_specs(Specs())
    check_model_specs(Specs(teacher="runs/20260101-000000_teacher_abc123#control_teacher"))
    with pytest.raises(ModelSpecError, match=r"models\[1\]: No such run folder.*20260101-000000_teacher_abc123"):
        check_model_specs(Specs(models=["gpt2", "runs/20260101-000000_teacher_abc124"]))
    with pytest.raises(ModelSpecError, match=r"set\.subliminal\.teacher: No such run folder"):
        check_model_specs(Specs(set={"subliminal.teacher": "runs/x"}))  # a paper stage's overrides


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    from sublens.runs import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o002)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o664  # not mkstemp's 0600


def test_two_processes_never_write_one_run(tmp_path: Path) -> None:
    from sublens.errors import RunLockedError
    from sublens.runs import LOCK_FILE, RunLock, failed_run_dir

    with open_run("demo", Demo(), tmp_path) as run:
        assert (run.path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
            RunLock(run.path).acquire()  # even a second open in this process is refused
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid()); print('locked', flush=True); "
            "sys.stdin.read()",
            str(run.path / LOCK_FILE),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}.*kill {holder.pid}") as caught:
            with open_run("demo", Demo(), tmp_path, run_dir=run.path):
                pytest.fail("the run body must not start")
        assert caught.value.pid == holder.pid and failed_run_dir(caught.value) is None
        assert read_json(run.path / "record.json")["status"] == "ok"  # untouched by the refused attempt
    finally:
        holder.communicate("")
    with pytest.raises(ValueError, match="late") as failed, open_run("demo", Demo(), tmp_path, run_dir=run.path):
        raise ValueError("late")  # the holder is gone: the kernel dropped its lock
    assert failed_run_dir(failed.value) == run.path


def test_each_run_records_its_own_peak_memory(tmp_path: Path) -> None:
    # The peak is measured in a fresh process (the test process's own peak is whatever pytest
    # reached before): a 300 MB stage inside an outer run, then a small stage. The big stage's
    # peak shows the allocation, the small stage's does not (its window was reset), and the
    # outer run's peak covers both.
    script = f"""
import json, sys
from pathlib import Path
from sublens.config import Config
from sublens.runs import open_run
class Demo(Config):
    pass
out = Path({str(tmp_path)!r})
with open_run("outer", Demo(), out / "outer") as outer:
    with open_run("big", Demo(), out / "big") as big:
        block = b"\\x01" * (300 << 20)
        del block
    with open_run("small", Demo(), out / "small") as small:
        pass
print(json.dumps([str(r.path) for r in (outer, big, small)]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    outer, big, small = (read_json(Path(p) / "record.json")["memory"] for p in json.loads(done.stdout))
    assert big["peak_rss_mb"] > small["peak_rss_mb"] + 250
    assert outer["peak_rss_mb"] >= big["peak_rss_mb"]


def test_a_full_disk_is_recorded_with_the_folder_and_the_free_space(tmp_path: Path) -> None:
    import errno

    from sublens.errors import DiskFullError

    class Demo(Config):
        pass

    with pytest.raises(DiskFullError) as failed, open_run("demo", Demo(), tmp_path) as run:
        (run.path / "part.bin").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(failed.value)
    assert str(run.path) in message and "GiB free" in message and f"--resume {run.path}" in message
    record = read_json(run.path / "record.json")
    assert record["status"] == "failed" and record["error"] == f"DiskFullError: {message}"
    assert isinstance(failed.value.__cause__, OSError)  # the original error stays attached


def test_reading_an_unfinished_or_torn_entanglement_run_is_a_clear_error(tmp_path: Path) -> None:
    from sublens.errors import SublensError
    from sublens.mechanistic import read_entanglement_numbers
    from sublens.runs import atomic_write_json

    (tmp_path / "numbers.parquet").write_bytes(b"PAR1 torn halfway")
    atomic_write_json(tmp_path / "record.json", {"status": "running"})
    with pytest.raises(SublensError, match="status 'running', not a finished one"):
        read_entanglement_numbers(tmp_path)
    atomic_write_json(tmp_path / "record.json", {"status": "ok"})
    with pytest.raises(SublensError, match="cannot be read as a table"):
        read_entanglement_numbers(tmp_path)


class _Measured(BaseModel):
    value: float
    label: str


def test_a_step_is_computed_once_per_key_and_typed_results_survive_the_file(tmp_path: Path) -> None:
    calls: list[str] = []

    def compute(label: str) -> _Measured:
        calls.append(label)
        return _Measured(value=1 / 3, label=label)

    with open_run("demo", Demo(seed=1), tmp_path) as run:
        first = run.step("measurements/base", "key-a", lambda: compute("a"), _Measured)
        again = run.step("measurements/base", "key-a", lambda: compute("never"), _Measured)
        changed = run.step("measurements/base", "key-b", lambda: compute("b"), _Measured)
        plain = run.step("counts", "k", lambda: {"n": 3})
        plain_again = run.step("counts", "k", lambda: {"n": 4})
    assert calls == ["a", "b"]  # the same key reads the file; a new key computes and replaces it
    assert again == first and isinstance(again, _Measured) and again.value == 1 / 3  # exact through JSON
    assert changed.label == "b"
    assert read_json(run.path / "measurements" / "base.json") == {"key": "key-b", "result": changed.model_dump()}
    assert plain == plain_again == {"n": 3}


def test_a_step_file_without_its_value_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text('{"key": "k"}')  # no value under the field: computed again
    assert cached_json(path, "k", lambda: [1, 0], field="flags") == [1, 0]
    assert read_json(path) == {"key": "k", "flags": [1, 0]}
    assert cached_json(path, "k", lambda: [9], field="flags") == [1, 0]
