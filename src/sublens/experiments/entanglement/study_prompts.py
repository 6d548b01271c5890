"""entanglement: the study's fixed prompts (phase 1 asks for a number, phase 2 for an animal), the
template words, and the check that the answer words can follow the prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sublens.entanglement import animal_context
from sublens.errors import ConfigError
from sublens.experiments.entanglement.config import EntanglementConfig
from sublens.experiments.entanglement.results import Prompts
from sublens.prompts import PromptText, make_prompt
from sublens.result_records import PromptRecord
from sublens.scoring import LM, ScoringError, tokenize_continuations


def _tokenizer(lm: LM) -> Any:
    return lm[1] if isinstance(lm, tuple) else lm.tokenizer


def bias_system(config: EntanglementConfig, plural: str | None = None) -> str:
    """The animal context of phase 1: the bias animal's, or (plural given) another animal's."""
    plural = plural or config.plural
    return animal_context(config.prompts.bias_system, plural)


@dataclass(frozen=True)
class StudyPrompts:
    """The fixed prompts: phase 1 asks for a number, phase 2 for an animal."""

    neutral_number: PromptText
    owl_number: PromptText  # under the bias animal's context
    control_number: PromptText  # under the control animal's context
    neutral_animal: PromptText
    words: list[str]  # the answer words measured in phase 2: [bias, control]

    @classmethod
    def build(cls, lm: LM, config: EntanglementConfig) -> StudyPrompts:
        tokenizer, p = _tokenizer(lm), config.prompts

        def number(system: str | None) -> PromptText:
            return make_prompt(tokenizer, p.number_question, system, p.number_prefill)

        return cls(
            neutral_number=number(p.neutral_system),
            owl_number=number(bias_system(config)),
            control_number=number(bias_system(config, config.control_plural_word)),
            neutral_animal=make_prompt(tokenizer, p.animal_question, p.neutral_system, p.animal_prefill),
            words=[config.bias, config.control],
        )

    def phase1(self) -> dict[str, PromptText]:
        """By the names phase1_work records them under."""
        return {"neutral": self.neutral_number, "bias": self.owl_number, "control": self.control_number}

    def record(self) -> Prompts:
        return Prompts(
            phase1_neutral=_prompt(self.neutral_number),
            phase1_owl_context=_prompt(self.owl_number),
            phase1_control_context=_prompt(self.control_number),
            phase2_neutral=_prompt(self.neutral_animal),
        )


def _prompt(prompt: PromptText) -> PromptRecord:
    return PromptRecord.model_validate(prompt.to_dict())


def animal_prompt(lm: LM, config: EntanglementConfig, system: str) -> PromptText:
    """The phase-2 question under `system` (a number prompt, a template word's, ...)."""
    p = config.prompts
    return make_prompt(_tokenizer(lm), p.animal_question, system, p.animal_prefill)


def shipped_template_words() -> list[str]:
    text = resources.files("sublens.data").joinpath("template_words.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def check_answer_words(lm: LM, prompt: PromptText, words: Sequence[str]) -> dict[str, Any]:
    """Each answer word (' owl') must tokenize, right after the prefill, into tokens that spell
    it back: no unknown tokens, nothing merged with the prefill. Returns the tokens used."""
    tokenizer = _tokenizer(lm)
    try:
        _, tokenized = tokenize_continuations(tokenizer, prompt, [f" {w}" for w in words])
    except ScoringError as exc:
        raise ConfigError(f"An answer word cannot follow the prefill {prompt.prefill!r}: {exc}") from exc
    unk = getattr(tokenizer, "unk_token_id", None)
    out: dict[str, Any] = {}
    for word, tok in zip(words, tokenized, strict=True):
        spelled = tokenizer.decode(list(tok.token_ids))
        if (unk is not None and unk in tok.token_ids) or spelled.strip() != word:
            raise ConfigError(
                f"The tokenizer cannot place {word!r} as the answer after {prompt.prefill!r}: it "
                f"becomes {list(tok.token_ids)} = {spelled!r}. Choose a word this vocabulary can "
                "spell (a plain lower-case animal name)."
            )
        if not tok.in_context:
            raise ConfigError(
                f"' {word}' merges with the end of the prefill {prompt.prefill!r}; end the prefill "
                "with a complete word (e.g. 'My favorite animal is the')."
            )
        out[word] = {"token_ids": list(tok.token_ids), "n_tokens": len(tok.token_ids)}
    return out
