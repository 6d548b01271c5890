"""The whole paper in one run: every experiment as a stage, then the bundle (tables, figures,
an ACL-format main.tex and, with TeX, main.pdf) in `<run>/paper/`.

Stages run in the paper's order (sublens.report.stages.STAGE_ORDER), each in its own run
directory `<run>/stages/<stage>/` from a preset file plus overrides. Later stages are wired
to earlier ones: pruning, subliminal, distill and hybrid use the fine-tuned teacher of the
teacher stage; mechanistic reads the entanglement stage's categories; distill trains on the
subliminal stage's control numbers. A stage whose record says ok is reused; a failed or
interrupted one is rerun in its directory (the experiments resume from what they saved).
`sublens run paper` continues the newest paper run with the same config under --out (see
`find_reusable_run`). A failed stage does not stop the others that do not need it; the
bundle is written with what finished, and the run then fails naming the stages to rerun.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console

from sublens.config import Config, load_config, preset_path
from sublens.errors import SublensError
from sublens.experiments import Experiment, get, run_experiment
from sublens.report.stages import STAGE_ORDER
from sublens.runs import Run, read_json

# stage -> {override key: (producing stage, how its run directory is referenced: "dir" itself,
# or "#name" for one of its checkpoints)}
WIRING: dict[str, dict[str, tuple[str, str]]] = {
    "mechanistic": {"entanglement_run": ("entanglement", "dir")},
    "pruning": {"model": ("teacher", "dir")},
    # the control numbers come from the control teacher made by the same procedure (teacher
    # stage with control_system), so the two data sets differ only by the trait
    "subliminal": {"teacher": ("teacher", "dir"), "control_teacher": ("teacher", "#control_teacher")},
    "distill": {"teacher.model": ("teacher", "dir"), "data.source": ("subliminal", "dir")},
    "hybrid": {"biased": ("teacher", "dir")},
}
# The fine-tuned teacher carries the trait in its weights: no owl system prompt downstream.
WIRED_CONSTANTS: dict[str, dict[str, Any]] = {
    "mechanistic": {"numbers": None},
    "pruning": {"system": None, "bias_prompts.system": None},
    "distill": {"teacher.system": None},
}


class StageSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    config: str  # preset file, relative to the configs folder (e.g. teacher/quick.yaml) or a path
    set: dict[str, Any] = Field(default_factory=dict)  # overrides, dotted keys as in --set
    estimate_minutes: float = Field(default=5.0, gt=0)  # for the time-left estimate only


class PaperConfig(Config):
    preset: str = "quick"
    stages: dict[str, StageSpec]
    wire: bool = True  # connect stages (see WIRING); false: every stage runs its preset as is
    style: Literal["review", "final", "preprint"] = "review"
    acl_sty: str | None = None  # a user's copy of the official acl.sty instead of ours
    compile: bool = True  # main.pdf with latexmk when TeX is installed

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: dict[str, StageSpec]) -> dict[str, StageSpec]:
        unknown = sorted(set(stages) - set(STAGE_ORDER))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGE_ORDER)}")
        if not stages:
            raise ValueError("no stages: list at least one of " + ", ".join(STAGE_ORDER))
        return stages


# ---- stage configs -------------------------------------------------------------------------
def _override(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"


def stage_config(
    stage: str, spec: StageSpec, stage_dirs: dict[str, Path], wire: bool
) -> tuple[Experiment, Config]:
    """The stage's config: its preset, the wiring to earlier stages, then the user's overrides."""
    experiment = get(stage)
    overrides: list[str] = []
    if wire:
        for key, (source, reference) in WIRING.get(stage, {}).items():
            suffix = reference if reference.startswith("#") else ""
            overrides.append(_override(key, str(stage_dirs[source]) + suffix))
        overrides += [_override(k, v) for k, v in WIRED_CONSTANTS.get(stage, {}).items()]
    overrides += [_override(k, v) for k, v in spec.set.items()]
    return experiment, load_config(experiment.config, preset_path(spec.config), overrides)


def needs(stage: str, config: PaperConfig) -> list[str]:
    if not config.wire:
        return []
    return sorted({source for source, _ in WIRING.get(stage, {}).values()})


def stage_status(folder: Path) -> str | None:
    record = folder / "record.json"
    return str(read_json(record).get("status")) if record.is_file() else None


# ---- reuse of an earlier run ---------------------------------------------------------------
def find_reusable_run(config: PaperConfig, out: Path) -> Path | None:
    """The newest paper run under `out` with exactly this config (then continued, not redone)."""
    wanted = config.model_dump(mode="json")
    for folder in sorted(out.glob("*_paper_*"), reverse=True):
        saved = folder / "config.yaml"
        if saved.is_file() and yaml.safe_load(saved.read_text()) == wanted:
            return folder
    return None


# ---- execution -----------------------------------------------------------------------------
def _eta(config: PaperConfig, remaining: list[str], speed: float, elapsed_in_first: float = 0.0) -> str:
    """Time left: the remaining stages' estimates scaled by the measured speed so far (actual /
    estimated minutes of the stages that ran), less what the running stage has already taken."""
    minutes = sum(config.stages[s].estimate_minutes for s in remaining) * speed
    if remaining and elapsed_in_first:
        first = config.stages[remaining[0]].estimate_minutes * speed
        minutes += max(first - elapsed_in_first, 0.0) - first
    return f"~{minutes:.0f} min left" if minutes >= 1 else "<1 min left"


class _Heartbeat:
    """Prints where the chain stands every `every` seconds while a stage runs, so the time-left
    estimate moves with the clock (and says when a stage has run past its estimate)."""

    def __init__(self, console: Console, every: float = 120.0) -> None:
        self.console, self.every = console, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, stage: str, estimate: float, eta: Callable[[float], str]) -> None:
        started = time.perf_counter()

        def beat() -> None:
            while not self._stop.wait(self.every):
                elapsed = (time.perf_counter() - started) / 60
                over = f", past its estimate of {estimate:.0f} min" if elapsed > estimate else ""
                self.console.print(f"[dim]paper: {stage} running for {elapsed:.0f} min{over}; {eta(elapsed)}[/]")

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="paper-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def execute(config: PaperConfig, run: Run) -> dict[str, Any]:
    console = Console()
    order = [s for s in STAGE_ORDER if s in config.stages]
    stage_dirs = {s: run.path / "stages" / s for s in STAGE_ORDER}
    previous = read_json(run.path / "results.json") if (run.path / "results.json").is_file() else {}
    results: dict[str, Any] = {"preset": config.preset, "stages": {}, "partial": True}
    spent = estimated = 0.0
    heartbeat = _Heartbeat(console)
    for index, stage in enumerate(order, 1):
        folder = stage_dirs[stage]
        entry: dict[str, Any] = {"path": str(folder.relative_to(run.path)), "reused": False}
        results["stages"][stage] = entry
        speed = spent / estimated if estimated else 1.0
        to_do = [s for s in order[index - 1:] if stage_status(stage_dirs[s]) != "ok"]  # reused ones cost nothing
        head = f"[bold]stage {index}/{len(order)}: {stage}[/] ({_eta(config, to_do, speed)})"
        if stage_status(folder) == "ok":
            entry.update(status="ok", reused=True, wall_seconds=read_json(folder / "record.json")["wall_seconds"])
            console.print(f"{head}: reused, finished earlier in {folder}")
            continue
        missing = [s for s in needs(stage, config) if results["stages"].get(s, {}).get("status") != "ok"]
        if missing:
            entry.update(status="blocked", error=f"needs {', '.join(missing)}, which did not finish")
            console.print(f"{head}: [yellow]blocked[/]: {entry['error']}")
            run.save_results(results)
            continue
        experiment, stage_cfg = stage_config(stage, config.stages[stage], stage_dirs, config.wire)
        resumed = folder.exists()
        console.print(f"{head}: {'resuming' if resumed else 'running'} in {folder}")
        start = time.perf_counter()
        heartbeat.start(stage, config.stages[stage].estimate_minutes * speed,
                        partial(_eta, config, to_do, speed))
        try:
            with run.timed(f"stage:{stage}"):
                run_experiment(experiment.name, stage_cfg, run_dir=folder)
            entry["status"] = "ok"
        except Exception as exc:  # a failed stage must not stop the ones that do not need it
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            console.print(f"[red]stage {stage} failed[/]: {entry['error']} (record: {folder / 'record.json'})")
        finally:
            heartbeat.stop()
        entry.update(wall_seconds=round(time.perf_counter() - start, 1), resumed=resumed)
        spent += entry["wall_seconds"] / 60
        estimated += config.stages[stage].estimate_minutes
        run.save_results(results)
    results["partial"] = any(e["status"] != "ok" for e in results["stages"].values())
    results["previous_stages"] = previous.get("stages")
    run.save_results(results)

    with run.timed("bundle"):
        results["bundle"] = write_bundle(config, run, results, console)
    run.save_results(results)
    failed = [s for s, e in results["stages"].items() if e["status"] != "ok"]
    if failed:
        raise SublensError(
            f"Stage(s) {', '.join(failed)} did not finish (see their record.json under {run.path / 'stages'}); "
            f"the bundle holds what finished. Run the same command again to rerun them; finished stages are reused."
        )
    return results


def write_bundle(config: PaperConfig, run: Run, results: dict[str, Any], console: Console) -> dict[str, Any]:
    from sublens.report.bundle import build_bundle, load_runs

    stages, meta = load_runs(run.path)
    bundle = build_bundle(stages, run.path / "paper", mode=config.style, acl_sty=config.acl_sty,
                          compile=config.compile, meta=meta)
    pdf = str(bundle.pdf) if bundle.pdf else None
    console.print(f"[green]paper bundle:[/] {bundle.main_tex}" + (f"\n[green]PDF:[/] {pdf}" if pdf else ""))
    if bundle.message:
        console.print(bundle.message)
    for line in bundle.headline:
        console.print(f"  {line}")
    return {"folder": str(bundle.folder.relative_to(run.path)), "pdf": pdf and str(Path(pdf).relative_to(run.path)),
            "headline": bundle.headline, "message": bundle.message, "problems": bundle.problems}


EXPERIMENT = Experiment(
    name="paper",
    summary="Every experiment in order, wired together, then the ACL-format paper bundle (tables, figures, main.tex/pdf).",
    config=PaperConfig,
    execute=execute,
    reuse=find_reusable_run,
)
