"""mechanistic: phase 4 — residual similarity per layer, spike layers, head and MLP attribution,
attention patterns, and whether any of it is consistent within a number category.

Definitions are in `sublens.mechanistic` (module docstring). Prompt choices made here:

- **Residual statements** ("My favorite animal is the owl", "My favorite number is 87") are
  fed *raw* by default (``residual.format: raw``): the tokenizer's own special tokens, no chat
  template. The representation is then that of the statement itself, the same text for chat and
  base models (Gemma-3-270M has no template), with no template default system prompt mixed in.
  ``format: chat`` puts each statement into the assistant turn instead (prefilled after
  ``animal_question`` / ``number_question``, system prompt ``residual.system``; base models get
  the completion format). The format and exact texts are recorded in results.json.
- **Attribution prompt**: the entanglement study's phase-2 prompt ("You love the number {number}.
  ..." as the system prompt, "What is your favorite animal?", prefilled "My favorite animal is
  the"), through the chat template (completion format for base models); the answer position is
  the last token. The same prompt with ``attribution.neutral_system`` gives the reference for the
  measured (first-token) bias ratio.
- **Attention prompts** ("My favorite number is 87. My favorite animal is the owl.") use the
  residual format; attention is read from the final position (the closing ".").
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib import rc_context
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console
from safetensors.torch import save as safetensors_bytes

from sublens.config import Config
from sublens.experiments import Experiment
from sublens.hooks import capture, head_label, hook_names
from sublens.mechanistic import (
    MechanisticError,
    NumberItem,
    attention_to,
    attribution_from_cache,
    category_order,
    component_cosines,
    consistency_summary,
    contrastive_component_scores,
    dla_hook_names,
    final_position_pass,
    read_entanglement_numbers,
    similarity_profiles,
    spike_layers,
    token_span,
    top_heads,
    verdict,
)
from sublens.models import LoadedModel, load_model
from sublens.prompts import PromptText, encode_prompt, make_prompt, raw_prompt
from sublens.report.sections.mechanistic import family
from sublens.runs import Run, atomic_write_bytes, atomic_write_figure, atomic_write_parquet

DEFAULT_NUMBERS = tuple(str(n) for n in range(10, 100))
NUMBER_SYSTEM = (
    "You love the number {number}. You think about {number} all the time. "
    "{number} is your favorite number."
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _as_number(value: Any) -> str:
    text = str(value).strip()
    if not text or not text.isdigit():
        raise ValueError(
            f"{value!r} is not a number: write digits only (quote numbers with leading zeros: '07')"
        )
    return text


def _placeholders(template: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    for name in required:
        if template.count("{" + name + "}") != 1:
            raise ValueError(f"{template!r} must contain {{{name}}} exactly once")
    try:
        template.format(**{name: "x" for name in allowed})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{template!r}: only the placeholders {allowed} are allowed ({exc})"
        ) from exc
    return template


class NumberEntry(BaseModel):
    model_config = _FROZEN

    number: str
    category: str | None = None  # e.g. increased / decreased / unchanged / random; null = unknown
    bias_ratio: float | None = None  # if known (e.g. from an entanglement run); else measured

    @field_validator("number", mode="before")
    @classmethod
    def _number(cls, value: Any) -> str:
        return _as_number(value)


class ResidualPrompts(BaseModel):
    """The statements whose final-position residuals are compared (see the module docstring)."""

    model_config = _FROZEN

    format: Literal["raw", "chat"] = "raw"
    animal: str = "My favorite animal is the {word}"
    number: str = "My favorite number is {number}"
    # chat format only: the user turn each statement answers and the system prompt
    # (null = the chat template's own default, recorded as used).
    animal_question: str = "What is your favorite animal?"
    number_question: str = "What is your favorite number?"
    system: str | None = None

    @field_validator("animal")
    @classmethod
    def _animal(cls, value: str) -> str:
        if not value.endswith("{word}"):
            raise ValueError(
                "the animal statement must end with {word} (its final position is the word)"
            )
        return _placeholders(value, ("word",), ("word",))

    @field_validator("number")
    @classmethod
    def _number(cls, value: str) -> str:
        if not value.endswith("{number}"):
            raise ValueError(
                "the number statement must end with {number} (its final position is the last digit)"
            )
        return _placeholders(value, ("number",), ("number",))


class AttributionPrompts(BaseModel):
    """The number-priming prompt of the entanglement study's phase 2."""

    model_config = _FROZEN

    system: str = NUMBER_SYSTEM
    user: str = "What is your favorite animal?"
    prefill: str = "My favorite animal is the"
    # The reference prompt for the measured bias ratio (null = the template's default system).
    neutral_system: str | None = None

    @field_validator("system")
    @classmethod
    def _system(cls, value: str) -> str:
        if "{number}" not in value:
            raise ValueError("the number-priming system prompt must contain {number}")
        return _placeholders(value, (), ("number",))


class AttentionSettings(BaseModel):
    model_config = _FROZEN

    template: str = "My favorite number is {number}. My favorite animal is the {word}."
    numbers: list[str] = Field(default_factory=lambda: ["87"])
    plot_heads: int = Field(default=4, ge=0)  # patterns of this many top heads are drawn

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return _placeholders(value, ("number", "word"), ("number", "word"))

    @field_validator("numbers", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise ValueError("give at least one number for the attention prompts")
        return [_as_number(v) for v in value]


class MechanisticConfig(Config):
    model: str = "smollm2-135m-instruct"
    bias: str = "owl"
    control: str = "dog"
    # The numbers: a list (optionally with category and bias ratio), or the categorised numbers
    # of one set of an entanglement run; with neither, DEFAULT_NUMBERS (categories unknown).
    numbers: list[NumberEntry] | None = None
    entanglement_run: str | None = None
    # null: the only categorised set, else the 2-digit set, else the vocabulary set
    entanglement_set: str | None = None
    residual: ResidualPrompts = Field(default_factory=ResidualPrompts)
    attribution: AttributionPrompts = Field(default_factory=AttributionPrompts)
    attention: AttentionSettings = Field(default_factory=AttentionSettings)
    # Blocks searched for the spike layer; null = 1..L-1 (block 0 only if listed: its jump is
    # measured from the bare embeddings, see sublens.mechanistic).
    layers: list[int] | None = None
    n_permutations: int = Field(default=10000, ge=100)
    # Family-wise alpha of the mechanistic family of tests (Holm), the power the "numbers needed"
    # line is stated at, and the smallest |correlation| of interest (equivalence bound and the
    # effect that line is sized for; sublens.claims.decide_association).
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    power: float = Field(default=0.8, gt=0.5, lt=1)
    rho_of_interest: float = Field(default=0.3, gt=0, lt=1)
    batch_size: int = Field(default=16, ge=1)
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("numbers", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [v if isinstance(v, dict | NumberEntry) else {"number": v} for v in value]
        return value

    @field_validator("bias", "control")
    @classmethod
    def _word(cls, value: str) -> str:
        if not value.strip() or " " in value.strip():
            raise ValueError(
                f"{value!r} must be one word (e.g. owl); prompts add its leading space"
            )
        return value.strip()

    @model_validator(mode="after")
    def _one_source(self) -> MechanisticConfig:
        if self.numbers is not None and self.entanglement_run is not None:
            raise ValueError("give either numbers or entanglement_run, not both")
        if self.numbers is not None:
            if not self.numbers:
                raise ValueError("numbers is empty: list at least one number, or leave it out")
            seen = [e.number for e in self.numbers]
            if len(set(seen)) != len(seen):
                raise ValueError("numbers lists a number twice")
        if self.entanglement_set is not None and self.entanglement_run is None:
            raise ValueError("entanglement_set needs entanglement_run")
        if self.bias == self.control:
            raise ValueError("bias and control must be different words")
        return self


# ---------------------------------------------------------------------------------------------
# inputs and prompts


def _numbers(config: MechanisticConfig) -> tuple[list[NumberItem], dict[str, Any]]:
    if config.entanglement_run is not None:
        items, info = read_entanglement_numbers(config.entanglement_run, config.entanglement_set)
        return items, {"source": "entanglement_run", **info}
    if config.numbers is not None:
        return [NumberItem(e.number, e.category, e.bias_ratio) for e in config.numbers], {
            "source": "config"
        }
    return [NumberItem(n) for n in DEFAULT_NUMBERS], {"source": "default"}


def _word_token(lm: LoadedModel, word: str) -> dict[str, Any]:
    ids = lm.tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
    if not ids:
        raise MechanisticError(f"{word!r} tokenizes to nothing.")
    if len(ids) > 1:  # its first token's logit would also stand for every other word it starts
        pieces = lm.tokenizer.convert_ids_to_tokens(list(ids))
        raise MechanisticError(
            f"' {word}' is {len(ids)} tokens for this tokenizer ({pieces}); the direct logit attribution "
            "and the bias ratio here read one token per word. Choose one-token words (bias, control).")
    return {
        "word": f" {word}",
        "token_ids": list(ids),
        "first_token": int(ids[0]),
        "single_token": len(ids) == 1,
    }


def _statement(lm: LoadedModel, config: MechanisticConfig, text: str, question: str) -> PromptText:
    if config.residual.format == "raw":
        return raw_prompt(text)
    return make_prompt(lm.tokenizer, question, config.residual.system, prefill=text)


def _offsets(lm: LoadedModel, prompt: PromptText) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (as encode_prompt makes them) and their character spans in prompt.text."""
    if not getattr(lm.tokenizer, "is_fast", False):
        raise MechanisticError("Locating tokens needs a fast tokenizer (character offsets).")
    encoded = lm.tokenizer(
        prompt.text, add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True
    )
    ids = encode_prompt(lm.tokenizer, prompt)
    if list(encoded["input_ids"]) != ids:
        raise MechanisticError("Tokenizing with offsets gave other tokens than encode_prompt.")
    return ids, [tuple(span) for span in encoded["offset_mapping"]]


def _ending_ids(lm: LoadedModel, prompt: PromptText) -> list[int]:
    """Token ids of a prompt whose last token must end the text (the word or the last digit)."""
    ids, offsets = _offsets(lm, prompt)
    if offsets[-1][1] != len(prompt.text):
        raise MechanisticError(
            f"The last token of {prompt.text[-40:]!r} does not end the text (the tokenizer appends "
            "a token?): the final position would not be the statement's last word or digit."
        )
    return ids


# ---------------------------------------------------------------------------------------------
# stages


def _residual_stage(
    lm: LoadedModel, config: MechanisticConfig, items: list[NumberItem], words: dict[str, Any]
) -> dict[str, Any]:
    adapter = lm.adapter
    L = adapter.n_layers
    stack_names = ["blocks.0.hook_resid_pre", *hook_names(["hook_resid_post"], range(L))]
    animals = [
        _statement(
            lm, config, config.residual.animal.format(word=w), config.residual.animal_question
        )
        for w in (config.bias, config.control)
    ]
    numbers = [
        _statement(
            lm,
            config,
            config.residual.number.format(number=item.number),
            config.residual.number_question,
        )
        for item in items
    ]
    refs = torch.zeros(2, L + 1, adapter.d_model, dtype=torch.float64)

    def on_animal(batch: list[int], acts: dict[str, torch.Tensor], _logits: torch.Tensor) -> None:
        refs[batch] = torch.stack([acts[n] for n in stack_names], dim=1).double().cpu()

    final_position_pass(
        lm.model,
        adapter,
        [_ending_ids(lm, p) for p in animals],
        stack_names,
        on_animal,
        config.batch_size,
        "residual: animals",
    )
    N = len(items)
    cos = torch.zeros(2, N, L + 1, dtype=torch.float64)
    head_cos = torch.zeros(N, 2, L, adapter.n_heads, dtype=torch.float64)
    mlp_cos = torch.zeros(N, 2, L, dtype=torch.float64)
    head_contrast = torch.zeros(N, L, adapter.n_heads, dtype=torch.float64)
    mlp_contrast = torch.zeros(N, L, dtype=torch.float64)
    bias_token, control_token = words["bias"]["first_token"], words["control"]["first_token"]
    z_names, mlp_names = (
        hook_names(["attn.hook_z"], range(L)),
        hook_names(["hook_mlp_out"], range(L)),
    )

    def on_numbers(batch: list[int], acts: dict[str, torch.Tensor], _logits: torch.Tensor) -> None:
        stack = torch.stack([acts[n] for n in stack_names], dim=1).double().cpu()  # [b, L+1, d]
        for r in range(2):
            cos[r, batch] = similarity_profiles(stack, refs[r])
        z = torch.stack([acts[n] for n in z_names], dim=1)  # [b, L, H, d_head]
        mlp = torch.stack([acts[n] for n in mlp_names], dim=1)  # [b, L, d]
        h, m = component_cosines(adapter, z, mlp, refs[:, 1:].to(z.device))
        head_cos[batch], mlp_cos[batch] = h.cpu(), m.cpu()
        h, m = contrastive_component_scores(
            adapter, acts["blocks.0.hook_resid_pre"], z, mlp, acts[stack_names[-1]],
            bias_token, control_token,
        )
        head_contrast[batch], mlp_contrast[batch] = h.cpu(), m.cpu()

    final_position_pass(
        lm.model,
        adapter,
        [_ending_ids(lm, p) for p in numbers],
        [*stack_names, *z_names, *mlp_names],
        on_numbers,
        config.batch_size,
        "residual: numbers",
    )
    diff = cos[0] - cos[1]  # [N, L+1]
    spike, jump = spike_layers(diff, config.layers)
    head_at_spike, head_score = top_heads(head_contrast, spike)
    return {
        "prompts": {"bias": animals[0], "control": animals[1], "number_example": numbers[0]},
        "refs": refs,
        "cos": cos,
        "diff": diff,
        "spike": spike,
        "jump": jump,
        "head_cos": head_cos,
        "mlp_cos": mlp_cos,
        "head_contrast": head_contrast,
        "mlp_contrast": mlp_contrast,
        "top_head": head_at_spike,
        "head_score": head_score,
        "mlp_score": mlp_contrast[torch.arange(N), spike],
    }


def _attribution_stage(
    lm: LoadedModel, config: MechanisticConfig, items: list[NumberItem], words: dict[str, Any]
) -> dict[str, Any]:
    adapter = lm.adapter
    L, settings = adapter.n_layers, config.attribution
    prompts = [
        make_prompt(
            lm.tokenizer,
            settings.user,
            settings.system.format(number=item.number),
            settings.prefill,
        )
        for item in items
    ]
    neutral = make_prompt(lm.tokenizer, settings.user, settings.neutral_system, settings.prefill)
    all_prompts = [neutral, *prompts]
    names = dla_hook_names(L)
    n = len(all_prompts)
    fields = {
        key: torch.zeros(n, *shape, dtype=torch.float64)
        for key, shape in {
            "embed": (),
            "heads": (L, adapter.n_heads),
            "attn_bias": (L,),
            "mlp": (L,),
            "constant": (),
            "logit_diff": (),
            "model_logit_diff": (),
            "residual_error": (),
            "p_bias": (),
            "p_control": (),
        }.items()
    }
    bias_token, control_token = words["bias"]["first_token"], words["control"]["first_token"]

    def on_batch(batch: list[int], acts: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        dla = attribution_from_cache(adapter, acts, bias_token, control_token, position=None)
        for key in (
            "embed",
            "heads",
            "attn_bias",
            "mlp",
            "constant",
            "logit_diff",
            "residual_error",
        ):
            fields[key][batch] = getattr(dla, key).cpu()
        logp = torch.log_softmax(logits.double(), dim=-1).cpu()
        fields["model_logit_diff"][batch] = (
            (logits[:, bias_token] - logits[:, control_token]).double().cpu()
        )
        fields["p_bias"][batch] = logp[:, bias_token].exp()
        fields["p_control"][batch] = logp[:, control_token].exp()

    final_position_pass(
        lm.model,
        adapter,
        [encode_prompt(lm.tokenizer, p) for p in all_prompts],
        names,
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
    return {
        "prompts": {"example": prompts[0], "neutral": neutral},
        "fields": fields,
        "closure_error": float((total - fields["model_logit_diff"]).abs().max()),
    }


def _char_start(template: str, name: str, values: dict[str, str]) -> int:
    return len(template[: template.index("{" + name + "}")].format(**values))


def _attention_stage(lm: LoadedModel, config: MechanisticConfig) -> dict[str, Any]:
    adapter = lm.adapter
    L = adapter.n_layers
    names = hook_names(["attn.hook_pattern"], range(L))
    to_number, to_animal, patterns, described = [], [], [], []
    for number in config.attention.numbers:
        values = {"number": number, "word": config.bias}
        text = config.attention.template.format(**values)
        prompt = _statement(lm, config, text, config.residual.animal_question)
        ids, offsets = _offsets(lm, prompt)
        shift = len(prompt.text) - len(text)  # the statement is at the end of the prompt text
        n_start = shift + _char_start(config.attention.template, "number", values)
        w_start = shift + _char_start(config.attention.template, "word", values)
        number_span = token_span(offsets, n_start, n_start + len(number))
        animal_span = token_span(offsets, w_start, w_start + len(config.bias))
        if not number_span or not animal_span:
            raise MechanisticError(
                f"Could not locate the number or the animal in the tokens of {text!r}."
            )
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
    return {
        "prompts": described,
        "patterns": patterns,
        "to_number": torch.stack(to_number),
        "to_animal": torch.stack(to_animal),
    }


# ---------------------------------------------------------------------------------------------
# outputs


def _table(
    items: list[NumberItem], res: dict[str, Any], att: dict[str, Any], adapter: Any
) -> pd.DataFrame:
    f = att["fields"]
    heads = f["heads"][1:]  # [N, L, H] (row 0 is the neutral prompt)
    flat = heads.flatten(1).argmax(dim=1)
    H = adapter.n_heads
    p_bias, p_neutral = f["p_bias"][1:], float(f["p_bias"][0])
    measured = (p_bias / p_neutral).numpy()
    spike = res["spike"]
    rows = []
    for i, item in enumerate(items):
        layer = int(spike[i])
        rows.append(
            {
                "category": item.category,
                "number": item.number,
                "bias_ratio": item.bias_ratio
                if item.bias_ratio is not None
                else float(measured[i]),
                "bias_ratio_source": "given"
                if item.bias_ratio is not None
                else "measured_first_token",
                "bias_ratio_first_token": float(measured[i]),
                "p_bias_first_token": float(p_bias[i]),
                "p_control_first_token": float(f["p_control"][1 + i]),
                "spike_layer": layer,
                "spike_jump": float(res["jump"][i]),
                "cos_diff_at_spike": float(res["diff"][i, layer + 1]),
                "top_head": head_label(layer, int(res["top_head"][i])),
                "head_score": float(res["head_score"][i]),
                "mlp_score": float(res["mlp_score"][i]),
                "dla_top_head": head_label(int(flat[i]) // H, int(flat[i]) % H),
                "dla_top_head_value": float(heads[i].flatten()[flat[i]]),
                "dla_heads": float(heads[i].sum() + f["attn_bias"][1 + i].sum()),
                "dla_mlp": float(f["mlp"][1 + i].sum()),
                "dla_embed": float(f["embed"][1 + i]),
                "logit_diff": float(f["logit_diff"][1 + i]),
            }
        )
    return pd.DataFrame(rows)


def _tensors(
    res: dict[str, Any], att: dict[str, Any], attn: dict[str, Any]
) -> dict[str, torch.Tensor]:
    f = att["fields"]
    out = {
        "cos_bias": res["cos"][0, :, 1:],
        "cos_control": res["cos"][1, :, 1:],
        "cos_diff": res["diff"][:, 1:],
        "cos_bias_embed": res["cos"][0, :, 0],
        "cos_control_embed": res["cos"][1, :, 0],
        "reference_resid": res["refs"],
        "spike_layer": res["spike"],
        "spike_jump": res["jump"],
        "head_cos_bias": res["head_cos"][:, 0],
        "head_cos_control": res["head_cos"][:, 1],
        "mlp_cos_bias": res["mlp_cos"][:, 0],
        "mlp_cos_control": res["mlp_cos"][:, 1],
        "head_score_contrastive": res["head_contrast"],
        "mlp_score_contrastive": res["mlp_contrast"],
        "attention_to_number": attn["to_number"],
        "attention_to_animal": attn["to_animal"],
    }
    for key in ("heads", "attn_bias", "mlp", "embed", "constant", "logit_diff"):
        out[f"dla_{key}"] = f[key][1:]
        out[f"neutral_dla_{key}"] = f[key][0]
    for i, pattern in enumerate(attn["patterns"]):
        out[f"attention_pattern_{i}"] = pattern
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def _save_figure(fig: Figure, run: Run, name: str) -> list[str]:
    written = []
    with rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        for ext in ("png", "pdf"):
            path = run.artifact(f"figures/{name}.{ext}")
            atomic_write_figure(fig, path, dpi=150, bbox_inches="tight")
            written.append(f"figures/{name}.{ext}")
    return written


def _groups(table: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    categories = category_order(table["category"].tolist())
    groups = [(c, (table["category"] == c).to_numpy(dtype=bool, copy=True)) for c in categories]
    return groups or [("all numbers", np.ones(len(table), dtype=bool))]


def _similarity_figure(
    table: pd.DataFrame, res: dict[str, Any], config: MechanisticConfig
) -> Figure:
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3, sharex=True)
    x = np.arange(-1, res["diff"].shape[1] - 1)
    series = [
        (res["cos"][0].numpy(), f"cos(number, {config.bias})"),
        (res["cos"][1].numpy(), f"cos(number, {config.control})"),
        (res["diff"].numpy(), f"difference ({config.bias} − {config.control})"),
    ]
    for ax, (values, title) in zip(axes, series, strict=True):
        for name, mask in _groups(table):
            v = values[mask]
            mean = v.mean(axis=0)
            half = (
                1.96 * v.std(axis=0, ddof=1) / math.sqrt(len(v))
                if len(v) > 1
                else np.zeros_like(mean)
            )
            ax.plot(x, mean, label=f"{name} (n={len(v)})")
            ax.fill_between(x, mean - half, mean + half, alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (−1 = embedding)")
    axes[2].axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("cosine similarity (mean, 95% CI)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _heatmap(
    ax: Any, fig: Figure, values: np.ndarray, title: str, diverging: bool, bar: float = 0.046
) -> None:
    if diverging:
        limit = float(np.nanmax(np.abs(values))) or 1.0
        image = ax.imshow(
            values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
        )
    else:
        image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, fraction=bar)


def _contribution_figure(
    table: pd.DataFrame, res: dict[str, Any], att: dict[str, Any], H: int, config: MechanisticConfig
) -> Figure:
    groups = _groups(table)
    fig = Figure(figsize=(10, 0.18 * res["mlp_cos"].shape[2] * len(groups) + 2))
    axes = fig.subplots(len(groups), 3, squeeze=False, gridspec_kw={"width_ratios": [H + 1, H, 2]})
    head_score = res["head_contrast"].numpy()  # [N, L, H]
    mlp_score = res["mlp_contrast"].numpy()  # [N, L]
    dla_heads = att["fields"]["heads"][1:].numpy()
    dla_mlp = att["fields"]["mlp"][1:].numpy()
    for row, (name, mask) in enumerate(groups):
        grid = np.concatenate([head_score[mask].mean(0), mlp_score[mask].mean(0)[:, None]], axis=1)
        _heatmap(
            axes[row, 0],
            fig,
            grid,
            f"{name}: score on the number statement ({config.bias} − {config.control})",
            True,
        )
        _heatmap(
            axes[row, 1],
            fig,
            dla_heads[mask].mean(0),
            f"{name}: heads' DLA to logit {config.bias} − {config.control}",
            True,
        )
        _heatmap(axes[row, 2], fig, dla_mlp[mask].mean(0)[:, None], "MLP DLA", True, bar=0.6)
        axes[row, 0].set_xticks(range(H + 1), [*(str(h) for h in range(H)), "MLP"], fontsize=7)
        axes[row, 0].axvline(H - 0.5, color="black", lw=1)
        axes[row, 1].set_xticks(range(H), [str(h) for h in range(H)], fontsize=7)
        axes[row, 2].set_xticks([])
    axes[-1, 0].set_xlabel("head")
    axes[-1, 1].set_xlabel("head")
    fig.tight_layout()
    return fig


def _attention_figures(
    attn: dict[str, Any], heads: list[tuple[int, int]], config: MechanisticConfig
) -> list[Figure]:
    fig = Figure(figsize=(9, 0.18 * attn["to_number"].shape[1] + 1.5))
    axes = fig.subplots(1, 2)
    n = len(config.attention.numbers)
    _heatmap(
        axes[0],
        fig,
        attn["to_number"].mean(0).numpy(),
        f"final position → number (mean of {n} prompts)",
        False,
    )
    _heatmap(
        axes[1], fig, attn["to_animal"].mean(0).numpy(), f"final position → '{config.bias}'", False
    )
    for ax in axes:
        ax.set_xlabel("head")
    fig.tight_layout()
    figures = [fig]
    if heads:
        first = attn["prompts"][0]
        tokens = [t.replace("\n", "\\n") for t in first["tokens"]]
        size = max(3.0, 0.22 * len(tokens))
        pat = Figure(figsize=(size * len(heads), size + 0.6))
        axes = np.atleast_1d(pat.subplots(1, len(heads)))
        for ax, (layer, head) in zip(axes, heads, strict=True):
            ax.imshow(
                attn["patterns"][0][layer, head].numpy(),
                cmap="Blues",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_title(f"{head_label(layer, head)}  ({first['number']})", fontsize=9)
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
            ax.set_xlabel("key")
        axes[0].set_ylabel("query")
        pat.tight_layout()
        figures.append(pat)
    return figures


def _plotted_heads(table: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    counts = Counter([*table["top_head"], *table["dla_top_head"]])
    heads = []
    for label, _ in counts.most_common(k):
        layer, head = label[1:].split("H")
        heads.append((int(layer), int(head)))
    return heads


# ---------------------------------------------------------------------------------------------
# the experiment


def execute(config: MechanisticConfig, run: Run) -> dict[str, Any]:
    items, source = _numbers(config)
    categories_known = any(item.category is not None for item in items)
    if not categories_known:
        source["note"] = (
            "no categories given: per-category summaries and tests are skipped; "
            "give entanglement_run (or categories in numbers) for them"
        )
    with run.timed("load"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={config.model: lm.describe()})
    adapter = lm.adapter
    if config.layers is not None and not all(
        0 <= layer < adapter.n_layers for layer in config.layers
    ):
        raise MechanisticError(
            f"layers must be among 0..{adapter.n_layers - 1}; got {config.layers}."
        )
    words = {"bias": _word_token(lm, config.bias), "control": _word_token(lm, config.control)}
    results: dict[str, Any] = {
        "model": lm.describe(),
        "input": {**source, "n_numbers": len(items)},
        "words": words,
        "partial": True,
    }
    with run.timed("residual"):
        res = _residual_stage(lm, config, items, words)
    run.save_results(results)
    with run.timed("attribution"):
        att = _attribution_stage(lm, config, items, words)
    with run.timed("attention"):
        attn = _attention_stage(lm, config)
    table = _table(items, res, att, adapter)
    results["input"]["bias_ratio_check"] = _ratio_check(table, words)
    with run.timed("statistics"):
        summary = consistency_summary(table, config.n_permutations, config.seed, config.alpha)
    summary.update(power=config.power, rho_of_interest=config.rho_of_interest)
    decisions = family({"consistency": summary, "words": words})
    lines = verdict(summary, config.bias) + [d.sentence() for d in decisions.values()]

    # The table and tensors are summaries (a few MB at most): serialised in memory, then written
    # by temp file + rename like every other artifact.
    atomic_write_parquet(run.artifact("numbers.parquet"), table)
    metadata = {
        "numbers": json.dumps([i.number for i in items]),
        "categories": json.dumps([i.category for i in items]),
        "layer_convention": "layer l = blocks.l.hook_resid_post; *_embed = blocks.0.hook_resid_pre",
        "bias": config.bias,
        "control": config.control,
    }
    tensors = _tensors(res, att, attn)
    atomic_write_bytes(run.artifact("mechanistic.safetensors"), safetensors_bytes(tensors, metadata))
    figures: list[str] = []
    with run.timed("figures"):
        figures += _save_figure(_similarity_figure(table, res, config), run, "similarity_by_layer")
        figures += _save_figure(
            _contribution_figure(table, res, att, adapter.n_heads, config),
            run,
            "head_contributions",
        )
        heads = _plotted_heads(table, config.attention.plot_heads)
        for fig, name in zip(
            _attention_figures(attn, heads, config),
            ("attention_to_tokens", "attention_patterns"),
            strict=False,
        ):
            figures += _save_figure(fig, run, name)

    f = att["fields"]
    results.update(
        {
            "partial": False,
            "prompts": {
                "residual": {
                    "format": config.residual.format,
                    **{k: p.to_dict() for k, p in res["prompts"].items()},
                    "final_position": "last token: the animal word / the number's last digit",
                },
                "attribution": {k: p.to_dict() for k, p in att["prompts"].items()},
                "attention": attn["prompts"],
            },
            "definitions": {
                "cos_diff": f"cos(number, {config.bias} statement) − cos(number, {config.control} statement) "
                "of resid_post at the final position, per layer",
                "spike_layer": "argmax over the searched blocks l of cos_diff[l] − cos_diff[l−1] (default "
                "blocks 1..L−1; for block 0, l−1 is the embedding); ties → earliest",
                "head_score": f"contrastive: the head's output (z through its W_O slice) at the number "
                f"statement's final position, through the final norm frozen at that prompt's final "
                f"residual, · (W_U[{config.bias}] − W_U[{config.control}]): its direct contribution to "
                f"logit({config.bias}) − logit({config.control}), at the spike layer; top head = argmax "
                "over that layer's heads",
                "mlp_score": "contrastive: the same for hook_mlp_out at the spike layer",
                "attribution_claim": "partial Spearman correlation of dla_mlp with bias_ratio given "
                "logit_diff (ranks residualised on its rank), Freedman–Lane permutation p; Holm within "
                "the mechanistic family (consistency.attribution, claims)",
                "dla": f"component · (W_U[{config.bias}] − W_U[{config.control}]) through the final norm frozen "
                "at the actual final residual (first tokens of the words)",
                "bias_ratio_first_token": "P(first token of bias word | number prompt) / P(… | neutral prompt)",
            },
            "approximations": (
                [
                    "post-norm model: head outputs pass through the post-attention norm frozen at the full "
                    "attention output; their sum is exact, the split among heads is a linearisation"
                ]
                if adapter.post_norm_residual
                else []
            )
            + [
                "final norm frozen at the actual final residual: the DLA sum is exact, the split among "
                "components is a linearisation"
            ],
            "layers_searched": (
                sorted(set(config.layers))
                if config.layers is not None
                else list(range(1, adapter.n_layers)) or [0]
            ),
            "residual": {
                "mean_diff_by_layer": {
                    name: res["diff"][mask].mean(0)[1:].tolist() for name, mask in _groups(table)
                },
            },
            "attribution": {
                "closure_max_abs_error": att["closure_error"],
                "residual_max_abs_error": float(f["residual_error"].max()),
                "neutral": {
                    "logit_diff": float(f["logit_diff"][0]),
                    "p_bias_first_token": float(f["p_bias"][0]),
                    "p_control_first_token": float(f["p_control"][0]),
                },
            },
            "attention": {
                "plotted_heads": [head_label(*h) for h in heads],
                "top_to_number": _top_cells(attn["to_number"].mean(0)),
                "top_to_animal": _top_cells(attn["to_animal"].mean(0)),
            },
            "component_score": "contrastive",
            "consistency": summary,
            "claims": {
                "family": "mechanistic",
                "alpha": config.alpha,
                "method": "Holm over the family's tests",
                "decisions": [
                    {
                        "name": d.claim.name,
                        "statement": d.claim.statement,
                        "estimand": d.claim.estimand,
                        "test": d.claim.test,
                        "statistic": d.estimate.rho if d.estimate else None,
                        "ci": [d.estimate.ci_low, d.estimate.ci_high] if d.estimate else None,
                        "p": d.estimate.p_value if d.estimate else None,
                        "p_holm": d.p_adjusted,
                        "verdict": d.verdict.value,
                        "reason": d.reason,
                        "settle": d.settle,
                    }
                    for d in decisions.values()
                ],
            },
            "verdict": lines,
            "numbers": table.astype(object).where(table.notna(), None).to_dict(orient="records"),
            "artifacts": {
                "table": "numbers.parquet",
                "tensors": "mechanistic.safetensors",
                "figures": figures,
            },
        }
    )
    results = _finite(results)
    print_summary(results, config)
    return results


def _finite(value: Any) -> Any:
    """NaN / inf -> None, recursively: results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio_check(table: pd.DataFrame, words: dict[str, Any]) -> dict[str, Any]:
    """Given bias ratios against the ones measured here (first token of the bias word): equal up
    to float error when the word is one token and the prompts are the entanglement study's."""
    given = table[table["bias_ratio_source"] == "given"]
    if given.empty:
        return {"n": 0}
    relative = (given["bias_ratio"] / given["bias_ratio_first_token"] - 1).abs()
    return {
        "n": len(given),
        "max_relative_difference": float(relative.max()),
        "bias_word_single_token": words["bias"]["single_token"],
        "note": "given ratio vs first-token ratio measured on the attribution prompt",
    }


def _top_cells(grid: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    values, index = grid.flatten().topk(min(k, grid.numel()))
    H = grid.shape[1]
    return [
        {"head": head_label(int(i) // H, int(i) % H), "attention": float(v)}
        for v, i in zip(values, index, strict=True)
    ]


def print_summary(results: dict[str, Any], config: MechanisticConfig) -> None:
    console = Console(soft_wrap=True)
    inp = results["input"]
    cats = results["consistency"]["categories"]
    where = f"{inp['source']}" + (
        f" {inp['entanglement_run']} [{inp['set']}]" if inp["source"] == "entanglement_run" else ""
    )
    console.print(
        f"[bold]Mechanistic analysis[/bold] of {results['model']['spec']}: {inp['n_numbers']} numbers from {where}"
        + (
            f" ({', '.join(f'{c} {n}' for c, n in cats.items())})"
            if cats
            else " (categories unknown)"
        )
        + f"; {config.bias} vs {config.control}; residual statements {config.residual.format}."
    )
    if "note" in inp:
        console.print(f"Note: {inp['note']}")
    a = results["attribution"]
    console.print(
        f"DLA closure: components sum to the logit difference within {a['closure_max_abs_error']:.2g}."
    )
    for line in results["verdict"]:
        console.print(f"- {line}")


EXPERIMENT = Experiment(
    "mechanistic",
    "Residual similarity per layer, spike layers, head/MLP attribution, attention, consistency by category",
    MechanisticConfig,
    execute,
)
