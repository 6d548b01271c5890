"""The bundle's section on sweeps: read from what `sublens sweep` wrote, its verdicts as decided
there, refused up front when the folder is not a finished sweep."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from fixture_runs import RUNS
from sublens.cli import app
from sublens.errors import SublensError
from sublens.report.bundle import build_bundle, load_runs, load_sweep
from sublens.report.sweeps import sweeps_section
from sublens.sweep import effect_by_grid_point, effect_figure

# The LoRA r = 8 arm's three seeds (benchmarks/README.md) beside a rank-1 arm whose eagle
# student rises as much as the owl student: the first equivalent, the eagle row contradicted.
PER_SEED = {
    ("arm=[full+lora8]", "owl-full+lora8 vs control-full+lora8"): [1.054, 1.043, 1.057],
    ("arm=[full+lora1]", "owl-full+lora1 vs control-full+lora1"): [1.6, 1.5, 1.7],
    ("arm=[full+lora1]", "eagle-full+lora1 vs control-full+lora1"): [1.8, 1.7, 1.9],
    ("arm=[full+lora1]", "owl-full+lora1 vs eagle-full+lora1"): [1.6 / 1.8, 1.5 / 1.7, 1.7 / 1.9],
}


# Students whose loss fell (sublens.learning), as combined_table records both sides' quarters.
LEARNED = {"loss_first": [[1.4, 1.5, 1.3, 1.45]] * 2, "loss_last": [[1.0, 1.1, 0.9, 1.05]] * 2, "loss_unchecked": 0}


def _sweep_folder(tmp_path: Path) -> Path:
    """A finished sweep as `sublens sweep` leaves it: sweep.json, each point's config, the effect
    table and figure."""
    folder = tmp_path / "20261202-181447_subliminal"
    rows, points = [], []
    for (grid, comparison), ratios in PER_SEED.items():
        for seed, ratio in enumerate(ratios):
            point = f"{grid}_seed={seed}"
            rows.append(
                {
                    "point": point,
                    "grid": grid,
                    "seed": seed,
                    "comparison": comparison,
                    "share_ratio": ratio,
                    **LEARNED,
                }
            )
            points.append({"id": point, "values": {"arm": grid.partition("=")[2]}, "seed": seed, "settings": {}})
            config = {"base": "smollm2-135m-instruct", "n_examples": 300, "data": {"n_prompts": 330}}
            (folder / "points" / point).mkdir(parents=True, exist_ok=True)
            (folder / "points" / point / "config.yaml").write_text(yaml.safe_dump(config))
    spec = {"experiment": "subliminal", "config": "configs/subliminal/powered.yaml", "overrides": [], "grid": []}
    spec |= {"seeds": [0, 1, 2], "seed_key": "seeds", "points": list({p["id"]: p for p in points}.values())}
    (folder / "sweep.json").write_text(json.dumps(spec))
    effect = effect_by_grid_point(pd.DataFrame(rows))
    effect.to_parquet(folder / "sweep-effect.parquet")
    effect_figure(effect, "trained model over its matched control", folder / "sweep-effect")
    return folder


def test_the_section_states_each_rows_verdict_and_power(tmp_path: Path) -> None:
    sweep = load_sweep(_sweep_folder(tmp_path))
    assert sweep.base == "smollm2-135m-instruct" and (sweep.examples, sweep.prompts) == (300, 330)
    assert [(r.teacher, r.arm, r.verdict) for r in sweep.rows] == [
        ("owl", "full+lora8", "equivalent"),
        ("owl", "full+lora1", "supported"),
        ("eagle", "full+lora1", "contradicted"),
        ("owl", "full+lora1", "equivalent"),
    ]
    assert sweep.rows[3].is_specificity and sweep.rows[3].other == "eagle"
    assert [r.owl_specific for r in sweep.rows] == ["no"] * 4  # the lora8 arm has no owl rise, lora1 no owl-only one
    named = dataclasses.replace(sweep.rows[2], comparison="dog-2-layers.0-5.mlp vs control-layers.0-5.mlp")
    assert (named.teacher, named.arm) == ("dog-2", "layers.0-5.mlp")  # hyphens in both names
    tex, tables, figures, headline = sweeps_section([sweep])
    assert tex.startswith(r"\section{Powered designs}")
    assert "SmolLM2-135M-Instruct, 330 number prompts, 300 training examples per data set, 3 seeds" in tex
    assert "With full fine-tuning, LoRA rank 1, the eagle student" in tex
    assert r"though the CI excludes no change: a difference smaller than the margin (\textbf{equivalent}" in tex
    assert "arm=" not in tex and "lora8" not in tex  # settings in words, never as config keys
    (table,) = tables.values()
    eagle = next(line for line in table.splitlines() if line.startswith("full fine-tuning, LoRA rank 1 & eagle"))
    cells = [c.strip() for c in eagle.removesuffix(r"\\").split("&")]
    logs = [math.log(v) for v in PER_SEED[("arm=[full+lora1]", "eagle-full+lora1 vs control-full+lora1")]]
    assert cells[2:4] == ["3", "yes"]  # seeds, and whether the students learned their data
    assert cells[4].startswith(f"{math.exp(sum(logs) / 3):.2f} [") and cells[6] == "contradicted"
    assert list(figures.values()) == [sweep.figure] and figures.keys() == {f"figures/{sweep.label}.pdf"}
    assert "With full fine-tuning, LoRA rank 1, the owl student over the eagle student" in tex
    owl_over_eagle = next(line for line in table.splitlines() if "& owl over eagle &" in line)
    assert "equivalent" in owl_over_eagle
    # said plainly per grid point: the owl rise is supported, its rise over the eagle student is not
    assert (
        r"Owl-specific transfer with full fine-tuning, LoRA rank 1: \textbf{no} (over the eagle student: equivalent)."
        in tex
    )
    assert "LoRA rank 8: \\textbf{no} (the owl student over its control: equivalent)." in tex
    # the abstract's notes carry the owl transfer rows only (an eagle row is a control, not a finding)
    assert len(headline) == 2 and all("owl-" in line for line in headline)
    assert headline[1].endswith("supported; owl-specific: no")


def test_the_bundle_holds_the_section_its_files_and_the_design(tmp_path: Path) -> None:
    folder = _sweep_folder(tmp_path)
    stages, meta = load_runs(RUNS / "teacher")
    bundle = build_bundle(stages, tmp_path / "paper", compile=False, meta=meta, sweeps=[load_sweep(folder)])
    main = bundle.main_tex.read_text()
    assert main.index(r"\section{Powered designs}") < main.index(r"\section{Conclusion}")
    assert r"\subsection{Sweeps}" in main[main.index(r"\appendix") :]
    label = load_sweep(folder).label
    assert (tmp_path / "paper" / "tables" / f"{label}.tex").is_file()
    assert (tmp_path / "paper" / "figures" / f"{label}.pdf").read_bytes() == (folder / "sweep-effect.pdf").read_bytes()
    design = yaml.safe_load((tmp_path / "paper" / "configs" / f"{label}.yaml").read_text())
    assert design["config"] == "configs/subliminal/powered.yaml" and "points" not in design
    again = build_bundle(stages, tmp_path / "paper", compile=False, meta=meta, sweeps=[load_sweep(folder)])
    assert again.main_tex.read_text() == main  # rebuilt byte for byte


def test_a_folder_that_is_not_a_finished_sweep_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "paper"
    result = CliRunner().invoke(app, ["report", str(RUNS / "teacher"), "--out", str(out), "--sweep", str(tmp_path)])
    assert result.exit_code == 2 and "is not a sweep folder" in " ".join(result.output.split())
    assert not out.exists()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "sweep.json").write_text("{}")
    try:
        load_sweep(unfinished)
    except SublensError as exc:
        assert "no point has finished" in str(exc)
    else:
        raise AssertionError("an unfinished sweep was accepted")
