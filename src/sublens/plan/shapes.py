"""Model shapes and parameter counts: a decoder-only transformer's shape from its config.json
(or the public values shipped in sublens/data/model_shapes.json), its parameters by component,
and the parameters a trainable set or student arm trains."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from sublens.errors import ConfigError


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


TIED_BY_DEFAULT = {
    "gpt2": True,
    "gemma": True,
    "gemma2": True,
    "gemma3": True,
    "gemma3_text": True,
    "llama": False,
    "mistral": False,
    "qwen2": False,
    "qwen3": False,
}
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
            model_type="gpt2",
            hidden=hidden,
            layers=_need(cfg, "n_layer", "num_hidden_layers"),
            heads=heads,
            kv_heads=heads,
            head_dim=hidden // heads,
            intermediate=int(cfg.get("n_inner") or 4 * hidden),
            vocab=_need(cfg, "vocab_size"),
            tied=tied,
            gated_mlp=False,
            positions=int(cfg.get("n_positions") or cfg.get("max_position_embeddings") or 1024),
            norm_params=2,
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
        )
    hidden = _need(cfg, "hidden_size")
    heads = _need(cfg, "num_attention_heads")
    head_dim = cfg.get("head_dim")
    bias = bool(cfg.get("attention_bias", False))
    return ModelShape(
        model_type=model_type or "unknown",
        hidden=hidden,
        layers=_need(cfg, "num_hidden_layers"),
        heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim) if isinstance(head_dim, int) else hidden // heads,
        intermediate=_need(cfg, "intermediate_size"),
        vocab=_need(cfg, "vocab_size"),
        tied=tied,
        norms_per_layer=4 if model_type in ("gemma2", "gemma3", "gemma3_text") else 2,
        qk_norm=model_type in ("gemma3", "gemma3_text", "qwen3"),
        qkv_bias=bias or model_type == "qwen2",
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
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
    return {
        "embeddings": shape.vocab * h,
        "positions": shape.positions * h,
        "attention": shape.layers * attention,
        "mlp": shape.layers * mlp,
        "norms": norms,
        "lm_head": 0 if shape.tied else shape.vocab * h,
    }


def parameter_count(shape: ModelShape) -> int:
    return sum(parameter_breakdown(shape).values())


def trainable_parameters(
    shape: ModelShape, trainable: str = "full", lora_rank: int | None = None, embeddings: str = "trained"
) -> int:
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
