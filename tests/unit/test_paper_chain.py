"""The paper chain's orchestration: wiring, reuse of ok stages, rerun of failed ones, resume.

The stages are stand-in experiments (the real ones are tested on their own and take minutes);
what is under test is what `sublens run paper` does with their records.
"""

from __future__ import annotations

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
from sublens.runs import Run, read_json


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
    assert config_of("teacher")["knob"] == 2  # the user's override wins over the preset


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
    stages.fail_once.add("teacher")
    with pytest.raises(SublensError, match="teacher.*did not finish"):
        run_experiment("paper", config, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").glob("*_paper_*")
    results = read_json(run_dir / "results.json")["stages"]
    assert results["teacher"]["status"] == "failed" and "teacher broke" in results["teacher"]["error"]
    assert {s: results[s]["status"] for s in ("pruning", "subliminal", "distill", "hybrid")} == dict.fromkeys(
        ("pruning", "subliminal", "distill", "hybrid"), "blocked")
    assert results["entanglement"]["status"] == results["mechanistic"]["status"] == "ok"
    assert read_json(run_dir / "stages" / "teacher" / "record.json")["status"] == "failed"
    assert stages.bundles == [run_dir]  # the bundle is written with what finished

    again = run_experiment("paper", config, tmp_path / "runs")
    assert again.path == run_dir
    assert stages.calls["teacher"] == 2 and stages.calls["entanglement"] == 1
    assert all(stages.calls[s] == 1 for s in ("pruning", "subliminal", "distill", "hybrid"))
    assert again.results["stages"]["teacher"]["resumed"] is True
    assert again.results["stages"]["entanglement"]["reused"] is True


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


def test_shipped_presets_validate_with_wiring(tmp_path: Path) -> None:
    """Every stage of the shipped paper presets builds a valid config for its real experiment."""
    for preset in ("quick", "paper"):
        config = load_config(paper_mod.PaperConfig, preset_path(f"paper/{preset}.yaml"))
        dirs = {s: tmp_path / "stages" / s for s in STAGE_ORDER}
        for stage, spec in config.stages.items():
            experiment, stage_config = paper_mod.stage_config(stage, spec, dirs, config.wire)
            assert isinstance(stage_config, experiment.config)


def test_time_left_moves_with_the_clock_and_the_measured_speed() -> None:
    from sublens.experiments.paper import PaperConfig, _eta

    config = PaperConfig.model_validate({"stages": {
        "teacher": {"config": "teacher/quick.yaml", "estimate_minutes": 10},
        "subliminal": {"config": "subliminal/quick.yaml", "estimate_minutes": 20}}})
    remaining = ["teacher", "subliminal"]
    assert _eta(config, remaining, 1.0) == "~30 min left"
    assert _eta(config, remaining, 2.0) == "~60 min left"  # stages so far took twice their estimate
    assert _eta(config, remaining, 1.0, 4.0) == "~26 min left"  # 4 min into the first stage
    assert _eta(config, remaining, 1.0, 15.0) == "~20 min left"  # past its estimate: the rest remains


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
