"""Dress rehearsal of the paper preset: `sublens run paper --preset rehearsal` runs every stage
of configs/paper/paper.yaml end to end on CPU, through the same code path, with the paper
models replaced by tiny random models of their head geometry (sublens.models.tiny):
Llama-3.2-1B-Instruct's 32 query heads sharing 8 KV heads, tied embeddings (teacher, base and
subliminal student), and gpt2-medium's 16 heads, tied (the SHD student), at the paper's 2:3
depth ratio (4 and 6 layers). configs/paper/rehearsal.yaml changes only model specs, devices and
sizes (see the test below); the tokenizers are the real ones (SmolLM2's, from the cache).

The whole chain, bundle and PDF included, takes about four minutes on one core."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from disk import remove_weights
from sublens.config import load_config, preset_path
from sublens.errors import SublensError
from sublens.experiments import run_experiment
from sublens.experiments.paper import PaperConfig
from sublens.report.compile import tex_available
from sublens.report.stages import STAGE_ORDER
from sublens.runs import read_json

TEACHER = {"n_heads": 32, "n_kv_heads": 8, "n_layers": 4, "tied_embeddings": True, "family": "llama"}
STUDENT = {"n_heads": 16, "n_kv_heads": 16, "n_layers": 6, "tied_embeddings": True, "family": "gpt2"}
# What the rehearsal may change in a stage's paper preset: model specs, the device (CPU where a
# paper preset says cuda), and sizes -- counts of prompts, examples, tokens, steps, questions,
# seeds, draws, permutations and resamples, and batch sizes. Nothing else (no arm, mode, claim,
# criterion, fraction, prompt text, learning rate or precision).
MODEL_SPECS = {"base", "model", "base_teacher.model", "student"}
SIZES = {
    "device",
    "n_prompts",
    "n_examples",
    "seeds",
    "k",
    "lengths",
    "score_all_max",
    "cumulative_orders",
    "permutations",
    "n_permutations",
    "batch_size",
    "fit_batch_size",
    "random_draws",
    "claim_random_draws",
    "bootstrap_resamples",
    "stats_resamples",
    "attention.numbers",
    "sampling.max_new_tokens",
    "sampling.samples_per_prompt",
    "sampling.batch_size",
    "sampling.shard_size",
    "data.n_prompts",
    "data.max_new_tokens",
    "data.batch_size",
    "data.shard_size",
    "data.n_train",
    "data.n_fit",
    "train.epochs",
    "train.batch_size",
    "train.warmup_steps",
    "train.checkpoint_every",
    "preference.questions",
    "preference.sample_questions",
    "preference.samples_per_question",
    "perplexity.max_tokens",
    "perplexity.window",
    "perplexity.batch_size",
}


def rehearsal() -> PaperConfig:
    return load_config(PaperConfig, preset_path("paper/rehearsal.yaml"))


@dataclass
class Chain:
    path: Path  # the paper run's folder
    results: dict[str, Any]  # its results.json
    seconds: float
    error: str | None  # why `sublens run paper` failed (stages that did not finish), if it did


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: two threads wait on each other
    out = tmp_path_factory.mktemp("rehearsal")
    error = None
    try:
        start = time.perf_counter()
        try:
            run_experiment("paper", rehearsal(), out)
        except SublensError as exc:  # a stage failed: the others and the bundle are still checked
            error = str(exc)
        seconds = time.perf_counter() - start
        (path,) = out.glob("*_paper_*")
        yield Chain(path, dict(read_json(path / "results.json")), seconds, error)
    finally:
        torch.set_num_threads(threads)
        remove_weights(out)


def test_the_rehearsal_is_the_paper_preset_with_models_and_sizes_only() -> None:
    paper = load_config(PaperConfig, preset_path("paper/paper.yaml"))
    rehearsed = rehearsal()
    assert list(rehearsed.stages) == list(paper.stages) == list(STAGE_ORDER)
    for field in ("style", "acl_sty", "compile", "wire", "seed"):
        assert getattr(rehearsed, field) == getattr(paper, field), field
    for name, stage in rehearsed.stages.items():
        assert stage.config == paper.stages[name].config == f"{name}/paper.yaml"
        assert set(stage.set) <= MODEL_SPECS | SIZES, (name, sorted(set(stage.set) - MODEL_SPECS - SIZES))
        for key in set(stage.set) & MODEL_SPECS:
            assert stage.set[key].startswith("tiny:"), (name, key)
    # Fewer shipped questions, not other ones.
    shipped = {
        "preference.questions": "preference_questions.txt",
        "preference.sample_questions": "one_word_questions.txt",
    }
    data = Path(__file__).parents[2] / "src" / "sublens" / "data"
    for name, stage in rehearsed.stages.items():
        for key, file in shipped.items():
            if key in stage.set:
                lines = (data / file).read_text().splitlines()
                assert stage.set[key] == lines[: len(stage.set[key])], (name, key)


def test_every_stage_ran_and_the_bundle_was_written(chain: Chain) -> None:
    print(f"rehearsal of the paper chain: {chain.seconds:.0f} s")
    stages = chain.results["stages"]
    assert list(stages) == list(STAGE_ORDER)
    records = {s: read_json(chain.path / "stages" / s / "record.json") for s in STAGE_ORDER}
    failed = {s: r.get("error") for s, r in records.items() if r["status"] != "ok"}
    assert not failed, failed
    assert chain.error is None and chain.results["partial"] is False
    assert all(stages[s]["status"] == "ok" and not stages[s]["reused"] for s in STAGE_ORDER), stages
    bundle = chain.results["bundle"]
    assert bundle["problems"] == [], bundle["problems"]
    tex = (chain.path / "paper" / "main.tex").read_text()
    for stage in STAGE_ORDER:
        assert f"\\label{{sec:{stage}}}" in tex, stage
    assert list((chain.path / "paper" / "tables").glob("*.tex"))
    if tex_available():
        assert bundle["pdf"] == "paper/main.pdf" and (chain.path / "paper" / "main.pdf").stat().st_size > 10_000


def _models(chain: Chain, stage: str) -> dict[str, Any]:
    return dict(read_json(chain.path / "stages" / stage / "record.json")["models"])


def _geometry(described: dict[str, Any]) -> dict[str, Any]:
    return {key: described[key] for key in TEACHER}


def test_the_paper_geometry_reached_every_stage(chain: Chain) -> None:
    stage_dir = chain.path / "stages"
    # The fine-tuned teacher (and its control) keep the geometry they were trained from.
    for checkpoint in ("teacher", "control_teacher"):
        config = json.loads((stage_dir / "teacher" / "checkpoints" / checkpoint / "config.json").read_text())
        assert (config["num_attention_heads"], config["num_key_value_heads"], config["num_hidden_layers"]) == (32, 8, 4)
        assert config["tie_word_embeddings"] is True and config["vocab_size"] == 49152  # SmolLM2's tokenizer
    assert _geometry(_models(chain, "teacher")["base"]) == TEACHER
    assert _models(chain, "teacher")["base"]["source"] == "tiny"
    (described,) = _models(chain, "mechanistic").values()
    assert _geometry(described) == TEACHER
    # entanglement: the base model, and the two fine-tuned teachers its tuned sets are scored in
    entanglement = _models(chain, "entanglement")
    assert list(entanglement) == ["model", "owl_teacher", "control_teacher"]
    assert all(_geometry(d) == TEACHER for d in entanglement.values())
    assert entanglement["control_teacher"]["spec"] == str(stage_dir / "teacher") + "#control_teacher"
    assert _geometry(_models(chain, "subliminal")["base"]) == TEACHER
    for role in ("model", "base"):  # the fine-tuned teacher, pruned, and its base
        assert _geometry(_models(chain, "pruning")[role]) == TEACHER, role
    # Hybrid unties a tied LM head before swapping it (same values), and records that it did.
    for role in ("base", "biased"):
        assert _geometry(_models(chain, "hybrid")[role]) == {**TEACHER, "tied_embeddings": False}, role
    untied = read_json(stage_dir / "hybrid" / "results.json")["untied"]
    assert untied["base"] is True and untied["biased"] is True

    # Pruning ranked 32 heads in every layer (4 x 32 = 128 units).
    pruning = read_json(stage_dir / "pruning" / "results.json")
    matrix = pruning["entropy"]["matrix"]
    assert [len(row) for row in matrix] == [32] * 4
    assert (pruning["n_layers"], pruning["n_heads"], pruning["n_heads_total"]) == (4, 32, 128)

    # Distill squeezed the 32 teacher heads into the 16 heads of the GPT-2 student.
    described = _models(chain, "distill")
    assert _geometry(described["student"]) == STUDENT and described["student"]["source"] == "tiny"
    assert all(_geometry(d) == TEACHER for role, d in described.items() if role.startswith("teacher:"))
    distill = read_json(stage_dir / "distill" / "results.json")
    for role in ("biased", "base"):
        teacher = distill["teachers"][role]
        assert (teacher["teacher_heads"], teacher["student_heads"], teacher["merge_schedule"]) == (32, 16, [16])
        # student layer s reads teacher layer floor(s * 4 / 6), as floor(s * 16 / 24) in the paper
        assert teacher["layer_map"] == {str(s): s * 4 // 6 for s in range(6)}
    for arm in ("shd_biased", "lm_only", "shd_base"):
        for seed in (0, 1):
            saved = stage_dir / "distill" / "checkpoints" / arm / f"seed{seed}" / "model" / "config.json"
            config = json.loads(saved.read_text())
            assert (config["model_type"], config["n_head"], config["n_layer"]) == ("gpt2", 16, 6), (arm, seed)
            assert config["tie_word_embeddings"] is True
