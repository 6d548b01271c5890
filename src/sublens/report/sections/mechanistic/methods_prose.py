"""The methods paragraph of the mechanistic section: the model, the prompts it reads (quoted),
the scores and the direct logit attribution, and the tests."""

from __future__ import annotations

from sublens.experiments.mechanistic.results import MechanisticResults
from sublens.report.latex import counted, escape, fmt
from sublens.report.names import display_name
from sublens.report.sections.entanglement import set_name
from sublens.report.stages import StageRun

# ---------------------------------------------------------------------------------------------
# text


def _quote(text: str) -> str:
    return f"``{escape(text)}''"


def _source(results: MechanisticResults | None) -> str:
    source = results.input if results is not None else None
    numbers = (results.numbers if results is not None else None) or []
    n = source.n_numbers if source is not None else len(numbers)
    cats = results.consistency.categories if results is not None and results.consistency else {}
    per_cat = ", ".join(f"{count} {escape(c)}" for c, count in cats.items())
    kind = source.source if source is not None else None
    if source is not None and kind == "entanglement_run":
        numbered_set = source.set if source.set is not None else "?"
        return (
            rf"the {n} categorised numbers of the {set_name(numbered_set)} set of the "
            rf"entanglement stage ({per_cat}), with their measured bias ratios"
        )
    if kind == "config":
        return f"{n} numbers given in the configuration" + (f" ({per_cat})" if per_cat else "")
    return f"{n} two-digit numbers, categories unknown"


def _methods(run: StageRun, results: MechanisticResults | None) -> str:
    c = run.config
    shape = results.model if results is not None else None
    model = (shape.spec if shape is not None else None) or c.get("model", "?")
    dims = f" ({shape.n_layers} layers, {shape.n_heads} heads per layer)" if shape is not None else ""
    bias, control = c.get("bias", "owl"), c.get("control", "dog")
    residual = c.get("residual") or {}
    attribution = c.get("attribution") or {}
    attention = c.get("attention") or {}
    layers = c.get("layers")
    searched = "blocks " + ", ".join(str(n) for n in layers) if layers else "every block but the first"
    numbers = ", ".join(escape(n) for n in attention.get("numbers", []))
    return (
        rf"We analyse {escape(display_name(model))}{dims} on {_source(results)}. \emph{{Residual similarity.}} For each "
        rf"number we compare the final-position residual stream \citep{{elhage2021mathematical}} of "
        rf"{_quote(residual.get('number', '').replace('{number}', 'N'))} with those of "
        rf"{_quote(residual.get('animal', '').replace('{word}', bias))} and "
        rf"{_quote(residual.get('animal', '').replace('{word}', control))} "
        rf"({FORMAT_WORDS.get(residual.get('format', 'raw'), 'raw text')}), layer by layer, as the difference of "
        r"the two cosine similarities; the spike layer "
        rf"is the block that raises this difference most (searched over {searched}). "
        + _score_sentence(results, escape(bias), escape(control))
        + r" \emph{Direct logit attribution} (DLA) decomposes the final residual on the number-priming "
        rf"prompt (system prompt {_quote(attribution.get('system', '').replace('{number}', 'N'))}, "
        rf"question {_quote(attribution.get('user', ''))}, prefilled "
        rf"{_quote(attribution.get('prefill', ''))}) into the embedding, every head and every MLP, "
        rf"each projected on $W_U[\mathrm{{{escape(bias)}}}] - W_U[\mathrm{{{escape(control)}}}]$ "
        r"through the final norm frozen at the actual residual "
        r"\citep{elhage2021mathematical,nanda2022transformerlens}. "
        rf"\emph{{Attention}} is read from the final position of "
        rf"{_quote(attention.get('template', '').replace('{number}', 'N').replace('{word}', bias))} "
        rf"to the number and animal tokens (N = {numbers}). \emph{{Tests.}} Whether the spike layer "
        r"and the top heads depend on the category: a $\chi^2$ statistic of the category $\times$ "
        r"label table with a permutation $p$-value and Cram\'er's $V$ \citep{cramer1946mathematical}. Whether the MLPs' DLA tracks "
        r"the bias ratio beyond the total: the DLA terms add up to the logit difference, which "
        r"itself tracks the ratio, so part of any raw correlation is automatic; we therefore test "
        r"the partial Spearman correlation of the MLPs' summed DLA with the bias ratio given the "
        r"total logit difference (ranks residualised on its rank), with a Freedman--Lane "
        r"permutation $p$-value \citep{freedman1983nonstochastic} that keeps the total fixed and a "
        r"Fisher-$z$ 95\% CI. These tests "
        rf"form one family, Holm-adjusted (Table~\ref{{tab:mechanistic_tests}}; "
        rf"{counted(c.get('n_permutations'), 'permutation')}, family-wise $\alpha$ = "
        rf"{fmt(c.get('alpha', 0.05))}, seed {c.get('seed', 0)}). Descriptive, uncorrected: "
        r"per-category score comparisons with Random by permutation tests and Spearman "
        r"correlations of the bias ratio with each score."
    )


FORMAT_WORDS = {
    "raw": "as raw text, without the chat template",
    "chat": "each in the assistant turn of the chat template",
}  # config residual.format


def contrastive(results: MechanisticResults | None) -> bool:
    """Whether the run's head and MLP scores are contrastive (bias - control), as runs record
    since the scores were made contrastive; older runs scored cosines with the bias statement."""
    return results is not None and results.component_score == "contrastive"


def _score_sentence(results: MechanisticResults | None, bias: str, control: str) -> str:
    if contrastive(results):
        return (
            rf"A head's (an MLP's) score is its direct contribution to the {bias}$-${control} "
            r"logit difference on the number statement: its output, through the final norm "
            rf"frozen at that prompt's final residual, projected on $W_U[\mathrm{{{bias}}}] - "
            rf"W_U[\mathrm{{{control}}}]$ (contrastive: writing ``animal'' in general scores 0); "
            r"the spike layer's top head has the highest score."
        )
    return (
        rf"In this run a head's (an MLP's) score is the cosine of its output with the {bias} "
        r"statement's residual, which is not contrastive (a component that writes any animal "
        r"scores high); the spike layer's top head has the highest such score."
    )
