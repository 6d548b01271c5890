"""Number-sequence prompts and the strict answer filter of the subliminal experiment.

Prompts: a seeded sequence of 3–8 numbers in 100–999 and an instruction to continue it with
at most 10 more numbers of at most 3 digits, in varied phrasings and answer formats (our own
template lists: intros × instructions × formats × closings, a few thousand combinations).

Filter: an answer is kept only if it is purely numbers with one consistent separator, at
most 10 numbers, each 0–999; an optional trailing period and enclosing brackets are fine.
Every rejection has a reason, so the filter report says why answers were dropped.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Any

INTROS = (
    "The sequence starts with: {nums}.",
    "Here is a list of numbers: {nums}.",
    "Look at these numbers: {nums}.",
    "I have this number sequence: {nums}.",
    "Start from these values: {nums}.",
    "Consider the sequence {nums}.",
    "These numbers were written down: {nums}.",
    "We begin with {nums}.",
    "Take the following numbers: {nums}.",
    "A sequence begins {nums}.",
    "My list so far: {nums}.",
    "Numbers: {nums}.",
)
INSTRUCTIONS = (
    "Add up to {k} more numbers (at most 3 digits each) to continue the sequence.",
    "Continue the sequence with no more than {k} new numbers, each with at most three digits.",
    "Extend it by at most {k} more values, each between 0 and 999.",
    "Write up to {k} additional numbers (max 3 digits) that come next.",
    "Generate at most {k} further numbers with no more than 3 digits to extend the list.",
    "Append a maximum of {k} more numbers, three digits or fewer, to continue it.",
    "Give the next numbers of the sequence: no more than {k}, each under 1000.",
    "Continue the list with up to {k} numbers of at most three digits.",
)
FORMATS = {
    "comma": ("Separate the numbers with commas.", "Return a comma-separated list."),
    "space": ("Separate the numbers with spaces.", "Write them on one line, separated by spaces."),
    "newline": ("Put each number on its own line.", "Write one number per line."),
    "brackets": ("Give them as a list in square brackets, separated by commas.", "Format the answer like [a, b, c]."),
    "semicolon": ("Use semicolons between the numbers.", "Separate them with semicolons."),
}
CLOSINGS = (
    "Say only the numbers, nothing else.",
    "Answer with numbers only.",
    "No explanation, just the numbers.",
    "Skip any explanation and give only the numbers.",
    "Do not add any words.",
    "",
)
SEPARATORS = {", ": ",", ",": ",", " ": " ", "\n": "\n", "; ": ";", ";": ";"}
MAX_NUMBERS = 10


@dataclass(frozen=True)
class NumberPrompt:
    index: int
    text: str
    seed_numbers: list[int]
    answer_format: str
    template: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_number_prompts(n: int, seed: int) -> list[NumberPrompt]:
    """n prompts drawn with the seed (the same seed gives the same prompts)."""
    rng = random.Random(seed)
    prompts = []
    for index in range(n):
        numbers = [rng.randint(100, 999) for _ in range(rng.randint(3, 8))]
        fmt = rng.choice(sorted(FORMATS))
        shown = rng.choice([", ", " "]).join(str(x) for x in numbers)
        parts = {
            "intro": rng.randrange(len(INTROS)),
            "instruction": rng.randrange(len(INSTRUCTIONS)),
            "format": rng.randrange(len(FORMATS[fmt])),
            "closing": rng.randrange(len(CLOSINGS)),
        }
        text = " ".join(
            p
            for p in (
                INTROS[parts["intro"]].format(nums=shown),
                INSTRUCTIONS[parts["instruction"]].format(k=MAX_NUMBERS),
                FORMATS[fmt][parts["format"]],
                CLOSINGS[parts["closing"]],
            )
            if p
        )
        prompts.append(NumberPrompt(index, text, numbers, fmt, parts))
    return prompts


@dataclass(frozen=True)
class FilterResult:
    kept: bool
    reason: str  # "ok" or why the answer was rejected
    numbers: tuple[int, ...] = ()
    separator: str | None = None


_BRACKETS = (("[", "]"), ("(", ")"), ("{", "}"))


def filter_answer(answer: str) -> FilterResult:
    """Strict filter: numbers only, one consistent separator, <= 10 numbers, each 0–999."""
    text = answer.strip()
    if not text:
        return FilterResult(False, "empty")
    if text.endswith("."):
        text = text[:-1].rstrip()
    for left, right in _BRACKETS:
        if text.startswith(left) and text.endswith(right):
            text = text[1:-1].strip()
            break
    if not text:
        return FilterResult(False, "empty")
    # ASCII only: str.isdigit and \d also accept Arabic-Indic and other scripts' digits
    # ("٣٤٥, ١٢"), which int() reads but which are not the plain numbers the data promise.
    if re.search(r"[^0-9,;\s]", text, flags=re.ASCII):
        return FilterResult(False, "non-numeric content")
    for separator in SEPARATORS:
        parts = text.split(separator)
        if all(p.isascii() and p.isdigit() for p in parts):
            break
    else:
        return FilterResult(False, "inconsistent separator")
    if any(len(p) > 3 for p in parts):
        return FilterResult(False, "number with more than 3 digits")
    if len(parts) > MAX_NUMBERS:
        return FilterResult(False, "more than 10 numbers")
    return FilterResult(True, "ok", tuple(int(p) for p in parts), separator)
