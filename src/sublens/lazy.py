"""Lazy package exports (PEP 562): a package names what it exports and from which submodule,
and each name is imported on first use. The experiment packages use it so that importing one of
their torch-free parts (e.g. `results`, read by the report) never imports torch through `run`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str,
    namespace: dict[str, Any],
    exports: Mapping[str, str],
    factories: Mapping[str, Callable[[], Any]] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's `__getattr__` and `__dir__`: `exports` maps a public name to the submodule
    that defines it, `factories` a name to a function that builds it (e.g. EXPERIMENT). A value
    is stored in the package's namespace once built, so later lookups find it directly."""
    made = dict(factories or {})

    def module_getattr(name: str) -> Any:
        if name in made:
            value = made[name]()
        elif name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def module_dir() -> list[str]:
        return sorted({*namespace, *exports, *made})

    return module_getattr, module_dir
