"""Plan mode: what a run will cost, from its config alone (`sublens run EXPERIMENT --plan`).

Nothing is downloaded or loaded, and this module never imports torch: a model's shape comes
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
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sublens.errors import ConfigError

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
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}


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
        return (f"{self.name}: {self.tflops:g} TFLOP/s sustained bf16 (= {BF16_PEAK_TFLOPS:g} peak x MFU "
                f"{self.tflops / BF16_PEAK_TFLOPS:.2f}; fp32 at {FP32_PEAK_TFLOPS / BF16_PEAK_TFLOPS:.3f} of it), "
                f"{self.bandwidth_tbs:g} TB/s memory bandwidth")


# ---- model shapes -------------------------------------------------------------------------------
class ShapeError(ConfigError):
    """A config.json without the fields a shape needs."""


@dataclass(frozen=True)
class ModelShape:
    """What the parameter count and the memory of a decoder-only transformer depend on."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool  # the LM head is the input embedding
    gated_mlp: bool = True  # gate, up and down projections (Llama, Gemma, Qwen); GPT-2: fc and proj
    positions: int = 0  # rows of a learned position embedding (GPT-2); 0 with rotary positions
    norm_params: int = 1  # parameters per unit of a norm: 1 RMSNorm, 2 LayerNorm (weight and bias)
    norms_per_layer: int = 2  # Gemma 2/3: 4 (pre and post norms around both sublayers)
    qk_norm: bool = False  # per-head norms of queries and keys (Gemma 3, Qwen 3)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


TIED_BY_DEFAULT = {"gpt2": True, "gemma": True, "gemma2": True, "gemma3": True, "gemma3_text": True,
                   "llama": False, "mistral": False, "qwen2": False, "qwen3": False}
KNOWN_TYPES = frozenset(TIED_BY_DEFAULT)


def _need(cfg: dict[str, Any], *keys: str) -> int:
    for key in keys:
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    raise ShapeError(f"config.json has no {' or '.join(keys)}")


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """A shape from the fields of a transformers config.json (GPT-2 or a Llama-like layout)."""
    if "text_config" in cfg and "hidden_size" not in cfg:  # a multimodal wrapper (Gemma 3 4B+)
        cfg = {"model_type": cfg.get("model_type", ""), **cfg["text_config"]}
    model_type = str(cfg.get("model_type") or "")
    tied = bool(cfg.get("tie_word_embeddings", TIED_BY_DEFAULT.get(model_type, True)))
    if model_type == "gpt2" or "n_embd" in cfg:
        hidden = _need(cfg, "n_embd", "hidden_size")
        heads = _need(cfg, "n_head", "num_attention_heads")
        return ModelShape(
            model_type="gpt2", hidden=hidden, layers=_need(cfg, "n_layer", "num_hidden_layers"), heads=heads,
            kv_heads=heads, head_dim=hidden // heads, intermediate=int(cfg.get("n_inner") or 4 * hidden),
            vocab=_need(cfg, "vocab_size"), tied=tied, gated_mlp=False,
            positions=int(cfg.get("n_positions") or cfg.get("max_position_embeddings") or 1024),
            norm_params=2, qkv_bias=True, o_bias=True, mlp_bias=True)
    hidden = _need(cfg, "hidden_size")
    heads = _need(cfg, "num_attention_heads")
    head_dim = cfg.get("head_dim")
    bias = bool(cfg.get("attention_bias", False))
    return ModelShape(
        model_type=model_type or "unknown", hidden=hidden, layers=_need(cfg, "num_hidden_layers"), heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim) if isinstance(head_dim, int) else hidden // heads,
        intermediate=_need(cfg, "intermediate_size"), vocab=_need(cfg, "vocab_size"), tied=tied,
        norms_per_layer=4 if model_type in ("gemma2", "gemma3", "gemma3_text") else 2,
        qk_norm=model_type in ("gemma3", "gemma3_text", "qwen3"),
        qkv_bias=bias or model_type == "qwen2", o_bias=bias, mlp_bias=bool(cfg.get("mlp_bias", False)),
    )


def parameter_breakdown(shape: ModelShape) -> dict[str, int]:
    """Parameters by component (tied weights counted once): token embeddings, learned positions,
    attention, mlp, norms, lm_head."""
    h, q, kv, mlp_width = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    attention = h * q + 2 * h * kv + q * h
    attention += (q + 2 * kv) * shape.qkv_bias + h * shape.o_bias + 2 * shape.head_dim * shape.qk_norm
    if shape.gated_mlp:
        mlp = 3 * h * mlp_width + (2 * mlp_width + h) * shape.mlp_bias
    else:
        mlp = 2 * h * mlp_width + (mlp_width + h) * shape.mlp_bias
    norms = (shape.layers * shape.norms_per_layer + 1) * shape.norm_params * h
    return {"embeddings": shape.vocab * h, "positions": shape.positions * h, "attention": shape.layers * attention,
            "mlp": shape.layers * mlp, "norms": norms, "lm_head": 0 if shape.tied else shape.vocab * h}


def parameter_count(shape: ModelShape) -> int:
    return sum(parameter_breakdown(shape).values())


def trainable_parameters(shape: ModelShape, trainable: str = "full", lora_rank: int | None = None,
                         embeddings: str = "trained") -> int:
    """Parameters that get gradients and optimizer state under a trainable set or student arm
    (sublens.trainable; the rules of sublens.training.frozen_parameters): a set over every layer
    freezes the components it leaves out; a layer range trains what it names (whole layers with
    their norms) plus the embeddings and LM head, which follow `embeddings`. With LoRA (`+loraR`
    or `lora_rank`) only the adapters train: rank x (inputs + outputs) per linear layer of the set.
    A ConfigError for a set the model cannot have (a layer past its depth)."""
    from sublens.trainable import parse_trainable, split_arm

    chosen = parse_trainable(split_arm(trainable)[0])
    rank = chosen.lora_rank or lora_rank
    parts = parameter_breakdown(shape)
    layers = len(chosen.layer_range(shape.layers))
    attention, mlp = "attention" in chosen.components, "mlp" in chosen.components
    if rank:
        h, q, kv, width = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
        per_layer = attention * rank * ((h + q) + 2 * (h + kv) + (q + h))
        per_layer += mlp * rank * (3 if shape.gated_mlp else 2) * (h + width)
        return layers * per_layer
    embedding = parts["embeddings"] + parts["lm_head"]
    if chosen.every_layer:
        frozen = (not attention) * parts["attention"] + (not mlp) * parts["mlp"]
        return parameter_count(shape) - frozen - (embeddings == "frozen") * embedding
    per_layer = attention * parts["attention"] // shape.layers + mlp * parts["mlp"] // shape.layers
    if chosen.whole_layers:
        per_layer += shape.norms_per_layer * shape.norm_params * shape.hidden
    return layers * per_layer + (embeddings != "frozen") * embedding


@cache
def shipped_shapes() -> dict[str, tuple[str, dict[str, Any]]]:
    """spec or alias -> (hub id, public config values) from sublens/data/model_shapes.json."""
    data = json.loads(resources.files("sublens.data").joinpath("model_shapes.json").read_text(encoding="utf-8"))
    table: dict[str, tuple[str, dict[str, Any]]] = {}
    for hub_id, entry in data["models"].items():
        for name in (hub_id, *entry.get("aliases", [])):
            table[name] = (hub_id, entry["config"])
    return table


def cache_root() -> Path:
    """The sublens cache (as sublens.models.cache.cache_root, without its transformers import)."""
    import os

    return Path(os.environ.get("SUBLENS_CACHE", Path.home() / ".cache" / "sublens")).expanduser()


def _hf_cached_config(hub_id: str) -> Path | None:
    """config.json of a hub model in the local Hugging Face cache (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # a malformed id: the run would say so
        return None
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec and the shape found for it (None: unknown, see note)."""

    spec: str
    shape: ModelShape | None
    source: str  # where the shape came from
    note: str = ""
    problem: str = ""  # what the run itself would refuse when it loads this spec

    @property
    def parameters(self) -> int | None:
        return parameter_count(self.shape) if self.shape is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "parameters": self.parameters, "source": self.source, "note": self.note,
                "problem": self.problem, "shape": asdict(self.shape) if self.shape is not None else None}


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ShapeResolver:
    """Model specs -> shapes, the way sublens.models.resolve classifies specs (embedded name, run
    folder, checkpoint folder, .gguf file, hub id), reading config.json only.

    `aliases` maps specs that do not exist yet (the paper chain's stage folders) to the spec of
    the model they will be a fine-tuned copy of, with a reason.
    """

    def __init__(self, aliases: dict[str, tuple[str, str]] | None = None) -> None:
        self.aliases = dict(aliases or {})
        self._seen: dict[str, ResolvedModel] = {}

    def add(self, spec: str, shape: ModelShape | None, source: str = "given") -> ResolvedModel:
        """Register a spec's shape (a test, or a caller that knows it)."""
        self._seen[spec] = ResolvedModel(spec, shape, source)
        return self._seen[spec]

    def resolve(self, spec: str) -> ResolvedModel:
        if spec not in self._seen:
            self._seen[spec] = self._resolve(spec, depth=0)
        return self._seen[spec]

    def _resolve(self, spec: str, depth: int) -> ResolvedModel:
        if depth > 4:
            return ResolvedModel(spec, None, "-", "shape unknown: run folders refer to each other")
        if spec in self.aliases:
            target, why = self.aliases[spec]
            found = self._resolve(target, depth + 1)
            return replace(found, spec=spec, source=f"{why} from {target}; {found.source}")
        if spec.startswith("tiny:"):
            return self._tiny(spec)
        from sublens.models import EMBEDDED, looks_like_path  # torch: imported by the CLI anyway

        if spec in EMBEDDED:
            config = cache_root() / "models" / spec / "config.json"
            if config.is_file():
                return self._from_file(spec, config, "sublens cache")
            return self._shipped(spec, f"embedded, not converted yet (`sublens fetch {spec}`)")
        folder, _, name = spec.partition("#")
        path = Path(folder).expanduser()
        if (path / "record.json").is_file() and not (path / "config.json").is_file():
            return self._run_folder(spec, path, name, depth)
        if path.is_dir() and not name:
            if (path / "config.json").is_file():
                return self._from_file(spec, path / "config.json", "checkpoint folder")
            return ResolvedModel(spec, None, "-", "shape unknown", f"{folder} has no config.json (not a checkpoint)")
        if path.is_file() and path.suffix == ".gguf":
            return ResolvedModel(spec, None, "GGUF file", "shape unknown: a GGUF file is read when converted")
        if looks_like_path(spec) or path.exists():
            return ResolvedModel(spec, None, "-", "shape unknown", f"no such run folder, checkpoint or file: {spec}")
        if _HUB_ID.match(spec):
            cached = _hf_cached_config(spec)
            if cached is not None:
                return self._from_file(spec, cached, "Hugging Face cache")
            return self._shipped(spec, "not in the local Hugging Face cache")
        found = self._shipped(spec, "")
        canonical = shipped_shapes().get(spec, (None,))[0]
        hint = f" (use {canonical})" if canonical and canonical != spec else ""
        return replace(found, problem=f"{spec!r} is not a hub id (owner/name), an embedded model or a path: "
                                      f"loading it fails{hint}")

    def _from_file(self, spec: str, config: Path, source: str) -> ResolvedModel:
        try:
            shape = shape_from_config(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError, ShapeError) as exc:
            return ResolvedModel(spec, None, str(config), f"shape unknown: {exc}")
        note = "" if shape.model_type in KNOWN_TYPES else f"model type {shape.model_type!r}: Llama-like layout assumed"
        return ResolvedModel(spec, shape, f"{source}: {config}", note)

    def _tiny(self, spec: str) -> ResolvedModel:
        """A `tiny:` spec states its shape; its vocabulary is its borrowed tokenizer's."""
        from sublens.errors import ModelSpecError
        from sublens.models.tiny import parse_tiny

        try:
            tiny = parse_tiny(spec)
        except ModelSpecError as exc:
            return ResolvedModel(spec, None, "-", "shape unknown", str(exc))
        tokenizer = self.resolve(tiny.tokenizer).shape
        if tokenizer is None:
            return ResolvedModel(spec, None, "tiny spec", f"shape unknown: the vocabulary of {tiny.tokenizer}")
        config = {"model_type": {"gemma3": "gemma3_text"}.get(tiny.family, tiny.family),
                  "hidden_size": tiny.hidden, "num_hidden_layers": tiny.layers, "num_attention_heads": tiny.heads,
                  "num_key_value_heads": tiny.kv_heads, "head_dim": tiny.head_dim, "intermediate_size": tiny.mlp,
                  "vocab_size": tokenizer.vocab, "tie_word_embeddings": tiny.tied,
                  "max_position_embeddings": tiny.context}
        if tiny.family == "gpt2":  # GPT-2's config names
            config |= {"n_embd": tiny.hidden, "n_layer": tiny.layers, "n_head": tiny.heads, "n_inner": tiny.mlp,
                       "n_positions": tiny.context}
        return ResolvedModel(spec, shape_from_config(config), "tiny spec (random weights)")

    def _shipped(self, spec: str, why: str) -> ResolvedModel:
        entry = shipped_shapes().get(spec)
        if entry is None:
            return ResolvedModel(spec, None, "-", f"shape unknown: {why}, and not in sublens/data/model_shapes.json")
        hub_id, config = entry
        return ResolvedModel(spec, shape_from_config(config), f"shipped config of {hub_id}" + (f"; {why}" if why else ""))

    def _run_folder(self, spec: str, run_dir: Path, name: str, depth: int) -> ResolvedModel:
        """A run folder is a model spec: its checkpoint's config.json, or (not written yet) the
        shape of the model the run fine-tunes (its config's `base`)."""
        import yaml

        try:
            results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            results = {}
        checkpoints = results.get("checkpoints") or {}
        if name and checkpoints and name not in checkpoints:
            return ResolvedModel(spec, None, "-", "shape unknown", f"run {run_dir} has no checkpoint {name!r}")
        if checkpoints:
            checkpoint = run_dir / checkpoints[name or next(iter(checkpoints))]
            if (checkpoint / "config.json").is_file():
                return self._from_file(spec, checkpoint / "config.json", f"checkpoint of run {run_dir}")
        try:
            base = (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("base")
        except (OSError, ValueError, AttributeError):
            base = None
        problem = "" if checkpoints else f"run {run_dir} lists no checkpoint (unfinished?): loading it fails"
        if not isinstance(base, str):
            return ResolvedModel(spec, None, "-", "shape unknown: the run names no base model", problem)
        found = self._resolve(base, depth + 1)
        return replace(found, spec=spec, source=f"fine-tuned copy of {base} (run {run_dir}; {found.source})",
                       problem=problem or found.problem)


# ---- work and its cost --------------------------------------------------------------------------
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
        return {**asdict(self.task), "tokens": self.task.tokens, "parameters": self.parameters,
                "flops": self.flops, "seconds": self.seconds,
                "memory": ({**asdict(self.memory), "total": self.memory.total} if self.memory else None)}


def activation_bytes(shape: ModelShape, batch: int, seq: int, answer: int, act_bytes: int,
                     eager: bool = False) -> int:
    """Training activations kept for the backward pass (ACTIVATION_FORMULA)."""
    per_token_layer = 4 * shape.hidden + 2 * shape.q_dim + 2 * shape.kv_dim
    per_token_layer += (4 if shape.gated_mlp else 2) * shape.intermediate
    if eager:
        per_token_layer += 2 * shape.heads * seq
    layers = batch * seq * shape.layers * per_token_layer * act_bytes
    return layers + batch * answer * shape.vocab * (act_bytes + 4)


def inference_bytes(shape: ModelShape, batch: int, seq: int, kv_tokens: int, logit_positions: int,
                    act_bytes: int, kv_bytes: int, eager: bool = False) -> int:
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
        activations = activation_bytes(shape, batch, task.context, task.logit_positions, act_bytes,
                                       task.eager_attention)
        memory = Memory(weights * task.concurrent + resident, trainable * wbytes * task.concurrent,
                        task.optimizer_bytes * trainable * task.concurrent, activations * task.concurrent)
        steps = task.batches * 3  # forward + backward
    else:
        flops = 2.0 * n * task.tokens
        kv_tokens = task.context + task.new_tokens + task.cached
        logits = 1 if task.kind == "generate" else task.logit_positions
        activations = inference_bytes(shape, batch, task.context, kv_tokens, logits, act_bytes, wbytes,
                                      task.eager_attention)
        memory = Memory(weights * task.concurrent + resident, activations=activations * task.concurrent)
        steps = task.batches * (1 + task.new_tokens)
    floor = max(weights / (gpu.bandwidth_tbs * 1e12), STEP_LATENCY_PER_LAYER * shape.layers)
    seconds = max(flops / gpu.throughput(task.compute), steps * floor)
    return TaskEstimate(task, n, flops, memory, seconds)


# ---- stages ---------------------------------------------------------------------------------
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
        return {"stage": self.stage, "experiment": self.experiment, "config": self.config,
                "models": [m.to_dict() for m in self.models], "tasks": [t.to_dict() for t in self.tasks],
                "tokens": {k: self.tokens(k) for k in KINDS}, "flops": self.flops,
                "peak_memory_bytes": self.peak_memory, "seconds": self.seconds, "complete": self.complete,
                "notes": self.notes, "problems": self.problems}


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
        return {"experiment": self.experiment, "gpu": asdict(self.gpu), "assumptions": self.assumptions(),
                "stages": [s.to_dict() for s in self.stages],
                "totals": {"tokens": {k: self.tokens(k) for k in KINDS}, "flops": self.flops,
                           "peak_memory_bytes": self.peak_memory, "seconds": self.seconds},
                "problems": self.problems}


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

    def __init__(self, stage: str, experiment: str, config: Any, resolver: ShapeResolver,
                 others: dict[str, Any] | None = None) -> None:
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
        self.problems.append(f"{what} is null and no finished `teacher` run is under {runs_root!r}: the run "
                             f"would stop there; planned with the shape of {fallback}")
        return self.model(fallback)

    def add(self, task: Task) -> None:
        if task.rows > 0 and task.repeat > 0:
            self.tasks.append(task)

    def generate(self, label: str, spec: str, rows: int, prompt: int, new_tokens: int, batch: int,
                 repeat: int = 1, resident: tuple[str, ...] = ()) -> None:
        self.add(Task(label, "generate", self.model(spec), rows, prompt, new_tokens=new_tokens, repeat=repeat,
                      batch=batch, dtype=self.dtype, compute=self.compute, resident=resident))

    def score(self, label: str, spec: str, rows: int, context: int, batch: int, logit_positions: int = 1,
              repeat: int = 1, cached: int = 0, eager: bool = False, resident: tuple[str, ...] = ()) -> None:
        self.add(Task(label, "score", self.model(spec), rows, context, logit_positions=logit_positions,
                      cached=cached, repeat=repeat, batch=batch, dtype=self.dtype, compute=self.compute,
                      eager_attention=eager, resident=resident))

    def train(self, label: str, spec: str, rows: int, prompt: int, answer: int, train: Any, repeat: int = 1,
              freeze: str | None = None, eager: bool = False, concurrent: int = 1,
              resident: tuple[str, ...] = ()) -> int:
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
        self.add(Task(label, "train", self.model(spec), rows, seq, logit_positions=min(answer, seq),
                      repeat=epochs * repeat, batch=batch, dtype=self.dtype, compute=compute,
                      freeze=freeze or str(train.freeze), lora_rank=train.lora.rank if train.lora else None,
                      embeddings=str(getattr(train, "embeddings", "trained")), eager_attention=eager,
                      optimizer_bytes=_optimizer_bytes(train),
                      concurrent=concurrent, resident=resident))
        return seq

    def preference(self, label: str, spec: str, settings: Any, system: str | None, repeat: int = 1,
                   resident: tuple[str, ...] = ()) -> None:
        """sublens.preference.evaluate_preference: P(animal) at the prefilled answer of every
        question (prompt once, each animal word's ~2 tokens after it), then sampled answers."""
        questions = settings.questions or shipped_list("preference_questions")
        animals = 1 + len([a for a in settings.panel if a != settings.trait])
        prompt = mean_chat_tokens(questions, system, settings.prefill)
        self.score(f"{label}: P(animal), {len(questions)} questions x {animals} animals", spec, len(questions),
                   prompt + 2 * animals, int(settings.batch_size), logit_positions=2 * animals, repeat=repeat,
                   resident=resident)
        if settings.samples_per_question > 0:
            sample_questions = settings.sample_questions or shipped_list("one_word_questions")
            sample_prompt = mean_chat_tokens(sample_questions, system, settings.sample_prefill)
            self.generate(f"{label}: sampled answers, {len(sample_questions)} x {settings.samples_per_question}",
                          spec, len(sample_questions) * int(settings.samples_per_question), sample_prompt,
                          int(settings.max_new_tokens), int(settings.batch_size), repeat=repeat, resident=resident)

    def perplexity(self, label: str, spec: str, settings: Any, repeat: int = 1,
                   resident: tuple[str, ...] = ()) -> None:
        if not settings.enabled:
            return
        window = int(settings.window)
        windows = max(1, int(settings.max_tokens) // window)
        self.score(f"{label}: perplexity, {windows} x {window} tokens", spec, windows, window,
                   int(settings.batch_size), logit_positions=window, repeat=repeat, resident=resident)

    def measure(self, label: str, spec: str, preference: Any, system: str | None, perplexity: Any | None,
                repeat: int = 1, resident: tuple[str, ...] = ()) -> None:
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
        return StagePlan(self.stage, self.experiment, config_source, models,
                         [estimate(t, self.resolver, gpu) for t in self.tasks],
                         list(dict.fromkeys(self.notes)), list(dict.fromkeys(self.problems)))


# ---- workloads: what each experiment's config implies ---------------------------------------------
def _teacher(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    questions = list(c.prompts or shipped_list("teacher_prompts"))[: c.n_prompts]
    s = c.sampling
    rows = len(questions) * int(s.samples_per_prompt)
    st.measure("base", base, c.preference, c.system, c.perplexity)
    if c.measure_prompted:
        st.preference("prompted base", base, c.preference, c.teacher_system)
    teachers = [("owl teacher", c.teacher_system)]
    if c.control_system is not None:
        teachers.append(("control teacher", c.control_system))
    train_prompt = mean_chat_tokens(questions, c.system)
    for name, system in teachers:
        st.generate(f"sample {name} answers: {len(questions)} prompts x {s.samples_per_prompt}", base, rows,
                    mean_chat_tokens(questions, system),
                    int(s.max_new_tokens), int(s.batch_size))
        st.train(f"train {name}: {rows} examples x {c.train.epochs} epochs", base, rows, train_prompt,
                 int(s.max_new_tokens), c.train)
        st.measure(name, base, c.preference, c.system, c.perplexity)


def _subliminal(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    d = c.data
    data_seeds = len({c.seed + s for s in c.seeds}) if c.data_per_seed else 1
    texts = number_prompt_texts(int(d.n_prompts), int(c.seed))
    rows = int(d.n_prompts) * int(d.samples_per_prompt)
    owl = (base, c.teacher_system) if c.teacher == "prompted" else (st.model(c.teacher), c.system)
    control = base if c.control_teacher == "base" else st.model(c.control_teacher)
    teachers = [("owl", *owl), ("control", control, c.system)]
    teachers += [(name, base, system) for name, system in c.extra_teachers.items()]
    seeds_text = f" x {data_seeds} data seeds" if data_seeds > 1 else ""
    for name, spec, system in teachers:
        st.generate(f"sample {name} numbers: {d.n_prompts} prompts x {d.samples_per_prompt}{seeds_text}", spec,
                    rows, mean_chat_tokens(texts, system),
                    int(d.max_new_tokens), int(d.batch_size), repeat=data_seeds)
    st.measure("base", base, c.preference, c.system, c.perplexity)
    st.measure("teacher", owl[0], c.preference, owl[1], c.perplexity)
    entangled = getattr(c, "entangled", None)  # the entanglement filter's two owl students (full)
    filtered = 2 if entangled is not None and entangled.run is not None and entangled.filter_students else 0
    arms = [*c.control_modes, *c.modes, *(["full"] * (len(c.extra_teachers) + filtered))]
    examples = int(c.n_examples or rows)
    prompt = mean_chat_tokens(texts, c.system)
    divergence = getattr(c, "divergence", None)  # divergence tokens (sublens.divergence)
    if divergence is not None and (divergence.measure or any("~" in arm for arm in arms)):
        for name, spec, system in teachers[:2]:
            st.score(f"divergence tokens: {name} teacher on owl + control data", spec, 2 * examples,
                     mean_chat_tokens(texts, system) + int(d.max_new_tokens), int(divergence.batch_size),
                     logit_positions=int(d.max_new_tokens), repeat=data_seeds,
                     resident=tuple(t[1] for t in teachers[:2] if t[1] != spec))
    for arm in dict.fromkeys(arms):
        count = arms.count(arm) * len(c.seeds)
        st.train(f"train {count} students ({arm}): {examples} examples x {c.train.epochs} epochs", base,
                 examples, prompt, int(d.max_new_tokens), c.train, repeat=count, freeze=arm.partition("~")[0],
                 concurrent=min(int(c.parallel), count))
    if int(c.parallel) > 1:
        st.notes.append(f"parallel: {c.parallel} students at once: their memory adds up")
    st.measure(f"{len(arms) * len(c.seeds)} students", base, c.preference, c.system, c.perplexity,
               repeat=len(arms) * len(c.seeds))
    for name, system in (getattr(c, "evaluation_systems", None) or {}).items():
        st.preference(f"{len(arms) * len(c.seeds)} students under the {name!r} system prompt", base, c.preference,
                      system, repeat=len(arms) * len(c.seeds))


def _entanglement(c: Any, st: StageBuilder) -> None:
    from sublens.entanglement import animal_context

    m = st.model(c.model)
    p = c.prompts
    sizes: dict[str, int] = {}
    if "vocab" in c.sets:
        sizes["vocab"] = VOCAB_NUMBER_TOKENS
        st.notes.append(f"vocabulary set: ~{VOCAB_NUMBER_TOKENS} pure-digit tokens assumed (the tokenizer is not read)")
    if "autoregressive" in c.sets:
        for n in c.lengths:
            sizes[f"ar{n}"] = 10**n if c.leading_zeros else 9 * 10 ** (n - 1) + (n == 1)
    bias_system = animal_context(p.bias_system, c.plural)
    number_prompt = chat_tokens(p.number_question, bias_system, p.number_prefill)
    nodes = sum(sizes.values())  # one token per number after the cached prompt: an upper bound
    st.score(f"phase 1: {sum(sizes.values())} numbers after 3 prompts (prefix tree)", m, 3 * nodes, 1,
             int(c.batch_size), cached=number_prompt + max(c.lengths, default=1))
    k = int(c.k)
    scored = sum(n if n <= c.score_all_max else 4 * min(k, n // 4) for n in sizes.values())
    animal_prompt = chat_tokens(p.animal_question, p.number_system, p.animal_prefill) + 4
    st.score(f"phase 2: P(animal) after {scored} number prompts", m, scored + 1, animal_prompt, int(c.batch_size),
             logit_positions=4)
    templates = int(c.n_template_words or k)
    st.score(f"template control: {templates} word prompts", m, templates, animal_prompt, int(c.batch_size),
             logit_positions=4)
    if c.cumulative_orders:
        prompts = int(c.cumulative_orders) * (4 * len(sizes) + 1)
        st.score(f"cumulative priming: {prompts} prompts of {k} numbers", m, prompts,
                 animal_prompt + 2 * k, int(c.batch_size), logit_positions=4)


def _mechanistic(c: Any, st: StageBuilder) -> None:
    m = st.model(c.model)
    if c.numbers:
        n = len(c.numbers)
    else:
        entanglement = st.others.get("entanglement")
        n = 4 * int(entanglement.k) if entanglement is not None else DEFAULT_ENTANGLED_NUMBERS
        st.notes.append(f"numbers from the entanglement run: {n} assumed (4 categories x k)")
    r = c.residual
    if r.format == "raw":
        residual = text_tokens(r.number) + 3
    else:
        residual = chat_tokens(r.number_question, r.system, r.number)
    st.score(f"residual stream: {n} numbers + 2 animals", m, n + 2, residual, int(c.batch_size))
    a = c.attribution
    st.score(f"attribution: {n} number prompts + neutral", m, n + 1, chat_tokens(a.user, a.system, a.prefill),
             int(c.batch_size))
    st.score(f"attention patterns: {len(c.attention.numbers)} numbers x 2 animals", m,
             2 * len(c.attention.numbers), text_tokens(c.attention.template) + 4, int(c.batch_size), eager=True)


def _pruning(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    biased = st.default_teacher(c.model, c.runs_root, c.base, "model (the biased model)")
    bp = c.bias_prompts
    questions = bp.questions or shipped_list("preference_questions")
    st.score(f"head entropy: {len(questions)} bias prompts", biased, len(questions),
             mean_chat_tokens(questions, bp.system, bp.prefill), int(bp.batch_size),
             eager=True, resident=(base,))
    pruned = [f for f in c.fractions if f < 1.0]
    claim = min(pruned, key=lambda f: (abs(f - c.claim_fraction), -f)) if pruned else None
    units = 0
    for fraction in pruned:
        draws = max(c.random_draws, c.claim_random_draws) if fraction == claim else c.random_draws
        units += sum(int(draws) if criterion == "random" else 1 for criterion in c.criteria)
    for spec, system, other, name in ((biased, c.system, base, "biased"), (base, c.base_system, biased, "base")):
        st.measure(f"{name} unpruned", spec, c.preference, system, c.perplexity, resident=(other,))
        st.measure(f"{name} x {units} head masks", spec, c.preference, system, c.perplexity, repeat=units,
                   resident=(other,))


def _distill(c: Any, st: StageBuilder) -> None:
    student = st.model(c.student)
    seeds = list(c.seeds) if c.seeds is not None else [c.seed]
    roles = {"shd_biased": "biased", "shd_base": "base"}
    needed = {roles[a] for a in c.arms if a in roles} or {"biased"}
    teachers: dict[str, str] = {}
    if "biased" in needed:
        teachers["biased"] = st.default_teacher(c.teacher.model, c.runs_root, str(c.base_teacher.model),
                                                "teacher.model (the biased teacher)")
    if "base" in needed:
        teachers["base"] = st.model(str(c.base_teacher.model))
    resident = tuple(dict.fromkeys(teachers.values()))
    d = c.data
    texts = number_prompt_texts(int(d.n_train) + int(d.n_fit), int(c.seed))
    answer = TOKENS_PER_NUMBER * int(d.answer_numbers[1])
    prompt = mean_tokens(texts, text_tokens) + 2  # plain text: prompt, blank line, answer
    st.notes.append(f"texts: number prompts with answers of <= {d.answer_numbers[1]} numbers "
                    f"(~{answer} tokens) assumed")
    for role, spec in teachers.items():
        view = c.teacher if role == "biased" else c.base_teacher
        teacher_prompt = (mean_chat_tokens(texts, view.system) if view.format == "chat"
                          else prompt + text_tokens(view.system))
        st.score(f"{role} teacher's attention maps on {d.n_fit} held-out texts", spec, int(d.n_fit),
                 teacher_prompt + answer, int(c.fit_batch_size), eager=True, resident=(student,))
    st.score(f"student fit before training ({d.n_fit} texts)", student, int(d.n_fit), prompt + answer,
             int(c.fit_batch_size), eager=True, resident=resident)
    st.preference("initial student", student, c.preference, None, resident=resident)
    for arm in c.arms:
        arm_role = roles.get(arm)
        n = len(seeds)
        seq = st.train(f"train {arm}: {d.n_train} texts x {c.train.epochs} epochs x {n} seeds", student,
                       int(d.n_train), prompt, answer, c.train, repeat=n, eager=arm_role is not None,
                       resident=resident)
        if arm_role is not None:
            st.score(f"{arm}: {arm_role} teacher's maps for every training step", teachers[arm_role],
                     int(d.n_train), seq, int(c.train.batch_size), repeat=int(c.train.epochs) * n, eager=True,
                     resident=(student,))
        st.score(f"{arm}: fit after training", student, int(d.n_fit), prompt + answer, int(c.fit_batch_size),
                 repeat=n, eager=True, resident=resident)
        st.preference(f"{arm} students", student, c.preference, None, repeat=n, resident=resident)


def _hybrid(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    biased = st.default_teacher(c.biased, c.runs_root, c.base, "biased")
    shape = st.resolver.resolve(base).shape
    layers = shape.layers if shape is not None else int(c.depth_bins)
    ranges = len(c.layer_ranges) if c.layer_ranges is not None else min(int(c.depth_bins), layers)
    hybrids = 4 + len(c.directions) * (len(c.groups) + len(c.ranged) * ranges) + len(c.extra)
    st.notes.append(f"{hybrids} hybrids before identical weight mixtures are merged; the base and biased "
                    "weights are held beside the working model")
    held = (base, biased)
    st.measure(f"{hybrids} hybrids", base, c.preference, c.system, c.perplexity, repeat=hybrids, resident=held)
    if c.patching.enabled:
        questions = c.preference.questions or shipped_list("preference_questions")
        patch_ranges = (len(c.patching.layer_ranges) if c.patching.layer_ranges is not None else ranges) + 1
        runs = 2 + 2 * 2 * patch_ranges  # both models clean, then each component x range x direction
        st.score(f"activation patching: {len(questions)} questions x {runs} runs", base, len(questions) * runs,
                 mean_chat_tokens(questions, c.system, c.preference.prefill),
                 int(c.preference.batch_size), resident=held)


def _evaluate(c: Any, st: StageBuilder) -> None:
    for spec in c.models:
        st.model(spec)
        if c.perplexity.enabled:
            st.perplexity(spec, spec, c.perplexity)
        for name, system in c.systems.items():
            st.preference(f"{spec} | {name}", spec, c.preference, system)


def _answer(c: Any, st: StageBuilder) -> None:
    m = st.model(c.model)
    prompt = max((chat_tokens(c.question, system, c.prefill) for system in c.systems.values()), default=0)
    st.score(f"next-token answer under {len(c.systems)} system prompts", m, len(c.systems), prompt, 1)


WORKLOADS: dict[str, Callable[[Any, StageBuilder], None]] = {
    "teacher": _teacher, "subliminal": _subliminal, "entanglement": _entanglement, "mechanistic": _mechanistic,
    "pruning": _pruning, "distill": _distill, "hybrid": _hybrid, "evaluate": _evaluate, "answer": _answer,
}


def _config_specs(config: Any) -> list[str]:
    """Model specs anywhere in a config (sublens.config.MODEL_SPEC_FIELDS), for experiments
    without a workload function."""
    from sublens.config import _spec_values

    return list(dict.fromkeys(spec for _, spec in _spec_values(config)))


def plan_stage(stage: str, experiment: str, config: Any, resolver: ShapeResolver, gpu: Gpu,
               config_source: str = "", others: dict[str, Any] | None = None) -> StagePlan:
    builder = StageBuilder(stage, experiment, config, resolver, others)
    workload = WORKLOADS.get(experiment)
    if workload is None:
        for spec in _config_specs(config):
            builder.model(spec)
        builder.notes.append(f"no workload model for {experiment!r}: only its models' weights are planned")
    else:
        try:
            workload(config, builder)
        except (AttributeError, TypeError, KeyError) as exc:  # a config class changed under the plan
            builder.problems.append(f"plan mode cannot read this {experiment} config ({type(exc).__name__}: "
                                    f"{exc}); its work is not planned: update sublens.plan.WORKLOADS")
    return builder.finish(gpu, config_source)


PLACEHOLDER_RUN = Path("<paper run>")  # the paper run folder, which plan mode never creates


def plan_paper(config: Any, gpu: Gpu, resolver: ShapeResolver | None = None) -> list[StagePlan]:
    """Every stage of the chain, its config resolved as the chain resolves it (preset, wiring to
    earlier stages' folders, overrides). A wired model (a stage folder that does not exist yet)
    gets the shape of the model that stage fine-tunes."""
    from sublens.experiments.paper import WIRING, stage_config
    from sublens.report.stages import STAGE_ORDER

    order = [s for s in STAGE_ORDER if s in config.stages]
    dirs = {s: PLACEHOLDER_RUN / "stages" / s for s in STAGE_ORDER}
    configs: dict[str, Any] = {}
    experiments: dict[str, str] = {}
    for stage in order:
        experiment, stage_cfg = stage_config(stage, config.stages[stage], dirs, config.wire)
        configs[stage], experiments[stage] = stage_cfg, experiment.name
    aliases: dict[str, tuple[str, str]] = {}
    for wiring in WIRING.values():
        for source, reference in wiring.values():
            base = getattr(configs.get(source), "base", None)
            if isinstance(base, str):
                suffix = reference if reference.startswith("#") else ""
                aliases[str(dirs[source]) + suffix] = (base, f"not trained yet: fine-tuned by the {source} stage")
    resolver = resolver or ShapeResolver()
    resolver.aliases.update(aliases)
    return [plan_stage(stage, experiments[stage], configs[stage], resolver, gpu,
                       config.stages[stage].config, others=configs) for stage in order]


def plan_experiment(experiment: str, config: Any, gpu: Gpu | None = None, config_source: str = "") -> Plan:
    """The plan of `sublens run EXPERIMENT` with this (validated) config."""
    gpu = gpu or Gpu()
    if experiment == "paper":
        return Plan(experiment, gpu, plan_paper(config, gpu))
    return Plan(experiment, gpu, [plan_stage(experiment, experiment, config, ShapeResolver(), gpu, config_source)])


# ---- formatting -------------------------------------------------------------------------------
def human_count(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def human_flops(value: float | None) -> str:
    return "?" if value is None else f"{value:.2e}"


def human_bytes(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value / 2**30:.1f} GiB" if value >= 2**27 else f"{value / 2**20:.0f} MiB"


def human_seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 60:
        return f"{value:.0f} s" if value >= 1 else "<1 s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def short_spec(spec: str) -> str:
    """A spec as a table shows it: a hub id's name, a stage placeholder or run folder's last part."""
    if spec.startswith(str(PLACEHOLDER_RUN)):
        return "stage " + spec.removeprefix(str(PLACEHOLDER_RUN / "stages") + "/")
    return spec.rsplit("/", 1)[-1] if "/" in spec.partition("#")[0] else spec


TASK_COLUMNS = ("task", "model", "kind", "tokens", "FLOPs", "memory", "time")
TOTAL_COLUMNS = ("stage", "models", "params", "generate", "score", "train", "FLOPs", "peak_memory", "time")


def task_rows(stage: StagePlan) -> list[dict[str, str]]:
    return [{"task": t.task.label, "model": short_spec(t.task.model), "kind": t.task.kind,
             "tokens": human_count(t.task.tokens), "FLOPs": human_flops(t.flops),
             "memory": human_bytes(t.memory.total if t.memory else None), "time": human_seconds(t.seconds)}
            for t in stage.tasks]


def total_rows(plan: Plan) -> list[dict[str, str]]:
    rows = []
    for s in plan.stages:
        known = any(t.flops is not None for t in s.tasks) or not s.tasks

        def partial(text: str, s: StagePlan = s, known: bool = known) -> str:
            """`?` where nothing is known, `+?` where a model's shape is missing from the sum."""
            return text if s.complete else f"{text} +?" if known else "?"

        rows.append({"stage": s.stage, "models": ", ".join(short_spec(m.spec) for m in s.models),
                     "params": ", ".join(human_count(m.parameters) if m.parameters else "?" for m in s.models),
                     "generate": human_count(s.tokens("generate")), "score": human_count(s.tokens("score")),
                     "train": human_count(s.tokens("train")), "FLOPs": partial(human_flops(s.flops)),
                     "peak_memory": partial(human_bytes(s.peak_memory)), "time": partial(human_seconds(s.seconds))})
    if len(plan.stages) > 1:
        rows.append({"stage": "total", "models": "", "params": "",
                     "generate": human_count(plan.tokens("generate")), "score": human_count(plan.tokens("score")),
                     "train": human_count(plan.tokens("train")), "FLOPs": human_flops(plan.flops),
                     "peak_memory": human_bytes(plan.peak_memory) + " (max)",
                     "time": human_seconds(plan.seconds) + " (sum)"})
    return rows


def peak_line(stage: StagePlan) -> str | None:
    """Where a stage's memory peaks and what it is made of."""
    known = [t for t in stage.tasks if t.memory is not None]
    if not known:
        return None
    top = max(known, key=lambda t: t.memory.total if t.memory else 0)
    m = top.memory
    assert m is not None
    parts = [("weights", m.weights), ("gradients", m.gradients), ("AdamW", m.optimizer),
             ("activations" if top.task.kind == "train" else "KV cache, working set and logits", m.activations)]
    shown = " + ".join(f"{name} {human_bytes(value)}" for name, value in parts if value)
    return (f"  peak memory {human_bytes(m.total)} in '{top.task.label}' (batch {min(top.task.batch, top.task.rows)}, "
            f"{top.task.context + top.task.new_tokens + top.task.cached} tokens): {shown}")


def model_lines(stage: StagePlan) -> list[str]:
    lines = []
    for m in stage.models:
        if m.shape is None:
            lines.append(f"  {m.spec}: {m.note or 'shape unknown'}")
        else:
            lines.append(f"  {m.spec}: {m.parameters:,} parameters [{m.source}]" + (f" ({m.note})" if m.note else ""))
    return lines
