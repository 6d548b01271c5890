"""One stage's plan: StageBuilder collects a stage's tasks from its config (the workload
functions call its helpers), StagePlan and Plan hold the estimates and their totals, and
the prompt-length helpers turn texts into token counts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from sublens.errors import ConfigError
from sublens.plan.costs import (
    ACTIVATION_FORMULA,
    CHARS_PER_TOKEN,
    DEFAULT_SYSTEM_TOKENS,
    DTYPE_NAMES,
    INFERENCE_FORMULA,
    KINDS,
    STEP_LATENCY_PER_LAYER,
    TEMPLATE_TOKENS,
    Gpu,
    Kind,
    Task,
    TaskEstimate,
    _optimizer_bytes,
    estimate,
)
from sublens.plan.resolve import ResolvedModel, ShapeResolver
from sublens.plan.shapes import trainable_parameters


@dataclass
class StagePlan:
    """One experiment run (a paper stage, or the run itself): its models, work and totals."""

    stage: str
    experiment: str
    config: str  # where the config came from (a preset file), for the header
    models: list[ResolvedModel]
    tasks: list[TaskEstimate]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def tokens(self, kind: Kind) -> int:
        return sum(t.task.tokens for t in self.tasks if t.task.kind == kind)

    @property
    def complete(self) -> bool:
        """Every task has a known model shape (else FLOPs, memory and time are lower bounds)."""
        return all(t.flops is not None for t in self.tasks)

    @property
    def flops(self) -> float:
        return sum(t.flops or 0.0 for t in self.tasks)

    @property
    def peak_memory(self) -> int:
        peaks = [t.memory.total for t in self.tasks if t.memory is not None]
        if not peaks:  # no work modelled: the models' weights
            peaks = [(m.parameters or 0) * 2 for m in self.models]
        return max(peaks, default=0)

    @property
    def seconds(self) -> float:
        return sum(t.seconds or 0.0 for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "experiment": self.experiment,
            "config": self.config,
            "models": [m.to_dict() for m in self.models],
            "tasks": [t.to_dict() for t in self.tasks],
            "tokens": {k: self.tokens(k) for k in KINDS},
            "flops": self.flops,
            "peak_memory_bytes": self.peak_memory,
            "seconds": self.seconds,
            "complete": self.complete,
            "notes": self.notes,
            "problems": self.problems,
        }


@dataclass
class Plan:
    experiment: str
    gpu: Gpu
    stages: list[StagePlan]

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    @property
    def peak_memory(self) -> int:
        return max((s.peak_memory for s in self.stages), default=0)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def tokens(self, kind: Kind) -> int:
        return sum(s.tokens(kind) for s in self.stages)

    @property
    def problems(self) -> list[str]:
        return [f"{s.stage}: {p}" for s in self.stages for p in s.problems]

    def assumptions(self) -> list[str]:
        return [
            self.gpu.describe(),
            "FLOPs: 2·N per token forward, 6·N per token training (4·N + 2·N_trainable with a frozen component)",
            "time: FLOPs / throughput, at least one latency floor per batch step (per sampled token when "
            f"generating): max(weights / bandwidth, {STEP_LATENCY_PER_LAYER * 1e3:g} ms x layers)",
            "tokens: every sampled answer reaches max_new_tokens; prompts ≈ characters / "
            f"{CHARS_PER_TOKEN:g} + {TEMPLATE_TOKENS} template tokens (+{DEFAULT_SYSTEM_TOKENS} for a "
            "template's default system prompt)",
            "memory: weights + gradients + AdamW (2 fp32 moments, 8 B per trainable parameter) + activations; "
            + ACTIVATION_FORMULA,
            INFERENCE_FORMULA,
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "gpu": asdict(self.gpu),
            "assumptions": self.assumptions(),
            "stages": [s.to_dict() for s in self.stages],
            "totals": {
                "tokens": {k: self.tokens(k) for k in KINDS},
                "flops": self.flops,
                "peak_memory_bytes": self.peak_memory,
                "seconds": self.seconds,
            },
            "problems": self.problems,
        }


def text_tokens(text: str | None) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def chat_tokens(user: str, system: str | None = None, prefill: str | None = None) -> int:
    """Tokens of a chat prompt: template markers, the system prompt (or the template's default),
    the user turn and the prefilled start of the answer."""
    system_tokens = text_tokens(system) if system else DEFAULT_SYSTEM_TOKENS
    return TEMPLATE_TOKENS + system_tokens + text_tokens(user) + text_tokens(prefill)


def mean_tokens(texts: Iterable[str], count: Callable[[str], int]) -> int:
    values = [count(t) for t in texts]
    return math.ceil(sum(values) / len(values)) if values else 0


def mean_chat_tokens(texts: Iterable[str], system: str | None = None, prefill: str | None = None) -> int:
    """Mean chat_tokens of user turns under one system prompt and prefill."""
    return mean_tokens(texts, lambda text: chat_tokens(text, system, prefill))


def shipped_list(name: str) -> list[str]:
    text = resources.files("sublens.data").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def number_prompt_texts(n: int, seed: int) -> list[str]:
    """The subliminal number prompts (a sample of at most 256: their mean length is what counts)."""
    from sublens.number_data import make_number_prompts

    return [p.text for p in make_number_prompts(min(n, 256), seed)]


class StageBuilder:
    """Collects one stage's tasks from its config (the WORKLOADS functions call its helpers)."""

    def __init__(
        self, stage: str, experiment: str, config: Any, resolver: ShapeResolver, others: dict[str, Any] | None = None
    ) -> None:
        self.stage, self.experiment, self.config, self.resolver = stage, experiment, config, resolver
        self.others = others or {}  # the other stages' configs (paper chain)
        self.tasks: list[Task] = []
        self.specs: list[str] = []
        self.notes: list[str] = []
        self.problems: list[str] = []
        dtype = str(getattr(config, "dtype", "auto"))
        self.dtype = DTYPE_NAMES.get(dtype, "bfloat16")  # auto: bfloat16 on a GPU
        if dtype not in DTYPE_NAMES and dtype != "auto":
            self.problems.append(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPE_NAMES)}")
        self.compute = "fp32" if self.dtype == "float32" else "bf16"
        self.kv_budget_mb = getattr(config, "scoring_memory_mb", None)
        if str(getattr(config, "device", "auto")) == "cpu":
            self.notes.append("device: cpu in this config; the times are for the GPU")

    def model(self, spec: str) -> str:
        if spec not in self.specs:
            self.specs.append(spec)
            found = self.resolver.resolve(spec)
            if found.problem:
                self.problems.append(f"{spec}: {found.problem}")
        return spec

    def default_teacher(self, spec: str | None, runs_root: str, fallback: str, what: str) -> str:
        """`spec`, or the newest finished teacher run under runs_root (the experiments' default), or
        (none yet) the fallback's shape, with the problem the run would meet."""
        if spec:
            return self.model(spec)
        from sublens.runs import newest_finished_run

        found = newest_finished_run(runs_root, "teacher")
        if found is not None:
            self.notes.append(f"{what}: the newest finished teacher run, {found}")
            return self.model(str(found))
        self.problems.append(
            f"{what} is null and no finished `teacher` run is under {runs_root!r}: the run "
            f"would stop there; planned with the shape of {fallback}"
        )
        return self.model(fallback)

    def add(self, task: Task) -> None:
        if task.rows > 0 and task.repeat > 0:
            self.tasks.append(task)

    def generate(
        self,
        label: str,
        spec: str,
        rows: int,
        prompt: int,
        new_tokens: int,
        batch: int,
        repeat: int = 1,
        resident: tuple[str, ...] = (),
    ) -> None:
        self.add(
            Task(
                label,
                "generate",
                self.model(spec),
                rows,
                prompt,
                new_tokens=new_tokens,
                repeat=repeat,
                batch=batch,
                dtype=self.dtype,
                compute=self.compute,
                resident=resident,
                kv_budget_mb=self.kv_budget_mb,
            )
        )

    def score(
        self,
        label: str,
        spec: str,
        rows: int,
        context: int,
        batch: int,
        logit_positions: int = 1,
        repeat: int = 1,
        cached: int = 0,
        eager: bool = False,
        resident: tuple[str, ...] = (),
        scorer: bool = False,
    ) -> None:
        """`scorer`: the work goes through sublens.scoring (its batches shrink to the memory budget);
        otherwise a plain forward pass over `batch` rows (perplexity windows, hooks)."""
        self.add(
            Task(
                label,
                "score",
                self.model(spec),
                rows,
                context,
                logit_positions=logit_positions,
                cached=cached,
                repeat=repeat,
                batch=batch,
                dtype=self.dtype,
                compute=self.compute,
                eager_attention=eager,
                resident=resident,
                kv_budget_mb=self.kv_budget_mb if scorer else None,
            )
        )

    def train(
        self,
        label: str,
        spec: str,
        rows: int,
        prompt: int,
        answer: int,
        train: Any,
        repeat: int = 1,
        freeze: str | None = None,
        eager: bool = False,
        concurrent: int = 1,
        resident: tuple[str, ...] = (),
    ) -> int:
        """Fine-tuning on `rows` examples of prompt + answer tokens (`train` a TrainConfig);
        returns the sequence length."""
        seq = min(prompt + answer, int(train.max_length))
        batch = int(train.batch_size)
        if train.batch_tokens:
            batch = max(1, int(train.batch_tokens) // seq)
        epochs = int(train.epochs)
        if train.max_steps:
            rows, epochs = int(train.max_steps) * batch * int(train.grad_accum), 1
        mixed = str(train.mixed_precision)
        compute = "bf16" if mixed in ("bf16", "fp16", "auto") else self.compute
        self.add(
            Task(
                label,
                "train",
                self.model(spec),
                rows,
                seq,
                logit_positions=min(answer, seq),
                repeat=epochs * repeat,
                batch=batch,
                dtype=self.dtype,
                compute=compute,
                freeze=freeze or str(train.freeze),
                lora_rank=train.lora.rank if train.lora else None,
                embeddings=str(getattr(train, "embeddings", "trained")),
                eager_attention=eager,
                optimizer_bytes=_optimizer_bytes(train),
                concurrent=concurrent,
                resident=resident,
            )
        )
        return seq

    def preference(
        self, label: str, spec: str, settings: Any, system: str | None, repeat: int = 1, resident: tuple[str, ...] = ()
    ) -> None:
        """sublens.preference.evaluate_preference: P(animal) at the prefilled answer of every
        question (prompt once, each animal word's ~2 tokens after it), then sampled answers."""
        questions = settings.questions or shipped_list("preference_questions")
        animals = 1 + len([a for a in settings.panel if a != settings.trait])
        prompt = mean_chat_tokens(questions, system, settings.prefill)
        self.score(
            f"{label}: P(animal), {len(questions)} questions x {animals} animals",
            spec,
            len(questions),
            prompt + 2 * animals,
            int(settings.batch_size),
            logit_positions=2 * animals,
            repeat=repeat,
            resident=resident,
            scorer=True,
        )
        if settings.samples_per_question > 0:
            sample_questions = settings.sample_questions or shipped_list("one_word_questions")
            sample_prompt = mean_chat_tokens(sample_questions, system, settings.sample_prefill)
            self.generate(
                f"{label}: sampled answers, {len(sample_questions)} x {settings.samples_per_question}",
                spec,
                len(sample_questions) * int(settings.samples_per_question),
                sample_prompt,
                int(settings.max_new_tokens),
                int(settings.batch_size),
                repeat=repeat,
                resident=resident,
            )

    def perplexity(self, label: str, spec: str, settings: Any, repeat: int = 1, resident: tuple[str, ...] = ()) -> None:
        if not settings.enabled:
            return
        window = int(settings.window)
        windows = max(1, int(settings.max_tokens) // window)
        self.score(
            f"{label}: perplexity, {windows} x {window} tokens",
            spec,
            windows,
            window,
            int(settings.batch_size),
            logit_positions=window,
            repeat=repeat,
            resident=resident,
        )

    def measure(
        self,
        label: str,
        spec: str,
        preference: Any,
        system: str | None,
        perplexity: Any | None,
        repeat: int = 1,
        resident: tuple[str, ...] = (),
    ) -> None:
        self.preference(label, spec, preference, system, repeat, resident)
        if perplexity is not None:
            self.perplexity(label, spec, perplexity, repeat, resident)

    def finish(self, gpu: Gpu, config_source: str) -> StagePlan:
        models = [self.resolver.resolve(s) for s in self.specs]
        for task in self.tasks:
            shape = self.resolver.resolve(task.model).shape
            if task.kind == "train" and shape is not None:
                try:
                    trainable_parameters(shape, task.freeze, task.lora_rank, task.embeddings)
                except ConfigError as exc:
                    self.problems.append(f"{task.label}: {exc}")
        for m in models:
            if m.shape is None:
                self.notes.append(f"{m.spec}: shape unknown, so its FLOPs, memory and time are not counted")
        return StagePlan(
            self.stage,
            self.experiment,
            config_source,
            models,
            [estimate(t, self.resolver, gpu) for t in self.tasks],
            list(dict.fromkeys(self.notes)),
            list(dict.fromkeys(self.problems)),
        )
