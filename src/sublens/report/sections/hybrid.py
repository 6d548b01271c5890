"""The hybrid section: where in the weights is the bias? LM-head swaps and a transplant matrix.

Reads a `hybrid` run directory (schema: `sublens.experiments.hybrid`). Every hybrid has a *bias
fraction* f = log(m_hybrid / m_base) / log(m_biased / m_base) for the run's metric m (panel share
or P(trait)): 0 = as the base model, 1 = as the biased model. Its 95% CI here comes from the CI of
m_hybrid / m_base (paired bootstrap over questions) with the biased model's shift held fixed.

Two claims are judged from the numbers (thresholds LITTLE and MOST, on CI bounds):
- "not in the LM head": supported when the base model with the biased LM head gains little
  (CI upper bound <= LITTLE) and the biased model with the base LM head keeps most (CI lower
  bound >= MOST); contradicted when the LM head alone brings half the bias or more, or removing
  it leaves half or less; otherwise partly supported (the text says which half holds).
- "seated in the MLP layers": supported when the biased MLPs bring most of the bias into the
  base (CI lower bound >= HALF) and the base MLPs remove most of it from the biased model (CI
  upper bound <= HALF); contradicted when the MLPs neither bring much (upper <= LITTLE) nor are
  needed (lower >= MOST); otherwise partly supported. The depth range named as carrying it is
  the MLP range with the largest fraction brought into the base, if its CI clears every other
  range's.
A hybrid whose perplexity exceeds the run's degraded factor x base is gibberish: its number is
not evidence, and a claim that rests on one is inconclusive.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sublens.report.latex import booktabs_table, escape, fmt, fmt_ci
from sublens.report.sections import Figure, Section, figure_label
from sublens.report.stages import StageRun, spec_label

LITTLE = 0.25  # at most a quarter of the bias (log scale): "little"
HALF = 0.5
MOST = 0.75  # at least three quarters: "most" kept
METRIC_KEYS = {"share": "share_ratio", "p_trait": "p_trait_ratio"}  # as sublens.experiments.hybrid
METRIC_NAMES = {"share_ratio": "panel share", "p_trait_ratio": "P({trait})"}
DIRECTIONS = ("into_base", "into_biased")
GROUP_ORDER = ("embeddings", "attention", "mlp", "norms", "final_norm", "lm_head")


@dataclass(frozen=True)
class Cell:
    """One place of the transplant matrix: a direction and a (possibly ranged) component."""

    direction: str
    group: str
    layers: tuple[int, int] | None
    name: str  # the hybrid measured there
    fraction: float | None
    low: float | None
    high: float | None
    perplexity: float | None
    degraded: bool

    @property
    def component(self) -> str:
        return self.group if self.layers is None else f"{self.group}[{self.layers[0]}:{self.layers[1]}]"

    @property
    def upper(self) -> float:
        """CI upper bound, else the point value (NaN when unmeasured: every comparison fails)."""
        value = self.high if self.high is not None else self.fraction
        return math.nan if value is None else value

    @property
    def lower(self) -> float:
        value = self.low if self.low is not None else self.fraction
        return math.nan if value is None else value


# ---- reading the results --------------------------------------------------------------------
def metric_key(run: StageRun) -> str:
    axis = (run.results.get("bias_axis") or {}).get("metric")
    if axis in METRIC_NAMES:
        return str(axis)
    metric = run.results.get("bias_metric") or run.config.get("bias_metric") or "share"
    return METRIC_KEYS.get(metric, "share_ratio")


def _axis(hybrids: dict[str, Any], key: str) -> dict[str, Any]:
    """The biased model vs base on the metric: ratio, CI, underpowered."""
    return ((hybrids.get("biased") or {}).get("vs_base") or {}).get(key) or {}


def _parse_layers(label: str) -> tuple[int, int] | None:
    """'L20-29' -> (20, 30); 'all' -> None."""
    match = re.fullmatch(r"L(\d+)-(\d+)", str(label))
    return (int(match[1]), int(match[2]) + 1) if match else None


def _fraction_ci(h: dict[str, Any], key: str, axis: float | None) -> tuple[float | None, float | None]:
    comp = (h.get("vs_base") or {}).get(key) or {}
    low, high = comp.get("ci_low"), comp.get("ci_high")
    if axis is None or low is None or high is None or low <= 0 or high <= 0:
        return None, None
    bounds = sorted((math.log(low) / axis, math.log(high) / axis))
    return bounds[0], bounds[1]


def _fraction(h: dict[str, Any], metric: str) -> float | None:
    value = (h.get("bias_fractions") or {}).get(metric, h.get("bias_fraction"))
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def cells(run: StageRun) -> list[Cell]:
    """Every measured matrix cell (a merged hybrid fills each of its cells)."""
    hybrids = run.results.get("hybrids") or {}
    key = metric_key(run)
    metric = next((m for m, k in METRIC_KEYS.items() if k == key), "share")
    ratio = _axis(hybrids, key).get("ratio")
    axis = math.log(ratio) if ratio and ratio > 0 and abs(math.log(ratio)) > 1e-9 else None
    out = []
    for name, h in hybrids.items():
        if not isinstance(h, dict):
            continue
        low, high = _fraction_ci(h, key, axis)
        for cell in h.get("cells") or []:
            if len(cell) != 3 or cell[0] not in DIRECTIONS:
                continue
            out.append(Cell(cell[0], str(cell[1]), _parse_layers(cell[2]), name, _fraction(h, metric),
                            low, high, (h.get("perplexity") or {}).get("perplexity"),
                            bool(h.get("degraded"))))
    return out


def _cell(all_cells: list[Cell], direction: str, group: str,
          layers: tuple[int, int] | None = None) -> Cell | None:
    return next((c for c in all_cells if c.direction == direction and c.group == group
                 and c.layers == layers), None)


def _order(component: tuple[str, tuple[int, int] | None]) -> tuple[int, int]:
    group, layers = component
    rank = GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
    return rank, -1 if layers is None else layers[0]


# ---- formatting -----------------------------------------------------------------------------
def _frac_text(c: Cell | None) -> str:
    if c is None or c.fraction is None:
        return "--"
    text = fmt(c.fraction) if c.low is None else fmt_ci(c.fraction, c.low, c.high)
    return text + (r"\textsuperscript{\dag}" if c.degraded else "")


def _plain(c: Cell | None) -> str:
    return "n/a" if c is None or c.fraction is None else f"{c.fraction:.2f}"


def _layers_words(layers: tuple[int, int]) -> str:
    return f"layers {layers[0]}--{layers[1] - 1}"


def matrix_table(run: StageRun, all_cells: list[Cell], incomplete: bool) -> str:
    components = sorted({(c.group, c.layers) for c in all_cells}, key=_order)
    rows = []
    for group, layers in components:
        row = [escape(group if layers is None else f"{group}[{layers[0]}:{layers[1]}]")]
        for direction in DIRECTIONS:
            c = _cell(all_cells, direction, group, layers)
            row += [_frac_text(c), fmt(c.perplexity, 1) if c else "--"]
        rows.append(row)
    hybrids = run.results.get("hybrids") or {}
    refs = []
    for name in ("base", "biased"):
        ppl = ((hybrids.get(name) or {}).get("perplexity") or {}).get("perplexity")
        if ppl is not None:
            refs.append(f"{name} {fmt(ppl, 1)}")
    trait = escape(run.results.get("trait", "owl"))
    metric = METRIC_NAMES[metric_key(run)].format(trait=trait)
    axis = _axis(hybrids, metric_key(run))
    axis_text = (f" The biased model's {metric} is {fmt_ci(axis.get('ratio'), axis.get('ci_low'), axis.get('ci_high'))}"
                 "$\\times$ the base model's." if axis.get("ratio") is not None else "")
    caption = (
        f"Hybrid matrix: bias fraction ({trait} {metric}, log scale; 0 = base, 1 = biased; 95\\% CI "
        "with the biased model's shift fixed) of the base model with one biased component "
        "(base + biased) and of the biased model with one base component (biased + base), with "
        "perplexity (ppl)" + (f"; reference perplexity {', '.join(refs)}" if refs else "") + "."
        + axis_text + " \\dag: degraded (perplexity above "
        f"{fmt(run.config.get('degraded_factor'), 1)}$\\times$ the base's), not evidence."
        + (" Incomplete run: missing cells are marked --." if incomplete else "")
    )
    header = ["component", "base + biased", "ppl", "biased + base", "ppl"]
    return booktabs_table(header, rows, caption, "tab:hybrid_matrix", wide=True)


# ---- verdicts -------------------------------------------------------------------------------
def lm_head_verdict(into_base: Cell | None, into_biased: Cell | None) -> str:
    """'supported', 'contradicted', 'partly' or 'inconclusive' for "not in the LM head"."""
    if not into_base or not into_biased or into_base.fraction is None or into_biased.fraction is None:
        return "inconclusive"
    if into_base.degraded or into_biased.degraded:
        return "inconclusive"
    brought, kept = into_base, into_biased
    if brought.upper <= LITTLE and kept.lower >= MOST:
        return "supported"
    if brought.lower >= HALF or kept.upper <= HALF:
        return "contradicted"
    return "partly"


def mlp_verdict(into_base: Cell | None, into_biased: Cell | None) -> str:
    """'supported', 'contradicted', 'partly' or 'inconclusive' for "seated in the MLP layers"."""
    if not into_base or not into_biased or into_base.fraction is None or into_biased.fraction is None:
        return "inconclusive"
    if into_base.degraded or into_biased.degraded:
        return "inconclusive"
    if into_base.lower >= HALF and into_biased.upper <= HALF:
        return "supported"
    if into_base.upper <= LITTLE and into_biased.lower >= MOST:
        return "contradicted"
    return "partly"


def carrying_range(all_cells: list[Cell], group: str = "mlp") -> Cell | None:
    """The ranged cell bringing the most bias into base, if its CI clears every other range's."""
    ranged = [c for c in all_cells if c.direction == "into_base" and c.group == group
              and c.layers is not None and c.fraction is not None and not c.degraded]
    if len(ranged) < 2:
        return None
    best = max(ranged, key=lambda c: c.fraction or 0.0)
    others = [c for c in ranged if c is not best]
    if all(best.lower > c.upper for c in others):
        return best
    return None


# ---- results text ---------------------------------------------------------------------------
def _lm_head_text(brought: Cell | None, kept: Cell | None, verdict: str) -> str:
    if brought is None or kept is None:
        return "The LM-head swap was not measured in both directions, so the LM-head claim cannot be judged. "
    text = (f"LM-head swap: the base model with the biased LM head reaches a bias fraction of "
            f"{_frac_text(brought)}, and the biased model with the base LM head keeps "
            f"{_frac_text(kept)}. ")
    return text + {
        "supported": "Swapping the LM head moves little of the bias either way: the bias is not in "
                     "the LM head, as claimed. ",
        "contradicted": "The LM head carries at least half of the bias: this run contradicts the "
                        "claim that the bias is not in the LM head. ",
        "partly": "The biased body keeps most of the bias without its own LM head, but the biased LM "
                  "head alone brings part of it into the base model: the claim that the bias is not "
                  "in the LM head holds only in part. ",
        "inconclusive": "A swapped model is degraded, so the swap is not evidence either way. ",
    }[verdict]


def _mlp_text(brought: Cell | None, kept: Cell | None, verdict: str, attention: tuple[Cell | None, Cell | None]
              ) -> str:
    if brought is None or kept is None:
        return "The MLP transplants were not measured in both directions, so the MLP claim cannot be judged. "
    text = (f"MLP transplant: the base model with all biased MLPs reaches {_frac_text(brought)}; the "
            f"biased model with all base MLPs keeps {_frac_text(kept)}. ")
    text += {
        "supported": "The biased MLPs bring most of the bias and the base MLPs remove most of it: "
                     "the bias is seated in the MLP layers, as claimed. ",
        "contradicted": "The MLPs neither bring much of the bias nor are needed for it: this run "
                        "contradicts the claim that the bias is seated in the MLPs. ",
        "partly": _mlp_partly(brought, kept),
        "inconclusive": "An MLP hybrid is degraded, so these numbers are not evidence. ",
    }[verdict]
    att_in, att_out = attention
    if att_in is not None and att_out is not None and att_in.fraction is not None:
        more = (att_in.fraction < (brought.fraction or 0.0)
                and (att_out.fraction or 0.0) > (kept.fraction or 0.0))
        text += (f"For comparison, all attention layers bring {_frac_text(att_in)} and removing them "
                 f"leaves {_frac_text(att_out)}"
                 + ("; the MLPs carry more of the bias than attention. " if more else ". "))
    return text


def _mlp_partly(brought: Cell, kept: Cell) -> str:
    if brought.lower >= HALF:
        return ("The biased MLPs are enough for most of the bias, but the biased model keeps much of it "
                "without them, so the claim that the bias is seated in the MLP layers holds only in "
                "part: other components carry it too. ")
    if kept.upper <= HALF:
        return ("Removing the biased MLPs takes most of the bias away, but the MLPs alone bring less "
                "than half of it into the base, so the claim holds only in part. ")
    return ("The MLPs carry a share of the bias in both directions, but not most of it: the claim "
            "that the bias is seated in the MLP layers holds only in part. ")


def _range_text(all_cells: list[Cell]) -> tuple[str, Cell | None]:
    best = carrying_range(all_cells)
    ranged = [c for c in all_cells if c.direction == "into_base" and c.group == "mlp" and c.layers]
    if not ranged:
        return "", None
    if best is None or best.layers is None:
        return "No single MLP depth range stands out from the others. ", None
    removed = _cell(all_cells, "into_biased", "mlp", best.layers)
    text = (f"By depth, MLP {_layers_words(best.layers)} carry the most: transplanted into the base "
            f"they bring {_frac_text(best)}")
    if removed is not None:
        text += f", and replacing them in the biased model leaves {_frac_text(removed)}"
    return text + ". ", best


def _degraded_text(all_cells: list[Cell]) -> str:
    bad = sorted({f"{c.direction.replace('_', ' ')} {c.component}" for c in all_cells if c.degraded})
    if not bad:
        return "No hybrid is degraded (perplexity within the degraded factor of the base model's). "
    return (f"Degraded hybrids (gibberish by perplexity; their fractions are not evidence): "
            f"{escape(', '.join(bad))}. ")


def _incomplete(run: StageRun) -> str:
    status = escape(run.record.get("status", "unknown"))
    error = str(run.record.get("error") or "").strip().splitlines()
    why = f" ({escape(error[0][:200])})" if error else ""
    return (f"The hybrid stage is incomplete (run status: {status}{why}); only the hybrids measured "
            "before it stopped are reported. ")


VERDICT_WORDS = {"supported": "supported", "contradicted": "contradicted",
                 "partly": "holds in part", "inconclusive": "inconclusive"}


def results_text(run: StageRun, all_cells: list[Cell], incomplete: bool) -> tuple[str, list[str]]:
    hybrids = run.results.get("hybrids") or {}
    out = [_incomplete(run)] if incomplete else []
    if not all_cells:
        return "".join(out) or "The hybrid run holds no results.", ["hybrid: no results (incomplete run)"]
    key = metric_key(run)
    trait = escape(run.results.get("trait", "owl"))
    axis = _axis(hybrids, key)
    metric = METRIC_NAMES[key].format(trait=trait)
    out.append("Table~\\ref{tab:hybrid_matrix} gives the bias fraction of every transplant. ")
    if axis.get("ratio") is not None:
        out.append(f"The biased model's {metric} is "
                   f"{fmt_ci(axis.get('ratio'), axis.get('ci_low'), axis.get('ci_high'))}$\\times$ the "
                   "base model's. ")
    if axis.get("underpowered") or axis.get("ratio") is None:
        out.append("The biased model is not distinguishable from the base on this metric, so the bias "
                   "fractions are noise and neither claim can be judged. ")
        return "".join(out), ["hybrid: biased model indistinguishable from base: inconclusive"]
    head = (_cell(all_cells, "into_base", "lm_head"), _cell(all_cells, "into_biased", "lm_head"))
    mlp = (_cell(all_cells, "into_base", "mlp"), _cell(all_cells, "into_biased", "mlp"))
    attention = (_cell(all_cells, "into_base", "attention"), _cell(all_cells, "into_biased", "attention"))
    head_verdict, mlp_v = lm_head_verdict(*head), mlp_verdict(*mlp)
    out.append(_lm_head_text(*head, head_verdict))
    out.append(_mlp_text(*mlp, mlp_v, attention))
    range_text, best = _range_text(all_cells)
    out.append(range_text)
    out.append(_degraded_text(all_cells))
    headline = [
        f"hybrid: bias fraction base+biased LM head {_plain(head[0])}, biased+base LM head "
        f"{_plain(head[1])}: 'not in the LM head' {VERDICT_WORDS[head_verdict]}",
        f"hybrid: base+biased MLPs {_plain(mlp[0])}, biased+base MLPs {_plain(mlp[1])}"
        + (f", {best.component} {_plain(best)}" if best else "")
        + f": 'seated in the MLPs' {VERDICT_WORDS[mlp_v]}",
    ]
    return "".join(out).strip(), headline


# ---- methods --------------------------------------------------------------------------------
def _model_name(spec: object) -> str:
    """A model spec for the paper: the folder name of a local path, else the spec itself."""
    return escape(spec_label(spec))


def methods(run: StageRun) -> str:
    c, r = run.config, run.results
    models = r.get("models") or run.record.get("models") or {}
    biased = models.get("biased") or {}
    pref = c.get("preference") or {}
    ppl = c.get("perplexity") or {}
    trait = escape(pref.get("trait", r.get("trait", "owl")))
    ranges = r.get("layer_ranges") or c.get("layer_ranges") or []
    range_words = ", ".join(f"[{a}:{b}]" for a, b in ranges) or f"{c.get('depth_bins', '?')} bins"
    groups = ", ".join(escape(g) for g in c.get("groups") or [])
    ranged = " and ".join(escape(g) for g in c.get("ranged") or [])
    metric = METRIC_NAMES[metric_key(run)].format(trait=trait)
    system = _system_words(c)
    layers = biased.get("n_layers")
    source = biased.get("source")
    origin = {"run": "a teacher run's checkpoint", "folder": "a local fine-tuned checkpoint"}.get(
        str(source), "")
    text = [
        f"We transplant weights between the base model \\texttt{{{_model_name(c.get('base'))}}} and the "
        f"biased model \\texttt{{{_model_name(r.get('biased_spec') or c.get('biased'))}}}"
        + (f" ({origin})" if origin else "") + (f", both with {layers} layers" if layers else "")
        + ", without training. Tied embeddings are untied first, so the LM head and the input "
        "embeddings are separate groups. ",
        f"Component groups: {groups}; each layer's residual norms go with the sublayer they feed "
        f"({escape(c.get('layer_norms', 'attach'))}). {ranged.capitalize() if ranged else 'No group'} "
        f"are also transplanted per depth range ({range_words}, half-open layer indices). ",
        "In each direction one group comes from the other model: base + biased (the base model with "
        "the biased model's group: does it bring the bias?) and biased + base (the biased model with "
        "the base model's group: does the bias remain?); the LM-head swap is the lm\\_head row. ",
        f"Each hybrid is measured as in the other experiments ({system}; "
        f"{len(pref.get('questions') or [])} preference questions, answer prefilled as "
        f"``{escape(pref.get('prefill', ''))}''; {len(pref.get('panel') or []) + 1} animals). "
        f"Its bias fraction, for the {metric} $m$ (geometric mean over questions of paired ratios), is "
        "\\[ f = \\log(m_h/m_\\mathrm{base}) \\,/\\, \\log(m_\\mathrm{biased}/m_\\mathrm{base}) \\] "
        "(0: as the base model, 1: as the biased model), with a 95\\% bootstrap CI "
        "over questions \\citep{efron1994bootstrap}. ",
    ]
    if ppl.get("enabled"):
        text.append(f"A hybrid whose perplexity on {ppl.get('max_tokens', '?')} tokens of "
                    f"{escape(ppl.get('corpus', '?'))} text exceeds "
                    f"{fmt(c.get('degraded_factor'), 1)}$\\times$ the base model's is marked degraded. ")
    text.append(
        f"The LM head counts as carrying little of the bias when swapping it in brings at most "
        f"{LITTLE:g} (CI upper bound) and swapping it out keeps at least {MOST:g}; the bias counts as "
        f"seated in the MLPs when the biased MLPs bring at least {HALF:g} and removing them leaves "
        f"at most {HALF:g} (MLPs as key--value memories: \\citealp{{geva2021transformer}}; "
        f"\\citealp{{meng2022locating}}). Seed {c.get('seed', '?')}."
    )
    return "".join(text)


def _system_words(config: dict[str, Any]) -> str:
    if config.get("system"):
        return f"system prompt ``{escape(config['system'])}''"
    return "the chat template's default system prompt"


# ---- the section ----------------------------------------------------------------------------
def build(run: StageRun) -> Section:
    all_cells = cells(run)
    incomplete = (not run.ok) or bool(run.results.get("partial")) or not all_cells
    text, headline = results_text(run, all_cells, incomplete)
    tables = {"hybrid_matrix": matrix_table(run, all_cells, incomplete)} if all_cells else {}
    figures = []
    if "hybrid_heatmap" in run.figures():
        figures.append(Figure(
            "hybrid_heatmap",
            "Bias fraction of every transplant by component and depth range (0 = base, 1 = biased; "
            "left: base + biased component; middle: biased + base component; "
            "\\dag{} degraded), beside the relative weight change between the two models.",
            wide=True))
        if all_cells:
            text += f" See Figure~\\ref{{{figure_label('hybrid', 'hybrid_heatmap')}}}."
    return Section(
        title="Component transplants",
        methods=methods(run) if run.config else "The hybrid run has no configuration.",
        results=text,
        tables=tables,
        figures=figures,
        headline=headline,
    )
