"""The methods paragraph of the pruning section: the biased model and its base control, the
bias prompts and system prompt, the corpus the head entropies are measured on, the criteria
and the sweep."""

from __future__ import annotations

from sublens.experiments.pruning.results import PruningResults
from sublens.report.latex import counted, escape
from sublens.report.names import display_name
from sublens.report.sections.pruning.reading import (
    CRITERION_NAMES,
    _pct,
    bound_of,
    claim_fraction,
    claim_settings,
)
from sublens.report.stages import StageRun


# ---- methods --------------------------------------------------------------------------------
def _biased_model(run: StageRun, results: PruningResults | None) -> str:
    """Which biased model: the prompted base (system prompt) or a fine-tuned teacher run."""
    spec = run.config.get("model") or (results.model if results else None) or "?"
    source = ((run.record.get("models") or {}).get("model") or {}).get("source")
    system = run.config.get("system")
    name = escape(display_name(spec))
    if source in ("run", "folder"):
        text = name if name.startswith("the ") else f"the fine-tuned model {name}"
        return text + (f", measured with the system prompt ``{escape(system)}''" if system else "")
    if system:
        return f"a prompted teacher: the base model {name} with the system prompt ``{escape(system)}''"
    return f"{name} with the chat template's default system prompt"


def corpus_text(corpus: object) -> str:
    """The perplexity corpus as the text names it: 'Wikipedia text', or 'a local text file' for a
    path (no machine's paths in the paper)."""
    text = str(corpus or "?")
    if text.lower() == "wikipedia":
        return "Wikipedia text"
    return "a local text file" if "/" in text or "." in text else f"{escape(text)} text"


def _bias_system(system: str | None, measured: str | None) -> str:
    if not system:
        return "the chat template's default system prompt"
    if system == measured:
        return "the same system prompt"
    return f"the system prompt ``{escape(system)}''"


def _base_methods(run: StageRun, results: PruningResults | None) -> str:
    base = (results.base_model if results else None) or run.config.get("base")
    if results is None or results.base_unpruned is None or not base:
        return (
            "This run has no pruned-base control: only the biased model was pruned, so its "
            "retention mixes loss of the bias with damage common to any model. "
        )
    system = run.config.get("base_system")
    under = f"the system prompt ``{escape(system)}''" if system else "the chat template's default system prompt"
    return (
        f"As the matched control, the same heads are removed from the unbiased base model "
        f"{escape(display_name(base))} (under {under}), measured the same way; retention is "
        "base-controlled: per question, the log ratio of the biased to the base model's value, pruned, "
        "minus the same log ratio unpruned, so pruning damage common to both models cancels. "
    )


def methods(run: StageRun, results: PruningResults | None) -> str:
    c, r = run.config, results
    pref = c.get("preference") or {}
    ppl = c.get("perplexity") or {}
    heads = (
        f" ({r.n_layers} layers $\\times$ {r.n_heads} heads = {r.n_heads_total} heads)"
        if r is not None and r.n_layers and r.n_heads
        else ""
    )
    prompts = r.entropy.n_prompts if r is not None else None
    fractions = ", ".join(f"{f:g}" for f in c.get("fractions") or [])
    criteria = "; ".join(CRITERION_NAMES.get(k, escape(k)) for k in c.get("criteria") or [])
    bp = c.get("bias_prompts") or {}
    trait = escape(pref.get("trait", "owl"))
    f = claim_fraction(r.steps if r is not None else [], c)
    claim_draws = c.get("claim_random_draws")
    draws = counted(int(c.get("random_draws", 1)), "seeded random draw")
    if claim_draws and f is not None:
        draws += f", {max(int(claim_draws), int(c.get('random_draws', 1)))} at {_pct(f)} kept"
    text = [
        f"We prune the attention heads of {_biased_model(run, r)}{heads}, following the head-pruning "
        "studies of \\citet{michel2019sixteen} and \\citet{voita2019analyzing}. "
        f"Heads are ranked by their mean attention entropy (nats) on "
        f"{prompts if prompts else 'the'} bias prompts (the preference questions under "
        f"{_bias_system(bp.get('system'), c.get('system'))} with the answer "
        f"prefilled as ``{escape(bp.get('prefill', ''))}''); a head's entropy is pooled over all its "
        "query rows, padding and each prompt's first row excluded. ",
        f"For each fraction of heads kept ({fractions}) and criterion ({criteria}; {draws}), exactly "
        "round(fraction $\\times$ heads) heads are kept and the others' outputs are zeroed. ",
        f"Each pruned model is measured as the unpruned one: P({trait}) at the prefilled answer "
        f"``{escape(pref.get('prefill', ''))}'' over {len(pref.get('questions') or [])} paraphrased "
        f"questions, its share among {len(pref.get('panel') or []) + 1} animals, and sampled "
        f"one-word answers ({counted(len(pref.get('sample_questions') or []), 'question')} $\\times$ "
        f"{_samples(pref.get('samples_per_question'))}, temperature "
        f"{pref.get('temperature', '?')}). ",
        _base_methods(run, r),
        "Retention is the geometric mean over questions of the per-question ratios, with a 95\\% "
        "Student-t interval on the log scale over questions (one fixed model: question variation "
        "only); random draws are averaged in log space first. ",
    ]
    if ppl.get("enabled"):
        text.append(
            f"Perplexity is measured on {ppl.get('max_tokens', '?')} tokens of "
            f"{corpus_text(ppl.get('corpus'))} (windows of {ppl.get('window', '?')}); a pruned model "
            f"whose perplexity exceeds ${bound_of(c):g}\\times$ the unpruned model's counts as degraded, "
            "and no claim is decided on degraded models. "
        )
    settings = claim_settings(c)
    text.append(
        "Two claims are decided: the survival claim by equivalence (the CI of the "
        f"base-controlled {trait}-share retention inside ${1 / settings.margin:.2g}\\times$.."
        f"${settings.margin:g}\\times$), the comparison with random pruning by a two-sided Monte Carlo "
        "rank test among the random draws, Holm-adjusted together "
        f"($\\alpha = {settings.alpha:g}$). Seed {c.get('seed', '?')}."
    )
    return "".join(text)


def _samples(n: object) -> str:
    return counted(n, "sample") if isinstance(n, int) else "? samples"
