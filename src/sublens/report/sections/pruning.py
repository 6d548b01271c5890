"""The pruning section: does the owl bias survive removing attention heads?

Reads a `pruning` run directory (schema: `sublens.experiments.pruning`). The verdict on the
paper's claim ("the bias survives pruning ~40% of the heads") is decided here from the numbers:

- the claim is judged at kept fraction PAPER_KEPT (0.6), or the measured fraction closest to it;
- the bias *survives* when the entropy criterion's P(trait) retention (pruned / unpruned,
  geometric mean over questions) has a 95% CI lower bound >= SURVIVAL_THRESHOLD (0.5: at least
  half of the bias left); it *does not survive* when the CI upper bound is below the threshold;
  otherwise the run is inconclusive;
- random pruning of the same number of heads is the control: entropy-ranked pruning is called
  more (less) damaging than random only when the two CIs do not overlap;
- a perplexity over DEGRADED_RATIO x the unpruned model's means the pruned model no longer
  models text, so losing the bias there is not specific to the bias.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import pairwise
from typing import Any

from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.stages import StageRun

PAPER_KEPT = 0.6  # "survives pruning ~40% of the heads"
SURVIVAL_THRESHOLD = 0.5  # retention CI lower bound needed to call the bias retained
DEGRADED_RATIO = 3.0  # perplexity x unpruned above which the model counts as broken
SHORT = {"entropy": "ent.", "reverse": "rev.", "random": "rand."}  # perplexity column headers
CRITERION_NAMES = {
    "entropy": "entropy, which prunes the highest-entropy heads",
    "reverse": "reverse, which prunes the lowest-entropy heads",
    "random": "random",
}
Step = dict[str, Any]


# ---- reading the results --------------------------------------------------------------------
def _steps(results: dict[str, Any]) -> list[Step]:
    """Finished (fraction, criterion) cells; malformed entries are skipped, not fatal."""
    steps = results.get("steps") or []
    return [s for s in steps if isinstance(s, dict) and "fraction" in s and "criterion" in s]


def _retention(step: Step | None) -> dict[str, Any]:
    return ((step or {}).get("retention") or {}).get("p_trait") or {}


def _step(steps: list[Step], fraction: float, criterion: str) -> Step | None:
    return next((s for s in steps if s["fraction"] == fraction and s["criterion"] == criterion), None)


def _claim_fraction(steps: list[Step]) -> float | None:
    """The measured pruned fraction (< 1) closest to the paper's, ties to the larger kept fraction."""
    fractions = sorted({s["fraction"] for s in steps if s["fraction"] < 1.0}, reverse=True)
    return min(fractions, key=lambda f: abs(f - PAPER_KEPT)) if fractions else None


def _plain(value: float | None) -> str:
    """A number for the terminal headline: two significant digits."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2g}"


def _pct(fraction: float) -> str:
    return f"{round(100 * fraction)}\\%"


# ---- verdicts -------------------------------------------------------------------------------
def survival(retention: dict[str, Any]) -> str:
    """'survives', 'lost' or 'inconclusive' from a retention CI (see the module docstring)."""
    low, high = retention.get("ci_low"), retention.get("ci_high")
    ratio = retention.get("ratio")
    if ratio is None:
        return "inconclusive"
    if low is not None and low >= SURVIVAL_THRESHOLD:
        return "survives"
    if high is not None and high < SURVIVAL_THRESHOLD:
        return "lost"
    return "inconclusive"


def versus_random(entropy: dict[str, Any], random: dict[str, Any]) -> str | None:
    """'lower', 'higher' or 'same' retention than the random control (non-overlapping CIs)."""
    keys = ("ratio", "ci_low", "ci_high")
    if any(entropy.get(k) is None for k in keys) or any(random.get(k) is None for k in keys):
        return None
    if entropy["ci_high"] < random["ci_low"]:
        return "lower"
    if entropy["ci_low"] > random["ci_high"]:
        return "higher"
    return "same"


# ---- formatting -----------------------------------------------------------------------------
def retention_cell(retention: dict[str, Any]) -> str:
    """'0.53 [0.41, 0.69]'; tiny ratios share one power of ten with their CI to stay narrow."""
    ratio, low, high = retention.get("ratio"), retention.get("ci_low"), retention.get("ci_high")
    if ratio is None or ratio <= 0 or ratio >= 0.01 or low is None or high is None:
        return fmt_ci(ratio, low, high)
    exponent = math.floor(math.log10(ratio))
    scale = 10.0**exponent

    def mantissa(v: float) -> str:
        m = v / scale
        return f"{m:.1f}" if m < 9.95 else f"{m:.0f}"

    return rf"${mantissa(ratio)}\,[{mantissa(low)}, {mantissa(high)}]\times10^{{{exponent}}}$"


def _ci_text(retention: dict[str, Any]) -> str:
    """Retention with its CI for running text: each number through fmt."""
    return fmt_ci(retention.get("ratio"), retention.get("ci_low"), retention.get("ci_high"))


def _draws(steps: list[Step]) -> int:
    return max((s.get("n_draws", 1) for s in steps if s["criterion"] == "random"), default=1)


def sweep_table(results: dict[str, Any], steps: list[Step], incomplete: bool) -> str:
    """Rows: fraction kept; columns: retention per criterion, then perplexity per criterion."""
    criteria = list(dict.fromkeys(s["criterion"] for s in steps))
    fractions = sorted({s["fraction"] for s in steps}, reverse=True)
    has_ppl = any(s.get("perplexity") for s in steps)
    header = ["kept", *criteria] + ([f"ppl {SHORT.get(c, c)}" for c in criteria] if has_ppl else [])
    rows = []
    for f in fractions:
        cells = [_step(steps, f, c) for c in criteria]
        row = [f"{f:.2f}"] + [retention_cell(_retention(s)) if s else "--" for s in cells]
        if has_ppl:
            row += [_ppl(_mean_ppl(s)) for s in cells]
        rows.append(row)
    trait = escape(results.get("trait", "trait"))
    total = results.get("n_heads_total")
    draws = f"; random: {_draws(steps)} draws, averaged" if "random" in criteria else ""
    caption = (
        f"Head pruning: P({trait}) retention (pruned / unpruned, geometric mean over questions, "
        f"95\\% bootstrap CI) by fraction of {f'the {total} ' if total else ''}heads kept (rows) "
        f"and criterion (columns{draws})"
        + (", then perplexity (ppl) per criterion" if has_ppl else "")
        + f". The bias counts as retained when the CI lower bound is at least {SURVIVAL_THRESHOLD:g}."
        + _unpruned_caption(results)
        + (" Incomplete run: missing cells are marked --." if incomplete else "")
    )
    # Tighter column gaps: up to seven numeric columns share the text width.
    align = "@{}l" + r"@{\hspace{8pt}}r" * (len(header) - 1) + "@{}"
    return booktabs_table(header, rows, caption, "tab:pruning_sweep", align=align, wide=True)


def _unpruned_caption(results: dict[str, Any]) -> str:
    unpruned = results.get("unpruned") or {}
    p = (((unpruned.get("preference") or {}).get("probability") or {}).get("p_trait")) or {}
    ppl = (unpruned.get("perplexity") or {}).get("perplexity")
    parts = []
    if p:
        trait = escape(results.get("trait", "trait"))
        parts.append(f"unpruned P({trait}) = {fmt_ci(p.get('mean'), p.get('ci_low'), p.get('ci_high'), 3)}")
    if ppl is not None:
        parts.append(f"unpruned perplexity {fmt(ppl, 1)}")
    text = "; ".join(parts)
    return f" {text[:1].upper()}{text[1:]}." if parts else ""


# ---- methods --------------------------------------------------------------------------------
def _biased_model(run: StageRun) -> str:
    """Which biased model: the prompted base (system prompt) or a fine-tuned teacher run."""
    spec = str(run.config.get("model") or run.results.get("model") or "?")
    source = ((run.record.get("models") or {}).get("model") or {}).get("source")
    system = run.config.get("system")
    name = escape(spec.rstrip("/").rsplit("/", 1)[-1]) if source in ("run", "folder") else escape(spec)
    if source in ("run", "folder"):
        text = f"the fine-tuned teacher \\texttt{{{name}}}"
        return text + (f", measured with the system prompt ``{escape(system)}''" if system else "")
    if system:
        return f"a prompted teacher: the base model \\texttt{{{name}}} with the system prompt ``{escape(system)}''"
    return f"\\texttt{{{name}}} with the chat template's default system prompt"


def _bias_system(system: str | None, measured: str | None) -> str:
    if not system:
        return "the chat template's default system prompt"
    if system == measured:
        return "the same system prompt"
    return f"the system prompt ``{escape(system)}''"


def methods(run: StageRun) -> str:
    c, r = run.config, run.results
    pref = c.get("preference") or {}
    ppl = c.get("perplexity") or {}
    n_layers, n_heads = r.get("n_layers"), r.get("n_heads")
    heads = (
        f" ({n_layers} layers $\\times$ {n_heads} heads = {r.get('n_heads_total')} heads)"
        if n_layers and n_heads else ""
    )
    entropy = r.get("entropy") or {}
    prompts = entropy.get("n_prompts")
    fractions = ", ".join(f"{f:g}" for f in c.get("fractions") or [])
    criteria = "; ".join(CRITERION_NAMES.get(k, escape(k)) for k in c.get("criteria") or [])
    bp = c.get("bias_prompts") or {}
    trait = escape(pref.get("trait", "owl"))
    text = [
        f"We prune the attention heads of {_biased_model(run)}{heads}, following the head-pruning "
        "studies of \\citet{michel2019sixteen} and \\citet{voita2019analyzing}. "
        f"Heads are ranked by their mean attention entropy (nats) on "
        f"{prompts if prompts else 'the'} bias prompts (the preference questions under "
        f"{_bias_system(bp.get('system'), c.get('system'))} with the answer "
        f"prefilled as ``{escape(bp.get('prefill', ''))}''); a head's entropy is pooled over all its "
        "query rows, padding and each prompt's first row excluded. ",
        f"For each fraction of heads kept ({fractions}) and criterion ({criteria}; "
        f"{c.get('random_draws', 1)} seeded random draws), exactly round(fraction $\\times$ heads) "
        "heads are kept and the others' outputs are zeroed. ",
        f"Each pruned model is measured as the unpruned one: P({trait}) at the prefilled answer "
        f"``{escape(pref.get('prefill', ''))}'' over {len(pref.get('questions') or [])} paraphrased "
        f"questions, its share among {len(pref.get('panel') or []) + 1} animals, and sampled "
        f"one-word answers ({len(pref.get('sample_questions') or [])} questions $\\times$ "
        f"{pref.get('samples_per_question', '?')} samples, temperature "
        f"{pref.get('temperature', '?')}). ",
        f"Retention is pruned / unpruned P({trait}), the geometric mean of per-question ratios with "
        f"a 95\\% bootstrap CI over questions ({c.get('bootstrap_resamples', '?')} resamples; "
        "\\citealp{efron1994bootstrap}); random draws are averaged in log space first. ",
    ]
    if ppl.get("enabled"):
        text.append(
            f"Perplexity is measured on {ppl.get('max_tokens', '?')} tokens of "
            f"{escape(ppl.get('corpus', '?'))} text (windows of {ppl.get('window', '?')}). "
        )
    text.append(
        f"We call the bias retained when the retention CI lower bound is at least "
        f"{SURVIVAL_THRESHOLD:g} at {_pct(PAPER_KEPT)} of heads kept, lost when the CI upper bound is "
        f"below it, and a pruned model degraded when its perplexity exceeds "
        f"{DEGRADED_RATIO:g}$\\times$ the unpruned one's. Seed {c.get('seed', '?')}."
    )
    return "".join(text)


# ---- results --------------------------------------------------------------------------------
def _ppl_ratio(step: Step | None) -> float | None:
    return ((step or {}).get("perplexity") or {}).get("ratio")


def _verdict_sentence(verdict: str, f: float, trait: str) -> str:
    threshold = f"{SURVIVAL_THRESHOLD:g}"
    if verdict == "survives":
        return (f"The CI lower bound is at least {threshold}: the bias survives head pruning in this "
                "run, which supports the claim.")
    if verdict == "lost":
        return (f"The whole CI lies below {threshold}: the bias does \\emph{{not}} survive head "
                f"pruning in this run (P({trait}) collapses), which contradicts the claim that the "
                "bias survives pruning.")
    return (f"The CI straddles {threshold}, so the run is inconclusive about whether the bias "
            "survives pruning.")


def _control_sentence(entropy: dict[str, Any], random: dict[str, Any], draws: int) -> str:
    comparison = versus_random(entropy, random)
    head = (f"Random pruning of the same number of heads ({draws} draws) keeps "
            f"{_ci_text(random)}")
    if comparison == "lower":
        return head + "; entropy-ranked pruning removes more of the bias than random pruning."
    if comparison == "higher":
        return head + "; entropy-ranked pruning spares more of the bias than random pruning."
    if comparison == "same":
        return head + "; the two are not distinguishable."
    return head + "."


def _survival_range(steps: list[Step], criterion: str) -> str:
    """The smallest kept fraction down to which the bias survives, for one criterion."""
    ordered = sorted((s for s in steps if s["criterion"] == criterion and s["fraction"] < 1.0),
                     key=lambda s: -s["fraction"])
    surviving = []
    for s in ordered:  # nested masks: stop at the first fraction where it is not retained
        if survival(_retention(s)) != "survives":
            break
        surviving.append(s["fraction"])
    if not ordered:
        return ""
    if not surviving:
        return (f"Under the {criterion} criterion the bias is not retained at any pruned fraction "
                f"measured (already {fmt(_retention(ordered[0]).get('ratio'))} at "
                f"{_pct(ordered[0]['fraction'])} kept). ")
    return f"Under the {criterion} criterion the bias is retained down to {_pct(surviving[-1])} of heads kept. "


def _degradation(steps: list[Step]) -> str:
    """Which pruned models at the judged fraction no longer model text (perplexity ratio)."""
    broken = [s for s in steps if (_ppl_ratio(s) or 0.0) > DEGRADED_RATIO]
    if not broken:
        return ""
    parts = ", ".join(f"{s['criterion']} {_ppl(_mean_ppl(s))} ({fmt(_ppl_ratio(s), 1)}$\\times$)"
                      for s in broken)
    return (f"Perplexity exceeds {DEGRADED_RATIO:g}$\\times$ the unpruned model's "
            f"({_ppl(_mean_ppl_unpruned(steps))}) for {parts}: these models are degraded, so the loss "
            "of the bias there goes with a general breakdown of the model rather than a targeted "
            "removal. ")


def _mean_ppl(step: Step | None) -> float | None:
    return ((step or {}).get("perplexity") or {}).get("mean")


def _mean_ppl_unpruned(steps: list[Step]) -> float | None:
    """The unpruned perplexity, recovered from a step's mean and ratio."""
    for s in steps:
        mean, ratio = _mean_ppl(s), _ppl_ratio(s)
        if mean is not None and ratio:
            return float(mean / ratio)
    return None


def _ppl(value: float | None) -> str:
    return fmt(value, 1 if value is None or value < 100 else 0)


def heads_location(results: dict[str, Any]) -> str:
    """Where the heads pruned on the heatmap (the highest-entropy ones) sit, by thirds of depth."""
    heat = (results.get("entropy") or {}).get("heatmap") or {}
    pruned = heat.get("pruned") or []
    n_layers, n_heads = results.get("n_layers"), results.get("n_heads")
    if not pruned or not n_layers:
        return ""
    labels = (re.fullmatch(r"L(\d+)H\d+", str(h)) for h in pruned)  # 'L3H2' (hooks.head_label)
    layers = Counter(int(m[1]) for m in labels if m)
    edges = [round(i * n_layers / 3) for i in range(4)]
    parts = [f"{sum(layers[layer] for layer in range(a, b))} in layers {a}--{b - 1}"
             for a, b in pairwise(edges) if b > a]
    full = [layer for layer, n in sorted(layers.items()) if n_heads and n == n_heads]
    text = (f"The {len(pruned)} highest-entropy heads (those pruned at {_pct(heat.get('fraction', 0))} "
            f"kept) lie {', '.join(parts)}")
    if full:
        text += f"; every head of layer{'s' if len(full) > 1 else ''} {', '.join(map(str, full))} is pruned"
    return text + ". "


def results_text(run: StageRun, steps: list[Step], incomplete: bool) -> tuple[str, list[str]]:
    r = run.results
    trait = escape(r.get("trait", "owl"))
    out: list[str] = []
    if incomplete:
        out.append(_incomplete(run))
    if not steps:
        return " ".join(out) or "The pruning run holds no results.", ["pruning: no results (incomplete run)"]
    out.append(f"Table~\\ref{{tab:pruning_sweep}} gives P({trait}) retention across the sweep. ")
    f = _claim_fraction(steps)
    if f is None:
        out.append("No pruned fraction was measured, so the claim cannot be judged. ")
        return "".join(out), ["pruning: no pruned fraction measured"]
    entropy, random = _step(steps, f, "entropy"), _step(steps, f, "random")
    headline_parts = []
    if entropy is not None:
        ret = _retention(entropy)
        verdict = survival(ret)
        out.append(f"With {_pct(f)} of heads kept ({_pct(1 - f)} pruned), entropy-ranked pruning "
                   f"leaves P({trait}) retention {_ci_text(ret)}. "
                   + _verdict_sentence(verdict, f, trait) + " ")
        headline_parts.append(f"{_plain(ret.get('ratio'))} (entropy)")
    else:
        verdict = "inconclusive"
        out.append(f"The entropy criterion was not measured at {_pct(f)} kept, so the claim cannot be judged. ")
    reverse = _step(steps, f, "reverse")
    if reverse is not None:
        out.append(f"Pruning the lowest-entropy heads instead (reverse) keeps {_ci_text(_retention(reverse))}. ")
        headline_parts.append(f"{_plain(_retention(reverse).get('ratio'))} (reverse)")
    if random is not None:
        out.append(_control_sentence(_retention(entropy), _retention(random), random.get("n_draws", 1)) + " ")
        headline_parts.append(f"{_plain(_retention(random).get('ratio'))} (random)")
    out.append(_degradation([x for x in (entropy, reverse, random) if x is not None]))
    out.append(_survival_range(steps, "entropy"))
    out.append(_survival_range(steps, "random"))
    out.append(heads_location(r))
    words = {"survives": "the bias survives", "lost": "the bias does not survive",
             "inconclusive": "inconclusive"}[verdict]
    headline = [f"pruning: P({r.get('trait', 'owl')}) retention at {round(100 * f)}% heads kept: "
                f"{' vs '.join(headline_parts) or 'n/a'}: {words}"]
    return "".join(out).strip(), headline


def _incomplete(run: StageRun) -> str:
    status = escape(run.record.get("status", "unknown"))
    error = str(run.record.get("error") or "").strip().splitlines()
    why = f" ({escape(error[0][:200])})" if error else ""
    return (f"The pruning stage is incomplete (run status: {status}{why}); the numbers below cover "
            "only the finished cells of the sweep. ")


# ---- the section ----------------------------------------------------------------------------
def figures(run: StageRun) -> list[Figure]:
    found = run.figures()
    trait = escape(run.results.get("trait", "owl"))
    heat = (run.results.get("entropy") or {}).get("heatmap") or {}
    out = []
    if "pruning_retention" in found:
        out.append(Figure("pruning_retention",
                          f"Head pruning: P({trait}), panel-share and answer-rate retention (95\\% CI bands) "
                          "and perplexity against the fraction of heads kept, by criterion "
                          f"(see Table~\\ref{{tab:pruning_sweep}}).", wide=True))
    if "pruning_entropy_heatmap" in found:
        frac = heat.get("fraction")
        marked = f"; $\\times$ marks the heads pruned at {_pct(frac)} kept" if frac else ""
        out.append(Figure("pruning_entropy_heatmap",
                          f"Mean attention entropy per head (layer $\\times$ head) on the bias prompts{marked}."))
    return out


def build(run: StageRun) -> Section:
    r = run.results
    steps = _steps(r)
    incomplete = (not run.ok) or bool(r.get("partial")) or not steps
    text, headline = results_text(run, steps, incomplete)
    tables = {"pruning_sweep": sweep_table(r, steps, incomplete)} if steps else {}
    figs = figures(run)
    if figs and steps:
        refs = " and ".join(f"Figure~\\ref{{{figure_label('pruning', f.stem)}}}" for f in figs)
        text += f" See {refs}."
    return Section(
        title="Head pruning",
        methods=methods(run) if run.config else "The pruning run has no configuration.",
        results=text,
        tables=tables,
        figures=figs,
        headline=headline,
    )
