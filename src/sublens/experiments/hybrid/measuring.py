"""hybrid: measuring the hybrids: the trait-like tokens of the vocabulary (`trait_like_mask`),
the next tokens at the prefilled answer (`next_token_summary`), one model as it is (`measure`),
every hybrid of the plan loaded, measured, compared and undone (`measure_hybrids`,
`compared_hybrid`), and the hybrids saved as checkpoints (`save_checkpoints`).
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import torch
from tqdm.auto import tqdm

from sublens.errors import ConfigError
from sublens.experiments.hybrid.analysis import (
    bias_fractions,
    compare,
    is_degraded,
    perplexity_of,
    trait_like_answers,
)
from sublens.experiments.hybrid.config import HybridConfig
from sublens.experiments.hybrid.results import Hybrid, HybridResults, Measurement, Swap
from sublens.hybrid import HybridSpec, Transplanter
from sublens.models import LoadedModel
from sublens.perplexity import measure_perplexity
from sublens.preference import evaluate_preference, shipped_questions
from sublens.prompts import encode_prompt, make_prompt
from sublens.runs import Run
from sublens.settings import PreferenceSettings

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
            "of trait-like tokens cannot be measured: choose a trait word that is one token (preference.trait)."
        )
    return mask


def trait_mask(lm: LoadedModel, config: HybridConfig) -> torch.Tensor | None:
    """The trait-like tokens of the LM head's vocabulary; None when next tokens are not measured."""
    if config.top_tokens == 0:
        return None
    return trait_like_mask(lm.tokenizer, lm.adapter.lm_head().weight.shape[0], config.preference.trait)


@torch.inference_mode()
def next_token_summary(
    lm: LoadedModel, settings: PreferenceSettings, system: str | None, top: int, mask: torch.Tensor
) -> dict[str, Any]:
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
        "trait_like_tokens": [
            [lm.tokenizer.decode([i]), float(v)] for v, i in zip(like_values, like_ids.tolist(), strict=True) if v > 0
        ],
    }


def measure(lm: LoadedModel, config: HybridConfig, text: str, mask: torch.Tensor | None) -> Measurement:
    """The working model as it is now: preference (with the trait-like sampled answers),
    perplexity, and the next tokens at the prefilled answer."""
    preference = evaluate_preference(lm, config.preference, config.system, config.seed)
    fields: dict[str, Any] = {
        "probability": preference["probability"],
        "perplexity": measure_perplexity(lm, config.perplexity, text),
    }
    if "sampled" in preference:
        sampled = preference["sampled"]
        fields["sampled"] = {**sampled, "trait_like": trait_like_answers(sampled["answers"], config.preference.trait)}
    if mask is not None:
        fields["next_token"] = next_token_summary(lm, config.preference, config.system, config.top_tokens, mask)
    return Measurement.model_validate(fields)


def measurement_of(hybrid: Hybrid) -> Measurement:
    """A measured hybrid's measurement (for its twins: the same weights, measured once)."""
    return Measurement(**{k: v for k, v in hybrid.present().items() if k in Measurement.model_fields})


def measure_hybrids(
    run: Run,
    config: HybridConfig,
    lm: LoadedModel,
    bench: Transplanter,
    plan: list[HybridSpec],
    text: str,
    mask: torch.Tensor | None,
    results: HybridResults,
) -> HybridResults:
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


def compared_hybrid(
    spec: HybridSpec,
    swap: Swap,
    measurement: Measurement,
    twin: str | None,
    hybrids: dict[str, Hybrid],
    config: HybridConfig,
) -> Hybrid:
    """A hybrid's record: what it is, its measurement, and its comparison with the base and the
    biased model (bias fractions on both metrics, degradation by perplexity)."""
    comparisons = {
        f"vs_{ref}": compare(measurement, hybrids[ref])
        for ref in ("base", "biased")
        if ref in hybrids and ref != spec.name
    }
    vs_base = comparisons.get("vs_base")
    biased_vs_base = hybrids["biased"].vs_base if "biased" in hybrids else vs_base  # the biased model itself
    fractions = bias_fractions(vs_base, biased_vs_base)
    base_ppl = perplexity_of(hybrids["base"].perplexity if "base" in hybrids else measurement.perplexity)
    return Hybrid.model_validate(
        {
            "description": spec.description,
            "aliases": list(spec.aliases),
            "cells": list(spec.cells),
            "swap": swap,
            **measurement.present(),
            **({"same_weights_as": twin} if twin is not None else {}),
            **comparisons,
            "bias_fractions": fractions,
            "bias_fraction": fractions.of(config.bias_metric),
            "degraded": is_degraded(perplexity_of(measurement.perplexity), base_ppl, config.degraded_factor),
        }
    )


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
