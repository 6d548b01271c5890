"""mechanistic: where in the network does a number meet the animal, and does it depend on the
number's entanglement category?

1. The numbers (given in the config, the categorised numbers of an entanglement run, or every
   two-digit number) and the model are loaded; the bias and control words must be one token.
2. Residuals: each number statement's final-position residual is compared with the bias and
   control statements' per layer (cosine difference); the spike layer is its largest rise, and
   every head and MLP is scored by its direct contribution to logit(bias) - logit(control).
3. Attribution: the number-priming prompt's logit difference is decomposed into the embedding,
   every head and every MLP (direct logit attribution), against a neutral prompt.
4. Attention from the final position of the attention prompts to the number and animal tokens.
5. Compare: are the spike layer and top heads tied to the category, do the scores track the
   bias ratio (`analysis`); the claims of the mechanistic family are decided with Holm
   (`sublens.report.sections.mechanistic.family`).

Definitions are in `sublens.mechanistic` (module docstring), prompt choices in `config`. The
results are saved once after the residual stage (``partial``) and at the end.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from safetensors.torch import save as safetensors_bytes

from sublens.arch import Adapter
from sublens.claims import AssociationDecision
from sublens.experiments.mechanistic.analysis import (
    category_groups,
    consistency_summary,
    ratio_check,
    verdict,
)
from sublens.experiments.mechanistic.config import DEFAULT_NUMBERS, MechanisticConfig
from sublens.experiments.mechanistic.figures import make_figures
from sublens.experiments.mechanistic.results import (
    TABLE_FILE,
    TENSOR_FILE,
    Artifacts,
    AttentionRecord,
    AttributionRecord,
    ClaimsRecord,
    Consistency,
    DecisionRecord,
    Definitions,
    HeadAttention,
    InputRecord,
    MechanisticResults,
    ModelRecord,
    NeutralRecord,
    NumberRow,
    PromptsRecord,
    RatioCheck,
    ResidualRecord,
    Words,
    WordToken,
)
from sublens.hooks import capture, head_label, hook_names
from sublens.mechanistic import (
    MechanisticError,
    NumberItem,
    attention_to,
    attribution_from_cache,
    component_cosines,
    contrastive_component_scores,
    dla_hook_names,
    final_position_pass,
    read_entanglement_numbers,
    similarity_profiles,
    spike_layers,
    token_span,
    top_heads,
)
from sublens.models import LoadedModel, load_model
from sublens.prompts import PromptText, encode_prompt, make_prompt, raw_prompt
from sublens.report.sections.mechanistic import FAMILY, family
from sublens.runs import Run, atomic_write_bytes, atomic_write_parquet


def execute(config: MechanisticConfig, run: Run) -> MechanisticResults:
    items, source = numbers_to_analyse(config)
    with run.timed("load"):
        lm = load_model(config.model, config.device, config.dtype)
    run.note(models={config.model: lm.describe()})
    check_layers(config, lm.adapter.n_layers)
    words = Words(bias=word_token(lm, config.bias), control=word_token(lm, config.control))
    results = MechanisticResults(
        model=ModelRecord.model_validate(lm.describe()), words=words, partial=True,
        input=InputRecord.model_validate({**source, "n_numbers": len(items)}))

    with run.timed("residual"):
        residuals = measure_residuals(lm, config, items, words)
    run.save_results(results)
    with run.timed("attribution"):
        attribution = measure_attribution(lm, config, items, words)
    with run.timed("attention"):
        attention = measure_attention(lm, config)
    table = number_table(items, residuals, attribution, lm.adapter.n_heads)
    results = with_measurements(results, config, lm.adapter, table, residuals, attribution, attention)

    with run.timed("statistics"):
        summary = consistency_summary(table, config.n_permutations, config.seed, config.alpha)
    consistency = Consistency.model_validate(
        {**summary, "power": config.power, "rho_of_interest": config.rho_of_interest})
    decisions = family(consistency, words)
    results = with_claims(results, config, consistency, decisions,
                          verdict(summary, config.bias) + [d.sentence() for d in decisions.values()])

    atomic_write_parquet(run.artifact(TABLE_FILE), table)
    atomic_write_bytes(run.artifact(TENSOR_FILE),
                       safetensors_bytes(tensors(residuals, attribution, attention), metadata(items, config)))
    with run.timed("figures"):
        figures = make_figures(results, run.path)
    results = results.model_copy(update={
        "partial": False, "artifacts": Artifacts(table=TABLE_FILE, tensors=TENSOR_FILE, figures=figures)})
    print_summary(results, config)
    return results


# ---- inputs and prompts ---------------------------------------------------------------------
def numbers_to_analyse(config: MechanisticConfig) -> tuple[list[NumberItem], dict[str, Any]]:
    """The numbers with their categories and bias ratios where known, and where they came from."""
    if config.entanglement_run is not None:
        items, info = read_entanglement_numbers(config.entanglement_run, config.entanglement_set)
        source: dict[str, Any] = {"source": "entanglement_run", **info}
    elif config.numbers is not None:
        items = [NumberItem(e.number, e.category, e.bias_ratio) for e in config.numbers]
        source = {"source": "config"}
    else:
        items = [NumberItem(n) for n in DEFAULT_NUMBERS]
        source = {"source": "default"}
    if not any(item.category is not None for item in items):
        source["note"] = (
            "no categories given: per-category summaries and tests are skipped; "
            "give entanglement_run (or categories in numbers) for them"
        )
    return items, source


def check_layers(config: MechanisticConfig, n_layers: int) -> None:
    if config.layers is not None and not all(0 <= layer < n_layers for layer in config.layers):
        raise MechanisticError(f"layers must be among 0..{n_layers - 1}; got {config.layers}.")


def word_token(lm: LoadedModel, word: str) -> WordToken:
    """The word's token (with its leading space); a word of several tokens is refused."""
    ids = lm.tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
    if not ids:
        raise MechanisticError(f"{word!r} tokenizes to nothing.")
    if len(ids) > 1:  # its first token's logit would also stand for every other word it starts
        pieces = lm.tokenizer.convert_ids_to_tokens(list(ids))
        raise MechanisticError(
            f"' {word}' is {len(ids)} tokens for this tokenizer ({pieces}); the direct logit attribution "
            "and the bias ratio here read one token per word. Choose one-token words (bias, control).")
    return WordToken(word=f" {word}", token_ids=list(ids), first_token=int(ids[0]), single_token=len(ids) == 1)


def statement_prompt(lm: LoadedModel, config: MechanisticConfig, text: str, question: str) -> PromptText:
    """A statement in the residual format: raw, or the prefilled answer to `question`."""
    if config.residual.format == "raw":
        return raw_prompt(text)
    return make_prompt(lm.tokenizer, question, config.residual.system, prefill=text)


def token_offsets(lm: LoadedModel, prompt: PromptText) -> tuple[list[int], list[tuple[int, int]]]:
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


def ids_ending_the_text(lm: LoadedModel, prompt: PromptText) -> list[int]:
    """Token ids of a prompt whose last token must end the text (the word or the last digit)."""
    ids, offsets = token_offsets(lm, prompt)
    if offsets[-1][1] != len(prompt.text):
        raise MechanisticError(
            f"The last token of {prompt.text[-40:]!r} does not end the text (the tokenizer appends "
            "a token?): the final position would not be the statement's last word or digit."
        )
    return ids


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


def measure_residuals(
    lm: LoadedModel, config: MechanisticConfig, items: list[NumberItem], words: Words
) -> Residuals:
    adapter = lm.adapter
    L = adapter.n_layers
    stack_names = ["blocks.0.hook_resid_pre", *hook_names(["hook_resid_post"], range(L))]
    animals = [
        statement_prompt(lm, config, config.residual.animal.format(word=w), config.residual.animal_question)
        for w in (config.bias, config.control)
    ]
    numbers = [
        statement_prompt(lm, config, config.residual.number.format(number=item.number),
                         config.residual.number_question)
        for item in items
    ]
    refs = torch.zeros(2, L + 1, adapter.d_model, dtype=torch.float64)

    def on_animal(batch: list[int], acts: dict[str, torch.Tensor], _logits: torch.Tensor) -> None:
        refs[batch] = torch.stack([acts[n] for n in stack_names], dim=1).double().cpu()

    final_position_pass(lm.model, adapter, [ids_ending_the_text(lm, p) for p in animals], stack_names,
                        on_animal, config.batch_size, "residual: animals")
    N = len(items)
    cos = torch.zeros(2, N, L + 1, dtype=torch.float64)
    head_cos = torch.zeros(N, 2, L, adapter.n_heads, dtype=torch.float64)
    mlp_cos = torch.zeros(N, 2, L, dtype=torch.float64)
    head_contrast = torch.zeros(N, L, adapter.n_heads, dtype=torch.float64)
    mlp_contrast = torch.zeros(N, L, dtype=torch.float64)
    bias_token, control_token = words.bias.first_token, words.control.first_token
    z_names, mlp_names = hook_names(["attn.hook_z"], range(L)), hook_names(["hook_mlp_out"], range(L))

    def on_numbers(batch: list[int], acts: dict[str, torch.Tensor], _logits: torch.Tensor) -> None:
        stack = torch.stack([acts[n] for n in stack_names], dim=1).double().cpu()  # [b, L+1, d]
        for r in range(2):
            cos[r, batch] = similarity_profiles(stack, refs[r])
        z = torch.stack([acts[n] for n in z_names], dim=1)  # [b, L, H, d_head]
        mlp = torch.stack([acts[n] for n in mlp_names], dim=1)  # [b, L, d]
        heads, mlps = component_cosines(adapter, z, mlp, refs[:, 1:].to(z.device))
        head_cos[batch], mlp_cos[batch] = heads.cpu(), mlps.cpu()
        heads, mlps = contrastive_component_scores(
            adapter, acts["blocks.0.hook_resid_pre"], z, mlp, acts[stack_names[-1]],
            bias_token, control_token,
        )
        head_contrast[batch], mlp_contrast[batch] = heads.cpu(), mlps.cpu()

    final_position_pass(lm.model, adapter, [ids_ending_the_text(lm, p) for p in numbers],
                        [*stack_names, *z_names, *mlp_names], on_numbers, config.batch_size,
                        "residual: numbers")
    diff = cos[0] - cos[1]  # [N, L+1]
    spike, jump = spike_layers(diff, config.layers)
    head_at_spike, head_score = top_heads(head_contrast, spike)
    return Residuals(
        prompts={"bias": animals[0], "control": animals[1], "number_example": numbers[0]},
        references=refs, cos=cos, diff=diff, spike=spike, jump=jump, head_cos=head_cos,
        mlp_cos=mlp_cos, head_contrast=head_contrast, mlp_contrast=mlp_contrast,
        top_head=head_at_spike, head_score=head_score, mlp_score=mlp_contrast[torch.arange(N), spike],
    )


# ---- direct logit attribution -----------------------------------------------------------------
ATTRIBUTION_FIELDS: dict[str, tuple[str, ...]] = {  # name -> dimensions after the prompt's
    "embed": (), "heads": ("layer", "head"), "attn_bias": ("layer",), "mlp": ("layer",),
    "constant": (), "logit_diff": (), "model_logit_diff": (), "residual_error": (),
    "p_bias": (), "p_control": (),
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
    fields = {key: torch.zeros(len(all_prompts), *(size[d] for d in dims), dtype=torch.float64)
              for key, dims in ATTRIBUTION_FIELDS.items()}
    bias_token, control_token = words.bias.first_token, words.control.first_token

    def on_batch(batch: list[int], acts: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        dla = attribution_from_cache(adapter, acts, bias_token, control_token, position=None)
        for key in ("embed", "heads", "attn_bias", "mlp", "constant", "logit_diff", "residual_error"):
            fields[key][batch] = getattr(dla, key).cpu()
        logp = torch.log_softmax(logits.double(), dim=-1).cpu()
        fields["model_logit_diff"][batch] = (logits[:, bias_token] - logits[:, control_token]).double().cpu()
        fields["p_bias"][batch] = logp[:, bias_token].exp()
        fields["p_control"][batch] = logp[:, control_token].exp()

    final_position_pass(lm.model, adapter, [encode_prompt(lm.tokenizer, p) for p in all_prompts],
                        dla_hook_names(L), on_batch, config.batch_size, "attribution")
    total = (fields["embed"] + fields["heads"].sum((1, 2)) + fields["attn_bias"].sum(1)
             + fields["mlp"].sum(1) + fields["constant"])
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
        described.append({
            "number": number, "prompt": prompt.to_dict(), "number_tokens": number_span,
            "animal_tokens": animal_span, "final_token": len(ids) - 1,
            "tokens": [lm.tokenizer.decode([i]) for i in ids],
        })
    return Attention(described, patterns, torch.stack(to_number), torch.stack(to_animal))


# ---- the per-number table and the results -------------------------------------------------------
def number_table(items: list[NumberItem], residuals: Residuals, attribution: LogitAttribution,
                 n_heads: int) -> pd.DataFrame:
    """One row per number (numbers.parquet): its bias ratio, spike layer and top heads, DLA sums."""
    f = attribution.fields
    heads = f["heads"][1:]  # [N, L, H] (row 0 is the neutral prompt)
    flat = heads.flatten(1).argmax(dim=1)
    p_bias, p_neutral = f["p_bias"][1:], float(f["p_bias"][0])
    measured = (p_bias / p_neutral).numpy()
    rows = []
    for i, item in enumerate(items):
        layer = int(residuals.spike[i])
        rows.append({
            "category": item.category,
            "number": item.number,
            "bias_ratio": item.bias_ratio if item.bias_ratio is not None else float(measured[i]),
            "bias_ratio_source": "given" if item.bias_ratio is not None else "measured_first_token",
            "bias_ratio_first_token": float(measured[i]),
            "p_bias_first_token": float(p_bias[i]),
            "p_control_first_token": float(f["p_control"][1 + i]),
            "spike_layer": layer,
            "spike_jump": float(residuals.jump[i]),
            "cos_diff_at_spike": float(residuals.diff[i, layer + 1]),
            "top_head": head_label(layer, int(residuals.top_head[i])),
            "head_score": float(residuals.head_score[i]),
            "mlp_score": float(residuals.mlp_score[i]),
            "dla_top_head": head_label(int(flat[i]) // n_heads, int(flat[i]) % n_heads),
            "dla_top_head_value": float(heads[i].flatten()[flat[i]]),
            "dla_heads": float(heads[i].sum() + f["attn_bias"][1 + i].sum()),
            "dla_mlp": float(f["mlp"][1 + i].sum()),
            "dla_embed": float(f["embed"][1 + i]),
            "logit_diff": float(f["logit_diff"][1 + i]),
        })
    return pd.DataFrame(rows)


def with_measurements(results: MechanisticResults, config: MechanisticConfig, adapter: Adapter,
                      table: pd.DataFrame, residuals: Residuals, attribution: LogitAttribution,
                      attention: Attention) -> MechanisticResults:
    """The results with what was measured: prompts, definitions, residual, attribution and
    attention summaries, and the per-number rows."""
    f = attribution.fields
    checked = RatioCheck.model_validate(ratio_check(table, results.words.bias.single_token))
    return results.model_copy(update={
        "input": results.input.model_copy(update={"bias_ratio_check": checked}),
        "prompts": PromptsRecord.model_validate({
            "residual": {
                "format": config.residual.format,
                **{k: p.to_dict() for k, p in residuals.prompts.items()},
                "final_position": "last token: the animal word / the number's last digit",
            },
            "attribution": {k: p.to_dict() for k, p in attribution.prompts.items()},
            "attention": attention.prompts,
        }),
        "definitions": definitions(config),
        "approximations": approximations(adapter),
        "layers_searched": (sorted(set(config.layers)) if config.layers is not None
                            else list(range(1, adapter.n_layers)) or [0]),
        "residual": ResidualRecord(mean_diff_by_layer={
            name: residuals.diff[mask].mean(0)[1:].tolist() for name, mask in category_groups(table)}),
        "attribution": AttributionRecord(
            closure_max_abs_error=attribution.closure_error,
            residual_max_abs_error=float(f["residual_error"].max()),
            neutral=NeutralRecord(logit_diff=float(f["logit_diff"][0]), p_bias_first_token=float(f["p_bias"][0]),
                                  p_control_first_token=float(f["p_control"][0])),
        ),
        "attention": AttentionRecord(
            plotted_heads=plotted_heads(table, config.attention.plot_heads),
            top_to_number=top_cells(attention.to_number.mean(0)),
            top_to_animal=top_cells(attention.to_animal.mean(0)),
        ),
        "component_score": "contrastive",
        "numbers": [NumberRow.model_validate(row)
                    for row in table.astype(object).where(table.notna(), None).to_dict(orient="records")],
    })


def definitions(config: MechanisticConfig) -> Definitions:
    bias, control = config.bias, config.control
    return Definitions(
        cos_diff=f"cos(number, {bias} statement) − cos(number, {control} statement) "
        "of resid_post at the final position, per layer",
        spike_layer="argmax over the searched blocks l of cos_diff[l] − cos_diff[l−1] (default "
        "blocks 1..L−1; for block 0, l−1 is the embedding); ties → earliest",
        head_score=f"contrastive: the head's output (z through its W_O slice) at the number "
        f"statement's final position, through the final norm frozen at that prompt's final "
        f"residual, · (W_U[{bias}] − W_U[{control}]): its direct contribution to "
        f"logit({bias}) − logit({control}), at the spike layer; top head = argmax "
        "over that layer's heads",
        mlp_score="contrastive: the same for hook_mlp_out at the spike layer",
        attribution_claim="partial Spearman correlation of dla_mlp with bias_ratio given "
        "logit_diff (ranks residualised on its rank), Freedman–Lane permutation p; Holm within "
        "the mechanistic family (consistency.attribution, claims)",
        dla=f"component · (W_U[{bias}] − W_U[{control}]) through the final norm frozen "
        "at the actual final residual (first tokens of the words)",
        bias_ratio_first_token="P(first token of bias word | number prompt) / P(… | neutral prompt)",
    )


def approximations(adapter: Adapter) -> list[str]:
    post_norm = ["post-norm model: head outputs pass through the post-attention norm frozen at the full "
                 "attention output; their sum is exact, the split among heads is a linearisation"]
    return (post_norm if adapter.post_norm_residual else []) + [
        "final norm frozen at the actual final residual: the DLA sum is exact, the split among "
        "components is a linearisation"]


def plotted_heads(table: pd.DataFrame, k: int) -> list[str]:
    """The k heads most often top (at the spike layer or by DLA) across numbers."""
    counts = Counter([*table["top_head"], *table["dla_top_head"]])
    return [label for label, _ in counts.most_common(k)]


def top_cells(grid: torch.Tensor, k: int = 5) -> list[HeadAttention]:
    values, index = grid.flatten().topk(min(k, grid.numel()))
    H = grid.shape[1]
    return [HeadAttention(head=head_label(int(i) // H, int(i) % H), attention=float(v))
            for v, i in zip(values, index, strict=True)]


def with_claims(results: MechanisticResults, config: MechanisticConfig, consistency: Consistency,
                decisions: dict[str, AssociationDecision], lines: list[str]) -> MechanisticResults:
    """The results with the consistency statistics, the family's decisions and the verdict."""
    claims = ClaimsRecord(family=FAMILY, alpha=config.alpha, method="Holm over the family's tests", decisions=[
        DecisionRecord(
            name=d.claim.name, statement=d.claim.statement, estimand=d.claim.estimand, test=d.claim.test,
            statistic=d.estimate.rho if d.estimate else None,
            ci=[d.estimate.ci_low, d.estimate.ci_high] if d.estimate else None,
            p=d.estimate.p_value if d.estimate else None, p_holm=d.p_adjusted,
            verdict=d.verdict, reason=d.reason, settle=d.settle)
        for d in decisions.values()])
    return results.model_copy(update={"consistency": consistency, "claims": claims, "verdict": lines})


# ---- artifacts --------------------------------------------------------------------------------
def tensors(residuals: Residuals, attribution: LogitAttribution, attention: Attention) -> dict[str, torch.Tensor]:
    """mechanistic.safetensors: every per-number, per-layer and per-head measurement."""
    f = attribution.fields
    out = {
        "cos_bias": residuals.cos[0, :, 1:],
        "cos_control": residuals.cos[1, :, 1:],
        "cos_diff": residuals.diff[:, 1:],
        "cos_bias_embed": residuals.cos[0, :, 0],
        "cos_control_embed": residuals.cos[1, :, 0],
        "reference_resid": residuals.references,
        "spike_layer": residuals.spike,
        "spike_jump": residuals.jump,
        "head_cos_bias": residuals.head_cos[:, 0],
        "head_cos_control": residuals.head_cos[:, 1],
        "mlp_cos_bias": residuals.mlp_cos[:, 0],
        "mlp_cos_control": residuals.mlp_cos[:, 1],
        "head_score_contrastive": residuals.head_contrast,
        "mlp_score_contrastive": residuals.mlp_contrast,
        "attention_to_number": attention.to_number,
        "attention_to_animal": attention.to_animal,
    }
    for key in ("heads", "attn_bias", "mlp", "embed", "constant", "logit_diff"):
        out[f"dla_{key}"] = f[key][1:]
        out[f"neutral_dla_{key}"] = f[key][0]
    for i, pattern in enumerate(attention.patterns):
        out[f"attention_pattern_{i}"] = pattern
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def metadata(items: list[NumberItem], config: MechanisticConfig) -> dict[str, str]:
    return {
        "numbers": json.dumps([i.number for i in items]),
        "categories": json.dumps([i.category for i in items]),
        "layer_convention": "layer l = blocks.l.hook_resid_post; *_embed = blocks.0.hook_resid_pre",
        "bias": config.bias,
        "control": config.control,
    }


# ---- console ----------------------------------------------------------------------------------
def print_summary(results: MechanisticResults, config: MechanisticConfig) -> None:
    console = Console(soft_wrap=True)
    source = results.input
    categories = results.consistency.categories if results.consistency else {}
    where = source.source + (f" {source.entanglement_run} [{source.set}]"
                             if source.source == "entanglement_run" else "")
    console.print(
        f"[bold]Mechanistic analysis[/bold] of {results.model.spec}: {source.n_numbers} numbers from {where}"
        + (f" ({', '.join(f'{c} {n}' for c, n in categories.items())})" if categories
           else " (categories unknown)")
        + f"; {config.bias} vs {config.control}; residual statements {config.residual.format}."
    )
    if source.note is not None:
        console.print(f"Note: {source.note}")
    if results.attribution is not None:
        console.print(f"DLA closure: components sum to the logit difference within "
                      f"{results.attribution.closure_max_abs_error:.2g}.")
    for line in results.verdict or []:
        console.print(f"- {line}")
