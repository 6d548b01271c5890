"""The whole paper in one run: every experiment as a stage, then the bundle (tables, figures,
an ACL-format main.tex and, with TeX, main.pdf) in `<run>/paper/`.

Stages run in the paper's order (sublens.report.stages.STAGE_ORDER), each in its own run
directory `<run>/stages/<stage>/` from a preset file plus overrides. Later stages are wired
to earlier ones: pruning, subliminal, distill and hybrid use the fine-tuned teacher of the
teacher stage; entanglement also categorises its sets by the shift the teacher stage's
fine-tuning put into the owl teacher against its control teacher (the tuned sets), and the
subliminal stage counts the tuned variant of its set in the data those teachers wrote;
mechanistic reads the entanglement stage's categories; distill trains on the subliminal
stage's control numbers. A stage whose record says ok is reused when it ran with
the stage config resolved now (an edited preset file changes it, the paper config does not),
under the same code (`sublens.runs.code_version`), after the stages it reads from; otherwise
its folder is moved aside (`<stage>.stale-<time>`) and it reruns, and so do the stages that
read from it. A failed or interrupted one is rerun in its directory (the experiments resume
from what they saved). `sublens run paper` continues the newest paper run with the same config
under --out (see `find_reusable_run`). A failed stage does not stop the others that do not
need it; the bundle is written with what finished, and the run then fails naming the stages
to rerun.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console

from sublens.config import Config, load_config, preset_path
from sublens.errors import SublensError
from sublens.experiments import Experiment, get, run_experiment
from sublens.experiments.paper_progress import _eta, _Heartbeat
from sublens.report.stages import STAGE_ORDER
from sublens.runs import Run, code_version, read_json

# stage -> {override key: (producing stage, how its run directory is referenced: "dir" itself,
# or "#name" for one of its checkpoints)}
WIRING: dict[str, dict[str, tuple[str, str]]] = {
    # the numbers the fine-tuned teachers (which write the subliminal data) shift: the tuned sets
    "entanglement": {"tuned_teacher": ("teacher", "dir")},
    "mechanistic": {"entanglement_run": ("entanglement", "dir")},
    "pruning": {"model": ("teacher", "dir")},
    # the control numbers come from the control teacher made by the same procedure (teacher
    # stage with control_system), so the two data sets differ only by the trait
    "subliminal": {
        "teacher": ("teacher", "dir"),
        "control_teacher": ("teacher", "#control_teacher"),
        # the entanglement stage's numbers: counted in the data, filtered out for students
        "entangled.run": ("entanglement", "dir"),
    },
    "distill": {"teacher.model": ("teacher", "dir"), "data.source": ("subliminal", "dir")},
    "hybrid": {"biased": ("teacher", "dir")},
}
# The fine-tuned teacher carries the trait in its weights: no owl system prompt downstream.
WIRED_CONSTANTS: dict[str, dict[str, Any]] = {
    "mechanistic": {"numbers": None},
    "pruning": {"system": None, "bias_prompts.system": None},
    "distill": {"teacher.system": None},
}


# Values made from the stage preset's own (with the wiring, before the user's overrides, which
# win as given): the subliminal data are written by the fine-tuned teachers, so its entanglement
# test counts and filters out the numbers their fine-tuning shifted, the tuned variant of its
# set ("ar2" -> "ar2@tuned", measured by the entanglement stage in the teacher stage's teachers).
def _tuned_set(name: Any) -> str:
    from sublens.entanglement import tuned_set_name  # numpy and scipy: only when a stage is wired

    return tuned_set_name(str(name))


WIRED_DERIVED: dict[str, dict[str, Callable[[Any], Any]]] = {
    "subliminal": {"entangled.set": _tuned_set},
}


class StageSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    config: str = Field(description="the stage's preset file, relative to configs/ (e.g. teacher/quick.yaml) or a path")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset, dotted keys as in --set")
    estimate_minutes: float = Field(default=5.0, gt=0, description="expected minutes, for the time-left estimate only")


class PaperConfig(Config):
    preset: str = Field(default="quick", description="the name of this chain's preset (recorded)")
    stages: dict[str, StageSpec] = Field(
        description="the stages to run, by name; they run in the paper's order (teacher ... hybrid)"
    )
    wire: bool = Field(
        default=True,
        description="connect the stages (the fine-tuned teacher feeds the later ones, see WIRING); "
        "false: every stage runs its preset as is",
    )
    style: Literal["review", "final", "preprint"] = Field(
        default="review", description="the draft's ACL mode: review (line numbers), final, preprint"
    )
    acl_sty: str | None = Field(
        default=None, description="path to your copy of the official acl.sty, used instead of ours"
    )
    compile: bool = Field(default=True, description="compile main.pdf with latexmk when TeX is installed")

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


def stage_config(stage: str, spec: StageSpec, stage_dirs: dict[str, Path], wire: bool) -> tuple[Experiment, Config]:
    """The stage's config: its preset, the wiring to earlier stages, then the user's overrides."""
    experiment = get(stage)
    preset = preset_path(spec.config)
    overrides: list[str] = []
    if wire:
        for key, (source, reference) in WIRING.get(stage, {}).items():
            suffix = reference if reference.startswith("#") else ""
            overrides.append(_override(key, str(stage_dirs[source]) + suffix))
        overrides += [_override(k, v) for k, v in WIRED_CONSTANTS.get(stage, {}).items()]
        derived = WIRED_DERIVED.get(stage, {})
        if derived:
            wired = load_config(experiment.config, preset, overrides).model_dump(mode="json")
            overrides += [
                _override(key, make(value))
                for key, make in derived.items()
                if (value := _dotted(wired, key)) is not None
            ]
    overrides += [_override(k, v) for k, v in spec.set.items()]
    return experiment, load_config(experiment.config, preset, overrides)


def _dotted(data: Any, key: str) -> Any:
    """The value at a dotted key of a config dump; None where it has none."""
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def needs(stage: str, config: PaperConfig) -> list[str]:
    if not config.wire:
        return []
    return sorted({source for source, _ in WIRING.get(stage, {}).values()})


def stage_record(folder: Path) -> dict[str, Any] | None:
    record = folder / "record.json"
    return dict(read_json(record)) if record.is_file() else None


def stage_status(folder: Path) -> str | None:
    record = stage_record(folder)
    return str(record.get("status")) if record is not None else None


# ---- reuse of a finished stage -------------------------------------------------------------
def config_changed(folder: Path, stage_cfg: Config) -> bool:
    """Whether the stage config saved in `folder` differs from the one resolved now (compared as
    open_run writes it, through YAML, so a resumable folder is never called changed)."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        return False
    now = yaml.safe_load(yaml.safe_dump(stage_cfg.model_dump(mode="json"), sort_keys=False))
    return bool(yaml.safe_load(saved.read_text()) != now)


def code_changed(record: dict[str, Any]) -> bool:
    """A record from other code, or from before records had a code version, is not this code's."""
    return record.get("code_version") != code_version()


def _started(record: dict[str, Any] | None) -> datetime | None:
    started = record.get("started") if record else None
    return datetime.fromisoformat(started) if isinstance(started, str) else None


def rerun_sources(stage: str, record: dict[str, Any], config: PaperConfig, stage_dirs: dict[str, Path]) -> list[str]:
    """The stages this one reads from that started (again) after this one started: what this one
    read is gone. Judged from the records, so it holds across interrupted invocations too."""
    started = _started(record)
    if started is None:
        return []
    sources = [(source, _started(stage_record(stage_dirs[source]))) for source in needs(stage, config)]
    return [source for source, source_started in sources if source_started and source_started > started]


def stale_reason(stage: str, stage_cfg: Config, config: PaperConfig, stage_dirs: dict[str, Path]) -> str | None:
    """Why the earlier attempt in the stage's folder must not be reused or resumed; None if it may.

    A changed config or a rerun upstream stage make any attempt stale (its partial results were
    made from other inputs); other code only a finished one (a failed one resumes: the new code
    is usually the fix)."""
    folder = stage_dirs[stage]
    if config_changed(folder, stage_cfg):
        return f"config changed since {folder} ran"
    record = stage_record(folder)
    if record is None:
        return None
    if not (folder / "config.yaml").is_file():  # nothing to show it ran with this config
        return f"{folder} has no config.yaml to compare with"
    sources = rerun_sources(stage, record, config, stage_dirs)
    if sources:
        return f"{', '.join(sources)} reran since it ran"
    if record.get("status") == "ok" and code_changed(record):
        return "code changed since it ran"
    return None


def move_aside(folder: Path) -> Path:
    """Rename a stale stage folder to `<stage>.stale-<time>` beside it: its results stay there to
    compare with, and the stage reruns in a clean folder at the same path (the wiring holds)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    aside, attempt = folder.with_name(f"{folder.name}.stale-{stamp}"), 1
    while aside.exists():  # two reruns of one stage within a second
        attempt += 1
        aside = folder.with_name(f"{folder.name}.stale-{stamp}-{attempt}")
    folder.rename(aside)
    return aside


def likely_to_run(stages: list[str], first_runs: bool, config: PaperConfig, stage_dirs: dict[str, Path]) -> list[str]:
    """Of `stages` (the first one's fate known), those that will run, for the time-left estimate:
    unfinished, finished under other code or before a stage it reads from, or reading from one
    that runs. A later stage's changed config shows only once its config is resolved (resolving
    them all now would fail the whole chain early on one bad preset)."""
    running = stages[:1] if first_runs else []
    for stage in stages[1:]:
        record = stage_record(stage_dirs[stage])
        if (
            record is None
            or record.get("status") != "ok"
            or code_changed(record)
            or rerun_sources(stage, record, config, stage_dirs)
            or set(needs(stage, config)) & set(running)
        ):
            running.append(stage)
    return running


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
        experiment, stage_cfg = stage_config(stage, config.stages[stage], stage_dirs, config.wire)
        stale = stale_reason(stage, stage_cfg, config, stage_dirs)
        missing = [s for s in needs(stage, config) if results["stages"].get(s, {}).get("status") != "ok"]
        reuse = stale is None and not missing and stage_status(folder) == "ok"
        to_do = likely_to_run(order[index - 1 :], not reuse, config, stage_dirs)  # reused ones cost nothing
        head = f"[bold]stage {index}/{len(order)}: {stage}[/] ({_eta(config, to_do, speed)})"
        if reuse:
            entry.update(status="ok", reused=True, wall_seconds=read_json(folder / "record.json")["wall_seconds"])
            console.print(f"{head}: reused, finished earlier in {folder}")
            continue
        if missing:  # a stale attempt stays in place: the next invocation still finds it stale
            entry.update(status="blocked", error=f"needs {', '.join(missing)}, which did not finish")
            console.print(f"{head}: [yellow]blocked[/]: {entry['error']}")
            run.save_results(results)
            continue
        resumed = False
        if stale is not None:
            aside = move_aside(folder)
            entry.update(rerun_because=stale, earlier_attempt=str(aside.relative_to(run.path)))
            console.print(f"{head}: [yellow]{stale}: rerunning[/] in {folder} (the earlier attempt is kept in {aside})")
        else:
            resumed = folder.exists()
            console.print(f"{head}: {'resuming' if resumed else 'running'} in {folder}")
        heartbeat.start(
            stage,
            config.stages[stage].estimate_minutes * speed,
            partial(_eta, config, to_do, speed, spent=spent, estimated=estimated),
        )
        try:
            entry.update(run_stage(run, stage, experiment.name, stage_cfg, folder, console), resumed=resumed)
        finally:
            heartbeat.stop()
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
            f"{'Stages' if len(failed) > 1 else 'Stage'} {', '.join(failed)} did not finish (see their record.json "
            f"under {run.path / 'stages'}); "
            f"the bundle holds what finished. Run the same command again to rerun them; finished stages are reused."
        )
    return results


def run_stage(run: Run, stage: str, experiment: str, stage_cfg: Any, folder: Path, console: Console) -> dict[str, Any]:
    """Run one stage into its folder: its status ("ok" or "failed" with the error) and wall time.
    A failed stage is reported, not raised: it must not stop the stages that do not need it."""
    start = time.perf_counter()
    try:
        with run.timed(f"stage:{stage}"):
            run_experiment(experiment, stage_cfg, run_dir=folder)
        outcome: dict[str, Any] = {"status": "ok"}
    except Exception as exc:
        outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        console.print(f"[red]stage {stage} failed[/]: {outcome['error']} (record: {folder / 'record.json'})")
    return outcome | {"wall_seconds": round(time.perf_counter() - start, 1)}


def write_bundle(config: PaperConfig, run: Run, results: dict[str, Any], console: Console) -> dict[str, Any]:
    from sublens.report.bundle import build_bundle, load_runs

    stages, meta = load_runs(run.path)
    bundle = build_bundle(
        stages, run.path / "paper", mode=config.style, acl_sty=config.acl_sty, compile=config.compile, meta=meta
    )
    pdf = str(bundle.pdf) if bundle.pdf else None
    console.print(f"[green]paper bundle:[/] {bundle.main_tex}" + (f"\n[green]PDF:[/] {pdf}" if pdf else ""))
    if bundle.message:
        console.print(bundle.message)
    for line in bundle.headline:
        console.print(f"  {line}")
    return {
        "folder": str(bundle.folder.relative_to(run.path)),
        "pdf": pdf and str(Path(pdf).relative_to(run.path)),
        "headline": bundle.headline,
        "message": bundle.message,
        "problems": bundle.problems,
        "layout": bundle.layout.as_dict() if bundle.layout else None,
    }


EXPERIMENT = Experiment(
    name="paper",
    summary="Every experiment in order, wired together, then the ACL-format paper bundle (tables, figures, main.tex/pdf).",
    config=PaperConfig,
    execute=execute,
    reuse=find_reusable_run,
)
