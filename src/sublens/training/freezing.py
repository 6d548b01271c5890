"""Trainable sets: which parameters a run trains (``full``, ``freeze-attention``,
``freeze-mlp``, layer ranges such as ``layers.0-5.mlp``; grammar in `sublens.trainable`).
Parameters outside the set get ``requires_grad=False`` (autograd then skips their weight
gradients) and are left out of the optimizer; ``freezing()`` restores every flag on exit, also
on an exception."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.trainable import (
    TrainableSet,
    parse_trainable,
)


@dataclass
class FreezeReport:
    mode: str
    trainable: int  # parameters (unique tensors; tied weights counted once)
    frozen: int
    trainable_tensors: int
    frozen_tensors: int
    tied_embeddings: bool
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def trained_modules(adapter: Adapter, trainable: TrainableSet) -> list[nn.Module]:
    """The attention / MLP modules a trainable set trains, layer by layer (LoRA targets)."""
    modules: list[nn.Module] = []
    for layer in trainable.layer_range(adapter.n_layers):
        if "attention" in trainable.components:
            modules.append(adapter.attn(layer))
        if "mlp" in trainable.components:
            modules.append(adapter.mlp(layer))
    return modules


def _embedding_parameters(adapter: Adapter) -> dict[str, nn.Parameter]:
    found: dict[str, nn.Parameter] = {}
    for module in (adapter.embed(), adapter.lm_head()):
        weight = module.weight
        assert isinstance(weight, nn.Parameter)
        found[adapter.module_name(module) + ".weight"] = weight
    return found


def frozen_parameters(adapter: Adapter, mode: str, embeddings: str = "trained") -> dict[str, nn.Parameter]:
    """The parameters a trainable set (sublens.trainable) holds fixed, by name, plus the token
    embeddings and the LM head when `embeddings` is "frozen".

    Sets over every layer freeze the components they leave out (everything else, norms
    included, trains). A layer range trains only what it names: the whole layers (norms too),
    or their attention or MLP modules; every other parameter is frozen except the embeddings
    and LM head, which follow `embeddings` in every arm so that arms differ only in the set.
    """
    trainable = parse_trainable(mode)
    frozen: dict[str, nn.Parameter] = {}
    if trainable.every_layer:
        if "attention" not in trainable.components:
            frozen.update(adapter.attention_parameters())
        if "mlp" not in trainable.components:
            frozen.update(adapter.mlp_parameters())
    else:
        chosen = (
            [adapter.layer(i) for i in trainable.layer_range(adapter.n_layers)]
            if trainable.whole_layers
            else trained_modules(adapter, trainable)
        )
        trained = {id(p) for module in chosen for p in module.parameters()}
        embedding_ids = {id(p) for p in _embedding_parameters(adapter).values()}
        frozen.update(
            {
                name: p
                for name, p in unique_parameters(adapter.model)
                if id(p) not in trained and id(p) not in embedding_ids
            }
        )
    if embeddings == "frozen":
        frozen.update(_embedding_parameters(adapter))
    return frozen


def unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) once per tensor (tied weights appear under their first name)."""
    return list(model.named_parameters(remove_duplicate=True))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in unique_parameters(model) if p.requires_grad]


def _report(model: nn.Module, adapter: Adapter, mode: str) -> FreezeReport:
    params = [p for _, p in unique_parameters(model)]
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    tied = adapter.tied_embeddings
    notes = []
    if tied:
        notes.append(
            "embed and lm_head share one tensor: training it moves both (counted once)."
            if adapter.embed().weight.requires_grad
            else "embed and lm_head share one tensor (frozen, counted once)."
        )
    if parse_trainable(mode).every_layer and mode != "full" and adapter.post_norm_residual:
        notes.append(
            "post-attention / post-MLP norms sit outside the attention and MLP modules and "
            "follow the rest of the model (trainable unless LoRA is used)."
        )
    return FreezeReport(
        mode=mode,
        trainable=sum(p.numel() for p in trainable),
        frozen=sum(p.numel() for p in frozen),
        trainable_tensors=len(trainable),
        frozen_tensors=len(frozen),
        tied_embeddings=tied,
        notes=notes,
    )


@contextmanager
def requires_grad_scope(model: nn.Module, frozen: Sequence[nn.Parameter]) -> Iterator[None]:
    """Set requires_grad=False on `frozen` (True elsewhere); restore every flag on exit."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    frozen_ids = {id(p) for p in frozen}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) not in frozen_ids)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def freezing(
    model: nn.Module, mode: str, adapter: Adapter | None = None, embeddings: str = "trained"
) -> Iterator[FreezeReport]:
    """Freeze a component (`freeze-attention`, `freeze-mlp`) or nothing (`full`), and the
    embeddings/LM head when asked, for the body of the with-block; every parameter's
    requires_grad is restored afterwards."""
    adapter = adapter or adapter_for(model)
    frozen = list(frozen_parameters(adapter, mode, embeddings).values())
    with requires_grad_scope(model, frozen):
        yield _report(model, adapter, mode)


@contextmanager
def train_mode(model: nn.Module, training: bool = True) -> Iterator[None]:
    """model.train(training) for the block; every module's own flag restored afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield
    finally:
        for m, flag in saved:
            m.training = flag
