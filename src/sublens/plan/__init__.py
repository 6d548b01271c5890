"""Plan mode: what a run will cost, from its config alone (`sublens run EXPERIMENT --plan`).

Nothing is downloaded or loaded, and this package never imports torch: a model's shape comes
from a config.json on disk (the sublens cache of an embedded model, the local Hugging Face
cache, a checkpoint folder, a run's checkpoint) or from the public values shipped in
sublens/data/model_shapes.json; the work comes from the config's fields (prompts, samples,
max tokens, examples, epochs, batch sizes), one small function per experiment (WORKLOADS).

Every number is an estimate for one GPU (docs/design.md, "Plan mode"):

- parameters N: from the shape (embeddings, attention with grouped-query K/V, gated or plain
  MLP, norms, biases, an untied LM head), checked against real models in tests/unit/test_plan.py;
- tokens: generation = rows x (prompt + max_new_tokens) (every answer runs to its limit),
  scoring = rows x sequence length, training = examples x sequence length x epochs;
- FLOPs: 2·N per token forward; training 6·N per token (4·N + 2·N_trainable with a frozen
  component: frozen weights get no weight gradient);
- memory: weights (N x dtype bytes, plus other models held meanwhile); training adds gradients
  (N_trainable x dtype bytes), AdamW's two fp32 moments (8 B per trainable parameter) and
  activations (ACTIVATION_FORMULA); inference adds the KV cache, one layer's working set and
  the fp32 logits;
- time: FLOPs / sustained throughput (bf16; fp32 matmuls at FP32_PEAK / BF16_PEAK of it), but
  never less than one step per batch (per generated token when sampling) at a latency floor:
  reading the weights once at the memory bandwidth, or STEP_LATENCY_PER_LAYER per layer
  (eager PyTorch's kernel launches), whichever is longer.

Modules: `shapes` (model shapes and parameter counts), `resolve` (model specs -> shapes),
`costs` (the GPU, a task's FLOPs, memory and time, the assumed constants), `stages` (a stage's
tasks and the plan's totals), `workloads` (what each experiment's config implies; plan_stage,
plan_paper, plan_experiment), `render` (the plan's tables and lines as text).
"""

from sublens.plan.costs import (
    ACTIVATION_FORMULA,
    BF16_PEAK_TFLOPS,
    BYTES,
    CHARS_PER_TOKEN,
    DEFAULT_BANDWIDTH_TBS,
    DEFAULT_ENTANGLED_NUMBERS,
    DEFAULT_GPU_MEMORY_GB,
    DEFAULT_MFU,
    DEFAULT_SYSTEM_TOKENS,
    DEFAULT_TFLOPS,
    DTYPE_NAMES,
    FP32_PEAK_TFLOPS,
    INFERENCE_FORMULA,
    KINDS,
    STEP_LATENCY_PER_LAYER,
    TEMPLATE_TOKENS,
    TOKENS_PER_NUMBER,
    VOCAB_NUMBER_TOKENS,
    Gpu,
    Kind,
    Memory,
    Task,
    TaskEstimate,
    activation_bytes,
    estimate,
    inference_bytes,
    train_flops,
)
from sublens.plan.render import (
    TASK_COLUMNS,
    TOTAL_COLUMNS,
    human_bytes,
    human_count,
    human_flops,
    human_seconds,
    model_lines,
    peak_line,
    short_spec,
    task_rows,
    total_rows,
)
from sublens.plan.resolve import (
    ResolvedModel,
    ShapeResolver,
    cache_root,
)
from sublens.plan.shapes import (
    KNOWN_TYPES,
    TIED_BY_DEFAULT,
    ModelShape,
    ShapeError,
    parameter_breakdown,
    parameter_count,
    shape_from_config,
    shipped_shapes,
    trainable_parameters,
)
from sublens.plan.stages import (
    Plan,
    StageBuilder,
    StagePlan,
    chat_tokens,
    mean_chat_tokens,
    mean_tokens,
    number_prompt_texts,
    shipped_list,
    text_tokens,
)
from sublens.plan.workloads import (
    PLACEHOLDER_RUN,
    WORKLOADS,
    plan_experiment,
    plan_paper,
    plan_stage,
)

__all__ = [
    "ACTIVATION_FORMULA",
    "BF16_PEAK_TFLOPS",
    "BYTES",
    "CHARS_PER_TOKEN",
    "DEFAULT_BANDWIDTH_TBS",
    "DEFAULT_ENTANGLED_NUMBERS",
    "DEFAULT_GPU_MEMORY_GB",
    "DEFAULT_MFU",
    "DEFAULT_SYSTEM_TOKENS",
    "DEFAULT_TFLOPS",
    "DTYPE_NAMES",
    "FP32_PEAK_TFLOPS",
    "INFERENCE_FORMULA",
    "KINDS",
    "KNOWN_TYPES",
    "PLACEHOLDER_RUN",
    "STEP_LATENCY_PER_LAYER",
    "TASK_COLUMNS",
    "TEMPLATE_TOKENS",
    "TIED_BY_DEFAULT",
    "TOKENS_PER_NUMBER",
    "TOTAL_COLUMNS",
    "VOCAB_NUMBER_TOKENS",
    "WORKLOADS",
    "Gpu",
    "Kind",
    "Memory",
    "ModelShape",
    "Plan",
    "ResolvedModel",
    "ShapeError",
    "ShapeResolver",
    "StageBuilder",
    "StagePlan",
    "Task",
    "TaskEstimate",
    "activation_bytes",
    "cache_root",
    "chat_tokens",
    "estimate",
    "human_bytes",
    "human_count",
    "human_flops",
    "human_seconds",
    "inference_bytes",
    "mean_chat_tokens",
    "mean_tokens",
    "model_lines",
    "number_prompt_texts",
    "parameter_breakdown",
    "parameter_count",
    "peak_line",
    "plan_experiment",
    "plan_paper",
    "plan_stage",
    "shape_from_config",
    "shipped_list",
    "shipped_shapes",
    "short_spec",
    "task_rows",
    "text_tokens",
    "total_rows",
    "train_flops",
    "trainable_parameters",
]
