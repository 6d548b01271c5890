"""Student training examples: a prompt and a teacher's answer as the student is trained on them,
through the chat template (with the system prompt, closed with the end-of-turn) or, for base
models, as a completion prompt followed by EOS.
"""

from __future__ import annotations

from typing import Any

from sublens.prompts import make_prompt
from sublens.training import chat_example
from sublens.training_data import Example


# ---- training examples and summaries ---------------------------------------------------------
def training_example(tokenizer: Any, user: str, answer: str, system: str | None, closed: bool = True) -> Example:
    """prompt -> answer as the model is trained on it. Chat models: the chat template with
    `system` (None: no system turn of our own), the answer closed with the end-of-turn unless
    `closed` is False (an answer that was cut off). Base models: a completion prompt and the
    answer followed by EOS."""
    if getattr(tokenizer, "chat_template", None):
        if closed:
            return chat_example(tokenizer, user, answer, system=system)
        prompt = make_prompt(tokenizer, user, system)  # the same text chat_example renders
        return Example(prompt=prompt.text, answer=answer, add_special_tokens=False)
    prompt = make_prompt(tokenizer, user, system)
    eos = (tokenizer.eos_token or "") if closed else ""
    return Example(prompt=prompt.text, answer=answer + eos, add_special_tokens=True)
