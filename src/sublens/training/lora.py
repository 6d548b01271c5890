"""Optional LoRA through peft: low-rank adapters on the linear layers of the trainable set's
components (``train.lora``, or a ``+loraR`` set), seeded, removed on exit; merged into the
weights at the end of a run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sublens.arch import Adapter
from sublens.errors import ConfigError, SublensError
from sublens.train_config import LoraConfig, TrainConfig
from sublens.trainable import (
    parse_trainable,
)
from sublens.training.freezing import (
    trained_modules,
)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers GPT-2


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


class LoraAdapters:
    """The LoRA adapters peft injected into a model (one `peft` LoRA layer per adapted linear
    layer, keyed by the adapted module's name)."""

    def __init__(self, model: nn.Module, layers: dict[str, Any], peft_config: Any) -> None:
        self.model = model
        self.layers = layers
        self.peft_config = peft_config

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adapters' own parameters, named as in the model ('...q_proj.lora_A.default.weight')."""
        for name, param in self.model.named_parameters():
            if _is_adapter_parameter(name):
                yield name, param

    def merge(self) -> None:
        """Add every update (alpha/rank)·B·A into its base layer's weight; the base layers keep
        it when the adapters are removed."""
        for layer in self.layers.values():
            layer.merge()

    def save(self, folder: Path) -> Path:
        """The adapters alone, in peft's format (adapter_config.json, adapter_model.safetensors):
        `peft.PeftModel.from_pretrained(base_model, folder)` loads them onto the base model."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # keys as PeftModel.save_pretrained writes them (its wrapper adds "base_model.model.")
        state = get_peft_model_state_dict(self.model, adapter_name=PEFT_ADAPTER)
        tensors = {f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        self.peft_config.save_pretrained(str(folder))
        return folder


PEFT_ADAPTER = "default"


def _is_adapter_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def effective_lora(config: TrainConfig) -> LoraConfig | None:
    """The adapters a run trains: `config.lora`, with the rank a `+loraR` trainable set names
    (with no `lora` section such a set gets alpha = rank, the original recipe's scale of 1)."""
    rank = parse_trainable(config.freeze).lora_rank
    if rank is None:
        return config.lora
    if config.lora is None:
        return LoraConfig(rank=rank, alpha=float(rank))
    return config.lora.model_copy(update={"rank": rank})


def lora_targets(adapter: Adapter, mode: str, cfg: LoraConfig) -> dict[str, nn.Module]:
    """Linear layers to adapt: inside the components the trainable set `mode` trains,
    matching cfg.targets."""
    components = trained_modules(adapter, parse_trainable(mode))
    found: dict[str, nn.Module] = {}
    suffixes: set[str] = set()
    for component in components:
        prefix = adapter.module_name(component)
        for name, module in component.named_modules():
            if isinstance(module, nn.Linear) or _is_conv1d(module):
                suffixes.add(name.rsplit(".", 1)[-1])
                if not cfg.targets or name.rsplit(".", 1)[-1] in cfg.targets:
                    found[f"{prefix}.{name}"] = module
    if not found:
        raise ConfigError(
            f"lora.targets {list(cfg.targets)} match no linear layer of the trained components "
            f"(freeze={mode}); available: {', '.join(sorted(suffixes))}."
        )
    return found


@contextmanager
def lora_attached(model: nn.Module, adapter: Adapter, mode: str, cfg: LoraConfig, seed: int) -> Iterator[LoraAdapters]:
    """Attach LoRA adapters with peft (`inject_adapter_in_model`) to the linear layers of the
    trained components; they are removed again on exit, the base layers put back. Call
    `.merge()` inside the block to keep what was learned. The adapters' initial A matrices are
    drawn from `seed` (peft's Kaiming-uniform init; B starts at zero), so a run is reproducible
    and a resumed one re-creates the same adapters before loading their saved state."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if any(isinstance(m, LoraLayer) for m in model.modules()):
        raise SublensError("This model already has LoRA adapters attached.")
    targets = lora_targets(adapter, mode, cfg)
    peft_config = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # a float scales as peft computes alpha / r
        lora_dropout=cfg.dropout,
        target_modules=sorted(targets),
        fan_in_fan_out=any(_is_conv1d(m) for m in targets.values()),
        bias="none",
    )
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, model, adapter_name=PEFT_ADAPTER)
    for name, param in model.named_parameters():  # peft froze the rest; our freezing rules decide
        if not _is_adapter_parameter(name):
            param.requires_grad_(requires_grad[name.replace(".base_layer.", ".")])
    layers: dict[str, Any] = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    try:
        yield LoraAdapters(model, layers, peft_config)
    finally:
        for name, layer in layers.items():
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, layer.get_base_layer())
