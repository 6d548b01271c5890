"""Trainable sets: which parameters a fine-tuning run updates, written as one short string.

Where a trait sits is studied by training only part of a student and asking whether the trait
still transfers. The literature locates it in different places (all of the model, the MLP
layers, a single early layer, low-rank adapters of a given rank), so the part trained is an
experiment axis, and each value of the axis is one string a config can list:

  ``full``                      every parameter (the token embeddings and LM head follow the
                                separate `embeddings` setting, the same in every arm)
  ``freeze-attention``          everything but the attention modules
  ``freeze-mlp``                everything but the MLP modules
  ``layers.3``                  decoder layer 3 only (its attention, MLP and norms)
  ``layers.0-5``                decoder layers 0 to 5, inclusive
  ``layers.0-5.mlp``            the MLP modules of layers 0 to 5 only
  ``layers.2.attention``        the attention module of layer 2 only
  ``<any of the above>+lora8``  low-rank adapters of rank 8 on the linear layers of that set,
                                base weights frozen (alpha, dropout and target names from
                                `train.lora` when given, else alpha = rank as in Cloud et al.)

A student *arm* (the subliminal experiment's `modes`) is a trainable set, optionally followed
by which answer tokens are in the loss (the divergence-token ablation, `sublens.divergence`):

  ``<set>~skip-divergence``     divergence tokens left out of the loss (still read as context)
  ``<set>~divergence-only``     the loss on divergence tokens only

Parsing is torch-free (the report words the sets without loading a model); which parameters a
set selects is decided in `sublens.training`, where the model is at hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sublens.errors import ConfigError

Component = Literal["attention", "mlp"]
BOTH: frozenset[Component] = frozenset({"attention", "mlp"})
COMPONENT_SETS = ("full", "freeze-attention", "freeze-mlp")
GRAMMAR = (
    "full | freeze-attention | freeze-mlp | layers.N[-M][.mlp|.attention], each optionally "
    "+loraR (e.g. layers.0-5.mlp, full+lora8)"
)

_COMPONENTS_TRAINED: dict[str, frozenset[Component]] = {
    "full": BOTH,
    "freeze-attention": frozenset({"mlp"}),
    "freeze-mlp": frozenset({"attention"}),
}
_LAYERS = re.compile(r"^layers\.(\d+)(?:-(\d+))?(?:\.(mlp|attention))?$")
_LORA = re.compile(r"^(.+)\+lora(\d+)$")


@dataclass(frozen=True)
class TrainableSet:
    """One parsed trainable-set string."""

    spec: str
    components: frozenset[Component]  # trained components inside the selected layers
    first_layer: int | None  # None: every layer, and parameters outside the layers train too
    last_layer: int | None  # inclusive
    lora_rank: int | None  # adapters of this rank instead of the base weights

    @property
    def every_layer(self) -> bool:
        return self.first_layer is None

    @property
    def whole_layers(self) -> bool:
        """A layer range without a component: the layers' norms train too."""
        return not self.every_layer and self.components == BOTH

    def layer_range(self, n_layers: int) -> range:
        """The selected layer indices, checked against the model's depth."""
        if self.first_layer is None or self.last_layer is None:
            return range(n_layers)
        if self.last_layer >= n_layers:
            raise ConfigError(
                f"Trainable set {self.spec!r} names layer {self.last_layer}, but the model has "
                f"{n_layers} layers (0 to {n_layers - 1})."
            )
        return range(self.first_layer, self.last_layer + 1)

    def describe(self) -> str:
        """Words for the report: 'MLP of layers 0-5, LoRA rank 8'."""
        if self.every_layer:
            where = {
                "full": "full fine-tuning",
                "freeze-attention": "attention frozen",
                "freeze-mlp": "MLP layers frozen",
            }[_base(self.spec)]
        else:
            span = (
                f"layer {self.first_layer}"
                if self.first_layer == self.last_layer
                else f"layers {self.first_layer}–{self.last_layer}"
            )
            what = {"attention": "attention of ", "mlp": "MLP of "}
            where = span if self.whole_layers else what[next(iter(self.components))] + span
        return where if self.lora_rank is None else f"{where}, LoRA rank {self.lora_rank}"


def _base(spec: str) -> str:
    found = _LORA.match(spec)
    return found.group(1) if found else spec


def parse_trainable(spec: str) -> TrainableSet:
    """Parse a trainable-set string; a ConfigError gives the grammar on anything else."""
    base, rank = spec, None
    lora = _LORA.match(spec)
    if lora:
        base, rank = lora.group(1), int(lora.group(2))
        if rank < 1:
            raise ConfigError(f"Trainable set {spec!r}: the LoRA rank must be at least 1; valid: {GRAMMAR}.")
    if base in COMPONENT_SETS:
        return TrainableSet(spec, _COMPONENTS_TRAINED[base], None, None, rank)
    layers = _LAYERS.match(base)
    if not layers:
        raise ConfigError(f"Unknown trainable set {spec!r}; valid: {GRAMMAR}.")
    first = int(layers.group(1))
    last = int(layers.group(2)) if layers.group(2) is not None else first
    if last < first:
        raise ConfigError(
            f"Trainable set {spec!r}: the layer range runs backwards ({first} > {last}); valid: {GRAMMAR}."
        )
    only = layers.group(3)
    component: Component = "attention" if only == "attention" else "mlp"
    components = BOTH if only is None else frozenset({component})
    return TrainableSet(spec, components, first, last, rank)


def check_trainable(spec: str) -> str:
    """Pydantic validator body: the spec unchanged when it parses (ValueError otherwise)."""
    try:
        parse_trainable(spec)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    return spec


LossTokens = Literal["all", "skip-divergence", "divergence-only"]
LOSS_WORDS: dict[str, str] = {
    "skip-divergence": "divergence tokens left out of the loss",
    "divergence-only": "loss on divergence tokens only",
}


def split_arm(arm: str) -> tuple[str, LossTokens]:
    """A student arm as (trainable set, answer tokens in the loss)."""
    spec, _, loss = arm.partition("~")
    if not loss:
        return spec, "all"
    if loss == "skip-divergence":
        return spec, "skip-divergence"
    if loss == "divergence-only":
        return spec, "divergence-only"
    raise ConfigError(f"Unknown loss tokens {loss!r} in arm {arm!r}; valid: ~skip-divergence, ~divergence-only.")


def check_arm(arm: str) -> str:
    """Pydantic validator body for a student arm: a trainable set, optionally ~<loss tokens>."""
    try:
        parse_trainable(split_arm(arm)[0])
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    return arm


def describe_trainable(spec: str) -> str:
    """Report wording for a trainable set or a student arm; one this version cannot parse is
    shown as written."""
    try:
        trainable, loss = split_arm(spec)
        words = parse_trainable(trainable).describe()
    except ConfigError:
        return spec
    return words if loss == "all" else f"{words}, {LOSS_WORDS[loss]}"
