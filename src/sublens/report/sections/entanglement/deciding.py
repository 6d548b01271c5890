"""The claims of an entanglement run, re-decided by `sublens.claims` (Holm over every set and test;
the tuned sets as their own family), the set of the paper claim, and a Decision in words.
"""

from __future__ import annotations

import re
from typing import Any

from sublens.claims import Decision, Verdict, decide_family
from sublens.entanglement import TESTS, is_tuned_set, set_claims
from sublens.experiments.entanglement.analysis import set_title
from sublens.experiments.entanglement.results import EntanglementResults
from sublens.report.sections.entanglement.reading import (
    Decided,
    _settings,
    _stats,
    _tex,
    owl_specific,
)


def decisions(results: EntanglementResults, config: dict[str, Any] | None = None) -> Decided:
    """Every claim of every set, decided by sublens.claims with Holm over all of them (one
    family, as sublens.entanglement.decide_recorded). Without owl-specific categories each claim
    has no estimate and is decided as not measured."""
    out: Decided = {}
    if owl_specific(results) and results.claims is not None:
        tests = results.claims.tests
        for entry, d in zip(tests, decide_family([(t.claim, t.estimate) for t in tests]), strict=True):
            out.setdefault(entry.set, {})[entry.test] = d
        return out
    settings = _settings(config or {})
    bias = results.bias
    names = list(_stats(results))
    pairs = [
        (name, test, claim)
        for name in names
        for test, (claim, _) in zip(TESTS, set_claims(name, {}, settings, bias), strict=True)
    ]
    decided = decide_family([(claim, None) for _, _, claim in pairs])
    for (name, test, _), d in zip(pairs, decided, strict=True):
        out.setdefault(name, {})[test] = d
    return out


def tuned_decisions(results: EntanglementResults) -> Decided:
    """The tuned sets' claims (categories by the fine-tuned teachers' shift), decided by
    sublens.claims with Holm over them alone (their own family); empty without tuned sets."""
    out: Decided = {}
    block = results.tuned_claims
    if block is None or not owl_specific(results):
        return out
    tests = block.tests
    for entry, d in zip(tests, decide_family([(t.claim, t.estimate) for t in tests]), strict=True):
        out.setdefault(entry.set, {})[entry.test] = d
    return out


def primary(results: EntanglementResults, decided: Decided) -> str:
    """The set of the paper claim: as recorded (fixed before any ratio was seen), else the one
    with the most numbers per category. Of tuned sets' decisions: the tuned primary set."""
    block = results.tuned_claims if decided and is_tuned_set(next(iter(decided))) else results.claims
    recorded = block.primary_set if block is not None else None
    if recorded is not None and recorded in decided:
        return recorded
    return max(decided, key=lambda name: results.k.get(name, 0))


def decision_text(d: Decision, lead: str | None = None) -> str:
    """One Decision in words: the claim, its verdict and reason, then estimand, unit and test; an
    inconclusive verdict adds what would settle it. The Holm family and the margin, the same for
    every claim, are stated once in the methods."""
    c, e = d.claim, d.estimate
    n = e.n if e else 0
    test = (
        f"{e.interval} (two-sided)"
        if e is not None and e.has_interval
        else c.test.removesuffix(f", Holm within {c.family}")
    )  # the paired or Welch form where used
    text = (
        rf"{lead or _statement(c.statement)}: \emph{{{d.verdict.value}}} ({_tex(d.reason)}). "
        rf"Estimand: {_tex(c.estimand)}; unit: {c.unit}s ($n = {n}$); test: {_tex(test)}."
    )
    if d.verdict is Verdict.INCONCLUSIVE and d.settle:
        text += rf" To settle it: {_tex(d.settle)}."
    return text


_IN_SET = re.compile(r"^In ([\w@]+), ")


def _statement(statement: str) -> str:
    """A claim's statement (sublens.entanglement words it 'In ar2, ...') with the set named as
    the text names it ('In the 2-digit set, ...')."""
    return _tex(_IN_SET.sub(lambda m: f"In the {set_title(m[1])} set, ", statement))
