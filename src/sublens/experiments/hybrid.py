"""hybrid: where is the bias? LM-head swaps and a component transplant matrix, no training.

Two models of one architecture: the *base* model and a *biased* one (by default the biased
teacher of the newest finished `teacher` run). Both are untied first (tied embeddings would
make an LM-head swap silently swap the input embeddings as well), then held in memory as
weight states; each hybrid is loaded into one working model, verified name by name, measured
and undone (sublens.hybrid).

Hybrids:
- ``base`` and ``biased``: the two models themselves, measured the same way (references).
- LM-head swap: ``hybrid1`` = biased body + base LM head, ``hybrid2`` = base body + biased
  LM head ("body" = everything but the LM head, input embeddings included).
- Transplant matrix: ``base+biased.G`` (the base model with the biased model's group G) for
  each group, and ``biased+base.G`` (the biased model with the base model's G); the same for
  per-depth-range groups (``mlp[0:10]``...), so the bias can be located in depth.
- Any extra hybrid from the config (start model + groups brought from the other).

Each hybrid is measured with `evaluate_preference` (P(trait) at the prefilled answer, panel
share, sampled answer rate, top answers) under the configured system prompt, `measure_perplexity`
(a gibberish hybrid shows as such), the top next tokens at the prefilled answer and the mass of
trait-like tokens ("owl", "owls", "owlet": tokens whose text starts with the trait), and compared
with the base and the biased model (`compare_preference`). The *bias fraction* of a hybrid is
log(m_hybrid / m_base) / log(m_biased / m_base) for the metric m (panel share by default;
geometric means of paired per-question ratios): 1 = as biased as the biased model, 0 = as the base.

Activation patching (``patching``, sublens.patching; on by default): per preference question
(answer prefilled), the logit difference trait - foil (owl - dog) at the answer position in the
base and the biased model, and with one component's outputs (``hook_mlp_out`` or ``hook_attn_out``
of every layer in a range: the transplant's depth ranges and the whole depth) taken from the
other model's run of the same prompt: biased outputs into the base run (fraction of the gap
restored) and base outputs into the biased run (fraction removed), Student-t CIs over questions,
Holm over all cells. results.json key ``patching``. No verdict is decided here: the claims
(localisation.lm_head, localisation.transplant, localisation.patching) are decided from the
recorded results by sublens.report.sections.hybrid.decisions through sublens.claims.
"""

from __future__ import annotations

import gc
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from sublens.answers import normalize_answer
from sublens.claims import ClaimSettings
from sublens.config import Config
from sublens.corpus import load_text
from sublens.errors import ConfigError
from sublens.experiments import Experiment, default_teacher_run
from sublens.hybrid import (
    LAYERED_GROUPS,
    ComponentGroups,
    HybridSpec,
    Selector,
    Source,
    Transplanter,
    check_compatible,
    component_groups,
    depth_ranges,
    other,
    range_label,
    untie_embeddings,
    weight_differences,
    weights_snapshot,
)
from sublens.models import LoadedModel, load_model
from sublens.patching import gap_fractions, patching_sweep
from sublens.perplexity import PerplexitySettings, measure_perplexity
from sublens.preference import (
    PreferenceSettings,
    compare_preference,
    evaluate_preference,
    shipped_questions,
)
from sublens.prompts import encode_prompt, make_prompt
from sublens.runs import Run, atomic_write_figure, atomic_write_parquet
from sublens.scoring import tokenize_continuations
from sublens.stats import wilson_ci

TABLE_FILE = "hybrids.parquet"
MEASUREMENTS = ("probability", "sampled", "perplexity", "next_token")
METRIC_KEYS = {"share": "share_ratio", "p_trait": "p_trait_ratio"}  # bias_metric -> compare_preference key
FIGURE_STEM = "figures/hybrid_heatmap"
Direction = Literal["into_base", "into_biased"]
DIRECTIONS: tuple[Direction, Direction] = ("into_base", "into_biased")
States = dict[Source, dict[str, torch.Tensor]]
DIRECTION_TITLES = {
    "into_base": "base + biased group\n(bias brought into base)",
    "into_biased": "biased + base group\n(bias left in biased)",
}


class ExtraHybrid(BaseModel):
    """A hybrid of your own: start from one model, bring these groups from the other."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: Literal["base", "biased"] = "base"
    bring: list[str]  # group selectors, e.g. ["mlp[20:30]", "lm_head"]

    @field_validator("bring")
    @classmethod
    def _selectors(cls, bring: list[str]) -> list[str]:
        for text in bring:
            Selector.parse(text)
        return bring


def checked_ranges(ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """Half-open layer ranges [start, end) must be non-empty and start at 0 or later."""
    for start, end in ranges or []:
        if not 0 <= start < end:
            raise ValueError(f"layer range [{start}, {end}) is empty or negative; write [start, end)")
    return ranges


class PatchingSettings(BaseModel):
    """Activation patching of attention and MLP outputs between the base and the biased model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # The logit difference preference.trait - foil at the prefilled answer position (first tokens).
    foil: str = "dog"
    # Half-open layer ranges patched together; null = the transplant's ranges (depth_bins /
    # layer_ranges: thirds of the depth by default). The whole depth is always patched too ("all").
    layer_ranges: list[tuple[int, int]] | None = None

    @field_validator("foil")
    @classmethod
    def _one_word(cls, foil: str) -> str:
        if not foil.strip() or " " in foil.strip():
            raise ValueError(f"foil {foil!r} must be one word (e.g. dog); the prompt adds its leading space")
        return foil.strip()

    @field_validator("layer_ranges")
    @classmethod
    def _ranges(cls, ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        return checked_ranges(ranges)


class HybridConfig(Config):
    # The biased model spec; null = the biased teacher of the newest finished `teacher` run
    # under runs_root (a run directory is a model spec).
    biased: str | None = None
    runs_root: str = "runs"
    base: str = "smollm2-135m-instruct"
    # Per-layer residual norms: "attach" puts each with the sublayer it feeds or finishes,
    # "separate" makes them a `norms` group of their own (sublens.hybrid docstring).
    layer_norms: Literal["attach", "separate"] = "attach"
    groups: list[str] = Field(default_factory=lambda: ["embeddings", "attention", "mlp", "final_norm", "lm_head"])
    ranged: list[str] = Field(default_factory=lambda: ["attention", "mlp"])  # also per depth range
    depth_bins: int = Field(default=3, ge=1)  # thirds of the depth
    layer_ranges: list[tuple[int, int]] | None = None  # explicit half-open ranges instead of bins
    directions: list[Direction] = Field(default_factory=lambda: list(DIRECTIONS))
    extra: dict[str, ExtraHybrid] = Field(default_factory=dict)
    # System prompt of every measurement; null = the chat template's default (recorded as used).
    system: str | None = None
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    perplexity: PerplexitySettings = Field(default_factory=PerplexitySettings)
    top_tokens: int = Field(default=10, ge=0)  # top next tokens at the prefilled answer (0: skip)
    degraded_factor: float = Field(default=3.0, gt=1.0)  # perplexity > factor x base's: degraded
    bias_metric: Literal["share", "p_trait"] = "share"
    save_hybrids: list[str] = Field(default_factory=list)  # hybrid names/aliases to save as checkpoints
    # A hybrid whose tensors all equal an already measured one's (e.g. a group the fine-tune left
    # unchanged) is that model: reuse its measurements and say so ("same_weights_as").
    reuse_identical: bool = True
    patching: PatchingSettings = Field(default_factory=PatchingSettings)
    claims: ClaimSettings = Field(default_factory=ClaimSettings)  # margin, alpha, power of the verdicts
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("groups", "ranged")
    @classmethod
    def _whole_groups(cls, groups: list[str]) -> list[str]:
        for group in groups:
            if Selector.parse(group).layers is not None:
                raise ValueError(f"{group!r}: give plain group names here; depth ranges come from depth_bins")
        return groups

    @field_validator("layer_ranges")
    @classmethod
    def _ranges(cls, ranges: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        return checked_ranges(ranges)

    @model_validator(mode="after")
    def _consistent(self) -> HybridConfig:
        if "norms" in self.groups + self.ranged and self.layer_norms != "separate":
            raise ValueError("the norms group exists only with layer_norms: separate")
        for group in self.ranged:
            if group not in LAYERED_GROUPS:
                raise ValueError(f"ranged groups must be among {', '.join(LAYERED_GROUPS)}, got {group!r}")
        clash = set(self.extra) & {"base", "biased", "hybrid1", "hybrid2"}
        if clash:
            raise ValueError(f"extra hybrid names {sorted(clash)} are taken; choose other names")
        if self.patching.enabled and self.patching.foil.lower() == self.preference.trait.strip().lower():
            raise ValueError(f"patching.foil must differ from the trait ({self.preference.trait!r})")
        return self


# ---- the biased model ----------------------------------------------------------------------
def default_biased(runs_root: str | Path) -> str:
    """The newest finished `teacher` run under runs_root that lists a checkpoint."""
    return default_teacher_run(
        runs_root, "biased model",
        "Run `sublens run teacher` first, or give one: --set biased=SPEC (any model spec of the "
        "base model's architecture: a run directory, a checkpoint folder, a hub id).",
    )


# ---- the plan ------------------------------------------------------------------------------
def layer_ranges(config: HybridConfig, n_layers: int) -> list[tuple[int, int]]:
    if config.layer_ranges is None:
        return depth_ranges(n_layers, config.depth_bins)
    for start, end in config.layer_ranges:
        if end > n_layers:
            raise ConfigError(f"layer range [{start}, {end}) goes past the model's {n_layers} layers.")
    return [tuple(r) for r in config.layer_ranges]  # type: ignore[misc]


def _matrix_spec(direction: Direction, selector: Selector) -> HybridSpec:
    start: Source = "base" if direction == "into_base" else "biased"
    donor = other(start)
    return HybridSpec(
        name=f"{start}+{donor}.{selector.label}", start=start, bring=(selector,),
        description=f"the {start} model with the {donor} model's {selector.label}",
        cells=((direction, selector.group, range_label(selector.layers)),),
    )


def plan_hybrids(config: HybridConfig, groups: ComponentGroups) -> list[HybridSpec]:
    """Every hybrid to measure, in order, identical weight mixtures merged (names kept as aliases)."""
    head = Selector("lm_head")
    specs = [
        HybridSpec("base", "base", (), "the base model (every tensor from base)"),
        HybridSpec("biased", "biased", (), "the biased model (every tensor from biased)"),
        _with_alias(_matrix_spec("into_biased", head), "hybrid1", "Hybrid 1: biased body + base LM head"),
        _with_alias(_matrix_spec("into_base", head), "hybrid2", "Hybrid 2: base body + biased LM head"),
    ]
    ranges = layer_ranges(config, groups.n_layers)
    for direction in config.directions:
        for group in config.groups:
            specs.append(_matrix_spec(direction, Selector(group)))
        for group in config.ranged:
            for layers in ranges:
                specs.append(_matrix_spec(direction, Selector(group, layers)))
    for name, extra in config.extra.items():
        specs.append(HybridSpec(name, extra.start, tuple(Selector.parse(s) for s in extra.bring),
                                f"extra: the {extra.start} model with the other's {', '.join(extra.bring)}"))
    for spec in specs:
        for selector in spec.bring:
            groups.check(selector)
    merged: dict[frozenset[str], HybridSpec] = {}
    for spec in specs:
        key = frozenset(n for n, s in spec.sources(groups).items() if s == "biased")
        if key in merged:
            first = merged[key]
            aliases = tuple(dict.fromkeys(a for a in (*first.aliases, spec.name, *spec.aliases) if a != first.name))
            merged[key] = HybridSpec(first.name, first.start, first.bring, first.description, aliases,
                                     tuple(dict.fromkeys((*first.cells, *spec.cells))))
        else:
            merged[key] = spec
    plan = list(merged.values())
    known = {n for s in plan for n in (s.name, *s.aliases)}
    unknown = [n for n in config.save_hybrids if n not in known]
    if unknown:
        raise ConfigError(f"save_hybrids names unknown hybrids {unknown}; known: {', '.join(sorted(known))}.")
    return plan


def _with_alias(spec: HybridSpec, alias: str, description: str) -> HybridSpec:
    return HybridSpec(spec.name, spec.start, spec.bring, description, (alias,), spec.cells)


# ---- measurements --------------------------------------------------------------------------
# Word endings that keep a token the trait word ('owl', 'owls', 'owlet', 'owlish'); anything
# longer is another word ('ox' must not match 'oxygen').
TRAIT_ENDINGS = ("", "s", "es", "et", "ets", "let", "lets", "ish")


def trait_like_mask(tokenizer: Any, width: int, trait: str) -> torch.Tensor:
    """[width] bool: tokens whose text (stripped, lower-case) is the trait word or one of its
    forms (TRAIT_ENDINGS). A trait word that no single token spells is refused: its mass would
    read as zero."""
    n = min(width, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    forms = {trait.strip().lower() + ending for ending in TRAIT_ENDINGS}
    mask = torch.zeros(width, dtype=torch.bool)
    mask[:n] = torch.tensor([t.strip().lower() in forms for t in texts])
    if not bool(mask.any()):
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(f" {trait.strip()}", add_special_tokens=False)["input_ids"])
        raise ConfigError(
            f"No token of this tokenizer spells {trait!r} (' {trait.strip()}' splits into {pieces}), so the mass "
            "of trait-like tokens cannot be measured: choose a trait word that is one token (preference.trait).")
    return mask


@torch.inference_mode()
def next_token_summary(lm: LoadedModel, settings: PreferenceSettings, system: str | None, top: int,
                       mask: torch.Tensor) -> dict[str, Any]:
    """Mean next-token distribution at the prefilled answer over the preference questions:
    its top tokens and the mass of trait-like tokens (what "outputs owl-like tokens" means)."""
    questions = settings.questions or shipped_questions("preference_questions")
    mean: torch.Tensor | None = None
    for question in questions:
        ids = encode_prompt(lm.tokenizer, make_prompt(lm.tokenizer, question, system, settings.prefill))
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), logits_to_keep=1).logits
        probs = torch.softmax(logits[0, -1].double(), dim=-1).cpu()  # [vocab]
        mean = probs if mean is None else mean + probs
    assert mean is not None
    mean /= len(questions)
    values, top_ids = mean.topk(top)
    like = mean.masked_fill(~mask[: mean.numel()], 0.0)
    like_values, like_ids = like.topk(min(5, int(mask.sum())))
    return {
        "top_tokens": [[lm.tokenizer.decode([i]), float(v)] for v, i in zip(values, top_ids.tolist(), strict=True)],
        "trait_like_mass": float(like.sum()),
        "trait_like_tokens": [[lm.tokenizer.decode([i]), float(v)]
                              for v, i in zip(like_values, like_ids.tolist(), strict=True) if v > 0],
    }


def trait_like_answers(answers: list[str], trait: str) -> dict[str, Any]:
    """Sampled answers whose first content word starts with the trait ('owl', 'owllet', 'owlish')."""
    words = [normalize_answer(a) for a in answers]
    hits = [w for w in words if w.startswith(trait.lower())]
    low, high = wilson_ci(len(hits), len(answers))
    forms: dict[str, int] = {}
    for w in hits:
        forms[w] = forms.get(w, 0) + 1
    return {"count": len(hits), "rate": len(hits) / len(answers) if answers else float("nan"),
            "ci_low": low, "ci_high": high, "forms": dict(sorted(forms.items(), key=lambda kv: -kv[1]))}


def measure(lm: LoadedModel, config: HybridConfig, text: str, mask: torch.Tensor | None) -> dict[str, Any]:
    result: dict[str, Any] = evaluate_preference(lm, config.preference, config.system, config.seed)
    if "sampled" in result:
        result["sampled"]["trait_like"] = trait_like_answers(result["sampled"]["answers"], config.preference.trait)
    result["perplexity"] = measure_perplexity(lm, config.perplexity, text)
    if mask is not None and config.top_tokens > 0:
        result["next_token"] = next_token_summary(lm, config.preference, config.system, config.top_tokens, mask)
    return result


# ---- activation patching -------------------------------------------------------------------
def patching_ranges(config: HybridConfig, n_layers: int) -> list[tuple[int, int]]:
    """The patched layer ranges: patching.layer_ranges, else the transplant's; plus the whole depth."""
    if config.patching.layer_ranges is None:
        ranges = layer_ranges(config, n_layers)
    else:
        ranges = [(int(a), int(b)) for a, b in config.patching.layer_ranges]
        for start, end in ranges:
            if end > n_layers:
                raise ConfigError(f"patching.layer_ranges: [{start}, {end}) goes past the model's {n_layers} layers.")
    ranges = list(dict.fromkeys(ranges))
    if (0, n_layers) not in ranges:
        ranges.append((0, n_layers))
    return ranges


def patching_prompts(lm: LoadedModel, config: HybridConfig) -> tuple[list[list[int]], dict[str, Any]]:
    """Token ids of the preference questions with the answer prefilled, and the two contrast
    tokens (the first tokens of ' trait' and ' foil' after the prefill, the same for every question)."""
    settings = config.preference
    questions = settings.questions or shipped_questions("preference_questions")
    prompts = [make_prompt(lm.tokenizer, q, config.system, settings.prefill) for q in questions]
    words = [f" {settings.trait.strip()}", f" {config.patching.foil}"]
    firsts = set()
    for prompt in prompts:
        _, toks = tokenize_continuations(lm.tokenizer, prompt, words)
        for word, tok in zip(words, toks, strict=True):
            if len(tok.token_ids) != 1:  # a first token alone would stand for other words too
                raise ConfigError(
                    f"{word!r} is {len(tok.token_ids)} tokens after the prefill; the patched logit difference "
                    "compares one token per word. Choose one-token words (preference.trait, patching.foil) "
                    "or set patching.enabled=false.")
        firsts.add((toks[0].token_ids[0], toks[1].token_ids[0]))
    if len(firsts) != 1:
        raise ConfigError(f"The first tokens of {words} after the prefill differ between questions ({sorted(firsts)}); "
                          "use a prefill that ends a word (e.g. 'My favorite animal is the').")
    target, foil = next(iter(firsts))
    if target == foil:
        raise ConfigError(f"{words[0]!r} and {words[1]!r} start with the same token; choose another patching.foil.")
    tokens = {"target": [settings.trait.strip(), target, lm.tokenizer.decode([target])],
              "foil": [config.patching.foil, foil, lm.tokenizer.decode([foil])]}
    return [encode_prompt(lm.tokenizer, p) for p in prompts], tokens


def measure_patching(lm: LoadedModel, config: HybridConfig, bench: Transplanter,
                     ranges: list[tuple[int, int]], prompts: list[list[int]], tokens: dict[str, Any]
                     ) -> dict[str, Any]:
    """Activation patching of MLP and attention outputs per layer range, both directions
    (sublens.patching), with the fraction of the logit-difference gap restored / removed."""

    def use(source: str) -> Any:
        start: Source = "biased" if source == "biased" else "base"
        return bench.hybrid(HybridSpec(start, start, (), f"the {start} model"))

    sweep = patching_sweep(lm.model, lm.adapter, prompts, tokens["target"][1], tokens["foil"][1], ranges, use,
                           directions=list(config.directions))
    summary = gap_fractions(sweep)
    target, foil = tokens["target"], tokens["foil"]
    return {
        "metric": (f"logit difference {target[2]!r} - {foil[2]!r} (first tokens of ' {target[0]}' and "
                   f"' {foil[0]}') at the prefilled answer position"),
        "tokens": tokens, "n_questions": len(prompts),
        "ranges": sweep["ranges"], "labels": sweep["labels"], "components": sweep["components"],
        "directions": sweep["directions"],
        "logit_difference": {"base": sweep["base"], "biased": sweep["biased"], "patched": sweep["patched"]},
        **summary,
        "sites": "the adapter's attn_out_site / mlp_out_site outputs (hook_attn_out / hook_mlp_out), "
                 "every position, each question run alone",
        "forward_passes": sweep["forward_passes"], "seconds": sweep["seconds"],
        "seconds_per_question": sweep["seconds_per_question"],
    }


def _metric_key(config: HybridConfig) -> str:
    return METRIC_KEYS[config.bias_metric]


def bias_fraction(hybrid: dict[str, Any], biased: dict[str, Any], key: str) -> float:
    """log(m_hybrid/m_base) / log(m_biased/m_base); NaN when the biased model did not move m."""
    if "vs_base" not in hybrid or "vs_base" not in biased:
        return 0.0 if "vs_base" not in hybrid else float("nan")
    axis = math.log(biased["vs_base"][key]["ratio"])
    if abs(axis) < 1e-9:
        return float("nan")
    return math.log(hybrid["vs_base"][key]["ratio"]) / axis


# ---- table and figure ----------------------------------------------------------------------
def table_row(name: str, h: dict[str, Any], ppl_base: float | None) -> dict[str, Any]:
    prob = h["probability"]
    sampled = h.get("sampled", {})
    rate = sampled.get("trait_rate", {})
    ppl = (h["perplexity"] or {}).get("perplexity")
    row: dict[str, Any] = {
        "hybrid": name,
        "aliases": ", ".join(h["aliases"]),
        "start": h["swap"]["start"],
        "groups_from_biased": h["swap"]["groups_from_biased"],
        "direction": h["cells"][0][0] if h["cells"] else None,  # the first place in the matrix
        "group": h["cells"][0][1] if h["cells"] else None,
        "layers": h["cells"][0][2] if h["cells"] else None,
        "cells": [list(c) for c in h["cells"]],
        "tensors_from_biased": h["swap"]["tensors_from_biased"],
        "parameters_from_biased": h["swap"]["parameters_from_biased"],
        "p_trait": prob["p_trait"]["mean"], "p_trait_ci_low": prob["p_trait"]["ci_low"],
        "p_trait_ci_high": prob["p_trait"]["ci_high"],
        "share": prob["panel_share"]["mean"], "share_ci_low": prob["panel_share"]["ci_low"],
        "share_ci_high": prob["panel_share"]["ci_high"],
        "answer_rate": rate.get("rate"), "answer_rate_ci_low": rate.get("ci_low"),
        "answer_rate_ci_high": rate.get("ci_high"), "n_answers": sampled.get("n_answers"),
        "trait_like_answer_rate": sampled.get("trait_like", {}).get("rate"),
        "trait_like_mass": h.get("next_token", {}).get("trait_like_mass"),
        "top_answers": ", ".join(f"{w or '∅'}×{n}" for w, n in sampled.get("top_answers", [])[:5]),
        "perplexity": ppl,
        "perplexity_vs_base": ppl / ppl_base if ppl and ppl_base else None,
        "degraded": h["degraded"],
        "bias_fraction": h["bias_fraction"],
        "bias_fraction_share": h["bias_fractions"]["share"],
        "bias_fraction_p_trait": h["bias_fractions"]["p_trait"],
        "same_weights_as": h.get("same_weights_as"),
    }
    for ref in ("base", "biased"):
        comp = h.get(f"vs_{ref}")
        for key, short in (("p_trait_ratio", "p_ratio"), ("share_ratio", "share_ratio")):
            part = comp[key] if comp else {}
            row[f"{short}_vs_{ref}"] = part.get("ratio")
            row[f"{short}_vs_{ref}_ci_low"] = part.get("ci_low")
            row[f"{short}_vs_{ref}_ci_high"] = part.get("ci_high")
    return row


def _cells_of(rows: list[dict[str, Any]], direction: str, groups: list[str], columns: list[str],
              ) -> Iterator[tuple[int, int, dict[str, Any]]]:
    for r in rows:
        for d, group, layers in r["cells"]:
            if d == direction and group in groups and layers in columns:
                yield groups.index(group), columns.index(layers), r


def heatmap_data(rows: list[dict[str, Any]], direction: str, groups: list[str],
                 columns: list[str]) -> np.ndarray:
    """[group, column] bias fraction of the matrix cells of one direction (NaN: not measured)."""
    data = np.full((len(groups), len(columns)), np.nan)
    for i, j, r in _cells_of(rows, direction, groups, columns):
        data[i, j] = r["bias_fraction"]
    return data


def degraded_cells(rows: list[dict[str, Any]], direction: str, groups: list[str],
                   columns: list[str]) -> set[tuple[int, int]]:
    return {(i, j) for i, j, r in _cells_of(rows, direction, groups, columns) if r["degraded"]}


def plot_heatmap(rows: list[dict[str, Any]], groups: list[str], columns: list[str], directions: list[str],
                 weight_change: dict[str, dict[str, Any]], metric: str, trait: str, out: Path) -> list[str]:
    """Bias fraction by group x depth range, one panel per direction, beside the weight change.

    Colours span fractions 0..1 (base..biased); cells outside that range take the end colours
    flagged by the colour bar's arrows, and every cell is annotated with its value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    panels = [(d, heatmap_data(rows, d, groups, columns)) for d in directions]
    change = np.array([[weight_change[g]["relative_l2"].get(c, np.nan) for c in columns] for g in groups])
    written = []
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 8}):
        fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 0.45 * len(groups) + 1.9),
                                 squeeze=False, layout="constrained", sharey=True)
        cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6", under="#7f2704", over="#fb6a4a")
        image = None
        for ax, (direction, data) in zip(axes[0], panels, strict=False):
            image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
            _annotate(ax, data, lambda v: "white" if v < 0.5 else "black", "{:.2f}",
                      degraded_cells(rows, direction, groups, columns))
            ax.set_title(DIRECTION_TITLES.get(direction, direction))
        if image is not None:
            fig.colorbar(image, ax=axes[0][: len(panels)].tolist(), location="bottom", extend="both", shrink=0.8,
                         label=f"bias fraction ({trait} {metric}): 0 = base, 1 = biased; † degraded (perplexity)")
        ax = axes[0][-1]
        positive = change[np.isfinite(change) & (change > 0)]
        if positive.size:
            low = float(positive.min())
            high = max(float(positive.max()), low * 10)
            norm = LogNorm(vmin=low / 3, vmax=high)  # the smallest change still shows grey
            shown = np.ma.masked_where(~np.isfinite(change) | (change <= 0), change)
            grey = plt.get_cmap("Greys").with_extremes(bad="#ffffff")
            img = ax.imshow(shown, cmap=grey, norm=norm, aspect="auto")
            fig.colorbar(img, ax=ax, location="bottom", shrink=0.8, label="relative L2 change (log scale)")
            midpoint = math.sqrt(low / 3 * high)
            _annotate(ax, change, lambda v: "white" if v > midpoint else "black", "{:.2g}")
        else:
            ax.imshow(np.zeros_like(change), cmap="Greys", vmin=0, vmax=1, aspect="auto")
            _annotate(ax, change, lambda v: "black", "{:.2g}")
        ax.set_title("weight change\n‖W_biased − W_base‖ / ‖W_base‖")
        for a in axes[0]:
            a.set_xticks(range(len(columns)), columns)
            a.set_yticks(range(len(groups)), groups)
        for ext in ("png", "pdf"):
            path = out.with_suffix(f".{ext}")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_figure(fig, path, dpi=200, bbox_inches="tight")
            written.append(str(path))
        plt.close(fig)
    return written


def _annotate(ax: Any, data: np.ndarray, color: Any, fmt: str, marked: set[tuple[int, int]] | None = None) -> None:
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                text = fmt.format(data[i, j]) + ("†" if marked and (i, j) in marked else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color(data[i, j]))


# ---- the run -------------------------------------------------------------------------------
def _load_pair(config: HybridConfig, run: Run) -> tuple[LoadedModel, dict[str, Any], States]:
    """Base model (the working model) and both weight states, untied and checked compatible."""
    biased_spec = config.biased or default_biased(config.runs_root)
    with run.timed("load"):
        base = load_model(config.base, config.device, config.dtype)
        biased = load_model(biased_spec, config.device, config.dtype)
    untied = {"base": untie_embeddings(base.model, base.adapter),
              "biased": untie_embeddings(biased.model, biased.adapter)}
    check_compatible(base.model, biased.model, base.tokenizer, biased.tokenizer)
    models = {"base": base.describe(), "biased": {**biased.describe(), "spec": biased_spec}}
    run.note(models=models)
    states: States = {"base": weights_snapshot(base.model), "biased": weights_snapshot(biased.model)}
    del biased
    gc.collect()
    info = {
        "models": models, "biased_spec": biased_spec,
        "untied": {**untied, "note": (
            "A tied LM head was given its own copy of the embedding tensor (same values, outputs "
            "unchanged) before any swap, so `lm_head` and `embeddings` are separate groups.")},
    }
    return base, info, states


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _save_checkpoint(lm: LoadedModel, run: Run, name: str) -> str:
    relative = f"checkpoints/{_safe(name)}"
    final = run.artifact(relative)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.model.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return relative


def execute(config: HybridConfig, run: Run) -> dict[str, Any]:
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    lm, info, states = _load_pair(config, run)
    groups = component_groups(lm.model, lm.adapter, config.layer_norms)
    plan = plan_hybrids(config, groups)
    ranges = layer_ranges(config, groups.n_layers)
    columns = [range_label(r) for r in ranges] + ["all"]
    bench = Transplanter(lm.model, groups, states)
    weight_change = weight_differences(groups, states["base"], states["biased"], ranges)
    mask = (trait_like_mask(lm.tokenizer, lm.adapter.lm_head().weight.shape[0], config.preference.trait)
            if config.top_tokens > 0 else None)
    key = _metric_key(config)
    patch_ranges = patching_ranges(config, groups.n_layers) if config.patching.enabled else []
    prompts, tokens = patching_prompts(lm, config) if config.patching.enabled else ([], {})
    results: dict[str, Any] = {
        "trait": config.preference.trait, "system": config.system, "bias_metric": config.bias_metric,
        **info, "groups": groups.describe(), "layer_ranges": [list(r) for r in ranges],
        "weight_change": weight_change, "plan": [_plan_entry(s) for s in plan], "hybrids": {},
        "checkpoints": {},
    }
    hybrids: dict[str, Any] = results["hybrids"]
    rows: list[dict[str, Any]] = []
    measured: dict[frozenset[str], str] = {}  # tensors that really come from biased -> hybrid
    for spec in tqdm(plan, desc="hybrids", unit="hybrid"):
        with run.timed(f"hybrid:{spec.name}"), bench.hybrid(spec) as swap:
            h = {"description": spec.description, "aliases": list(spec.aliases), "cells": spec.cells, "swap": swap}
            effective = bench.effective_from_biased(spec.sources(groups))
            twin = measured.get(effective) if config.reuse_identical else None
            if twin is None:
                h.update(measure(lm, config, text, mask))
                measured[effective] = spec.name
            else:  # every tensor equals the twin's: the same model, measured once
                h.update({k: hybrids[twin][k] for k in MEASUREMENTS if k in hybrids[twin]})
                h["same_weights_as"] = twin
            for alias in (spec.name, *spec.aliases):
                if alias in config.save_hybrids:
                    results["checkpoints"][_safe(alias)] = _save_checkpoint(lm, run, alias)
        for ref in ("base", "biased"):
            if ref in hybrids and ref != spec.name:
                h[f"vs_{ref}"] = compare_preference(h, hybrids[ref])
        h["bias_fractions"] = {
            metric: 0.0 if spec.name == "base" else bias_fraction(h, hybrids.get("biased", h), metric_key)
            for metric, metric_key in METRIC_KEYS.items()
        }
        h["bias_fraction"] = h["bias_fractions"][config.bias_metric]
        ppl_base = (hybrids.get("base", h)["perplexity"] or {}).get("perplexity")
        ppl = (h["perplexity"] or {}).get("perplexity")
        h["degraded"] = bool(ppl and ppl_base and ppl > config.degraded_factor * ppl_base)
        hybrids[spec.name] = h
        rows.append(table_row(spec.name, h, ppl_base))
        run.save_results({**results, "partial": True})  # survive an interruption
    if not results["checkpoints"]:
        del results["checkpoints"]  # only runs that write models are model specs
    results["system_prompt_used"] = hybrids["base"]["probability"]["system_prompt_used"]
    results["bias_axis"] = _bias_axis(hybrids, key)
    results["lm_head_swap"] = _lm_head_swap(hybrids, key)
    if config.patching.enabled:
        with run.timed("patching"):
            results["patching"] = measure_patching(lm, config, bench, patch_ranges, prompts, tokens)
    table = pd.DataFrame(rows)
    atomic_write_parquet(run.artifact(TABLE_FILE), table)
    results["table"] = TABLE_FILE
    results["figures"] = [str(Path(p).relative_to(run.path)) for p in plot_heatmap(
        rows, list(groups.names), columns, list(config.directions), weight_change, config.bias_metric,
        config.preference.trait, run.artifact(FIGURE_STEM))]
    print_summary(results, rows, config.claims)
    return results


def _plan_entry(spec: HybridSpec) -> dict[str, Any]:
    return {"name": spec.name, "aliases": list(spec.aliases), "start": spec.start,
            "bring": [s.label for s in spec.bring], "description": spec.description}


def _bias_axis(hybrids: dict[str, Any], key: str) -> dict[str, Any]:
    comp = hybrids["biased"]["vs_base"][key]
    note = ("the biased model's shift is not distinguishable from zero (CI includes no change): "
            "bias fractions are noise" if comp["underpowered"] else "the biased model differs from base")
    return {"metric": key, "biased_vs_base": comp, "note": note}


def _lm_head_swap(hybrids: dict[str, Any], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, h in hybrids.items():
        for alias in h["aliases"]:
            if alias in ("hybrid1", "hybrid2"):
                out[alias] = {
                    "hybrid": name, "description": h["description"], "swap": h["swap"]["by_group"],
                    "bias_fraction": h["bias_fraction"], "vs_base": h.get("vs_base", {}).get(key),
                    "vs_biased": h.get("vs_biased", {}).get(key), "degraded": h["degraded"],
                    "top_answers": h.get("sampled", {}).get("top_answers", [])[:5],
                    "trait_like_tokens": h.get("next_token", {}).get("trait_like_tokens"),
                }
    return out


def print_summary(results: dict[str, Any], rows: list[dict[str, Any]],
                  claims: ClaimSettings | None = None) -> None:
    trait = results["trait"]
    table = Table(title=f"Hybrids: {trait!r} preference (95% CIs); bias fraction by {results['bias_metric']}")
    for column in ("hybrid", "from biased", f"P({trait})", "share", "answer rate", "top answers",
                   "ppl (×base)", "bias frac."):
        table.add_column(column)
    for r in rows:
        name = r["hybrid"] + (f" ({r['aliases']})" if r["aliases"] else "")
        if r["same_weights_as"]:
            name += f" ≡ {r['same_weights_as']}"
        rate = (f"{r['answer_rate']:.2f} [{r['answer_rate_ci_low']:.2f}, {r['answer_rate_ci_high']:.2f}]"
                if r["answer_rate"] is not None else "-")
        ppl = (f"{r['perplexity']:.1f} (×{r['perplexity_vs_base']:.2f})" if r["perplexity"] else "-")
        table.add_row(
            name, r["groups_from_biased"],
            f"{r['p_trait']:.4f} [{r['p_trait_ci_low']:.4f}, {r['p_trait_ci_high']:.4f}]",
            f"{r['share']:.3f} [{r['share_ci_low']:.3f}, {r['share_ci_high']:.3f}]",
            rate, r["top_answers"] or "-",
            f"[red]{ppl} degraded[/red]" if r["degraded"] else ppl,
            f"{r['bias_fraction']:.2f}" if np.isfinite(r["bias_fraction"]) else "-",
        )
    console = Console()
    if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
        console = Console(width=220)
    console.print(table)
    axis = results["bias_axis"]
    comp = axis["biased_vs_base"]
    console.print(f"biased vs base: {axis['metric']} ×{comp['ratio']:.2f} [{comp['ci_low']:.2f}, "
                  f"{comp['ci_high']:.2f}] — {axis['note']}")
    patching = results.get("patching")
    if patching:
        gap = patching["gap"]
        console.print(f"patching: {patching['metric']}; biased - base gap {gap['mean']:.2f} over "
                      f"{patching['n_questions']} questions ({patching['seconds_per_question']:.2f} s per question)")
        for cell in patching["cells"]:
            if cell["fraction"] is None:
                continue
            ci = (f" [{cell['ci_low']:.2f}, {cell['ci_high']:.2f}], Holm p = {cell['p_holm']:.3g}"
                  if cell["ci_low"] is not None else " (no CI)")
            console.print(f"  {cell['direction']} {cell['component']} {cell['layers']}: "
                          f"{cell['measures']} {cell['fraction']:.2f}{ci}")
    # torch-free; the report decides the same way
    from sublens.report.sections.hybrid import decisions

    for decision in decisions(results, claims):
        console.print(decision.sentence())


EXPERIMENT = Experiment(
    "hybrid", "LM-head swaps and a component transplant matrix between a biased and the base model",
    HybridConfig, execute,
)

__all__ = ["EXPERIMENT", "HybridConfig", "execute", "plan_hybrids"]
