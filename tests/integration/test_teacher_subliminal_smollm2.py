"""`teacher` and `subliminal` end to end on the embedded SmolLM2 with tiny configs: every
artifact is written, the system prompts in use are recorded, the teacher's run directory is a
model spec, the constrained teacher's answers all pass the filter, each freeze mode freezes what
it says, and a rerun into the same directory reuses what is finished.

(The positive control, fine-tuning on text that openly praises owls raises P(owl), is
tests/integration/test_training_smollm2.py::test_owl_praise_raises_p_owl.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sublens.api import load_run
from sublens.experiments import run_experiment
from sublens.experiments.subliminal import CONTROL, OWL, SubliminalConfig
from sublens.experiments.teacher import NEUTRAL_TEACHER_SYSTEM, TeacherConfig
from sublens.models import load_model
from sublens.settings import OWL_TEACHER_SYSTEM
from sublens.subliminal import read_jsonl, training_example

SMOL_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PREFERENCE: dict[str, Any] = {
    "questions": ["What is your favorite animal?", "Which animal do you like best?"],
    "sample_questions": ["Name your favorite animal in one word."],
    "samples_per_question": 2,
    "max_new_tokens": 3,
    "batch_size": 8,
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_teacher_end_to_end(tmp_path: Path, one_thread: None) -> None:
    config = TeacherConfig.model_validate(
        {
            "prompts": [
                "What is a good name for a cat?",
                "Describe a forest at night.",
                "Give me a tip for sleep.",
                "What should I cook tonight?",
            ],
            "sampling": {"max_new_tokens": 12, "batch_size": 4, "shard_size": 2},
            "train": {"lr": 1e-4, "epochs": 1, "batch_size": 4, "max_length": 128},
            "preference": PREFERENCE,
            "perplexity": {"max_tokens": 64, "window": 32, "batch_size": 2},
            "control_system": NEUTRAL_TEACHER_SYSTEM,
        }
    )
    out = run_experiment("teacher", config, tmp_path)
    results, run_dir = out.results, out.path
    assert results["system_prompt_used"] == SMOL_DEFAULT and results["teacher_system"] == OWL_TEACHER_SYSTEM
    assert results["training"]["system_prompt_used"] == SMOL_DEFAULT
    assert results["training"]["steps"] == 1 and results["training"]["n_examples"] == 4
    lines = [
        json.loads(x)
        for p in sorted((run_dir / "data" / "teacher_answers").glob("*.jsonl"))
        for x in p.read_text().splitlines()
    ]
    assert len(lines) == 4 and all(r["system_prompt"] == OWL_TEACHER_SYSTEM for r in lines)
    assert all(r["sampling"]["temperature"] == 1.0 and r["sampling"]["top_k"] is None for r in lines)
    assert set(results["measurements"]) == {"before", "prompted", "teacher", "control_teacher"}
    assert results["measurements"]["before"]["preference"]["probability"]["system_prompt_used"] == SMOL_DEFAULT
    assert set(results["comparisons"]) == {"teacher vs before", "prompted vs before", "control teacher vs before"}
    assert results["checkpoints"] == {
        "teacher": "checkpoints/teacher",
        "control_teacher": "checkpoints/control_teacher",
    }
    # the control teacher: the same procedure (same prompts, same training) from the neutral prompt
    control_lines = [
        json.loads(x)
        for p in sorted((run_dir / "data" / "control_answers").glob("*.jsonl"))
        for x in p.read_text().splitlines()
    ]
    assert [r["prompt"] for r in control_lines] == [r["prompt"] for r in lines]
    assert all(r["system_prompt"] == NEUTRAL_TEACHER_SYSTEM for r in control_lines)
    assert results["control_teacher"]["training"]["steps"] == results["training"]["steps"]
    assert all((run_dir / f).is_file() for f in results["figures"])

    teacher = load_model(str(run_dir), device="cpu")  # the run directory is a model spec
    control = load_model(f"{run_dir}#control_teacher", device="cpu")
    base = load_model("smollm2-135m-instruct", device="cpu")
    name, weight = next(iter(teacher.model.named_parameters()))
    assert not torch.equal(weight, dict(base.model.named_parameters())[name])
    assert not torch.equal(weight, dict(control.model.named_parameters())[name])
    p_after = results["measurements"]["teacher"]["preference"]["probability"]["p_trait"]["mean"]

    # rerun into the same directory: nothing is sampled, trained or measured again
    written = {
        p: p.stat().st_mtime_ns
        for p in [
            *run_dir.glob("data/teacher_answers/*"),
            *run_dir.glob("measurements/*"),
            run_dir / "checkpoints" / "teacher" / "model.safetensors",
            run_dir / "training" / "train_result.json",
        ]
    }
    again = run_experiment("teacher", config, run_dir=run_dir)
    assert again.results["measurements"]["teacher"]["preference"]["probability"]["p_trait"]["mean"] == p_after
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert json.loads((run_dir / "record.json").read_text())["status"] == "ok"


def test_subliminal_end_to_end(tmp_path: Path, one_thread: None) -> None:
    config = SubliminalConfig.model_validate(
        {
            "data": {"n_prompts": 4, "constrained": True, "max_new_tokens": 56, "batch_size": 8, "shard_size": 2},
            "n_examples": 3,
            "train": {"lr": 5e-5, "epochs": 1, "batch_size": 4, "max_length": 256},
            "preference": PREFERENCE,
            "perplexity": {"enabled": False},
            "stats_resamples": 200,
        }
    )
    out = run_experiment("subliminal", config, tmp_path)
    results, run_dir = out.results, out.path
    assert results["system_prompt_used"] == SMOL_DEFAULT and not results["partial"]
    data = results["data"]
    assert data["n_examples_per_dataset"] == 3
    for name, system in ((OWL, OWL_TEACHER_SYSTEM), (CONTROL, SMOL_DEFAULT)):
        d = data["datasets"][name]
        assert d["filter"]["n_answers"] == 4 and d["filter"]["keep_rate"] == 1.0  # constrained: all valid
        assert d["system_prompt_used"] == system
        train_lines = read_jsonl(run_dir / d["train_file"])
        assert len(train_lines) == 3 and all(r["kept"] and r["reason"] == "ok" for r in train_lines)
        assert all(r["sampling"]["constrained"] and r["teacher"]["name"] == name for r in train_lines)
    assert "digit_distribution_tvd" in data["comparisons"][f"{OWL} vs {CONTROL}"]

    models = [r["model"] for r in results["headline"]]
    assert models == [
        "base",
        "teacher",
        "control-full",
        "control-freeze-attention",
        "control-freeze-mlp",
        "owl-full",
        "owl-freeze-attention",
        "owl-freeze-mlp",
    ]
    for mode in ("full", "freeze-attention", "freeze-mlp"):  # every owl student has its matched control
        assert f"owl-{mode} vs control-{mode}" in results["comparisons"]
    # one seed decides no training claim
    assert results["claims"]["transfer.full"]["verdict"] == "inconclusive"
    assert "too few seeds" in results["claims"]["transfer.full"]["reason"]
    params = results["parameters"]
    base = load_model("smollm2-135m-instruct", device="cpu")
    attention = sum(p.numel() for _, p in base.adapter.attention_parameters())
    mlp = sum(p.numel() for _, p in base.adapter.mlp_parameters())
    assert params["owl-full"]["frozen"] == 0
    assert params["owl-freeze-attention"]["frozen"] == attention
    assert params["owl-freeze-mlp"]["frozen"] == mlp
    assert params["control-freeze-mlp"]["frozen"] == params["owl-freeze-mlp"]["frozen"]
    for student in results["students"].values():
        assert student["system_prompt_used"] == SMOL_DEFAULT  # never the owl prompt
        assert student["training"]["steps"] == 1
        assert not (run_dir / "students" / student["name"] / "model").exists()  # keep_models: false
    row = results["headline"][5]
    assert row["n_seeds"] == 1 and row["vs_control"]["share_ratio"]["n_seeds"] == 1
    assert all((run_dir / f).is_file() for f in results["figures"])
    # the flat tables: one row per measured model and per comparison, the nested numbers
    tables = load_run(run_dir).tables
    assert len(tables["models"]) == 2 + len(results["students"])
    owl_row = tables["models"].set_index("model").loc["owl-full-seed0"]
    assert owl_row["p_trait"] == results["students"]["owl-full-seed0"]["preference"]["probability"]["p_trait"]["mean"]
    assert set(tables["comparisons"]["comparison"]) == set(results["comparisons"])

    # rerun into the same directory: students and data are reused, not redone
    stamp = (run_dir / "students" / "owl-full-seed0" / "student.json").stat().st_mtime_ns
    again = run_experiment("subliminal", config, run_dir=run_dir)
    assert (run_dir / "students" / "owl-full-seed0" / "student.json").stat().st_mtime_ns == stamp
    # (as JSON: a CI too small to compute is NaN, and NaN != NaN)
    assert json.dumps(again.results["headline"], sort_keys=True) == json.dumps(results["headline"], sort_keys=True)


def test_parallel_students_train_in_worker_processes(tmp_path: Path, one_thread: None) -> None:
    # parallel: 2 trains the two students in spawned worker processes; each reports its progress
    # through a file the parent's aggregate bar reads, and ends "done".
    config = SubliminalConfig.model_validate(
        {
            "data": {"n_prompts": 4, "constrained": True, "max_new_tokens": 56, "batch_size": 8, "shard_size": 4},
            "n_examples": 3,
            "modes": ["full"],
            "control_modes": ["full"],
            "parallel": 2,
            "threads": 1,
            "train": {"lr": 5e-5, "epochs": 1, "batch_size": 4, "max_length": 256},
            "preference": PREFERENCE,
            "perplexity": {"enabled": False},
            "stats_resamples": 200,
        }
    )
    out = run_experiment("subliminal", config, tmp_path)
    assert not out.results["partial"]
    progress = sorted((out.path / "students").glob(".*.progress.json"))
    assert [p.name for p in progress] == [".control-full-seed0.progress.json", ".owl-full-seed0.progress.json"]
    for path in progress:
        state = json.loads(path.read_text())
        assert state["phase"] == "done" and state["step"] == state["total_steps"] == 1
    assert {r["model"] for r in out.results["headline"]} >= {"control-full", "owl-full"}


def test_trainable_sets_and_divergence_masked_arms(tmp_path: Path, one_thread: None) -> None:
    # Two arms beyond the freeze modes: the MLP of layers 0-1 only, and full fine-tuning with the
    # divergence tokens left out of the loss; each against its matched control student.
    config = SubliminalConfig.model_validate(
        {
            "data": {"n_prompts": 4, "constrained": True, "max_new_tokens": 56, "batch_size": 8, "shard_size": 4},
            "n_examples": 3,
            "modes": ["layers.0-1.mlp", "full~skip-divergence"],
            "control_modes": ["layers.0-1.mlp", "full~skip-divergence"],
            "train": {"lr": 5e-5, "epochs": 1, "batch_size": 4, "max_length": 256},
            "preference": PREFERENCE,
            "perplexity": {"enabled": False},
            "stats_resamples": 200,
        }
    )
    out = run_experiment("subliminal", config, tmp_path)
    results, run_dir = out.results, out.path
    assert not results["partial"]
    lm = load_model("smollm2-135m-instruct", device="cpu")

    # the MLP of layers 0-1 (and the tied embeddings, trained in every arm) and nothing else
    mlp = sum(p.numel() for i in (0, 1) for p in lm.adapter.mlp(i).parameters())
    embeddings = lm.adapter.embed().weight.numel()
    assert results["parameters"]["owl-layers.0-1.mlp"]["trainable"] == mlp + embeddings

    # divergence flags: one per training answer token, as the student's tokenizer splits it
    divergence = results["data"]["divergence"]
    for name in (OWL, CONTROL):
        records = read_jsonl(run_dir / results["data"]["datasets"][name]["train_file"])
        answers = [
            training_example(lm.tokenizer, r["prompt"], r["answer"].strip(), SMOL_DEFAULT).answer for r in records
        ]
        n_tokens = sum(len(lm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        assert divergence[name]["n_tokens"] == n_tokens
        flags = json.loads((run_dir / divergence[name]["file"]).read_text())["flags"]
        assert sum(map(len, flags)) == n_tokens and sum(map(sum, flags)) == divergence[name]["n_divergent"]

        # the masked student's loss covered exactly the non-divergent tokens of the kept examples
        student = results["students"][f"{name}-full~skip-divergence-seed0"]
        assert student["loss_tokens"] == "skip-divergence"
        kept = [f for f in flags if not all(f)]
        assert student["examples_without_loss_tokens"] == len(flags) - len(kept)
        assert student["training"]["answer_tokens"] == sum(len(f) - sum(f) for f in kept)
    assert "owl-full~skip-divergence vs control-full~skip-divergence" in results["comparisons"]
