"""The configuration of a fine-tuning run (`TrainConfig`, `LoraConfig`), torch-free.

`sublens.training` runs it; the experiment configs and `sublens config` read it from here, so
describing or validating a config never imports torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sublens.config import ReadAs
from sublens.trainable import COMPONENT_SETS, GRAMMAR, check_trainable

Layout = Literal["pad", "bucket", "pack"]  # how examples are batched (sublens.training_data)

# A trainable-set string (sublens.trainable): full, freeze-attention, freeze-mlp, a layer range
# (layers.0-5, layers.3.mlp), each optionally with LoRA (+lora8).
FreezeMode = Annotated[str, AfterValidator(check_trainable), ReadAs("trainable set")]
FREEZE_MODES: tuple[str, ...] = COMPONENT_SETS


# ---- config --------------------------------------------------------------------------------
class LoraConfig(BaseModel):
    """Low-rank adapters W + (alpha/rank)·B·A on linear layers (B starts at zero)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(default=8, ge=1, description="rank of each adapter (B·A)")
    alpha: float = Field(default=16.0, gt=0, description="scale of the update: (alpha/rank)·B·A")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapters' input")
    # Module-name suffixes to adapt (e.g. ["q_proj", "v_proj"]); empty = every linear layer of
    # the components the freeze mode trains (attention and MLP for "full").
    targets: tuple[str, ...] = Field(
        default=(),
        description="module-name suffixes to adapt (e.g. [q_proj, v_proj]); empty: every linear layer "
        "of the components the freeze mode trains",
    )


class TrainConfig(BaseModel):
    """Every knob of a fine-tuning run; recorded with the run. Unknown keys are errors. A section
    of an experiment's config, not an experiment config itself (so it has no run-level keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(
        default=0,
        description="training seed: data order, dropout and LoRA initialisation (one student, one "
        "seed; experiments with several students set it per student)",
    )
    lr: float = Field(default=1e-5, gt=0, description="peak learning rate (reached after warmup_steps)")
    epochs: int = Field(default=1, ge=1, description="passes over the data; ignored when max_steps is set")
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="optimizer steps to train, cycling through the data (overrides epochs); null: epochs decides",
    )
    batch_size: int = Field(
        default=8, ge=1, description="examples (rows when packed) per micro-batch; ignored when batch_tokens is set"
    )
    batch_tokens: int | None = Field(
        default=None, ge=1, description="padded-token budget per micro-batch (rows x longest row) instead of batch_size"
    )
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step (per process)")
    layout: Layout = Field(
        default="bucket",
        description="batching: pad (random order), bucket (similar lengths "
        "together) or pack (several examples per row); see "
        "sublens.training_data",
    )
    max_length: int = Field(
        default=512,
        ge=2,
        description="longest example (or packed row), in tokens; a longer example is an error, never truncated",
    )
    warmup_steps: int = Field(
        default=0, ge=0, description="optimizer steps over which the learning rate rises linearly to lr"
    )
    schedule: Literal["constant", "linear", "cosine"] = Field(
        default="linear",
        description="learning rate after warmup: constant, or a linear or cosine decay to 0 at the last step",
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0,
        description="weight decay (decoupled in AdamW, L2 in SGD), applied to matrices (ndim >= 2) only",
    )
    # Adaptive optimisers are reported as necessary for the transfer (arXiv 2606.00995): the
    # optimizer is an axis, compared at the same steps, learning rate schedule and data.
    optimizer: Literal["adamw", "sgd"] = Field(
        default="adamw",
        description="adamw, or sgd with momentum (sgd_momentum); weight decay applies to matrices in both",
    )
    sgd_momentum: float = Field(default=0.9, ge=0, lt=1, description="momentum of sgd (unused by adamw)")
    adam_betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas")
    adam_eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="gradients are clipped to this total norm at every step; null: no clipping"
    )
    freeze: FreezeMode = Field(
        default="full",
        description="the trainable set: " + GRAMMAR + "; see "
        "sublens.trainable. Parameters outside it get no "
        "gradient and are left out of the optimizer",
    )
    # The token embeddings and the LM head (one tensor when tied) are trained in every arm or
    # frozen in every arm: a freeze-mode comparison then differs only in the component frozen.
    embeddings: Literal["trained", "frozen"] = Field(
        default="trained",
        description="train or freeze the token embeddings and the LM head (the same in every freeze mode)",
    )
    lora: LoraConfig | None = Field(
        default=None,
        description="train low-rank adapters (base weights frozen) on "
        "the components the freeze mode trains, merged "
        "into the weights at the end; null: no adapters",
    )
    extra_loss_weight: float = Field(
        default=1.0, description="weight of the extra loss a caller adds (SHD in distill); unused without one"
    )
    dropout: bool = Field(
        default=True, description="train mode (the model's own dropout) during training; false: eval mode"
    )
    # "auto": bf16 autocast where the hardware has native bf16 (sublens.models.device), float32
    # elsewhere; master weights and optimizer state stay float32. The resolved precision is
    # recorded in the result.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="no",
        description="autocast precision: no (float32), bf16, fp16, or auto (bf16 where the hardware "
        "has native bf16, else no); weights and optimizer state stay float32",
    )
    checkpoint_every: int = Field(
        default=0, ge=0, description="optimizer steps between checkpoints (a rerun resumes from the newest); 0: none"
    )
    keep_checkpoints: int = Field(default=1, ge=1, description="newest checkpoints kept on disk")
    save_model: bool = Field(
        default=True, description="save the final model (and tokenizer) to out_dir/model with save_pretrained"
    )


__all__ = ["FREEZE_MODES", "FreezeMode", "Layout", "LoraConfig", "TrainConfig"]
