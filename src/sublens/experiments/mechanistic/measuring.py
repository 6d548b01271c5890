"""mechanistic: the measuring stages `run.execute` calls on the loaded model: the number
statements' residuals against the bias and control statements', with the spike layers and the
component scores (`measure_residuals`, `Residuals`); the direct logit attribution of the
number-priming prompts (`measure_attribution`, `LogitAttribution`); and attention from the final
position to the number and the animal (`measure_attention`, `Attention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sublens.experiments.mechanistic.config import MechanisticConfig
from sublens.experiments.mechanistic.inputs import (
    ids_ending_the_text,
    statement_prompt,
    token_offsets,
)
from sublens.experiments.mechanistic.results import Words
from sublens.hooks import capture, hook_names
from sublens.mechanistic import (
    MechanisticError,
    NumberItem,
    attention_to,
    attribution_from_cache,
    component_cosines,
    contrastive_component_scores,
    dla_hook_names,
    final_position_pass,
    similarity_profiles,
    spike_layers,
    token_span,
    top_heads,
)
from sublens.models import LoadedModel
from sublens.prompts import PromptText, encode_prompt, make_prompt


# ---- residuals --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Residuals:
    """The number statements' final-position residuals against the bias and control statements'
    (index 0: bias, 1: control), the spike layers and the component scores (float64)."""

    prompts: dict[str, PromptText]  # bias, control, number_example
    references: torch.Tensor  # [2, 1 + L, d]: the bias and control statements' residuals
    cos: torch.Tensor  # [2, N, 1 + L]: column 0 the embedding, column l + 1 block l
    diff: torch.Tensor  # [N, 1 + L]: cos bias - cos control
    spike: torch.Tensor  # [N] the spike layer
    jump: torch.Tensor  # [N] its rise of diff
    head_cos: torch.Tensor  # [N, 2, L, H] (a record; not the scores)
    mlp_cos: torch.Tensor  # [N, 2, L]
    head_contrast: torch.Tensor  # [N, L, H]: contrastive scores
    mlp_contrast: torch.Tensor  # [N, L]
    top_head: torch.Tensor  # [N]: the best head of the spike layer
    head_score: torch.Tensor  # [N]: its score
    mlp_score: torch.Tensor  # [N]: the spike layer's MLP score


def measure_residuals(lm: LoadedModel, config: MechanisticConfig, items: list[NumberItem], words: Words) -> Residuals:
    """Each number statement's final-position residual against the bias and control statements'
    (per layer), the spike layer of each number and the component scores there."""
    L = lm.adapter.n_layers
    stack_names = ["blocks.0.hook_resid_pre", *hook_names(["hook_resid_post"], range(L))]
    animals, refs = _reference_residuals(lm, config, stack_names)
    numbers = [
        statement_prompt(lm, config, config.residual.number.format(number=item.number), config.residual.number_question)
        for item in items
    ]
    measured = _number_residuals(lm, config, numbers, words, stack_names, refs)
    diff = measured["cos"][0] - measured["cos"][1]  # [N, L+1]
    spike, jump = spike_layers(diff, config.layers)
    head_at_spike, head_score = top_heads(measured["head_contrast"], spike)
    return Residuals(
        prompts={"bias": animals[0], "control": animals[1], "number_example": numbers[0]},
        references=refs,
        diff=diff,
        spike=spike,
        jump=jump,
        top_head=head_at_spike,
        head_score=head_score,
        mlp_score=measured["mlp_contrast"][torch.arange(len(items)), spike],
        **measured,
    )


def _reference_residuals(
    lm: LoadedModel, config: MechanisticConfig, stack_names: list[str]
) -> tuple[list[PromptText], torch.Tensor]:
    """The bias and control statements and their final-position residuals [2, 1 + L, d]."""
    animals = [
        statement_prompt(lm, config, config.residual.animal.format(word=w), config.residual.animal_question)
        for w in (config.bias, config.control)
    ]
    refs = torch.zeros(2, lm.adapter.n_layers + 1, lm.adapter.d_model, dtype=torch.float64)

    def on_animal(batch: list[int], acts: dict[str, torch.Tensor], _logits: torch.Tensor) -> None:
        refs[batch] = torch.stack([acts[n] for n in stack_names], dim=1).double().cpu()

    ids = [ids_ending_the_text(lm, p) for p in animals]
    final_position_pass(lm.model, lm.adapter, ids, stack_names, on_animal, config.batch_size, "residual: animals")
    return animals, refs


def _number_residuals(
    lm: LoadedModel,
    config: MechanisticConfig,
    numbers: list[PromptText],
    words: Words,
    stack_names: list[str],
    refs: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per number statement: cosine profiles against the references (cos), the heads' and MLPs'
    cosines (head_cos, mlp_cos) and their contrastive scores (head_contrast, mlp_contrast)."""
    adapter, L, N = lm.adapter, lm.adapter.n_layers, len(numbers)
    out = {
        "cos": torch.zeros(2, N, L + 1, dtype=torch.float64),
        "head_cos": torch.zeros(N, 2, L, adapter.n_heads, dtype=torch.float64),
        "mlp_cos": torch.zeros(N, 2, L, dtype=torch.float64),
        "head_contrast": torch.zeros(N, L, adapter.n_heads, dtype=torch.float64),
        "mlp_contrast": torch.zeros(N, L, dtype=torch.float64),
    }
    z_names, mlp_names = hook_names(["attn.hook_z"], range(L)), hook_names(["hook_mlp_out"], range(L))

    def on_numbers(batch: list[int], acts: dict[str, torch.Tensor], _logits: torch.Tensor) -> None:
        stack = torch.stack([acts[n] for n in stack_names], dim=1).double().cpu()  # [b, L+1, d]
        for r in range(2):
            out["cos"][r, batch] = similarity_profiles(stack, refs[r])
        z = torch.stack([acts[n] for n in z_names], dim=1)  # [b, L, H, d_head]
        mlp = torch.stack([acts[n] for n in mlp_names], dim=1)  # [b, L, d]
        heads, mlps = component_cosines(adapter, z, mlp, refs[:, 1:].to(z.device))
        out["head_cos"][batch], out["mlp_cos"][batch] = heads.cpu(), mlps.cpu()
        resid_pre, resid_final = acts["blocks.0.hook_resid_pre"], acts[stack_names[-1]]
        heads, mlps = contrastive_component_scores(
            adapter, resid_pre, z, mlp, resid_final, words.bias.first_token, words.control.first_token
        )
        out["head_contrast"][batch], out["mlp_contrast"][batch] = heads.cpu(), mlps.cpu()

    ids = [ids_ending_the_text(lm, p) for p in numbers]
    names = [*stack_names, *z_names, *mlp_names]
    final_position_pass(lm.model, adapter, ids, names, on_numbers, config.batch_size, "residual: numbers")
    return out


# ---- direct logit attribution -----------------------------------------------------------------
ATTRIBUTION_FIELDS: dict[str, tuple[str, ...]] = {  # name -> dimensions after the prompt's
    "embed": (),
    "heads": ("layer", "head"),
    "attn_bias": ("layer",),
    "mlp": ("layer",),
    "constant": (),
    "logit_diff": (),
    "model_logit_diff": (),
    "residual_error": (),
    "p_bias": (),
    "p_control": (),
}


@dataclass(frozen=True)
class LogitAttribution:
    """The DLA terms of the number-priming prompts: row 0 the neutral prompt, then one row per
    number (float64), with the model's own logit difference and first-token probabilities."""

    prompts: dict[str, PromptText]  # example (the first number's), neutral
    fields: dict[str, torch.Tensor]  # ATTRIBUTION_FIELDS, each [1 + N, ...]
    closure_error: float  # max |sum of the terms - the model's logit difference|


def measure_attribution(
    lm: LoadedModel, config: MechanisticConfig, items: list[NumberItem], words: Words
) -> LogitAttribution:
    adapter = lm.adapter
    L, settings = adapter.n_layers, config.attribution
    prompts = [
        make_prompt(lm.tokenizer, settings.user, settings.system.format(number=item.number), settings.prefill)
        for item in items
    ]
    neutral = make_prompt(lm.tokenizer, settings.user, settings.neutral_system, settings.prefill)
    all_prompts = [neutral, *prompts]
    size = {"layer": L, "head": adapter.n_heads}
    fields = {
        key: torch.zeros(len(all_prompts), *(size[d] for d in dims), dtype=torch.float64)
        for key, dims in ATTRIBUTION_FIELDS.items()
    }
    bias_token, control_token = words.bias.first_token, words.control.first_token

    def on_batch(batch: list[int], acts: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        dla = attribution_from_cache(adapter, acts, bias_token, control_token, position=None)
        for key in ("embed", "heads", "attn_bias", "mlp", "constant", "logit_diff", "residual_error"):
            fields[key][batch] = getattr(dla, key).cpu()
        logp = torch.log_softmax(logits.double(), dim=-1).cpu()
        fields["model_logit_diff"][batch] = (logits[:, bias_token] - logits[:, control_token]).double().cpu()
        fields["p_bias"][batch] = logp[:, bias_token].exp()
        fields["p_control"][batch] = logp[:, control_token].exp()

    final_position_pass(
        lm.model,
        adapter,
        [encode_prompt(lm.tokenizer, p) for p in all_prompts],
        dla_hook_names(L),
        on_batch,
        config.batch_size,
        "attribution",
    )
    total = (
        fields["embed"]
        + fields["heads"].sum((1, 2))
        + fields["attn_bias"].sum(1)
        + fields["mlp"].sum(1)
        + fields["constant"]
    )
    return LogitAttribution(
        prompts={"example": prompts[0], "neutral": neutral},
        fields=fields,
        closure_error=float((total - fields["model_logit_diff"]).abs().max()),
    )


# ---- attention --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attention:
    """Attention of the attention prompts (one per configured number), float64."""

    prompts: list[dict[str, Any]]  # each prompt, its tokens and where the number and animal are
    patterns: list[torch.Tensor]  # per prompt [L, H, q, k]
    to_number: torch.Tensor  # [prompts, L, H]: from the final position to the number's tokens
    to_animal: torch.Tensor  # [prompts, L, H]: ... to the bias word's


def _char_start(template: str, name: str, values: dict[str, str]) -> int:
    return len(template[: template.index("{" + name + "}")].format(**values))


def measure_attention(lm: LoadedModel, config: MechanisticConfig) -> Attention:
    adapter = lm.adapter
    names = hook_names(["attn.hook_pattern"], range(adapter.n_layers))
    to_number, to_animal, patterns, described = [], [], [], []
    for number in config.attention.numbers:
        values = {"number": number, "word": config.bias}
        text = config.attention.template.format(**values)
        prompt = statement_prompt(lm, config, text, config.residual.animal_question)
        ids, offsets = token_offsets(lm, prompt)
        shift = len(prompt.text) - len(text)  # the statement is at the end of the prompt text
        n_start = shift + _char_start(config.attention.template, "number", values)
        w_start = shift + _char_start(config.attention.template, "word", values)
        number_span = token_span(offsets, n_start, n_start + len(number))
        animal_span = token_span(offsets, w_start, w_start + len(config.bias))
        if not number_span or not animal_span:
            raise MechanisticError(f"Could not locate the number or the animal in the tokens of {text!r}.")
        device = next(lm.model.parameters()).device
        with capture(lm.model, adapter, names) as cache, torch.no_grad():
            lm.model(input_ids=torch.tensor([ids], device=device), logits_to_keep=1)
        pattern = torch.stack([cache[name][0] for name in names]).double().cpu()  # [L, H, q, k]
        patterns.append(pattern)
        to_number.append(attention_to(pattern, number_span))
        to_animal.append(attention_to(pattern, animal_span))
        described.append(
            {
                "number": number,
                "prompt": prompt.to_dict(),
                "number_tokens": number_span,
                "animal_tokens": animal_span,
                "final_token": len(ids) - 1,
                "tokens": [lm.tokenizer.decode([i]) for i in ids],
            }
        )
    return Attention(described, patterns, torch.stack(to_number), torch.stack(to_animal))
