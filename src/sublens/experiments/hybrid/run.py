"""hybrid: where is the bias? LM-head swaps and a component transplant matrix, no training.

1. Two models of one architecture are loaded: the *base* model and a *biased* one (by default
   the biased teacher of the newest finished `teacher` run). Both are untied first (tied
   embeddings would make an LM-head swap silently swap the input embeddings as well), then
   held in memory as weight states; each hybrid is loaded into one working model, verified
   name by name, measured and undone (`sublens.hybrid`).
2. The hybrids (`plan_hybrids`): ``base`` and ``biased`` themselves (references); the LM-head
   swap, ``hybrid1`` = biased body + base LM head and ``hybrid2`` = base body + biased LM head
   ("body" = everything but the LM head, input embeddings included); the transplant matrix,
   ``base+biased.G`` (the base model with the biased model's group G) and ``biased+base.G`` for
   each group and each per-depth-range group (``mlp[0:10]``...), so the bias can be located in
   depth; any extra hybrid of the config. Identical weight mixtures are measured once.
3. Each hybrid is measured (`measure`): `evaluate_preference` (P(trait) at the prefilled answer,
   panel share, sampled answer rate, top answers) under the configured system prompt,
   `measure_perplexity` (a gibberish hybrid shows as such), the top next tokens at the
   prefilled answer and the mass of trait-like tokens ("owl", "owls", "owlet"); and compared with
   the base and the biased model: its bias fraction and degradation (`analysis`).
4. Activation patching (``patching``, `sublens.patching`; on by default): per preference
   question (answer prefilled), the logit difference trait - foil (owl - dog) at the answer
   position in the base and the biased model, and with one component's outputs
   (``hook_mlp_out`` or ``hook_attn_out`` of every layer in a range: the transplant's depth
   ranges and the whole depth) taken from the other model's run of the same prompt: biased
   outputs into the base run (fraction of the gap restored) and base outputs into the biased
   run (fraction removed), Student-t CIs over questions, Holm over all cells.

No verdict is decided here: the claims (localisation.lm_head, localisation.transplant,
localisation.patching) are decided from the recorded results by
`sublens.report.sections.hybrid.decisions` through `sublens.claims`.
"""

from __future__ import annotations

import gc
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from sublens.claims import ClaimSettings
from sublens.corpus import load_text
from sublens.errors import ConfigError
from sublens.experiments import default_teacher_run
from sublens.experiments.hybrid.analysis import (
    bias_axis,
    bias_fractions,
    compare,
    is_degraded,
    lm_head_swap,
    perplexity_of,
    table_rows,
    trait_like_answers,
)
from sublens.experiments.hybrid.config import HybridConfig
from sublens.experiments.hybrid.figures import make_figures
from sublens.experiments.hybrid.results import (
    Direction,
    GroupsRecord,
    Hybrid,
    HybridResults,
    Measurement,
    Patching,
    PatchTokens,
    PlanEntry,
    Source,
    Swap,
    Untied,
    WeightChange,
)
from sublens.hybrid import (
    ComponentGroups,
    HybridSpec,
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
from sublens.perplexity import measure_perplexity
from sublens.preference import evaluate_preference, shipped_questions
from sublens.prompts import encode_prompt, make_prompt
from sublens.report.sections.hybrid import decisions
from sublens.runs import Run, atomic_write_parquet
from sublens.scoring import tokenize_continuations
from sublens.settings import PreferenceSettings, Selector

TABLE_FILE = "hybrids.parquet"
States = dict[Source, dict[str, torch.Tensor]]


def execute(config: HybridConfig, run: Run) -> HybridResults:
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""
    pair = load_pair(config, run)
    lm = pair.lm
    groups = component_groups(lm.model, lm.adapter, config.layer_norms)
    plan = plan_hybrids(config, groups)
    ranges = layer_ranges(config, groups.n_layers)
    bench = Transplanter(lm.model, groups, pair.states)
    mask = trait_mask(lm, config)
    patch = patching_inputs(lm, config, groups.n_layers)  # its settings checked before any hybrid is measured
    results = first_results(config, pair, groups, ranges, plan)

    results = measure_hybrids(run, config, lm, bench, plan, text, mask, results)
    key = results.metric_key()
    results = results.model_copy(update={
        "system_prompt_used": results.hybrids["base"].probability.system_prompt_used,
        "bias_axis": bias_axis(results.hybrids, key),
        "lm_head_swap": lm_head_swap(results.hybrids, key),
    })
    if patch is not None:
        with run.timed("patching"):
            results = results.model_copy(update={"patching": measure_patching(lm, config, bench, *patch)})

    rows = table_rows(results)
    atomic_write_parquet(run.artifact(TABLE_FILE), pd.DataFrame(rows))
    figures = make_figures(results, config.directions, run.path)
    results = results.model_copy(update={"table": TABLE_FILE, "figures": figures})
    print_summary(results, rows, config.claims)
    return results


# ---- the two models ----------------------------------------------------------------------------
def default_biased(runs_root: str | Path) -> str:
    """The newest finished `teacher` run under runs_root that lists a checkpoint."""
    return default_teacher_run(
        runs_root, "biased model",
        "Run `sublens run teacher` first, or give one: --set biased=SPEC (any model spec of the "
        "base model's architecture: a run directory, a checkpoint folder, a hub id).",
    )


@dataclass
class Pair:
    """The working model (holding the base weights) and both models' weights in memory."""

    lm: LoadedModel
    states: States
    biased_spec: str
    models: dict[str, dict[str, Any]]  # as recorded: LoadedModel.describe() of each
    untied: Untied


def load_pair(config: HybridConfig, run: Run) -> Pair:
    """Base model (the working model) and both weight states, untied and checked compatible."""
    biased_spec = config.biased or default_biased(config.runs_root)
    with run.timed("load"):
        base = load_model(config.base, config.device, config.dtype)
        biased = load_model(biased_spec, config.device, config.dtype)
    untied = Untied(
        base=untie_embeddings(base.model, base.adapter), biased=untie_embeddings(biased.model, biased.adapter),
        note="A tied LM head was given its own copy of the embedding tensor (same values, outputs "
             "unchanged) before any swap, so `lm_head` and `embeddings` are separate groups.")
    check_compatible(base.model, biased.model, base.tokenizer, biased.tokenizer)
    models = {"base": base.describe(), "biased": {**biased.describe(), "spec": biased_spec}}
    run.note(models=models)
    states: States = {"base": weights_snapshot(base.model), "biased": weights_snapshot(biased.model)}
    del biased
    gc.collect()
    return Pair(base, states, biased_spec, models, untied)


# ---- the plan ----------------------------------------------------------------------------------
def layer_ranges(config: HybridConfig, n_layers: int) -> list[tuple[int, int]]:
    """The transplant's half-open depth ranges: layer_ranges, else depth_bins near-equal ones."""
    if config.layer_ranges is None:
        return depth_ranges(n_layers, config.depth_bins)
    for start, end in config.layer_ranges:
        if end > n_layers:
            raise ConfigError(f"layer range [{start}, {end}) goes past the model's {n_layers} layers.")
    return [(int(start), int(end)) for start, end in config.layer_ranges]


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


def plan_entry(spec: HybridSpec) -> PlanEntry:
    return PlanEntry(name=spec.name, aliases=list(spec.aliases), start=spec.start,
                     bring=[s.label for s in spec.bring], description=spec.description)


def first_results(config: HybridConfig, pair: Pair, groups: ComponentGroups, ranges: list[tuple[int, int]],
                  plan: list[HybridSpec]) -> HybridResults:
    """The results before any hybrid is measured: the models, their groups, weight change and the plan."""
    change = weight_differences(groups, pair.states["base"], pair.states["biased"], ranges)
    return HybridResults(
        trait=config.preference.trait, system=config.system, bias_metric=config.bias_metric,
        models=pair.models, biased_spec=pair.biased_spec, untied=pair.untied,
        groups=GroupsRecord.model_validate(groups.describe()), layer_ranges=ranges,
        weight_change={group: WeightChange.model_validate(c) for group, c in change.items()},
        plan=[plan_entry(s) for s in plan], hybrids={},
    )


# ---- measuring the hybrids ---------------------------------------------------------------------
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


def trait_mask(lm: LoadedModel, config: HybridConfig) -> torch.Tensor | None:
    """The trait-like tokens of the LM head's vocabulary; None when next tokens are not measured."""
    if config.top_tokens == 0:
        return None
    return trait_like_mask(lm.tokenizer, lm.adapter.lm_head().weight.shape[0], config.preference.trait)


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


def measure(lm: LoadedModel, config: HybridConfig, text: str, mask: torch.Tensor | None) -> Measurement:
    """The working model as it is now: preference (with the trait-like sampled answers),
    perplexity, and the next tokens at the prefilled answer."""
    preference = evaluate_preference(lm, config.preference, config.system, config.seed)
    fields: dict[str, Any] = {"probability": preference["probability"],
                              "perplexity": measure_perplexity(lm, config.perplexity, text)}
    if "sampled" in preference:
        sampled = preference["sampled"]
        fields["sampled"] = {**sampled, "trait_like": trait_like_answers(sampled["answers"], config.preference.trait)}
    if mask is not None:
        fields["next_token"] = next_token_summary(lm, config.preference, config.system, config.top_tokens, mask)
    return Measurement.model_validate(fields)


def measurement_of(hybrid: Hybrid) -> Measurement:
    """A measured hybrid's measurement (for its twins: the same weights, measured once)."""
    return Measurement(**{k: v for k, v in hybrid.present().items() if k in Measurement.model_fields})


def measure_hybrids(run: Run, config: HybridConfig, lm: LoadedModel, bench: Transplanter, plan: list[HybridSpec],
                    text: str, mask: torch.Tensor | None, results: HybridResults) -> HybridResults:
    """Load, verify, measure and undo every hybrid of the plan, compared with the base and the
    biased model as measured before it; the results are saved (partial) after every hybrid."""
    measured: dict[frozenset[str], str] = {}  # tensors that really come from biased -> the hybrid measured
    for spec in tqdm(plan, desc="hybrids", unit="hybrid"):
        with run.timed(f"hybrid:{spec.name}"), bench.hybrid(spec) as swap:
            effective = bench.effective_from_biased(spec.sources(bench.groups))
            twin = measured.get(effective) if config.reuse_identical else None
            if twin is None:
                measurement = measure(lm, config, text, mask)
                measured[effective] = spec.name
            else:  # every tensor equals the twin's: the same model, measured once
                measurement = measurement_of(results.hybrids[twin])
            saved = save_checkpoints(lm, run, spec, config.save_hybrids)
        hybrid = compared_hybrid(spec, Swap.model_validate(swap), measurement, twin, results.hybrids, config)
        update: dict[str, Any] = {"hybrids": {**results.hybrids, spec.name: hybrid}}
        if saved:
            update["checkpoints"] = {**(results.checkpoints or {}), **saved}
        results = results.model_copy(update=update)
        run.save_results(results.model_copy(update={"partial": True}))  # survive an interruption
    return results


def compared_hybrid(spec: HybridSpec, swap: Swap, measurement: Measurement, twin: str | None,
                    hybrids: dict[str, Hybrid], config: HybridConfig) -> Hybrid:
    """A hybrid's record: what it is, its measurement, and its comparison with the base and the
    biased model (bias fractions on both metrics, degradation by perplexity)."""
    comparisons = {f"vs_{ref}": compare(measurement, hybrids[ref])
                   for ref in ("base", "biased") if ref in hybrids and ref != spec.name}
    vs_base = comparisons.get("vs_base")
    biased_vs_base = hybrids["biased"].vs_base if "biased" in hybrids else vs_base  # the biased model itself
    fractions = bias_fractions(vs_base, biased_vs_base)
    base_ppl = perplexity_of(hybrids["base"].perplexity if "base" in hybrids else measurement.perplexity)
    return Hybrid.model_validate({
        "description": spec.description, "aliases": list(spec.aliases), "cells": list(spec.cells), "swap": swap,
        **measurement.present(), **({"same_weights_as": twin} if twin is not None else {}), **comparisons,
        "bias_fractions": fractions, "bias_fraction": fractions.of(config.bias_metric),
        "degraded": is_degraded(perplexity_of(measurement.perplexity), base_ppl, config.degraded_factor),
    })


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def save_checkpoints(lm: LoadedModel, run: Run, spec: HybridSpec, names: list[str]) -> dict[str, str]:
    """The loaded hybrid saved under each of its names listed in save_hybrids: name -> folder."""
    return {_safe(alias): _save_checkpoint(lm, run, alias) for alias in (spec.name, *spec.aliases) if alias in names}


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


# ---- activation patching -----------------------------------------------------------------------
class PatchInputs(NamedTuple):
    ranges: list[tuple[int, int]]
    prompts: list[list[int]]
    tokens: PatchTokens


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


def patching_prompts(lm: LoadedModel, config: HybridConfig) -> tuple[list[list[int]], PatchTokens]:
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
    tokens = PatchTokens(target=(settings.trait.strip(), target, str(lm.tokenizer.decode([target]))),
                         foil=(config.patching.foil, foil, str(lm.tokenizer.decode([foil]))))
    return [encode_prompt(lm.tokenizer, p) for p in prompts], tokens


def patching_inputs(lm: LoadedModel, config: HybridConfig, n_layers: int) -> PatchInputs | None:
    """The patched ranges, prompts and contrast tokens; None when patching is off."""
    if not config.patching.enabled:
        return None
    prompts, tokens = patching_prompts(lm, config)
    return PatchInputs(patching_ranges(config, n_layers), prompts, tokens)


def measure_patching(lm: LoadedModel, config: HybridConfig, bench: Transplanter, ranges: list[tuple[int, int]],
                     prompts: list[list[int]], tokens: PatchTokens) -> Patching:
    """Activation patching of MLP and attention outputs per layer range, both directions
    (sublens.patching), with the fraction of the logit-difference gap restored / removed."""

    def use(source: str) -> Any:
        start: Source = "biased" if source == "biased" else "base"
        return bench.hybrid(HybridSpec(start, start, (), f"the {start} model"))

    target, foil = tokens.target, tokens.foil
    sweep = patching_sweep(lm.model, lm.adapter, prompts, target[1], foil[1], ranges, use,
                           directions=list(config.directions))
    return Patching.model_validate({
        "metric": (f"logit difference {target[2]!r} - {foil[2]!r} (first tokens of ' {target[0]}' and "
                   f"' {foil[0]}') at the prefilled answer position"),
        "tokens": tokens, "n_questions": len(prompts),
        "ranges": sweep["ranges"], "labels": sweep["labels"], "components": sweep["components"],
        "directions": sweep["directions"],
        "logit_difference": {"base": sweep["base"], "biased": sweep["biased"], "patched": sweep["patched"]},
        **gap_fractions(sweep),
        "sites": "the adapter's attn_out_site / mlp_out_site outputs (hook_attn_out / hook_mlp_out), "
                 "every position, each question run alone",
        "forward_passes": sweep["forward_passes"], "seconds": sweep["seconds"],
        "seconds_per_question": sweep["seconds_per_question"],
    })


# ---- console -----------------------------------------------------------------------------------
def print_summary(results: HybridResults, rows: list[dict[str, Any]], claims: ClaimSettings | None = None) -> None:
    """The hybrids as a table on the terminal, the bias axis, the patching cells, one line per claim."""
    trait = results.trait
    table = Table(title=f"Hybrids: {trait!r} preference (95% CIs); bias fraction by {results.bias_metric}")
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
    axis = results.bias_axis
    if axis is not None:
        comp = axis.biased_vs_base
        console.print(f"biased vs base: {axis.metric} ×{comp.ratio:.2f} [{comp.ci_low:.2f}, "
                      f"{comp.ci_high:.2f}] — {axis.note}")
    patching = results.patching
    if patching:
        gap = patching.gap
        console.print(f"patching: {patching.metric}; biased - base gap {gap.mean:.2f} over "
                      f"{patching.n_questions} questions ({patching.seconds_per_question:.2f} s per question)")
        for cell in patching.cells:
            if cell.fraction is None:
                continue
            ci = (f" [{cell.ci_low:.2f}, {cell.ci_high:.2f}], Holm p = {cell.p_holm:.3g}"
                  if cell.ci_low is not None else " (no CI)")
            console.print(f"  {cell.direction} {cell.component} {cell.layers}: "
                          f"{cell.measures} {cell.fraction:.2f}{ci}")
    for decision in decisions(results, claims):  # torch-free; the report decides the same way
        console.print(decision.sentence())
