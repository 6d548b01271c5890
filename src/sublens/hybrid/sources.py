"""The two models a hybrid mixes, ``base`` and ``biased`` (`Source`; `other` is the one a
hybrid brings groups in from), and `HybridError`, raised for two models that cannot be mixed
or a hybrid whose weights are not what was declared.
"""

from __future__ import annotations

from typing import Literal

from sublens.errors import SublensError

Source = Literal["base", "biased"]
SOURCES: tuple[Source, Source] = ("base", "biased")


class HybridError(SublensError):
    """Two models that cannot be mixed, or a hybrid whose weights are not what was declared."""


def other(source: Source) -> Source:
    return "biased" if source == "base" else "base"
