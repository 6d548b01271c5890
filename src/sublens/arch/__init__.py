"""Architecture adapters, chosen from the model config.

Every module of this package is imported here, so each adapter subclass registers itself
(`sublens.arch.base.REGISTRY`); adding an architecture is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from sublens.arch.base import REGISTRY, Adapter
from sublens.errors import ArchitectureError

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

ADAPTERS: tuple[type[Adapter], ...] = tuple(REGISTRY[family] for family in sorted(REGISTRY))


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


__all__ = ["ADAPTERS", "REGISTRY", "Adapter", "adapter_for"]
