"""hybrid: the two models: the base model (the working model) and the biased one (by default the
newest finished `teacher` run, `default_biased`), untied, checked compatible and held in memory
as weight states (`load_pair`, `Pair`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sublens.experiments import default_teacher_run
from sublens.experiments.hybrid.config import HybridConfig
from sublens.experiments.hybrid.results import Source, Untied
from sublens.hybrid import check_compatible, untie_embeddings, weights_snapshot
from sublens.malloc import release_freed_memory
from sublens.models import LoadedModel, load_model
from sublens.runs import Run

States = dict[Source, dict[str, torch.Tensor]]


# ---- the two models ----------------------------------------------------------------------------
def default_biased(runs_root: str | Path) -> str:
    """The newest finished `teacher` run under runs_root that lists a checkpoint."""
    return default_teacher_run(
        runs_root,
        "biased model",
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
        base=untie_embeddings(base.model, base.adapter),
        biased=untie_embeddings(biased.model, biased.adapter),
        note="A tied LM head was given its own copy of the embedding tensor (same values, outputs "
        "unchanged) before any swap, so `lm_head` and `embeddings` are separate groups.",
    )
    check_compatible(base.model, biased.model, base.tokenizer, biased.tokenizer)
    models = {"base": base.describe(), "biased": {**biased.describe(), "spec": biased_spec}}
    run.note(models=models)
    states: States = {"base": weights_snapshot(base.model), "biased": weights_snapshot(biased.model)}
    del biased
    release_freed_memory()
    return Pair(base, states, biased_spec, models, untied)
