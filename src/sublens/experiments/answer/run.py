"""answer: the model's next-token answer distribution for one question, under several system prompts.

The smallest real experiment: it shows what a prompt does to the answer before any
statistics. `evaluate` is the full preference measurement.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from sublens.experiments.answer.config import AnswerConfig
from sublens.experiments.answer.results import AnswerResults, Condition, NextToken
from sublens.models import LoadedModel, load_model
from sublens.prompts import encode_prompt, make_prompt
from sublens.runs import Run


def execute(config: AnswerConfig, run: Run) -> AnswerResults:
    with run.timed("load_model"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={"model": lm.describe()})
    with run.timed("answer"):
        conditions = {name: next_tokens(lm, config, system) for name, system in config.systems.items()}
    results = AnswerResults(model=config.model, conditions=conditions)
    print_summary(results)
    return results


def next_tokens(lm: LoadedModel, config: AnswerConfig, system: str | None) -> Condition:
    """The `top` most likely next tokens after the prefilled answer, under `system`."""
    prompt = make_prompt(lm.tokenizer, config.question, system, config.prefill)
    ids = torch.tensor([encode_prompt(lm.tokenizer, prompt)], device=lm.device)
    with torch.inference_mode():
        logits = lm.model(ids, logits_to_keep=1).logits[0, -1]
    top = torch.topk(torch.softmax(logits.float(), dim=-1), config.top)
    return Condition(
        system_prompt_used=prompt.system,
        prompt=prompt.text,
        top=[
            NextToken(token=str(lm.tokenizer.decode([int(i)])), prob=float(p))
            for p, i in zip(top.values, top.indices, strict=True)
        ],
    )


def print_summary(results: AnswerResults) -> None:
    table = Table(title=f"Next-token answers of {results.model}")
    table.add_column("rank")
    for name in results.conditions:
        table.add_column(name)
    tops = [c.top for c in results.conditions.values()]
    for rank in range(len(tops[0])):
        table.add_row(str(rank + 1), *(f"{t[rank].token!r} {t[rank].prob:.3f}" for t in tops))
    Console().print(table)
