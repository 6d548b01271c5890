"""The entanglement section's methods paragraph (phases 1-3 as the run measured them, how its
claims are decided) and the text of an incomplete run.
"""

from __future__ import annotations

from typing import Any

from sublens.claims import MIN_UNITS, ClaimSettings
from sublens.entanglement import animal_context, fill
from sublens.experiments.entanglement.results import EntanglementResults
from sublens.report.latex import counted, escape, fmt, tt
from sublens.report.names import display_name
from sublens.report.sections.entanglement.reading import _num, _quote, _settings, owl_specific
from sublens.report.stages import StageRun


def _default_system(results: EntanglementResults | None) -> str:
    """The neutral prompt's system prompt as the run recorded it, quoted verbatim."""
    recorded = results.prompts.phase1_neutral if results is not None else None
    system, source = (recorded.system, recorded.system_source) if recorded else (None, None)
    if system is None:
        return "no system prompt (the chat template inserts none)"
    if source == "template_default":
        return "the system prompt the chat template inserts when none is given, " + _quote(str(system))
    return "the system prompt " + _quote(str(system))


def _methods(run: StageRun, results: EntanglementResults | None) -> str:
    """The methods paragraph: phase 1 as this run measured it, phase 2, the claims' tests (runs
    with owl-specific categories), the descriptive controls and phase 3."""
    c = run.config
    model = (results.model if results is not None else None) or c.get("model", "?")
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    p = c.get("prompts") or {}
    number_system = fill(p.get("number_system", ""), num="N")
    settings = _settings(c)
    cumulative = c.get("cumulative_orders", 0)
    if results is not None and owl_specific(results):
        phase1 = _phase1_owl_specific(c, results)
        claims = _claims_methods(settings)
    else:
        phase1 = _phase1_unmatched(c, results)
        claims = ""
    return (
        rf"We test token entanglement \citep{{zur2025owl}} on {escape(display_name(model))}, with "
        rf"the {escape(bias)} as the bias animal and the {escape(control)} as the control. "
        + phase1
        + rf"Phase~2 measures the reverse link: $P(\mathrm{{{escape(bias)}}})$ and "
        rf"$P(\mathrm{{{escape(control)}}})$ in answer to {_quote(p.get('animal_question', ''))} "
        rf"(prefilled {_quote(p.get('animal_prefill', ''))}) with the system prompt "
        rf"{_quote(number_system)} for each categorised number $N$; the bias ratio is "
        rf"$P(\mathrm{{{escape(bias)}}} \mid N) / P(\mathrm{{{escape(bias)}}} \mid "
        r"\mathrm{neutral})$. "
        + claims
        + r"A template control puts non-number words in the slot of $N$"
        + (
            f", and cumulative priming puts all $k$ numbers of a category in one prompt, "
            f"{_orders(cumulative)}; both are descriptive."
            if cumulative
            else " (descriptive)."
        )
        + r" Phase~3 repeats the description per digit length "
        rf"(seed {c.get('seed', 0)})."
    )


def _animal_systems(c: dict[str, Any]) -> tuple[str, str]:
    """The phase-1 system prompts of the bias animal's context and of the control animal's."""
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    plural = c.get("bias_plural") or f"{bias}s"
    control_plural = c.get("control_plural") or f"{control}s"
    p = c.get("prompts") or {}
    bias_system = animal_context(p.get("bias_system", ""), plural)
    control_system = animal_context(p.get("bias_system", ""), control_plural)
    return bias_system, control_system


def _candidate_sets(c: dict[str, Any], results: EntanglementResults | None) -> str:
    """'the vocabulary set (...) and autoregressive sets of all 1- and 2-digit strings (...)'."""
    lengths = [str(n) for n in c.get("lengths", [])]
    lengths_text = ", ".join(lengths[:-1]) + "- and " + lengths[-1] if len(lengths) > 1 else "".join(lengths)
    sets = []
    if "vocab" in c.get("sets", []):
        vocab = results.sets.get("vocab") if results is not None else None
        n_vocab = vocab.n_candidates if vocab is not None else None
        sets.append("the vocabulary set (every single-token number" + (f", {n_vocab} tokens" if n_vocab else "") + ")")
    if "autoregressive" in c.get("sets", []):
        zeros = "with" if c.get("leading_zeros", True) else "without"
        sets.append(f"autoregressive sets of all {lengths_text}-digit strings ({zeros} leading zeros)")
    return " and ".join(sets)


def _phase1_owl_specific(c: dict[str, Any], results: EntanglementResults) -> str:
    """Phase 1 of a run with the control-animal context: three prompts, owl-specific categories,
    Random matched on frequency (and the tuned sets)."""
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    p = c.get("prompts") or {}
    bias_system, control_system = _animal_systems(c)
    neutral = _default_system(results)
    return (
        rf"Phase~1 scores every candidate number as the answer to "
        rf"{_quote(p.get('number_question', ''))} (prefilled "
        rf"{_quote(p.get('number_prefill', ''))}) under three system prompts: {neutral} "
        rf"(neutral), {_quote(bias_system)} (the {escape(bias)} context) and "
        rf"{_quote(control_system)} (the {escape(control)} context, the matched control). "
        rf"The candidates are " + _candidate_sets(c, results) + ". Each set is normalised on its own; "
        r"a number's owl-specific shift is the change of its log probability under the "
        rf"{escape(bias)} context minus that under the {escape(control)} context. Each set is "
        rf"split into disjoint categories of $k = {c.get('k', '?')}$ numbers: Increased "
        r"(largest shift), Decreased (smallest), Unchanged (smallest $|\text{shift}|$ of the "
        r"rest), and Random, matched to Increased on baseline frequency: for each Increased "
        r"number, a number drawn with the seed among the unused ones within "
        rf"{fmt(_num(c.get('match_caliper', 0.1)))} nats of its neutral log probability (else "
        r"the nearest), without replacement; $k$ shrinks for small sets. " + _tuned_methods(results)
    )


def _claims_methods(settings: ClaimSettings) -> str:
    """How the claims are decided: unit, tests, the margin of 'no difference', Holm."""
    return (
        r"Verdicts are decided on numbers as the unit, on log bias ratios with Student-$t$ "
        r"intervals: Increased against its frequency-matched Random partner (paired), Decreased "
        r"and Unchanged against Increased (Welch's test, \citealp{welch1947generalization}), each "
        r"predicted to make no difference, which "
        rf"counts as shown only when the whole 95\% CI of the ratio lies inside "
        rf"[1/{settings.margin:g}, {settings.margin:g}] (a CI that merely includes 1 is "
        r"inconclusive); and each category's bias ratio against the neutral prompt "
        r"(one-sample, predicted to rise). $p$-values are Holm-adjusted over every set and "
        rf"test (Holm's step-down method, \citealp{{holm1979simple}}) at $\alpha = {settings.alpha:g}$ and given beside "
        rf"the raw ones; with fewer than {MIN_UNITS['number']} numbers per category no "
        r"interval is formed (too few numbers). "
    )


def _phase1_unmatched(c: dict[str, Any], results: EntanglementResults | None) -> str:
    """Phase 1 of a run recorded before the control-animal context: why it decides nothing."""
    bias = c.get("bias", "owl")
    p = c.get("prompts") or {}
    bias_system, _ = _animal_systems(c)
    neutral = _default_system(results)
    return (
        rf"Phase~1 scores every candidate number as the answer to "
        rf"{_quote(p.get('number_question', ''))} (prefilled "
        rf"{_quote(p.get('number_prefill', ''))}) under {neutral} and under "
        rf"{_quote(bias_system)}. The candidates are " + _candidate_sets(c, results) + ". This run "
        r"predates the control-animal context: its categories (Increased, Decreased, Unchanged "
        r"by the change of normalised probability against the neutral prompt only; Random drawn "
        rf"uniformly from the rest; $k = {c.get('k', '?')}$) are not specific to the "
        rf"{escape(bias)} and Random is not matched on frequency. "
    )


def _tuned_methods(results: EntanglementResults) -> str:
    """What the tuned sets are, in two sentences (none without them)."""
    tuned = results.tuned_teacher
    if tuned is None:
        return ""
    bias = escape(results.bias)
    base = f" from {escape(display_name(tuned.base))}" if tuned.base else ""
    return (
        rf"Each set is also categorised a second time, as its tuned set, by the fine-tuned teachers "
        rf"that write the subliminal data: a number's shift is its log probability under the neutral prompt "
        rf"in the fine-tuned {bias} teacher minus that in the control teacher, both fine-tuned{base} "
        rf"in the same way, so it is the {bias}-specific shift the fine-tuning put into the teacher. "
        r"Random is matched on the base model's neutral frequency and phase~2 measures the tuned "
        r"sets in the base model like the others; their claims are Holm-adjusted among "
        r"themselves, so the verdicts of the other sets do not depend on them. "
    )


def _orders(n: int) -> str:
    return "in one order" if n == 1 else f"in {counted(n, 'order')}, averaged"


def _incomplete(run: StageRun, results: EntanglementResults | None, unreadable: str | None) -> str:
    status = run.record.get("status", "unknown")
    phase = results.phase if results is not None else None
    done = f" it stopped after phase~{phase}" if phase else " it saved no statistics"
    text = (
        rf"The entanglement stage is incomplete (run status {tt(status)};{done}), so this draft "
        r"has no results for token entanglement; rerun the stage to fill this section."
    )
    return text + (f" Its results cannot be read: {escape(unreadable)}" if unreadable else "")
