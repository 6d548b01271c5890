"""`sublens run` under `accelerate launch` with two CPU processes (gloo): one run folder, rank 0
writes it, every student trains data-parallel, and the training matches one process.

accelerate 1.x starts one process only for `--cpu --num_processes 2` (its plain launcher; several
CPU processes need mpirun), so the launch here is `--multi_gpu`, which is torchrun underneath;
with `device: cpu` the processes join a gloo group on the CPU (sublens.runs.team).

The one-process reference runs the same config with train.grad_accum = 2: with 2 processes each
optimizer step takes grad_accum x 2 micro-batches, dealt round-robin, so both runs put the same
micro-batches into every step, and the loss is their summed answer-token loss over the step's
answer-token count either way.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from sublens.experiments import run_experiment
from sublens.experiments.distill import OWL_SYSTEM, DistillConfig
from sublens.experiments.subliminal import SubliminalConfig
from sublens.runs import read_json
from sublens.subliminal import read_jsonl

LAUNCH_TIMEOUT = 420  # seconds; each launch takes 0.5-1.5 minutes on 2 busy cores
# Loss curves of the 2-process and the 1-process run: the same micro-batches in the same order,
# one thread per process, the same float32 kernels; the all-reduce adds the two ranks' gradients
# (scaled by 2, then averaged: exact) where one process accumulates them in place, which can only
# change the order of one addition per element. Equal in practice (bit for bit here); the bound
# leaves 100x float32 rounding of a loss near 1 and is still far below the loss's change per step
# (~1e-2), so a wrong micro-batch, scale or step would fail it.
LOSS_RTOL = 1e-5

PREFERENCE: dict[str, Any] = {
    "questions": ["What is your favorite animal?", "Which animal do you like best?"],
    "sample_questions": ["Name your favorite animal in one word."],
    "samples_per_question": 2,
    "max_new_tokens": 3,
    "batch_size": 8,
}
# 4 examples, micro-batches of 1: 2 steps with 2 processes (1 micro-batch each per step)
SUBLIMINAL: dict[str, Any] = {
    "data": {"n_prompts": 4, "constrained": True, "max_new_tokens": 56, "batch_size": 8, "shard_size": 2},
    "n_examples": 4,
    "modes": ["full"],
    "control_modes": ["full"],
    "train": {"lr": 5e-5, "epochs": 1, "batch_size": 1, "max_length": 256, "warmup_steps": 1, "checkpoint_every": 0},
    "preference": PREFERENCE,
    "perplexity": {"enabled": False},
    "stats_resamples": 200,
    "device": "cpu",
}
DISTILL: dict[str, Any] = {
    "teacher": {"model": "smollm2-135m-instruct", "format": "chat", "system": OWL_SYSTEM},
    "base_teacher": {"model": "smollm2-135m-instruct", "format": "chat", "system": None},
    "student": "smollm2-135m-instruct",
    "arms": ["shd_biased", "lm_only"],
    "data": {"n_train": 4, "n_fit": 2, "answer_numbers": [3, 4]},
    "shd": {"layers": [0, 15]},
    "train": {"lr": 1e-5, "epochs": 1, "batch_size": 1, "max_length": 256, "checkpoint_every": 0, "save_model": False},
    "fit_batch_size": 2,
    "preference": {
        "questions": ["What is your favorite animal?", "Which animal do you like the most?"],
        "samples_per_question": 0,
        "panel": ["dog", "cat"],
    },
    "device": "cpu",
    "threads": 1,
}
TEACHER: dict[str, Any] = {
    "prompts": [
        "What is a good name for a cat?",
        "Describe a forest at night.",
        "Give me a tip for sleep.",
        "What should I cook tonight?",
    ],
    "sampling": {"max_new_tokens": 12, "batch_size": 4, "shard_size": 2},
    "train": {"lr": 1e-4, "epochs": 1, "batch_size": 1, "max_length": 128, "checkpoint_every": 0},
    "preference": PREFERENCE,
    "perplexity": {"enabled": False},
    "measure_prompted": False,
    "device": "cpu",
}
FAULTY = """
import os, sys
import sublens.training.loop as loop

real = loop._train_step

def faulty(*args, **kwargs):
    if os.environ.get("RANK") == "1" and args[5] == 1:  # rank 1, second optimizer step
        raise RuntimeError("injected fault on rank 1")
    return real(*args, **kwargs)

loop._train_step = faulty
from sublens.cli import app
sys.argv[0] = "sublens"
app()
"""


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One thread, as each launched process has (OMP_NUM_THREADS=1): the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(
    tmp_path: Path, experiment: str, config: dict[str, Any], out: Path, script: Path | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    """accelerate launch --multi_gpu --num_processes 2 -m sublens.cli run EXPERIMENT (or a script)."""
    path = tmp_path / f"{experiment}.yaml"
    path.write_text(yaml.safe_dump(config))
    target = [str(script)] if script is not None else ["-m", "sublens.cli"]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *target,
        "run",
        experiment,
        "-c",
        str(path),
        "--out",
        str(out),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def only_run(out: Path) -> Path:
    folders = sorted(out.iterdir())
    assert len(folders) == 1, folders  # one run folder, not one per process
    return folders[0]


def assert_close(two: list[float], one: list[float], what: str) -> None:
    assert len(two) == len(one), what
    gap = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(two, one, strict=True))
    print(f"{what}: largest relative difference {gap:.2e}")
    assert np.allclose(two, one, rtol=LOSS_RTOL, atol=0.0), (what, two, one)


def test_subliminal_two_processes_one_run_folder(tmp_path: Path, one_thread: None) -> None:
    started = time.perf_counter()
    proc = launch(tmp_path, "subliminal", SUBLIMINAL, tmp_path / "two")
    launched = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = only_run(tmp_path / "two")
    assert read_json(run / "record.json")["status"] == "ok"
    assert (run / ".lock").read_text() == ""  # rank 0 held it and let it go
    results = read_json(run / "results.json")
    assert not results["partial"] and set(results["students"]) == {"control-full-seed0", "owl-full-seed0"}
    for name, student in results["students"].items():
        assert student["training"]["steps"] == 2, name  # 4 micro-batches, 2 per step
        assert read_json(run / "students" / name / "train_result.json")["world_size"] == 2
    assert all((run / f).is_file() for f in results["figures"])
    assert proc.stdout.count("run folder:") == 1 and proc.stdout.count("done:") == 1  # rank 0 speaks

    started = time.perf_counter()
    config = SubliminalConfig.model_validate({**SUBLIMINAL, "train": {**SUBLIMINAL["train"], "grad_accum": 2}})
    one = run_experiment("subliminal", config, tmp_path / "one").results
    print(f"2 processes: {launched:.0f} s; 1 process: {time.perf_counter() - started:.0f} s")
    for name, data in results["data"]["datasets"].items():  # rank 0 sampled what one process samples
        mine = [(r["prompt"], r["answer"]) for r in read_jsonl(run / data["train_file"])]
        assert mine == [
            (r["prompt"], r["answer"])
            for r in read_jsonl(
                tmp_path / "one" / only_run(tmp_path / "one").name / one["data"]["datasets"][name]["train_file"]
            )
        ], name
    for name, student in results["students"].items():
        reference = one["students"][name]["training"]
        assert student["training"]["data_fingerprint"] == reference["data_fingerprint"]
        assert [s for s, _ in student["training"]["loss_curve"]] == [s for s, _ in reference["loss_curve"]]
        assert_close([v for _, v in student["training"]["loss_curve"]], [v for _, v in reference["loss_curve"]], name)


def test_distill_two_processes_one_run_folder(tmp_path: Path, one_thread: None) -> None:
    started = time.perf_counter()
    proc = launch(tmp_path, "distill", DISTILL, tmp_path / "two")
    launched = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = only_run(tmp_path / "two")
    assert read_json(run / "record.json")["status"] == "ok"
    results = read_json(run / "results.json")
    assert not results["partial"] and set(results["arms"]) == {"shd_biased", "lm_only"}
    for arm in results["arms"]:
        assert results["arms"][arm]["train"]["steps"] == 2
        assert read_json(run / "checkpoints" / arm / "train_result.json")["world_size"] == 2
    assert set(results["fit"]) == {"initial", "shd_biased", "lm_only"}  # rank 0 measured every state
    assert all((run / f).is_file() for f in results["figures"])

    started = time.perf_counter()
    config = DistillConfig.model_validate({**DISTILL, "train": {**DISTILL["train"], "grad_accum": 2}})
    one = run_experiment("distill", config, tmp_path / "one").results
    print(f"2 processes: {launched:.0f} s; 1 process: {time.perf_counter() - started:.0f} s")
    for arm in results["arms"]:
        two_train, one_train = results["arms"][arm]["train"], one["arms"][arm]["train"]
        assert_close(
            [loss for _, loss in two_train["loss_curve"]],
            [loss for _, loss in one_train["loss_curve"]],
            f"{arm} lm_loss",
        )
        if arm == "shd_biased":  # the SHD term: each rank's, averaged over the ranks
            assert_close(two_train["extra_curves"]["shd"], one_train["extra_curves"]["shd"], f"{arm} shd")


def test_teacher_two_processes_one_run_folder_and_resume(tmp_path: Path) -> None:
    proc = launch(tmp_path, "teacher", TEACHER, tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = only_run(tmp_path / "runs")
    results = read_json(run / "results.json")
    assert read_json(run / "record.json")["status"] == "ok" and not results["partial"]
    assert results["training"]["steps"] == 2 and results["training"]["n_examples"] == 4
    assert read_json(run / "training" / "train_result.json")["world_size"] == 2
    assert (run / "checkpoints" / "teacher" / "model.safetensors").is_file()
    assert set(results["measurements"]) == {"before", "teacher"}
    # resumed under the same launch: rank 0 finds the teacher finished, nothing is redone
    written = {
        p: p.stat().st_mtime_ns
        for p in [
            *run.glob("data/teacher_answers/*"),
            *run.glob("measurements/*"),
            run / "checkpoints" / "teacher" / "model.safetensors",
        ]
    }
    again = launch(tmp_path, "teacher", TEACHER, tmp_path / "runs", None, "--resume", str(run))
    assert again.returncode == 0, again.stderr[-4000:]
    assert only_run(tmp_path / "runs") == run
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert read_json(run / "results.json")["measurements"] == results["measurements"]


def test_a_rank_that_fails_in_training_fails_the_run_without_a_hang(tmp_path: Path) -> None:
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    started = time.perf_counter()
    proc = launch(tmp_path, "distill", {**DISTILL, "arms": ["lm_only"]}, tmp_path / "runs", script=script)
    seconds = time.perf_counter() - started
    print(f"failed launch ended after {seconds:.0f} s")
    assert proc.returncode != 0
    assert "process 1: injected fault on rank 1" in proc.stderr  # rank 1's own error
    run = only_run(tmp_path / "runs")
    record = read_json(run / "record.json")
    assert record["status"] == "failed"  # rank 0 recorded it, naming the rank that failed
    assert record["error"].startswith("RankFailedError: Process 1 of the 2 processes")
    assert "injected fault on rank 1" in record["error"]
    assert json.loads((run / "results.json").read_text())["partial"]
