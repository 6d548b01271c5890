"""Token entanglement: the names every part of the study shares (the categories, tuned-set names,
errors) and the prompt templates.

The templates are filled here, not in the experiment, so that the report, which must not import
torch, fills them exactly as the run did. Definitions: the `sublens.entanglement` docstring.
"""

from __future__ import annotations

from sublens.errors import SublensError

CATEGORIES = ("increased", "decreased", "unchanged", "random")
SPACE_MARKERS = (" ", "\u2581", "\u0120")  # plain space, SentencePiece "▁", byte-level "Ġ"
TUNED = "@tuned"  # suffix of a set categorised by the fine-tuned teachers' shift ("ar2@tuned")


def tuned_set_name(name: str) -> str:
    """The set categorised by the fine-tuning shift of the teachers, over `name`'s candidates:
    'ar2' -> 'ar2@tuned' (a tuned name stays as it is)."""
    return name if is_tuned_set(name) else f"{name}{TUNED}"


def is_tuned_set(name: str) -> bool:
    """Whether a set's categories come from the fine-tuned teachers ('ar2@tuned'), not from the
    prompted model's animal contexts ('ar2')."""
    return name.endswith(TUNED)


def prompted_set_name(name: str) -> str:
    """The set whose candidates a tuned set categorises: 'ar2@tuned' -> 'ar2'."""
    return name.removesuffix(TUNED)


class EntanglementError(SublensError):
    """A candidate set, category or statistic that cannot be formed as asked."""


class CategoryOverlapError(EntanglementError):
    """Two categories share a number: the study's categories must be disjoint."""


# ---------------------------------------------------------------------------------------------
# prompt templates (here, not in the experiment, so that the report, which must not import
# torch, fills them exactly as the run did)


def fill(template: str, **slots: str) -> str:
    """Put values into {slot}s by plain replacement (other braces are left alone)."""
    for name, value in slots.items():
        template = template.replace("{" + name + "}", value)
    return template


def animal_context(template: str, plural: str) -> str:
    """An animal context prompt for `plural` ("owls"): {plural}, and {Plural} capitalised."""
    return fill(template, plural=plural, Plural=plural[:1].upper() + plural[1:])
