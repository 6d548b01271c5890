"""Architecture adapters, chosen from the model config."""

from __future__ import annotations

from torch import nn

from sublens.arch.base import Adapter
from sublens.arch.gemma3 import Gemma3Adapter
from sublens.arch.gpt2 import GPT2Adapter
from sublens.arch.llama import LlamaAdapter
from sublens.arch.qwen2 import Qwen2Adapter
from sublens.errors import ArchitectureError

ADAPTERS: tuple[type[Adapter], ...] = (LlamaAdapter, Gemma3Adapter, GPT2Adapter, Qwen2Adapter)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for `model`, by its config's model_type."""
    model_type = getattr(model.config, "model_type", None)
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls(model)
    supported = ", ".join(f"{c.family} ({'/'.join(c.model_types)})" for c in ADAPTERS)
    raise ArchitectureError(
        f"sublens has no adapter for model_type {model_type!r}. Supported: {supported}. "
        "Adding one is a file in sublens/arch/ that subclasses Adapter."
    )


__all__ = ["ADAPTERS", "Adapter", "adapter_for"]
