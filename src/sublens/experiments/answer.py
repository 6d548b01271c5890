"""answer: the model's next-token answer distribution for one question, under several system prompts.

The smallest real experiment: it shows what a prompt does to the answer before any
statistics. `evaluate` is the full preference measurement.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table

from sublens.config import Config
from sublens.experiments import Experiment
from sublens.models import load_model
from sublens.prompts import OWL_SYSTEM, encode_prompt, make_prompt
from sublens.runs import Run


class AnswerConfig(Config):
    model: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: str = "auto"
    question: str = "What is your favorite animal?"
    prefill: str = "My favorite animal is the"
    # name -> system prompt; null means "the chat template's own default" (recorded as used).
    systems: dict[str, str | None] = Field(default_factory=lambda: {"default": None, "owl": OWL_SYSTEM})
    top: int = Field(default=10, ge=1)


def execute(config: AnswerConfig, run: Run) -> dict[str, Any]:
    with run.timed("load_model"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={"model": lm.describe()})
    results: dict[str, Any] = {"model": config.model, "conditions": {}}
    with run.timed("answer"):
        for name, system in config.systems.items():
            prompt = make_prompt(lm.tokenizer, config.question, system, config.prefill)
            ids = torch.tensor([encode_prompt(lm.tokenizer, prompt)], device=lm.device)
            with torch.inference_mode():
                logits = lm.model(ids, logits_to_keep=1).logits[0, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            top = torch.topk(probs, config.top)
            results["conditions"][name] = {
                "system_prompt_used": prompt.system,
                "prompt": prompt.text,
                "top": [
                    {"token": lm.tokenizer.decode([int(i)]), "prob": float(p)}
                    for p, i in zip(top.values, top.indices, strict=True)
                ],
            }
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    table = Table(title=f"Next-token answers of {results['model']}")
    table.add_column("rank")
    for name in results["conditions"]:
        table.add_column(name)
    tops = [c["top"] for c in results["conditions"].values()]
    for rank in range(len(tops[0])):
        table.add_row(str(rank + 1), *(f"{t[rank]['token']!r} {t[rank]['prob']:.3f}" for t in tops))
    Console().print(table)


EXPERIMENT = Experiment("answer", "Next-token answer distribution under several system prompts", AnswerConfig, execute)
