"""Plan mode's arithmetic: the GPU assumed, one unit of work (Task) and its FLOPs, memory
and time (estimate), and the constants every plan prints as its assumptions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sublens.errors import ConfigError
from sublens.kv_budget import rows_fitting
from sublens.plan.resolve import ShapeResolver
from sublens.plan.shapes import ModelShape, parameter_count, trainable_parameters

Kind = Literal["generate", "score", "train"]
KINDS: tuple[Kind, ...] = ("generate", "score", "train")

# ---- assumptions (printed with every plan) ----------------------------------------------------
BF16_PEAK_TFLOPS = 989.0  # dense bf16 tensor-core peak of an H100/H200 SXM
FP32_PEAK_TFLOPS = 67.0  # plain fp32 (sublens does not enable TF32)
DEFAULT_MFU = 0.3  # model FLOPs utilisation assumed for the default throughput
DEFAULT_TFLOPS = round(BF16_PEAK_TFLOPS * DEFAULT_MFU, 1)  # sustained bf16 TFLOP/s (--tflops)
DEFAULT_BANDWIDTH_TBS = 4.8  # HBM3e of an H200 (an H100 SXM has 3.35) (--bandwidth)
DEFAULT_GPU_MEMORY_GB = 80.0  # a plan above this does not fit an 80 GB H100 (an H200 has 141)
STEP_LATENCY_PER_LAYER = 4e-4  # s per layer per forward step: eager kernel launches, small batches
CHARS_PER_TOKEN = 4.0  # English text with a BPE vocabulary
TEMPLATE_TOKENS = 16  # chat-template markers around one system + user turn and the assistant header
DEFAULT_SYSTEM_TOKENS = 24  # a template's own default system prompt (SmolLM2's, Llama 3's date lines)
VOCAB_NUMBER_TOKENS = 1000  # entanglement's vocabulary set (pure-digit tokens) when not counted
TOKENS_PER_NUMBER = 4  # a generated number and its separator ("123, "): digit-wise tokenizers
DEFAULT_ENTANGLED_NUMBERS = 60  # mechanistic without numbers: 4 categories x k = 15

ACTIVATION_FORMULA = (
    "training activations = batch x seq x layers x (4h + 2·q + 2·kv + m·I [+ 2·heads·seq with eager "
    "attention]) x bytes (2 under bf16 autocast, else the weights' dtype), m = 4 for a gated MLP "
    "(gate, up, act, product) and 2 for a plain one; plus batch x answer tokens x vocab x (bytes + 4) "
    "for the logits and their fp32 copy in the loss. h hidden size, q = heads x head_dim, "
    "kv = kv_heads x head_dim, I MLP width; SDPA keeps no seq² scores"
)
INFERENCE_FORMULA = (
    "inference = weights + KV cache (2 x layers x kv x batch x tokens x bytes) + one layer's "
    "working set (batch x seq x (2h + I) x bytes) + fp32 logits (batch x scored positions x vocab x 4)"
)

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


@dataclass(frozen=True)
class Gpu:
    """The GPU the times are for (one; nothing is measured)."""

    tflops: float = DEFAULT_TFLOPS
    bandwidth_tbs: float = DEFAULT_BANDWIDTH_TBS
    memory_gb: float = DEFAULT_GPU_MEMORY_GB
    name: str = "H100/H200-class GPU"

    def __post_init__(self) -> None:
        if self.tflops <= 0 or self.bandwidth_tbs <= 0:
            raise ConfigError("--tflops and --bandwidth must be positive.")

    def throughput(self, compute: str) -> float:
        """Sustained FLOP/s for bf16 (or fp16) or fp32 matmuls."""
        scale = FP32_PEAK_TFLOPS / BF16_PEAK_TFLOPS if compute == "fp32" else 1.0
        return self.tflops * scale * 1e12

    def describe(self) -> str:
        return (
            f"{self.name}: {self.tflops:g} TFLOP/s sustained bf16 (= {BF16_PEAK_TFLOPS:g} peak x MFU "
            f"{self.tflops / BF16_PEAK_TFLOPS:.2f}; fp32 at {FP32_PEAK_TFLOPS / BF16_PEAK_TFLOPS:.3f} of it), "
            f"{self.bandwidth_tbs:g} TB/s memory bandwidth"
        )


@dataclass(frozen=True)
class Task:
    """One kind of work on one model, `repeat` times over (epochs, students, measurements)."""

    label: str
    kind: Kind
    model: str  # spec
    rows: int  # sequences per repetition
    context: int  # tokens per row: the prompt (generate) or the whole sequence (score, train)
    new_tokens: int = 0  # generate: tokens sampled per row (every answer assumed to reach the limit)
    logit_positions: int = 1  # positions per row whose logits are kept (train: the answer tokens)
    cached: int = 0  # score: tokens of context per row already in the KV cache (prefix reuse)
    repeat: int = 1
    batch: int = 1
    dtype: str = "bfloat16"  # of the weights
    compute: str = "bf16"  # of the matmuls: bf16 or fp32
    freeze: str = "full"
    lora_rank: int | None = None  # train.lora's rank (a set's own +loraR is read from `freeze`)
    embeddings: str = "trained"  # or frozen (TrainConfig.embeddings)
    eager_attention: bool = False  # attention probabilities materialised (hooks, SHD)
    optimizer_bytes: int = 8  # fp32 state per trainable parameter: AdamW's two moments, SGD's momentum 4
    concurrent: int = 1  # copies of this work on the GPU at once (parallel students)
    resident: tuple[str, ...] = ()  # other models' weights held on the GPU meanwhile
    kv_budget_mb: float | None = None  # score/generate: the config's scoring_memory_mb (fewer rows per batch)

    @property
    def tokens(self) -> int:
        return self.rows * (self.context + self.new_tokens) * self.repeat

    @property
    def batches(self) -> int:
        return math.ceil(self.rows / max(1, self.batch)) * self.repeat


@dataclass(frozen=True)
class Memory:
    weights: int
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0  # training activations, or inference KV cache + working set + logits

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def _optimizer_bytes(train: Any) -> int:
    """fp32 optimizer state per trainable parameter: AdamW 8 (two moments), SGD 4 with momentum."""
    if getattr(train, "optimizer", "adamw") == "sgd":
        return 4 if float(getattr(train, "sgd_momentum", 0.0)) > 0 else 0
    return 8


@dataclass(frozen=True)
class TaskEstimate:
    task: Task
    parameters: int | None
    flops: float | None
    memory: Memory | None
    seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.task),
            "tokens": self.task.tokens,
            "parameters": self.parameters,
            "flops": self.flops,
            "seconds": self.seconds,
            "memory": ({**asdict(self.memory), "total": self.memory.total} if self.memory else None),
        }


def activation_bytes(shape: ModelShape, batch: int, seq: int, answer: int, act_bytes: int, eager: bool = False) -> int:
    """Training activations kept for the backward pass (ACTIVATION_FORMULA)."""
    per_token_layer = 4 * shape.hidden + 2 * shape.q_dim + 2 * shape.kv_dim
    per_token_layer += (4 if shape.gated_mlp else 2) * shape.intermediate
    if eager:
        per_token_layer += 2 * shape.heads * seq
    layers = batch * seq * shape.layers * per_token_layer * act_bytes
    return layers + batch * answer * shape.vocab * (act_bytes + 4)


def inference_bytes(
    shape: ModelShape,
    batch: int,
    seq: int,
    kv_tokens: int,
    logit_positions: int,
    act_bytes: int,
    kv_bytes: int,
    eager: bool = False,
) -> int:
    """KV cache + one layer's working set + fp32 logits of one batch (INFERENCE_FORMULA)."""
    kv = 2 * shape.layers * shape.kv_dim * batch * kv_tokens * kv_bytes
    working = batch * seq * (2 * shape.hidden + shape.intermediate) * act_bytes
    if eager:
        working += batch * shape.heads * seq * seq * act_bytes
    return kv + working + batch * logit_positions * shape.vocab * 4


def train_flops(parameters: int, trainable: int, tokens: int) -> float:
    """Forward 2·N, backward 2·N (activation gradients) + 2·N_trainable (weight gradients) per token."""
    return float((4 * parameters + 2 * trainable) * tokens)


def estimate(task: Task, resolver: ShapeResolver, gpu: Gpu) -> TaskEstimate:
    shape = resolver.resolve(task.model).shape
    if shape is None:
        return TaskEstimate(task, None, None, None, None)
    n = parameter_count(shape)
    wbytes = BYTES[task.dtype]
    act_bytes = 2 if task.compute == "bf16" else 4
    resident = sum((resolver.resolve(s).parameters or 0) for s in task.resident) * wbytes
    weights = n * wbytes
    batch = min(task.batch, task.rows) if task.rows else task.batch
    if task.kind == "train":
        try:
            trainable = trainable_parameters(shape, task.freeze, task.lora_rank, task.embeddings)
        except ConfigError:  # a layer past the model's depth: the run refuses it (StageBuilder.finish says so)
            trainable = n
        flops = train_flops(n, trainable, task.tokens)
        activations = activation_bytes(
            shape, batch, task.context, task.logit_positions, act_bytes, task.eager_attention
        )
        memory = Memory(
            weights * task.concurrent + resident,
            trainable * wbytes * task.concurrent,
            task.optimizer_bytes * trainable * task.concurrent,
            activations * task.concurrent,
        )
        steps = task.batches * 3  # forward + backward
    else:
        flops = 2.0 * n * task.tokens
        kv_tokens = task.context + task.new_tokens + task.cached
        if task.kv_budget_mb is not None:  # the scorer and sampler lower their batch to fit it
            batch = rows_fitting(batch, kv_tokens, 2 * shape.layers * shape.kv_dim * wbytes, task.kv_budget_mb)
        logits = 1 if task.kind == "generate" else task.logit_positions
        activations = inference_bytes(
            shape, batch, task.context, kv_tokens, logits, act_bytes, wbytes, task.eager_attention
        )
        memory = Memory(weights * task.concurrent + resident, activations=activations * task.concurrent)
        steps = task.batches * (1 + task.new_tokens)
    floor = max(weights / (gpu.bandwidth_tbs * 1e12), STEP_LATENCY_PER_LAYER * shape.layers)
    seconds = max(flops / gpu.throughput(task.compute), steps * floor)
    return TaskEstimate(task, n, flops, memory, seconds)
