"""mechanistic: what was measured, written down: the per-number table (numbers.parquet,
`number_table`), the results with the measurements and with the claims (`with_measurements`,
`with_claims`, their definitions and approximations), and the tensors and metadata of
mechanistic.safetensors (`tensors`, `metadata`).
"""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import torch

from sublens.arch import Adapter
from sublens.claims import AssociationDecision
from sublens.experiments.mechanistic.analysis import category_groups, ratio_check
from sublens.experiments.mechanistic.config import MechanisticConfig
from sublens.experiments.mechanistic.measuring import Attention, LogitAttribution, Residuals
from sublens.experiments.mechanistic.results import (
    AttentionRecord,
    AttributionRecord,
    ClaimsRecord,
    Consistency,
    DecisionRecord,
    Definitions,
    HeadAttention,
    MechanisticResults,
    NeutralRecord,
    NumberRow,
    PromptsRecord,
    RatioCheck,
    ResidualRecord,
)
from sublens.hooks import head_label
from sublens.mechanistic import NumberItem
from sublens.report.sections.mechanistic import FAMILY


# ---- the per-number table and the results -------------------------------------------------------
def number_table(
    items: list[NumberItem], residuals: Residuals, attribution: LogitAttribution, n_heads: int
) -> pd.DataFrame:
    """One row per number (numbers.parquet): its bias ratio, spike layer and top heads, DLA sums."""
    f = attribution.fields
    heads = f["heads"][1:]  # [N, L, H] (row 0 is the neutral prompt)
    flat = heads.flatten(1).argmax(dim=1)
    p_bias, p_neutral = f["p_bias"][1:], float(f["p_bias"][0])
    measured = (p_bias / p_neutral).numpy()
    rows = []
    for i, item in enumerate(items):
        layer = int(residuals.spike[i])
        rows.append(
            {
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
            }
        )
    return pd.DataFrame(rows)


def with_measurements(
    results: MechanisticResults,
    config: MechanisticConfig,
    adapter: Adapter,
    table: pd.DataFrame,
    residuals: Residuals,
    attribution: LogitAttribution,
    attention: Attention,
) -> MechanisticResults:
    """The results with what was measured: prompts, definitions, residual, attribution and
    attention summaries, and the per-number rows."""
    f = attribution.fields
    checked = RatioCheck.model_validate(ratio_check(table, results.words.bias.single_token))
    return results.model_copy(
        update={
            "input": results.input.model_copy(update={"bias_ratio_check": checked}),
            "prompts": PromptsRecord.model_validate(
                {
                    "residual": {
                        "format": config.residual.format,
                        **{k: p.to_dict() for k, p in residuals.prompts.items()},
                        "final_position": "last token: the animal word / the number's last digit",
                    },
                    "attribution": {k: p.to_dict() for k, p in attribution.prompts.items()},
                    "attention": attention.prompts,
                }
            ),
            "definitions": definitions(config),
            "approximations": approximations(adapter),
            "layers_searched": (
                sorted(set(config.layers)) if config.layers is not None else list(range(1, adapter.n_layers)) or [0]
            ),
            "residual": ResidualRecord(
                mean_diff_by_layer={
                    name: residuals.diff[mask].mean(0)[1:].tolist() for name, mask in category_groups(table)
                }
            ),
            "attribution": AttributionRecord(
                closure_max_abs_error=attribution.closure_error,
                residual_max_abs_error=float(f["residual_error"].max()),
                neutral=NeutralRecord(
                    logit_diff=float(f["logit_diff"][0]),
                    p_bias_first_token=float(f["p_bias"][0]),
                    p_control_first_token=float(f["p_control"][0]),
                ),
            ),
            "attention": AttentionRecord(
                plotted_heads=plotted_heads(table, config.attention.plot_heads),
                top_to_number=top_cells(attention.to_number.mean(0)),
                top_to_animal=top_cells(attention.to_animal.mean(0)),
            ),
            "component_score": "contrastive",
            "numbers": [
                NumberRow.model_validate(row)
                for row in table.astype(object).where(table.notna(), None).to_dict(orient="records")
            ],
        }
    )


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
    post_norm = [
        "post-norm model: head outputs pass through the post-attention norm frozen at the full "
        "attention output; their sum is exact, the split among heads is a linearisation"
    ]
    return (post_norm if adapter.post_norm_residual else []) + [
        "final norm frozen at the actual final residual: the DLA sum is exact, the split among "
        "components is a linearisation"
    ]


def plotted_heads(table: pd.DataFrame, k: int) -> list[str]:
    """The k heads most often top (at the spike layer or by DLA) across numbers."""
    counts = Counter([*table["top_head"], *table["dla_top_head"]])
    return [label for label, _ in counts.most_common(k)]


def top_cells(grid: torch.Tensor, k: int = 5) -> list[HeadAttention]:
    values, index = grid.flatten().topk(min(k, grid.numel()))
    H = grid.shape[1]
    return [
        HeadAttention(head=head_label(int(i) // H, int(i) % H), attention=float(v))
        for v, i in zip(values, index, strict=True)
    ]


def with_claims(
    results: MechanisticResults,
    config: MechanisticConfig,
    consistency: Consistency,
    decisions: dict[str, AssociationDecision],
    lines: list[str],
) -> MechanisticResults:
    """The results with the consistency statistics, the family's decisions and the verdict."""
    claims = ClaimsRecord(
        family=FAMILY,
        alpha=config.alpha,
        method="Holm over the family's tests",
        decisions=[
            DecisionRecord(
                name=d.claim.name,
                statement=d.claim.statement,
                estimand=d.claim.estimand,
                test=d.claim.test,
                statistic=d.estimate.rho if d.estimate else None,
                ci=[d.estimate.ci_low, d.estimate.ci_high] if d.estimate else None,
                p=d.estimate.p_value if d.estimate else None,
                p_holm=d.p_adjusted,
                p_equivalence_holm=d.equivalence_p_adjusted,
                verdict=d.verdict,
                reason=d.reason,
                settle=d.settle,
            )
            for d in decisions.values()
        ],
    )
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
