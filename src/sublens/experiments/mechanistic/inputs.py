"""mechanistic: the inputs and their prompts: the numbers to analyse and where they came from
(`numbers_to_analyse`), the layers and the one-token words checked (`check_layers`,
`word_token`), and the statement prompts with the token ids that end them (`statement_prompt`,
`token_offsets`, `ids_ending_the_text`).
"""

from __future__ import annotations

from typing import Any

from sublens.experiments.mechanistic.config import DEFAULT_NUMBERS, MechanisticConfig
from sublens.experiments.mechanistic.results import WordToken
from sublens.mechanistic import MechanisticError, NumberItem, read_entanglement_numbers
from sublens.models import LoadedModel
from sublens.prompts import PromptText, encode_prompt, make_prompt, raw_prompt


# ---- inputs and prompts ---------------------------------------------------------------------
def numbers_to_analyse(config: MechanisticConfig) -> tuple[list[NumberItem], dict[str, Any]]:
    """The numbers with their categories and bias ratios where known, and where they came from."""
    if config.entanglement_run is not None:
        items, info = read_entanglement_numbers(config.entanglement_run, config.entanglement_set)
        source: dict[str, Any] = {"source": "entanglement_run", **info}
    elif config.numbers is not None:
        items = [NumberItem(e.number, e.category, e.bias_ratio) for e in config.numbers]
        source = {"source": "config"}
    else:
        items = [NumberItem(n) for n in DEFAULT_NUMBERS]
        source = {"source": "default"}
    if not any(item.category is not None for item in items):
        source["note"] = (
            "no categories given: per-category summaries and tests are skipped; "
            "give entanglement_run (or categories in numbers) for them"
        )
    return items, source


def check_layers(config: MechanisticConfig, n_layers: int) -> None:
    if config.layers is not None and not all(0 <= layer < n_layers for layer in config.layers):
        raise MechanisticError(f"layers must be among 0..{n_layers - 1}; got {config.layers}.")


def word_token(lm: LoadedModel, word: str) -> WordToken:
    """The word's token (with its leading space); a word of several tokens is refused."""
    ids = lm.tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
    if not ids:
        raise MechanisticError(f"{word!r} tokenizes to nothing.")
    if len(ids) > 1:  # its first token's logit would also stand for every other word it starts
        pieces = lm.tokenizer.convert_ids_to_tokens(list(ids))
        raise MechanisticError(
            f"' {word}' is {len(ids)} tokens for this tokenizer ({pieces}); the direct logit attribution "
            "and the bias ratio here read one token per word. Choose one-token words (bias, control)."
        )
    return WordToken(word=f" {word}", token_ids=list(ids), first_token=int(ids[0]), single_token=len(ids) == 1)


def statement_prompt(lm: LoadedModel, config: MechanisticConfig, text: str, question: str) -> PromptText:
    """A statement in the residual format: raw, or the prefilled answer to `question`."""
    if config.residual.format == "raw":
        return raw_prompt(text)
    return make_prompt(lm.tokenizer, question, config.residual.system, prefill=text)


def token_offsets(lm: LoadedModel, prompt: PromptText) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (as encode_prompt makes them) and their character spans in prompt.text."""
    if not getattr(lm.tokenizer, "is_fast", False):
        raise MechanisticError("Locating tokens needs a fast tokenizer (character offsets).")
    encoded = lm.tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True)
    ids = encode_prompt(lm.tokenizer, prompt)
    if list(encoded["input_ids"]) != ids:
        raise MechanisticError("Tokenizing with offsets gave other tokens than encode_prompt.")
    return ids, [tuple(span) for span in encoded["offset_mapping"]]


def ids_ending_the_text(lm: LoadedModel, prompt: PromptText) -> list[int]:
    """Token ids of a prompt whose last token must end the text (the word or the last digit)."""
    ids, offsets = token_offsets(lm, prompt)
    if offsets[-1][1] != len(prompt.text):
        raise MechanisticError(
            f"The last token of {prompt.text[-40:]!r} does not end the text (the tokenizer appends "
            "a token?): the final position would not be the statement's last word or digit."
        )
    return ids
