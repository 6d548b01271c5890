"""The paper chain's orchestration: wiring, reuse of ok stages (same resolved config, same code,
upstream unchanged), rerun of stale and failed ones, resume.

The stages are stand-in experiments (the real ones are tested on their own and take minutes);
what is under test is what `sublens run paper` does with their records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ConfigDict

import sublens.experiments as registry
from sublens.config import Config, load_config, preset_path
from sublens.errors import ConfigError, SublensError
from sublens.experiments import Experiment, run_experiment
from sublens.experiments import paper as paper_mod
from sublens.report.stages import STAGE_ORDER
from sublens.runs import Run, code_version, read_json


class FakeConfig(Config):
    model_config = ConfigDict(frozen=True, extra="allow")


class Stages:
    """Stand-in experiments that count calls and can be told to fail or be interrupted once."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = dict.fromkeys(STAGE_ORDER, 0)
        self.fail_once: set[str] = set()
        self.interrupt_once: set[str] = set()
        self.seen_partial: dict[str, bool] = {}
        self.bundles: list[Path] = []  # paper runs the bundle was written for

    def experiment(self, name: str) -> Experiment:
        def execute(config: Any, run: Run) -> dict[str, Any]:
            self.calls[name] += 1
            partial = run.path / "partial.txt"
            self.seen_partial[name] = partial.is_file()
            if name in self.interrupt_once:
                self.interrupt_once.discard(name)
                partial.write_text("half done")
                raise KeyboardInterrupt
            if name in self.fail_once:
                self.fail_once.discard(name)
                raise RuntimeError(f"{name} broke")
            return {"stage": name, "config": config.model_dump(mode="json")}

        return Experiment(name, "fake", FakeConfig, execute)


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> Stages:
    fake = Stages()
    real = registry._registry()
    table = {name: fake.experiment(name) for name in STAGE_ORDER} | {"paper": real["paper"]}
    monkeypatch.setattr(registry, "_registry", lambda: table)

    def fake_bundle(config: Any, run: Run, results: dict[str, Any], console: Any) -> dict[str, Any]:
        fake.bundles.append(run.path)
        return {"folder": "paper", "pdf": None, "headline": [], "message": ""}

    monkeypatch.setattr(paper_mod, "write_bundle", fake_bundle)
    return fake


def paper_config(tmp_path: Path, **extra: Any) -> paper_mod.PaperConfig:
    presets = tmp_path / "presets"
    presets.mkdir(exist_ok=True)
    specs = {}
    for name in STAGE_ORDER:
        (presets / f"{name}.yaml").write_text(yaml.safe_dump({"knob": 1}))
        specs[name] = {"config": str(presets / f"{name}.yaml"), "set": {"knob": 2}, "estimate_minutes": 1}
    return paper_mod.PaperConfig.model_validate({"stages": specs, **extra})


def test_stages_run_in_order_and_are_wired(stages: Stages, tmp_path: Path) -> None:
    outcome = run_experiment("paper", paper_config(tmp_path), tmp_path / "runs")
    assert all(stages.calls[name] == 1 for name in STAGE_ORDER)
    recorded = outcome.results["stages"]
    assert list(recorded) == list(STAGE_ORDER)
    assert all(entry["status"] == "ok" and not entry["reused"] for entry in recorded.values())
    teacher_dir = str(outcome.path / "stages" / "teacher")

    def config_of(stage: str) -> dict[str, Any]:
        return read_json(outcome.path / "stages" / stage / "results.json")["config"]

    assert config_of("pruning")["model"] == teacher_dir
    assert config_of("pruning")["system"] is None
    assert config_of("subliminal")["teacher"] == teacher_dir
    assert config_of("subliminal")["control_teacher"] == teacher_dir + "#control_teacher"  # matched control data
    assert config_of("hybrid")["biased"] == teacher_dir
    assert config_of("distill")["teacher"] == {"model": teacher_dir, "system": None}
    assert config_of("distill")["data"] == {"source": str(outcome.path / "stages" / "subliminal")}
    assert config_of("mechanistic")["entanglement_run"] == str(outcome.path / "stages" / "entanglement")
    # entanglement also categorises its sets by the shift the teacher stage's fine-tuning made
    assert config_of("entanglement")["tuned_teacher"] == teacher_dir
    assert config_of("subliminal")["entangled"] == {"run": str(outcome.path / "stages" / "entanglement")}
    assert config_of("teacher")["knob"] == 2  # the user's override wins over the preset


def test_the_subliminal_stage_counts_the_tuned_variant_of_its_set(stages: Stages, tmp_path: Path) -> None:
    """The data are written by the fine-tuned teachers: the subliminal stage counts (and filters
    out) the numbers their fine-tuning shifted, the tuned variant of its preset's set; a set the
    user gives in the paper config is taken as given."""
    config = paper_config(tmp_path)
    (tmp_path / "presets" / "subliminal.yaml").write_text(yaml.safe_dump({"knob": 1, "entangled": {"set": "vocab"}}))
    dirs = {s: tmp_path / "stages" / s for s in STAGE_ORDER}
    _, wired = paper_mod.stage_config("subliminal", config.stages["subliminal"], dirs, wire=True)
    assert wired.model_dump()["entangled"] == {"set": "vocab@tuned", "run": str(dirs["entanglement"])}
    _, unwired = paper_mod.stage_config("subliminal", config.stages["subliminal"], dirs, wire=False)
    assert unwired.model_dump()["entangled"] == {"set": "vocab"}
    spec = config.stages["subliminal"].model_copy(update={"set": {"entangled.set": "ar2"}})
    _, given = paper_mod.stage_config("subliminal", spec, dirs, wire=True)
    assert given.model_dump()["entangled"]["set"] == "ar2"  # the user's override wins, as given


def test_same_config_reuses_ok_stages(stages: Stages, tmp_path: Path) -> None:
    config = paper_config(tmp_path)
    first = run_experiment("paper", config, tmp_path / "runs")
    second = run_experiment("paper", config, tmp_path / "runs")
    assert second.path == first.path
    assert all(stages.calls[name] == 1 for name in STAGE_ORDER)
    assert all(entry["reused"] for entry in second.results["stages"].values())
    fresh = run_experiment("paper", config, tmp_path / "runs", fresh=True)
    assert fresh.path != first.path and all(stages.calls[name] == 2 for name in STAGE_ORDER)


def test_failed_stage_blocks_dependants_only_and_is_rerun(stages: Stages, tmp_path: Path) -> None:
    config = paper_config(tmp_path)
    stages.fail_once.add("entanglement")
    with pytest.raises(SublensError, match="entanglement.*did not finish"):
        run_experiment("paper", config, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").glob("*_paper_*")
    results = read_json(run_dir / "results.json")["stages"]
    assert results["entanglement"]["status"] == "failed" and "entanglement broke" in results["entanglement"]["error"]
    blocked = ("mechanistic", "subliminal", "distill")  # distill reads subliminal, which reads entanglement
    assert {s: results[s]["status"] for s in blocked} == dict.fromkeys(blocked, "blocked")
    assert all(results[s]["status"] == "ok" for s in ("teacher", "pruning", "hybrid"))
    assert read_json(run_dir / "stages" / "entanglement" / "record.json")["status"] == "failed"
    assert stages.bundles == [run_dir]  # the bundle is written with what finished

    again = run_experiment("paper", config, tmp_path / "runs")
    assert again.path == run_dir
    assert stages.calls["entanglement"] == 2 and stages.calls["teacher"] == 1
    assert all(stages.calls[s] == 1 for s in ("pruning", "mechanistic", "subliminal", "distill", "hybrid"))
    assert again.results["stages"]["entanglement"]["resumed"] is True
    assert all(again.results["stages"][s]["reused"] is True for s in ("teacher", "pruning", "hybrid"))


def test_a_failed_teacher_blocks_every_stage(stages: Stages, tmp_path: Path) -> None:
    """Every stage reads the fine-tuned teacher, directly or through another stage (entanglement
    since its tuned sets)."""
    stages.fail_once.add("teacher")
    with pytest.raises(SublensError, match="teacher.*did not finish"):
        run_experiment("paper", paper_config(tmp_path), tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").glob("*_paper_*")
    results = read_json(run_dir / "results.json")["stages"]
    assert results["teacher"]["status"] == "failed"
    assert all(results[s]["status"] == "blocked" for s in STAGE_ORDER if s != "teacher")


def test_interrupted_stage_resumes_in_its_directory(stages: Stages, tmp_path: Path) -> None:
    config = paper_config(tmp_path)
    stages.interrupt_once.add("subliminal")
    with pytest.raises(KeyboardInterrupt):
        run_experiment("paper", config, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").glob("*_paper_*")
    assert read_json(run_dir / "stages" / "subliminal" / "record.json")["status"] == "failed"
    assert stages.calls["distill"] == 0
    run_experiment("paper", config, tmp_path / "runs")
    assert stages.seen_partial["subliminal"] is True  # the rerun found what the first attempt saved
    assert stages.calls["teacher"] == 1 and stages.calls["subliminal"] == 2 and stages.calls["distill"] == 1


def test_bad_paper_configs_name_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": {"teachr": {"config": "teacher/quick.yaml"}}}))
    with pytest.raises(ConfigError, match="unknown stage.*teacher, entanglement"):
        load_config(paper_mod.PaperConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        preset_path("teacher/no-such-preset.yaml")


def test_the_bf16_chain_is_the_quick_chain_with_its_training_in_bf16_where_the_cpu_has_it(
    tmp_path: Path,
) -> None:
    """quick-bf16.yaml repeats quick.yaml (a paper preset names no parent): every stage config it
    builds must be quick's but for `train.mixed_precision: auto` in the three training stages, so
    the two chains' numbers differ by precision alone."""
    quick, bf16 = (load_config(paper_mod.PaperConfig, preset_path(f"paper/{p}.yaml")) for p in ("quick", "quick-bf16"))
    assert list(quick.stages) == list(bf16.stages)
    assert quick.model_dump(exclude={"stages", "preset"}) == bf16.model_dump(exclude={"stages", "preset"})
    dirs = {s: tmp_path / s for s in STAGE_ORDER}
    for stage in STAGE_ORDER:
        _, plain = paper_mod.stage_config(stage, quick.stages[stage], dirs, quick.wire)
        _, mixed = paper_mod.stage_config(stage, bf16.stages[stage], dirs, bf16.wire)
        if stage in ("teacher", "subliminal", "distill"):
            assert plain.train.mixed_precision == "no" and mixed.train.mixed_precision == "auto"
            mixed = mixed.model_copy(update={"train": plain.train})
        assert mixed == plain, stage


def test_shipped_presets_validate_with_wiring(tmp_path: Path) -> None:
    """Every stage of the shipped paper presets builds a valid config for its real experiment; the
    entanglement stage measures the teacher stage's teachers, and the subliminal stage counts
    the numbers they shifted."""
    for preset in ("quick", "quick-bf16", "paper", "rehearsal"):
        config = load_config(paper_mod.PaperConfig, preset_path(f"paper/{preset}.yaml"))
        dirs = {s: tmp_path / "stages" / s for s in STAGE_ORDER}
        built = {}
        for stage, spec in config.stages.items():
            experiment, stage_config = paper_mod.stage_config(stage, spec, dirs, config.wire)
            assert isinstance(stage_config, experiment.config)
            built[stage] = stage_config
        entanglement, subliminal = built["entanglement"], built["subliminal"]
        assert entanglement.tuned_teacher == str(dirs["teacher"])
        assert subliminal.entangled.set == "ar2@tuned"
        assert subliminal.entangled.run == str(dirs["entanglement"])
        assert "autoregressive" in entanglement.sets and 2 in entanglement.lengths


def test_time_left_moves_with_the_clock_and_the_measured_speed() -> None:
    from sublens.experiments.paper import PaperConfig, _eta

    config = PaperConfig.model_validate(
        {
            "stages": {
                "teacher": {"config": "teacher/quick.yaml", "estimate_minutes": 10},
                "subliminal": {"config": "subliminal/quick.yaml", "estimate_minutes": 20},
            }
        }
    )
    remaining = ["teacher", "subliminal"]
    assert _eta(config, remaining, 1.0) == "~30 min left"
    assert _eta(config, remaining, 2.0) == "~60 min left"  # stages so far took twice their estimate
    assert _eta(config, remaining, 1.0, 4.0) == "~26 min left"  # 4 min into the first stage
    # past its estimate: the chain runs 1.5x slower than estimated, so the rest needs 30 min, not 20
    assert _eta(config, remaining, 1.0, 15.0) == "~30 min left after teacher"
    # with finished stages that ran on time (10 min for 10 estimated), the overrun weighs less
    assert _eta(config, remaining, 1.0, 15.0, spent=10.0, estimated=10.0) == "~25 min left after teacher"
    assert _eta(config, ["subliminal"], 1.0, 25.0) == "subliminal is the last stage (then the bundle, under a minute)"


def test_heartbeat_reports_a_stage_that_runs_past_its_estimate() -> None:
    import io
    import time

    from rich.console import Console

    from sublens.experiments.paper import _Heartbeat

    out = io.StringIO()
    beat = _Heartbeat(Console(file=out, width=200), every=0.02)
    beat.start("subliminal", 0.0, lambda elapsed: "<1 min left")
    time.sleep(0.2)
    beat.stop()
    text = out.getvalue()
    assert "paper: subliminal running for 0 min, past its estimate of 0 min; <1 min left" in text
    printed = text.count("paper:")
    time.sleep(0.1)
    assert out.getvalue().count("paper:") == printed  # stopped means silent


# ---- reuse keyed on the stage's resolved config and the code version ----------------------
def printed(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().out.split())


def ran(stages: Stages, before: dict[str, int]) -> set[str]:
    """The stages executed since `before` (a copy of stages.calls)."""
    return {name for name in STAGE_ORDER if stages.calls[name] > before[name]}


def stale_copies(run_dir: Path, stage: str) -> list[Path]:
    return sorted((run_dir / "stages").glob(f"{stage}.stale-*"))


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # rich would fold the long tmp paths of the messages


def test_nothing_changed_reuses_every_stage(stages: Stages, tmp_path: Path) -> None:
    config = paper_config(tmp_path)
    first = run_experiment("paper", config, tmp_path / "runs")
    record = read_json(first.path / "stages" / "teacher" / "record.json")
    assert record["code_version"] == code_version() and len(code_version()) == 16
    before = dict(stages.calls)
    second = run_experiment("paper", config, tmp_path / "runs")
    assert second.path == first.path and ran(stages, before) == set()
    assert all(entry["reused"] and "rerun_because" not in entry for entry in second.results["stages"].values())
    assert not list((first.path / "stages").glob("*.stale-*"))


def test_an_edited_preset_reruns_its_stage_and_says_why(
    stages: Stages, tmp_path: Path, capsys: pytest.CaptureFixture[str], wide_console: None
) -> None:
    config = paper_config(tmp_path)
    first = run_experiment("paper", config, tmp_path / "runs")
    capsys.readouterr()
    # the paper config names the preset file: editing the file leaves the paper config as it was
    (tmp_path / "presets" / "hybrid.yaml").write_text(yaml.safe_dump({"knob": 1, "layers": 3}))
    before = dict(stages.calls)
    second = run_experiment("paper", config, tmp_path / "runs")
    assert second.path == first.path  # the same paper run is continued
    assert ran(stages, before) == {"hybrid"}  # nothing reads from hybrid
    folder = first.path / "stages" / "hybrid"
    assert f"config changed since {folder} ran: rerunning" in printed(capsys)
    entry = second.results["stages"]["hybrid"]
    assert entry["status"] == "ok" and not entry["reused"] and entry["rerun_because"].startswith("config changed")
    assert read_json(folder / "results.json")["config"]["layers"] == 3
    (aside,) = stale_copies(first.path, "hybrid")  # the earlier results are kept, not deleted
    assert entry["earlier_attempt"] == str(aside.relative_to(first.path))
    assert "layers" not in read_json(aside / "results.json")["config"]
    assert all(second.results["stages"][s]["reused"] for s in STAGE_ORDER if s != "hybrid")


def test_a_stage_from_other_code_reruns(
    stages: Stages, tmp_path: Path, capsys: pytest.CaptureFixture[str], wide_console: None
) -> None:
    config = paper_config(tmp_path)
    first = run_experiment("paper", config, tmp_path / "runs")
    capsys.readouterr()
    hybrid_record = first.path / "stages" / "hybrid" / "record.json"
    record = read_json(hybrid_record)
    record["code_version"] = "0123456789abcdef"
    hybrid_record.write_text(json.dumps(record))
    pruning_record = first.path / "stages" / "pruning" / "record.json"
    record = read_json(pruning_record)
    del record["code_version"]  # a run from before records had one
    pruning_record.write_text(json.dumps(record))
    before = dict(stages.calls)
    second = run_experiment("paper", config, tmp_path / "runs")
    assert ran(stages, before) == {"hybrid", "pruning"}
    assert printed(capsys).count("code changed since it ran: rerunning") == 2
    assert read_json(hybrid_record)["code_version"] == code_version()
    assert second.results["stages"]["hybrid"]["rerun_because"] == "code changed since it ran"
    assert len(stale_copies(first.path, "hybrid")) == len(stale_copies(first.path, "pruning")) == 1


def test_stages_reading_from_a_rerun_stage_rerun_too(
    stages: Stages, tmp_path: Path, capsys: pytest.CaptureFixture[str], wide_console: None
) -> None:
    config = paper_config(tmp_path)
    first = run_experiment("paper", config, tmp_path / "runs")
    capsys.readouterr()
    (tmp_path / "presets" / "teacher.yaml").write_text(yaml.safe_dump({"knob": 1, "epochs": 2}))
    before = dict(stages.calls)
    second = run_experiment("paper", config, tmp_path / "runs")
    # entanglement, pruning, subliminal and hybrid read the teacher; mechanistic reads entanglement;
    # distill reads teacher and subliminal: every stage
    assert ran(stages, before) == set(STAGE_ORDER)
    text = printed(capsys)
    assert f"config changed since {first.path / 'stages' / 'teacher'} ran: rerunning" in text
    assert text.count(": teacher reran since it ran: rerunning") == 3  # entanglement, pruning, hybrid
    assert re.search(r"mechanistic \([^)]*\): entanglement reran since it ran: rerunning", text)
    assert re.search(r"subliminal \([^)]*\): entanglement, teacher reran since it ran: rerunning", text)
    assert re.search(r"distill \([^)]*\): subliminal, teacher reran since it ran: rerunning", text)
    assert all(len(stale_copies(first.path, s)) == 1 for s in STAGE_ORDER)
    assert not any(entry["reused"] for entry in second.results["stages"].values())

    before = dict(stages.calls)
    run_experiment("paper", config, tmp_path / "runs")
    assert ran(stages, before) == set()  # once rerun, the chain is settled again


def test_a_rerun_upstream_is_noticed_after_an_interruption(stages: Stages, tmp_path: Path) -> None:
    """The teacher reruns and the chain is interrupted before distill and hybrid: the next
    invocation reuses the new teacher, yet still reruns the stages that read the old one."""
    config = paper_config(tmp_path)
    first = run_experiment("paper", config, tmp_path / "runs")
    (tmp_path / "presets" / "teacher.yaml").write_text(yaml.safe_dump({"knob": 1, "epochs": 2}))
    stages.interrupt_once.add("subliminal")
    before = dict(stages.calls)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("paper", config, tmp_path / "runs")
    assert ran(stages, before) == {"teacher", "entanglement", "mechanistic", "pruning", "subliminal"}
    before = dict(stages.calls)
    again = run_experiment("paper", config, tmp_path / "runs")
    assert again.path == first.path
    assert ran(stages, before) == {"subliminal", "distill", "hybrid"}
    assert again.results["stages"]["teacher"]["reused"] and again.results["stages"]["pruning"]["reused"]
    assert again.results["stages"]["subliminal"]["resumed"] is True  # the new attempt, not a stale one
    assert stages.seen_partial["subliminal"] is True
    assert again.results["stages"]["distill"]["rerun_because"] == "subliminal, teacher reran since it ran"
    assert again.results["stages"]["hybrid"]["rerun_because"] == "teacher reran since it ran"


def test_a_stage_interrupted_under_an_older_config_starts_clean(stages: Stages, tmp_path: Path) -> None:
    config = paper_config(tmp_path)
    stages.interrupt_once.add("hybrid")
    with pytest.raises(KeyboardInterrupt):
        run_experiment("paper", config, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").glob("*_paper_*")
    (tmp_path / "presets" / "hybrid.yaml").write_text(yaml.safe_dump({"knob": 1, "layers": 3}))
    before = dict(stages.calls)
    again = run_experiment("paper", config, tmp_path / "runs")  # not a ConfigError from the old folder
    assert ran(stages, before) == {"hybrid"} and again.results["stages"]["hybrid"]["status"] == "ok"
    assert stages.seen_partial["hybrid"] is False  # what the old config half made is not resumed
    (aside,) = stale_copies(run_dir, "hybrid")
    assert (aside / "partial.txt").is_file()


@pytest.mark.parametrize("preset", ["paper", "quick", "rehearsal"])
def test_distill_asks_for_no_more_numbers_than_subliminal_writes(preset: str) -> None:
    # distill trains on the subliminal stage's control numbers (wired): n_train + n_fit of them.
    # (The paper preset once asked for 10,256 of 10,000 and would have stopped at distill.)
    import yaml

    from sublens.config import load_config, preset_path
    from sublens.experiments.paper import PaperConfig

    paper = load_config(PaperConfig, preset_path(f"paper/{preset}.yaml"))

    def value(stage: str, key: str) -> int:
        spec = paper.stages[stage]
        if key in (spec.set or {}):
            return int(spec.set[key])
        node = yaml.safe_load(preset_path(spec.config).read_text())
        for part in key.split("."):
            node = node[part]
        return int(node)

    assert value("distill", "data.n_train") + value("distill", "data.n_fit") <= value("subliminal", "n_examples")
