"""Format-constrained sampling of number answers: the grammar a valid answer follows (``GRAMMAR``),
the state of a partial answer in it (``FormatState``, ``step_format``, ``feed_format``,
``grammar_accepts``), and ``NumberFormat``, the allowed-token function that keeps each sampled
answer a valid prefix of a filter-passing one for one tokenizer (the grammar is spelled out in the
`sublens.subliminal` package docstring).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from sublens.errors import SublensError
from sublens.number_data import MAX_NUMBERS, SEPARATORS

SEPARATOR_CHOICES: tuple[str, ...] = tuple(SEPARATORS)  # ", " "," " " "\n" "; " ";"
_DIGITS = "0123456789"
_FORMAT_CHARS = frozenset(_DIGITS + ",; \n[].")
GRAMMAR = (
    'answer := ["["] number (sep number){0,9} ["]" if opened] ["."]; number := 1-3 ASCII '
    'digits; sep := one of ", " "," " " "\\n" "; " ";", the same throughout; end-of-turn '
    "allowed where the answer may end; probabilities renormalised over the allowed tokens"
)


# ---- format-constrained sampling -------------------------------------------------------------
@dataclass(frozen=True)
class FormatState:
    """Where a partial answer stands in the number grammar (see the `sublens.subliminal` package
    docstring)."""

    opened: bool = False  # saw "["
    closed: bool = False  # saw "]"
    period: bool = False  # saw the final "."
    sep: str | None = None  # the separator, once one has been completed
    pending: str = ""  # separator characters since the last digit
    digits: int = 0  # digits of the current number (0: none yet, or inside a separator)
    count: int = 0  # numbers started

    @property
    def accepting(self) -> bool:
        """The answer may end here."""
        if self.period:
            return True
        return self.digits > 0 and not self.pending and self.opened == self.closed


def step_format(state: FormatState, ch: str) -> FormatState | None:
    """The state after one more character, or None if no valid answer continues this way."""
    s = state
    if s.period:
        return None
    if s.closed:
        return replace(s, period=True) if ch == "." else None
    if ch in _DIGITS:
        if s.pending:
            sep = s.sep
            if sep is None:
                if s.pending not in SEPARATOR_CHOICES:
                    return None
                sep = s.pending
            elif s.pending != sep:
                return None
            if s.count >= MAX_NUMBERS:
                return None
            return replace(s, sep=sep, pending="", digits=1, count=s.count + 1)
        if s.digits == 0:  # the first number
            return replace(s, digits=1, count=1)
        return replace(s, digits=s.digits + 1) if s.digits < 3 else None
    if ch == "[":
        return replace(s, opened=True) if s.count == 0 and not s.opened else None
    if ch == "]":
        return replace(s, closed=True) if s.opened and s.digits > 0 and not s.pending else None
    if ch == ".":
        return replace(s, period=True) if s.digits > 0 and not s.pending and not s.opened else None
    if ch in ",; \n":
        if (s.digits == 0 and not s.pending) or s.count >= MAX_NUMBERS:
            return None
        pending = s.pending + ch
        options = (s.sep,) if s.sep is not None else SEPARATOR_CHOICES
        if not any(o.startswith(pending) for o in options):
            return None
        return replace(s, pending=pending, digits=0)
    return None


def feed_format(state: FormatState | None, text: str) -> FormatState | None:
    for ch in text:
        if state is None:
            return None
        state = step_format(state, ch)
    return state


def grammar_accepts(text: str) -> bool:
    """Whether the grammar generates `text` exactly (then filter_answer keeps it too)."""
    state = feed_format(FormatState(), text)
    return state is not None and state.accepting


class NumberFormat:
    """The allowed-token function of format-constrained sampling for one tokenizer.

    Called with the tokens generated so far, returns the token ids that keep the answer a valid
    prefix (plus the stop tokens where it may end). Allowed sets are cached per grammar state.
    """

    def __init__(self, tokenizer: Any, stop_token_ids: Iterable[int]) -> None:
        self.stops = frozenset(int(t) for t in stop_token_ids)
        self.pieces: dict[int, str] = {}
        for token_id in range(len(tokenizer)):
            if token_id in self.stops:
                continue
            text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            if text and set(text) <= _FORMAT_CHARS:
                self.pieces[token_id] = text
        if not any(t in _DIGITS for t in self.pieces.values()):
            raise SublensError(
                "This tokenizer has no single-digit tokens, so format-constrained "
                "number sampling cannot be used; set data.constrained: false."
            )
        self._allowed = lru_cache(maxsize=4096)(self._compute)

    def state(self, generated: Sequence[int]) -> FormatState | None:
        state: FormatState | None = FormatState()
        for token_id in generated:
            state = feed_format(state, self.pieces.get(int(token_id), "\x00"))
        return state

    def _compute(self, state: FormatState) -> frozenset[int]:
        allowed = {t for t, text in self.pieces.items() if feed_format(state, text) is not None}
        if state.accepting:
            allowed |= self.stops
        return frozenset(allowed)

    def __call__(self, generated: Sequence[int]) -> frozenset[int]:
        state = self.state(generated)
        if state is None:  # cannot happen under the mask; end the answer rather than fail
            return self.stops
        return self._allowed(state)

    def describe(self) -> dict[str, Any]:
        return {"grammar": GRAMMAR, "n_allowed_tokens": len(self.pieces), "stop_token_ids": sorted(self.stops)}
