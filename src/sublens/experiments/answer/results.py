"""What an answer run writes to results.json, as a torch-free pydantic model (written once, at
the end: the run is one forward pass per system prompt)."""

from __future__ import annotations

from sublens.results import Sparse, SparseResults


class NextToken(Sparse):
    token: str  # decoded
    prob: float


class Condition(Sparse):
    """The question under one system prompt: the prompt as the model saw it, and its answer."""

    system_prompt_used: str | None  # the text in effect (the template default resolved); None: no system turn
    prompt: str  # the full templated prompt, prefill included
    top: list[NextToken]  # the most likely next tokens, most likely first


class AnswerResults(SparseResults):
    schema_version: int = 1
    model: str
    conditions: dict[str, Condition]  # by system prompt name
