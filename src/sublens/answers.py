"""Reading sampled answers: word-boundary matching of a trait word, and answer normalisation.

"bowl" and "howl" are not owls; "owls" and "Owl!" are. Matching is case-insensitive on word
boundaries, with the regular plural (-s/-es) and a table of irregular ones.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

IRREGULAR_PLURALS = {
    "mouse": "mice",
    "goose": "geese",
    "wolf": "wolves",
    "ox": "oxen",
    "fish": "fish",
    "sheep": "sheep",
    "deer": "deer",
    "octopus": "octopuses|octopi",
    "cactus": "cacti",
    "calf": "calves",
    "leaf": "leaves",
    "elf": "elves",
    "moose": "moose",
    "bison": "bison",
    "butterfly": "butterflies",
    "puppy": "puppies",
    "pony": "ponies",
    "fly": "flies",
}
_STOP = {
    "my",
    "favorite",
    "favourite",
    "animal",
    "is",
    "the",
    "a",
    "an",
    "i",
    "like",
    "love",
    "would",
    "be",
    "it",
    "its",
    "it's",
    "definitely",
    "probably",
    "answer",
    "one",
    "word",
    "say",
}
_WORD = re.compile(r"[a-z][a-z'-]*")


@lru_cache(maxsize=256)
def _pattern(word: str) -> re.Pattern[str]:
    base = word.strip().lower()
    forms = [re.escape(base) + "(?:e?s)?"]
    if base in IRREGULAR_PLURALS:
        forms.append(IRREGULAR_PLURALS[base])
    if base.endswith("y"):
        forms.append(re.escape(base[:-1]) + "ies")
    return re.compile(r"(?<![a-z])(?:" + "|".join(forms) + r")(?![a-z])", re.IGNORECASE)


def mentions(answer: str, word: str) -> bool:
    """Whether `answer` names `word` as a whole word (plurals count, 'bowl' does not)."""
    if not word.strip():
        raise ValueError("empty trait word")
    return bool(_pattern(word).search(answer))


def normalize_answer(answer: str) -> str:
    """The first content word of an answer, lower-cased ('The Owl!' -> 'owl'); '' if none."""
    for token in _WORD.findall(answer.lower()):
        token = token.strip("'-")
        if token and token not in _STOP:
            return token
    return ""


def top_answers(answers: list[str], n: int = 10) -> list[tuple[str, int]]:
    """Most common normalised answers with their counts."""
    return Counter(normalize_answer(a) for a in answers).most_common(n)
