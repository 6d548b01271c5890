"""evaluate: owl preference (probability, panel share, sampled answers) and perplexity of one or
more models under one or more system prompts, each condition compared with the first.

- `config`: `EvaluateConfig`, every field documented;
- `run`: `execute(config, run)` and its measuring helpers;
- `results`: `EvaluateResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too, so that reading `results` never
imports torch through `run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.evaluate.config import EvaluateConfig
    from sublens.experiments.evaluate.results import EvaluateResults
    from sublens.experiments.evaluate.run import execute

    EXPERIMENT: Experiment

SUMMARY = "Owl preference (probability, panel share, sampled answers) and perplexity"

_EXPORTS = {"EvaluateConfig": "config", "EvaluateResults": "results", "execute": "run"}

__all__ = ["EXPERIMENT", "EvaluateConfig", "EvaluateResults", "execute"]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.evaluate.config import EvaluateConfig
    from sublens.experiments.evaluate.run import execute

    return Experiment("evaluate", SUMMARY, EvaluateConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
