"""The error of the mechanistic analysis: ``MechanisticError``, raised for bad input (an
entanglement run that cannot be read, a norm that cannot be frozen, spike layers out of range,
activations that are not final-position ones), a SublensError so the CLI reports it in words.
"""

from __future__ import annotations

from sublens.errors import SublensError


class MechanisticError(SublensError):
    """Bad input to the mechanistic analysis (entanglement run, norms, prompts)."""
