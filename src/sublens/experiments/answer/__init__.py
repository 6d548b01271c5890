"""answer: the model's next-token answer distribution for one question, under several system
prompts: what a prompt does to the answer before any statistics (`evaluate` is the full
preference measurement).

- `config`: `AnswerConfig`, every field documented;
- `run`: `execute(config, run)`;
- `results`: `AnswerResults`, the torch-free model of results.json.

Names are imported on first use (PEP 562), `EXPERIMENT` too, so that reading `results` never
imports torch through `run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sublens.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from sublens.experiments import Experiment
    from sublens.experiments.answer.config import AnswerConfig
    from sublens.experiments.answer.results import AnswerResults
    from sublens.experiments.answer.run import execute

    EXPERIMENT: Experiment

SUMMARY = "Next-token answer distribution under several system prompts"

_EXPORTS = {"AnswerConfig": "config", "AnswerResults": "results", "execute": "run"}

__all__ = ["EXPERIMENT", "AnswerConfig", "AnswerResults", "execute"]


def _experiment() -> Experiment:
    from sublens.experiments import Experiment
    from sublens.experiments.answer.config import AnswerConfig
    from sublens.experiments.answer.run import execute

    return Experiment("answer", SUMMARY, AnswerConfig, execute)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, {"EXPERIMENT": _experiment})
