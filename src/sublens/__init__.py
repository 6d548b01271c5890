"""sublens: mechanistic study of subliminal learning in language models.

The Python API, for notebooks and scripts:

    from sublens import load_model, capture, score_strings, run_experiment, load_run

Each name lives in its own module and is imported on first use (PEP 562 `__getattr__`), so
`import sublens` stays cheap and torch-free: the report code, the CLI's listings and `load_run`
read files only and must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.api import load_run
    from sublens.experiments import run_experiment
    from sublens.hooks import capture
    from sublens.models import load_model
    from sublens.scoring import score_strings

__version__ = "0.1.0"

# public name -> its home module
_EXPORTS = {
    "load_model": "sublens.models",
    "capture": "sublens.hooks",
    "score_strings": "sublens.scoring",
    "run_experiment": "sublens.experiments",
    "load_run": "sublens.api",
}

__all__ = ["capture", "load_model", "load_run", "run_experiment", "score_strings"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sublens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups find it directly, without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
