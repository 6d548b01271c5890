"""Plan mode (sublens.plan, `sublens run ... --plan`): parameter counts from shapes against real
models, the memory and FLOP formulas on hand-computed cases, and the CLI: every stage printed in
seconds, no run folder, unknown shapes noted instead of crashing."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublens.cli import app
from sublens.config import load_config, preset_path
from sublens.experiments import get
from sublens.plan import (
    DEFAULT_SYSTEM_TOKENS,
    TEMPLATE_TOKENS,
    Gpu,
    ModelShape,
    ShapeResolver,
    Task,
    estimate,
    parameter_breakdown,
    parameter_count,
    plan_experiment,
    shape_from_config,
    shipped_shapes,
    trainable_parameters,
)
from sublens.report.stages import STAGE_ORDER
from tiny import FAMILIES, tiny_model

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No sublens cache (shapes come from the shipped table) and no runs/ folder around."""
    monkeypatch.setenv("SUBLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


# ---- parameter counts ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_matches_real_tiny_models(family: str) -> None:
    """Embeddings, GQA attention, gated / plain MLP, norms, biases, tied or untied head: the count
    from config.json equals the model's own, and so do its attention and MLP parts (what the
    freeze modes leave out of training)."""
    from sublens.arch import adapter_for

    model = tiny_model(family)
    shape = shape_from_config(model.config.to_dict())
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
    adapter = adapter_for(model)
    parts = parameter_breakdown(shape)
    assert parts["attention"] == sum(p.numel() for _, p in adapter.attention_parameters())
    assert parts["mlp"] == sum(p.numel() for _, p in adapter.mlp_parameters())
    assert trainable_parameters(shape, "freeze-mlp") == parameter_count(shape) - parts["mlp"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("trainable", "embeddings"),
    [
        ("full", "trained"),
        ("freeze-attention", "trained"),
        ("freeze-mlp", "frozen"),
        ("layers.1", "trained"),
        ("layers.0-1.mlp", "frozen"),
        ("layers.1.attention~skip-divergence", "trained"),
    ],
)
def test_trainable_parameters_match_the_training_loop(family: str, trainable: str, embeddings: str) -> None:
    """The trainable sets of sublens.trainable, as sublens.training freezes them."""
    from sublens.arch import adapter_for
    from sublens.trainable import split_arm
    from sublens.training import frozen_parameters

    model = tiny_model(family)
    shape = shape_from_config(model.config.to_dict())
    frozen = {
        id(p): p.numel() for p in frozen_parameters(adapter_for(model), split_arm(trainable)[0], embeddings).values()
    }
    expected = sum(p.numel() for p in model.parameters()) - sum(frozen.values())
    assert trainable_parameters(shape, trainable, embeddings=embeddings) == expected


def test_lora_trains_the_adapters_only() -> None:
    h, q, kv, width, layers = 64, 64, 32, 128, 2
    per_layer = 8 * ((h + q) + 2 * (h + kv) + (q + h)) + 8 * 3 * (h + width)
    assert trainable_parameters(SMALL, "full+lora8") == layers * per_layer
    assert trainable_parameters(SMALL, "layers.1.mlp", lora_rank=8) == 8 * 3 * (h + width)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400),  # ≈ 1.236e9
        ("gpt2-medium", 354_823_168),  # ≈ 3.55e8
        ("openai-community/gpt2-medium", 354_823_168),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008),  # ≈ 1.35e8
        ("smollm2-135m-instruct", 134_515_008),
        ("google/gemma-3-270m", 268_098_176),  # "270M": 268M
    ],
)
def test_known_parameter_counts_of_the_paper_models(spec: str, expected: int) -> None:
    _, config = shipped_shapes()[spec]
    assert parameter_count(shape_from_config(config)) == expected


def test_shapes_come_from_a_checkpoint_or_a_run_folder(tmp_path: Path) -> None:
    """A checkpoint folder's config.json; a run folder's checkpoint, or (none written) its base."""
    config = tiny_model("llama").config.to_dict()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    run = tmp_path / "20260101-000000_teacher_abc123"
    run.mkdir()
    (run / "record.json").write_text('{"status": "ok"}')
    (run / "results.json").write_text('{"checkpoints": {"teacher": "checkpoints/teacher"}}')
    (run / "config.yaml").write_text("base: smollm2-135m-instruct\n")
    resolver = ShapeResolver()
    assert resolver.resolve(str(tmp_path / "ckpt")).parameters == 64896
    found = resolver.resolve(str(run))
    assert found.parameters == 134_515_008 and "fine-tuned copy of smollm2-135m-instruct" in found.source
    (run / "checkpoints" / "teacher").mkdir(parents=True)
    (run / "checkpoints" / "teacher" / "config.json").write_text(json.dumps(config))
    assert ShapeResolver().resolve(f"{run}#teacher").parameters == 64896
    assert ShapeResolver().resolve(f"{run}#student").problem  # no such checkpoint: the run would fail


def test_unknown_and_refused_specs_are_noted_not_fatal() -> None:
    unknown = ShapeResolver().resolve("nobody/no-such-model")
    assert unknown.shape is None and "shape unknown" in unknown.note and not unknown.problem
    bare = ShapeResolver().resolve("gpt2-medium")  # sublens.models.resolve refuses a name without owner/
    assert bare.parameters == 354_823_168 and "openai-community/gpt2-medium" in bare.problem


# ---- memory and FLOPs ---------------------------------------------------------------------------
SMALL = ModelShape(
    "llama", hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=100, tied=True
)


def test_memory_of_a_training_step_by_hand() -> None:
    """fp32 weights, bf16 autocast, batch 2 x 10 tokens, 4 answer tokens."""
    # embeddings 100·64 = 6400; attention 2 x (64·64 + 2·64·32 + 64·64) = 24576;
    # MLP 2 x 3·64·128 = 49152; norms (2·2 + 1)·64 = 320
    n = 6400 + 24576 + 49152 + 320
    assert parameter_count(SMALL) == n == 80448
    resolver = ShapeResolver()
    resolver.add("small", SMALL)
    task = Task(
        "train",
        "train",
        "small",
        rows=8,
        context=10,
        logit_positions=4,
        repeat=3,
        batch=2,
        dtype="float32",
        compute="bf16",
    )
    result = estimate(task, resolver, Gpu())
    assert result.memory is not None
    assert result.memory.weights == 4 * n == 321_792
    assert result.memory.gradients == 4 * n
    assert result.memory.optimizer == 8 * n == 643_584  # AdamW: two fp32 moments
    # per token per layer: 4·64 + 2·64 + 2·32 + 4·128 = 960 values of 2 bytes, 2 x 10 tokens x 2 layers;
    # logits: 2 rows x 4 answer tokens x 100 x (2 + 4) bytes
    assert result.memory.activations == 960 * 2 * 2 * 10 * 2 + 2 * 4 * 100 * 6 == 81_600
    assert result.memory.total == 1_368_768
    assert result.flops == 6 * n * 8 * 10 * 3  # 6·N per token, 8 rows x 10 tokens x 3 epochs


def test_the_scoring_memory_budget_lowers_the_planned_batch() -> None:
    """A score task under a budget is planned at the rows the scorer would run: SMALL keeps
    2 layers x kv_dim 32 x 2 (K, V) x 2 bytes = 256 bytes per position; 2 copies x 100 positions
    per row under 0.1 MiB fit 2**20 // 10 // 51_200 = 2 rows of the 16 asked for."""
    resolver = ShapeResolver()
    resolver.add("small", SMALL)
    free = Task("s", "score", "small", rows=64, context=100, batch=16)
    bounded = Task("s", "score", "small", rows=64, context=100, batch=16, kv_budget_mb=0.1)
    kv_per_row = 2 * 2 * 32 * 100 * 2  # inference_bytes' KV of one row
    free_memory, bounded_memory = estimate(free, resolver, Gpu()).memory, estimate(bounded, resolver, Gpu()).memory
    assert free_memory is not None and bounded_memory is not None
    assert free_memory.activations - bounded_memory.activations >= (16 - 2) * kv_per_row
    assert estimate(dataclasses.replace(bounded, batch=2), resolver, Gpu()).memory == bounded_memory


def test_frozen_component_saves_weight_gradients_and_optimizer_state() -> None:
    resolver = ShapeResolver()
    resolver.add("small", SMALL)
    full = estimate(Task("t", "train", "small", rows=4, context=8, batch=4), resolver, Gpu())
    frozen = estimate(Task("t", "train", "small", rows=4, context=8, batch=4, freeze="freeze-mlp"), resolver, Gpu())
    n, mlp = parameter_count(SMALL), parameter_breakdown(SMALL)["mlp"]
    assert full.flops == 6 * n * 32
    assert frozen.flops == (4 * n + 2 * (n - mlp)) * 32
    assert frozen.memory is not None and frozen.memory.optimizer == 8 * (n - mlp)


def test_sgd_keeps_one_moment() -> None:
    from sublens.plan import StageBuilder
    from sublens.training import TrainConfig

    for optimizer, momentum, state in (("adamw", 0.9, 8), ("sgd", 0.9, 4), ("sgd", 0.0, 0)):
        train = TrainConfig(optimizer=optimizer, sgd_momentum=momentum)
        resolver = ShapeResolver()
        resolver.add("small", SMALL)
        builder = StageBuilder("s", "teacher", train, resolver)
        builder.train("t", "small", rows=4, prompt=6, answer=2, train=train)
        (task,) = builder.tasks
        memory = estimate(task, builder.resolver, Gpu()).memory
        assert memory is not None and memory.optimizer == state * parameter_count(SMALL)


def test_time_is_flops_over_throughput_with_a_latency_floor() -> None:
    resolver = ShapeResolver()
    resolver.add("small", SMALL)
    big = Task("s", "score", "small", rows=10**6, context=1000, batch=10**6)
    gpu = Gpu(tflops=100.0)
    assert estimate(big, resolver, gpu).seconds == pytest.approx(2 * parameter_count(SMALL) * 1e9 / 100e12)
    # sampling 10 rows one token at a time: 64 steps, each at least 2 layers x 0.4 ms
    sample = Task("g", "generate", "small", rows=10, context=5, new_tokens=63, batch=10)
    assert estimate(sample, resolver, gpu).seconds == pytest.approx(64 * 2 * 4e-4)


def test_quick_teacher_training_flops_by_hand() -> None:
    """The paper chain's quick teacher stage: 128 prompts (n_prompts), 1 sample each, answers of at
    most 48 tokens (sampling.max_new_tokens), 2 epochs, SmolLM2-135M (134,515,008 parameters)."""
    config = load_config(get("paper").config, preset_path("paper/quick.yaml"))
    plan = plan_experiment("paper", config)
    teacher = plan.stages[0]
    (train,) = [t for t in teacher.tasks if t.task.label.startswith("train owl teacher")]
    prompts = (SRC / "sublens" / "data" / "teacher_prompts.txt").read_text().split("\n")
    prompts = [p.strip() for p in prompts if p.strip()][:128]
    # the chat prompt under the template's default system prompt: markers + default system + text / 4
    prompt = math.ceil(sum(TEMPLATE_TOKENS + DEFAULT_SYSTEM_TOKENS + math.ceil(len(p) / 4) for p in prompts) / 128)
    tokens = 128 * 1 * (prompt + 48) * 2
    assert train.task.tokens == tokens
    assert train.parameters == 134_515_008
    assert train.flops == 6 * 134_515_008 * tokens
    assert 40 < prompt < 120


# ---- the command line -------------------------------------------------------------------------
def test_paper_plan_prints_every_stage_quickly_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["run", "paper", "--preset", "paper", "--plan", "--out", str(out)])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert elapsed < 30
    for index, stage in enumerate(STAGE_ORDER, 1):
        assert f"stage {index}/{len(STAGE_ORDER)}: {stage}" in result.stdout
    assert "Totals" in result.stdout and "Llama-3.2-1B-Instruct" in result.stdout and "1,235,814,400" in result.stdout
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert list(tmp_path.iterdir()) == [] or all(p.name == "cache" for p in tmp_path.iterdir())
    assert "warning" not in result.stderr  # every model spec of the preset is one the loader accepts
    assert "cannot read" not in result.stderr  # every stage's config is understood


def test_plan_json_is_the_plan() -> None:
    result = CliRunner().invoke(app, ["run", "teacher", "--preset", "quick", "--plan", "--json", "--tflops", "100"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["gpu"]["tflops"] == 100.0
    (stage,) = data["stages"]
    assert stage["models"][0]["parameters"] == 134_515_008
    assert data["totals"]["flops"] == pytest.approx(sum(t["flops"] for t in stage["tasks"]))
    assert {t["kind"] for t in stage["tasks"]} == {"generate", "score", "train"}


def test_unknown_hub_id_prints_a_note() -> None:
    result = CliRunner().invoke(app, ["run", "teacher", "--plan", "--set", "base=nobody/no-such-model"])
    assert result.exit_code == 0, result.output
    assert "shape unknown" in result.stdout


def test_cli_defaults_are_the_plan_defaults() -> None:
    from sublens import cli, plan

    assert (cli.PLAN_TFLOPS, cli.PLAN_BANDWIDTH) == (plan.DEFAULT_TFLOPS, plan.DEFAULT_BANDWIDTH_TBS)


def test_json_without_plan_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["run", "teacher", "--json"])
    assert result.exit_code == 2 and "--plan" in result.stderr


def test_missing_default_teacher_run_is_a_warning(tmp_path: Path) -> None:
    """pruning without `model` needs a finished teacher run: the plan says the run would stop."""
    result = CliRunner().invoke(app, ["run", "pruning", "--preset", "quick", "--plan"])
    assert result.exit_code == 0, result.output
    assert "no finished `teacher` run" in result.stderr


def test_the_estimator_does_not_import_torch() -> None:
    code = (
        "import sys; from sublens.plan import shipped_shapes, shape_from_config, parameter_count; "
        "parameter_count(shape_from_config(shipped_shapes()['gpt2-medium'][1])); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_an_experiment_without_a_workload_plans_its_models_weights() -> None:
    from sublens.config import Config
    from sublens.plan import plan_stage

    class Other(Config):
        model: str = "meta-llama/Llama-3.2-1B-Instruct"

    stage = plan_stage("other", "other", Other(), ShapeResolver(), Gpu())
    assert [m.parameters for m in stage.models] == [1_235_814_400]
    assert stage.peak_memory == 2 * 1_235_814_400 and not stage.tasks
    assert any("no workload model" in note for note in stage.notes)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "qwen2"])
def test_tiny_specs_are_planned_with_the_parameters_they_build(family: str) -> None:
    # the rehearsal preset's specs: the plan's count equals the built random model's
    from dataclasses import replace

    from test_tiny_specs import stub_tokenizer

    from sublens.models.tiny import build_tiny, parse_tiny

    tokenizer = stub_tokenizer()
    kv = 4 if family == "gpt2" else 2
    spec = f"tiny:{family}?layers=3&hidden=32&heads=4&kv_heads={kv}&tied=false"
    resolver = ShapeResolver()
    borrowed = parse_tiny(spec).tokenizer
    shipped = resolver.resolve(borrowed).shape
    assert shipped is not None
    resolver.add(borrowed, replace(shipped, vocab=len(tokenizer)))  # the stand-in's vocabulary
    model = build_tiny(parse_tiny(spec), tokenizer)
    shape = resolver.resolve(spec).shape
    assert shape is not None
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
