"""Token entanglement, the candidate number sets: the vocabulary's pure-digit tokens (``vocab``)
and every string of n ASCII digits (``ar{n}``); definitions in the `sublens.entanglement` docstring.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from itertools import product
from typing import Any

from sublens.entanglement.definitions import SPACE_MARKERS, EntanglementError


def digit_script(char: str) -> str:
    """The script of one decimal digit from its Unicode name: 'ARABIC-INDIC DIGIT THREE' ->
    'ARABIC-INDIC'; the ASCII digits ('DIGIT THREE') -> 'ASCII'."""
    name = unicodedata.name(char, "")
    head, sep, _ = name.partition(" DIGIT ")
    if not sep:
        return "ASCII" if name.startswith("DIGIT ") else "UNKNOWN"
    return head


def number_script(text: str) -> str:
    """The script of a digit string; 'MIXED' when its digits come from several scripts."""
    scripts = {digit_script(c) for c in text}
    return scripts.pop() if len(scripts) == 1 else "MIXED"


def is_digit_string(text: str) -> bool:
    """True for a non-empty string of decimal digits (Unicode category Nd, any script)."""
    return bool(text) and all(unicodedata.category(c) == "Nd" for c in text)


def _strip_space(text: str) -> str:
    return text[1:] if text[:1] in SPACE_MARKERS else text


@dataclass(frozen=True)
class VocabularyNumbers:
    """The pure-digit tokens of a vocabulary, as distinct digit strings."""

    numbers: tuple[str, ...]  # sorted; each encodes back to a single token
    token_ids: dict[str, tuple[int, ...]]  # number -> the vocabulary tokens that spell it
    scripts: dict[str, int]  # script -> how many of `numbers`
    rejected: dict[str, tuple[int, ...]]  # digit tokens whose text does not encode back to one token
    vocabulary_size: int

    def describe(self) -> dict[str, Any]:
        return {
            "vocabulary_size": self.vocabulary_size,
            "n_numbers": len(self.numbers),
            "scripts": dict(sorted(self.scripts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "lengths": dict(sorted(Counter(len(n) for n in self.numbers).items())),
            "n_rejected": len(self.rejected),
            "rejected_examples": {n: list(ids) for n, ids in list(self.rejected.items())[:20]},
        }


def vocabulary_numbers(tokenizer: Any) -> VocabularyNumbers:
    """Every pure-digit token of the vocabulary, in any script (see module docstring).

    Each token is decoded on its own (so byte-level and SentencePiece markers are resolved by the
    tokenizer), one leading space is dropped, and the rest must be all decimal digits. A digit
    string is kept when encoding it (without special tokens) gives exactly one token.
    """
    size = len(tokenizer)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    ids = [i for i in range(size) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    spelled: dict[str, list[int]] = {}
    for i, text in zip(ids, texts, strict=True):
        digits = _strip_space(text)
        if is_digit_string(digits):
            spelled.setdefault(digits, []).append(i)
    kept: list[str] = []
    rejected: dict[str, tuple[int, ...]] = {}
    candidates = sorted(spelled)
    encoded = tokenizer(candidates, add_special_tokens=False)["input_ids"] if candidates else []
    for number, enc in zip(candidates, encoded, strict=True):
        if len(enc) == 1:
            kept.append(number)
        else:
            rejected[number] = tuple(int(t) for t in enc)
    scripts = Counter(number_script(n) for n in kept)
    return VocabularyNumbers(
        numbers=tuple(kept),
        token_ids={n: tuple(spelled[n]) for n in kept},
        scripts=dict(scripts),
        rejected=rejected,
        vocabulary_size=size,
    )


def autoregressive_numbers(length: int, leading_zeros: bool = True) -> list[str]:
    """Every string of `length` ASCII digits, in numeric order (10**length of them; without
    leading zeros 9 * 10**(length-1), plus "0" for length 1)."""
    if length < 1:
        raise EntanglementError(f"A digit length must be at least 1, got {length}.")
    numbers = ["".join(t) for t in product("0123456789", repeat=length)]
    if not leading_zeros:
        numbers = [n for n in numbers if len(n) == 1 or n[0] != "0"]
    return numbers
