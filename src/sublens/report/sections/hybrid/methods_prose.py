"""The methods paragraph of the hybrid section: the two models, the component groups and depth
ranges, the two directions, how a hybrid's bias fraction is measured, the claims and, where it
was run, activation patching."""

from __future__ import annotations

import re
from typing import Any

from sublens.experiments.hybrid.results import HybridResults, Patching, group_title
from sublens.report.latex import escape, fmt
from sublens.report.names import display_name
from sublens.report.sections.hybrid.deciding import FAMILY, _settings
from sublens.report.sections.hybrid.reading import METRIC_NAMES, _axis, logit_difference_words, metric_key
from sublens.report.sections.pruning import corpus_text
from sublens.report.stages import StageRun


# ---- methods --------------------------------------------------------------------------------
def _model_name(spec: object) -> str:
    """A model as the paper names it (sublens.report.names): no spec or machine path."""
    return escape(display_name(spec))


NORM_WORDS = {
    "attach": "each layer's residual norms go with the sublayer they feed",
    "separate": "each layer's residual norms form a group of their own",
}  # config layer_norms


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}" if words else ""


def methods(run: StageRun, r: HybridResults | None) -> str:
    c = run.config
    ppl = c.get("perplexity") or {}
    text = [_transplant_words(run, r)]
    if ppl.get("enabled"):
        text.append(
            f"A hybrid whose perplexity on {ppl.get('max_tokens', '?')} tokens of "
            f"{corpus_text(ppl.get('corpus'))} exceeds "
            f"{fmt(c.get('degraded_factor'), 1)}$\\times$ the base model's is marked degraded. "
        )
    text.append(_claims_words(c))
    patching = r.patching if r is not None else None
    if patching is not None:
        text.append(_patching_words(patching))
    text.append(f"Seed {c.get('seed', '?')}.")
    return "".join(text)


def _transplant_words(run: StageRun, r: HybridResults | None) -> str:
    """The models, the component groups, the two directions and how a hybrid is measured."""
    c = run.config
    models = (r.models if r is not None else None) or run.record.get("models") or {}
    biased = models.get("biased") or {}
    pref = c.get("preference") or {}
    trait = escape(pref.get("trait", r.trait if r is not None else "owl"))
    ranges = (r.layer_ranges if r is not None else None) or c.get("layer_ranges") or []
    range_words = (
        _and([f"{a}--{b - 1}" for a, b in ranges]) if ranges else f"{c.get('depth_bins', '?')} equal parts of the depth"
    )
    groups = _and([escape(group_title(g)) for g in c.get("groups") or []])
    ranged = _and([escape(group_title(g)) for g in c.get("ranged") or []])
    key = metric_key(r, c)
    metric = METRIC_NAMES[key].format(trait=trait)
    axis = _axis(r.hybrids, key) if r is not None else None
    axis_ci = axis.ci if axis is not None else None
    system = _system_words(c)
    layers = biased.get("n_layers")
    source = biased.get("source")
    origin = {"run": "a teacher run's checkpoint", "folder": "a local fine-tuned checkpoint"}.get(str(source), "")
    biased_name = _model_name((r.biased_spec if r is not None else None) or c.get("biased"))
    if biased_name.startswith("the "):  # 'the fine-tuned teacher' is an apposition, and says the origin
        biased_words, origin = f"biased model, {biased_name}", ""
    else:
        biased_words = f"biased model {biased_name}"
    text = [
        f"We transplant weights between the base model {_model_name(c.get('base'))} and the {biased_words}"
        + (f" ({origin})" if origin else "")
        + (f", both with {layers} layers" if layers else "")
        + ", without training. Tied embeddings are untied first, so the LM head and the input "
        "embeddings are separate groups. ",
        f"Component groups: the {groups}; {NORM_WORDS.get(c.get('layer_norms', 'attach'), NORM_WORDS['attach'])}. "
        + (
            f"The {ranged} groups are also transplanted per depth range (layers {range_words}). "
            if ranged
            else "No group is transplanted per depth range. "
        ),
        "In each direction one group comes from the other model: base + biased (the base model with "
        "the biased model's group: does it bring the bias?) and biased + base (the biased model with "
        "the base model's group: does the bias remain?); the LM-head swap is the LM-head row. ",
        f"Each hybrid is measured as in the other experiments ({system}; "
        f"{len(pref.get('questions') or [])} preference questions, answer prefilled as "
        f"``{escape(pref.get('prefill', ''))}''; {len(pref.get('panel') or []) + 1} animals). "
        f"Its bias fraction, for the {metric} $m$ (geometric mean over questions of paired ratios), is "
        "\\[ f = \\log(m_h/m_\\mathrm{base}) \\,/\\, \\log(m_\\mathrm{biased}/m_\\mathrm{base}) \\] "
        "(0: as the base model, 1: as the biased model), with a 95\\% CI over questions ("
        + (escape(axis_ci) if axis_ci else "paired bootstrap \\citep{efron1994bootstrap}")
        + ") with the biased model's shift held fixed. ",
    ]
    return "".join(text)


def _claims_words(c: dict[str, Any]) -> str:
    """The three claims, their family, test and margin."""
    settings = _settings(c.get("claims"))
    return (
        f"Three claims are decided, Holm-adjusted within the family ``{FAMILY}'' (one-sample $t$-tests "
        "on per-question log ratios, two-sided; the questions are the unit because the two models are "
        f"fixed; $\\alpha = {settings.alpha:g}$; smallest effect of interest a ratio of "
        f"$\\times{settings.margin:g}$, so ``no effect'' needs the whole CI inside "
        f"$[1/{settings.margin:g}, {settings.margin:g}]$ and a CI that merely includes 1 is inconclusive): "
        "that the bias is not in the LM head; that the MLP layers carry more of it than the attention "
        "layers by transplant (MLPs as key--value memories: \\citealp{geva2021transformer}; "
        "\\citealp{meng2022locating}); and that patching MLP outputs carries more of it than patching "
        "attention outputs. Each claim's estimand is given with its verdict. A claim that "
        "rests on a degraded hybrid, or on a biased model not shown to differ from the base, is "
        "inconclusive. "
    )


def _patching_words(patching: Patching) -> str:
    """How activation patching is run and measured."""
    labels = ", ".join(re.sub(r"(?<=\d)-(?=\d)", "--", escape(label)) for label in patching.labels)  # L0--9
    return (
        "Activation patching \\citep{vig2020investigating,meng2022locating} runs each preference question (answer prefilled) through both models and "
        "replaces the outputs of one component (every layer's MLP or attention output, i.e. what it adds "
        f"to the residual stream, at every position) over a layer range ({labels}) by the other "
        "model's on the same prompt: biased outputs into the base run (does it bring the bias?) and "
        "base outputs into the biased run (does it remove it?). The measure is the "
        f"{logit_difference_words(patching)}; the fraction of the biased$-$base gap "
        "restored or removed is computed per question over the mean gap, with a Student-$t$ CI over "
        "questions and Holm-adjusted $p$-values over every patched cell. "
    )


def _system_words(config: dict[str, Any]) -> str:
    if config.get("system"):
        return f"system prompt ``{escape(config['system'])}''"
    return "the chat template's default system prompt"
