"""Phase 4 (docs/design.md, "Measurements"): where in the network does a number meet the animal?

Definitions (they are part of the product; the experiment records them in results.json):

**Residual similarity.** For a prompt, r_l is ``blocks.{l}.hook_resid_post`` at the final
position (for "My favorite number is 87": the last digit) and r_emb is
``blocks.0.hook_resid_pre`` there (the embedding; with GPT-2 the position embedding too).
For number n and layer l::

    cos_bias[n, l] = cos(r_l(number n), r_l(bias statement))       e.g. "... the owl"
    cos_control[n, l] = cos(r_l(number n), r_l(control statement))  e.g. "... the dog"
    diff[n, l] = cos_bias[n, l] - cos_control[n, l]

**Spike layer.** The block that raises the difference most: the argmax over l of the first
difference ``diff[n, l] - diff[n, l-1]``, searched over blocks 1..L-1 by default. Block 0 is
left out unless asked for (``layers`` including 0; its jump is then taken from the same
difference on the embeddings, ``blocks.0.hook_resid_pre``): its input is the bare token
embedding, so its "jump" measures the change from a context-free token vector to a
contextual residual, not a step of processing (measured on SmolLM2: with block 0 included it
wins for most numbers, with a head score near 0). Ties go to the earliest layer. The jump is
reported beside the layer.

**Component scores (contrastive).** A head's contribution at the final position is its z
through its own slice of W_O (``hooks.per_head_output``); the MLP's is ``hook_mlp_out``. Its
score is its direct contribution to logit(bias) − logit(control) on the number statement: the
DLA below, ``(g * C(c) / s(x)) . (W_U[bias] - W_U[control])`` with the final norm frozen at that
prompt's final residual (``contrastive_component_scores``). It is contrastive (a component that
writes "animal" in general, owl and dog alike, scores 0) and in logits. The top head of a layer
is the head with the highest score. (The cosines with the bias and control statements'
residuals, ``component_cosines``, are kept as a record; they are not the scores.)

**Direct logit attribution (DLA).** The final residual is a sum of components::

    x = r_emb + sum_l ( sum_h c_{l,h} + b_l + m_l )     (head outputs, attention bias, MLP)

The final norm is not linear, so it is *frozen at the actual final residual*: its scale
(1/RMS, or 1/std after centering for LayerNorm) is computed once from x and applied to every
component, with the norm's gain (and centering). The frozen norm is linear, so each component
gets a logit contribution::

    DLA(c) = (g * C(c) / s(x)) . (W_U[bias] - W_U[control])

and all contributions plus the constant (the norm's bias and the unembedding bias, projected)
add up to the real logit difference exactly, up to float error. The frozen scale is the
standard linearisation (TransformerLens' "apply_ln" with a cached scale): what is approximate
is only the *split* among components, not their sum. Tokens: the first token of each word
(" owl", " dog"); a multi-token word is flagged.

**Post-norm models (Gemma3, ``adapter.post_norm_residual``).** What a layer adds to the
residual is ``post_attention_norm(sum_h c_h + b_O)``. Per-head outputs are taken before that
norm, so they are passed through the same norm frozen at the layer's full attention output:
``c'_h = g * c_h / rms(sum_h c_h + b_O)``. The c'_h add up exactly to what the layer adds to the
residual, so DLA still adds up to the logit difference; each single c'_h is the linearisation
(a head's share of a non-linear norm of the sum). The cosine of c'_h does not depend on the
frozen scale (a positive scalar), only on the gain g.

The statistics across numbers (is a label tied to the entanglement category, does a
component's DLA track the bias ratio beyond the total logit difference) are the mechanistic
experiment's own: `sublens.experiments.mechanistic.analysis`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from sublens.arch import Adapter
from sublens.entanglement import is_tuned_set
from sublens.errors import SublensError
from sublens.hooks import capture, hook_names, per_head_output
from sublens.runs import check_upstream_finished, read_json

_TWO_DIGITS = re.compile(r"^[0-9]{2}$")


class MechanisticError(SublensError):
    """Bad input to the mechanistic analysis (entanglement run, norms, prompts)."""


# ---------------------------------------------------------------------------------------------
# input numbers


@dataclass(frozen=True)
class NumberItem:
    number: str
    category: str | None = None
    bias_ratio: float | None = None


def _auto_set(rows: pd.DataFrame, sets: list[str]) -> str:
    """The categorised set to use when none is named: the only one; else the set whose numbers
    are all two-digit (the autoregressive 2-digit set); else the vocabulary set. Sets categorised
    by the fine-tuned teachers (``ar2@tuned``) are chosen only when named."""
    sets = [s for s in sets if not is_tuned_set(s)] or sets
    if len(sets) == 1:
        return sets[0]
    two_digit = [
        s
        for s in sets
        if rows.loc[rows["set"] == s, "number"].map(lambda n: bool(_TWO_DIGITS.match(n))).all()
    ]
    if two_digit:
        return two_digit[0]
    vocab = [s for s in sets if "vocab" in s.lower()]
    if vocab:
        return vocab[0]
    raise MechanisticError(
        f"Cannot tell which entanglement set to analyse: it has {', '.join(sets)}. "
        "Name one with entanglement_set=<set>."
    )


def read_entanglement_numbers(
    run_dir: str | Path, set_name: str | None = None
) -> tuple[list[NumberItem], dict[str, Any]]:
    """The categorised numbers of one set of an entanglement run, with their bias ratios.

    Reads ``numbers.parquet`` (columns set, category, number, bias_ratio, ...); rows with a null
    category are not part of any category and are skipped. ``set_name=None`` picks the set as
    ``_auto_set`` says. When results.json lists ``categories[set][category] = [numbers]``, the
    two are compared and the outcome recorded (``matches_results_json``).
    """
    path = Path(run_dir).expanduser()
    table_path = path / "numbers.parquet"
    if not table_path.is_file():
        raise MechanisticError(
            f"{str(path)!r} has no numbers.parquet: give the run directory of a finished "
            "entanglement run (`sublens run entanglement ...`), or list the numbers in the config."
        )
    check_upstream_finished(path, "entanglement")
    try:
        table = pd.read_parquet(table_path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise MechanisticError(
            f"{table_path} cannot be read as a table ({type(exc).__name__}: {exc}): it is torn or not "
            "an entanglement table. Rerun the entanglement run that wrote it."
        ) from exc
    missing = {"set", "category", "number"} - set(table.columns)
    if missing:
        raise MechanisticError(
            f"{table_path} lacks the column(s) {', '.join(sorted(missing))}: is it an entanglement run?"
        )
    table = table.assign(set=table["set"].astype(str), number=table["number"].astype(str))
    rows = table[table["category"].notna()]
    sets = sorted(rows["set"].unique())
    if not sets:
        raise MechanisticError(f"{table_path} has no categorised numbers (every category is null).")
    chosen = set_name if set_name is not None else _auto_set(rows, sets)
    if chosen not in sets:
        raise MechanisticError(
            f"The entanglement run has no categorised set {chosen!r}; it has: {', '.join(sets)}."
        )
    selected = rows[rows["set"] == chosen]
    duplicated = selected["number"][selected["number"].duplicated()].tolist()
    if duplicated:
        raise MechanisticError(
            f"Set {chosen!r} lists the number(s) {', '.join(duplicated[:5])} more than once: "
            "categories must be disjoint."
        )
    has_ratio = "bias_ratio" in selected.columns
    items = []
    for _, row in selected.iterrows():
        ratio = row["bias_ratio"] if has_ratio else None
        ratio_value = None if ratio is None or pd.isna(ratio) else float(ratio)
        items.append(NumberItem(str(row["number"]), str(row["category"]), ratio_value))
    info: dict[str, Any] = {
        "entanglement_run": str(path),
        "set": chosen,
        "set_chosen": "given" if set_name is not None else "auto",
        "sets_available": sets,
        "bias_ratio_column": has_ratio,
        "matches_results_json": _matches_results(path, chosen, items),
    }
    return items, info


def _matches_results(path: Path, set_name: str, items: list[NumberItem]) -> bool | None:
    results_path = path / "results.json"
    if not results_path.is_file():
        return None
    categories = read_json(results_path).get("categories")
    listed = categories.get(set_name) if isinstance(categories, dict) else None
    if not isinstance(listed, dict):
        return None
    ours: dict[str, set[str]] = defaultdict(set)
    for item in items:
        ours[str(item.category)].add(item.number)
    theirs = {str(cat): {str(n) for n in numbers} for cat, numbers in listed.items()}
    return dict(ours) == theirs


# ---------------------------------------------------------------------------------------------
# batched forward passes


def grouped_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by sequence length, then cut into batches: no batch is ever padded."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, length in enumerate(lengths):
        by_length[length].append(index)
    return [
        indices[start : start + batch_size]
        for length in sorted(by_length)
        for indices in [by_length[length]]
        for start in range(0, len(indices), batch_size)
    ]


BatchFn = Callable[[list[int], dict[str, torch.Tensor], torch.Tensor], None]


def final_position_pass(
    model: nn.Module,
    adapter: Adapter,
    sequences: Sequence[Sequence[int]],
    names: Sequence[str],
    on_batch: BatchFn,
    batch_size: int = 16,
    desc: str = "forward",
    progress: bool = True,
) -> None:
    """Run every sequence, capturing `names` at the final position, in unpadded batches.

    ``on_batch(indices, acts, logits)`` gets the indices into `sequences`, each activation at
    the last position ([b, ...]) and the last position's logits [b, vocab].
    """
    if any("hook_pattern" in name for name in names):
        raise MechanisticError(
            "Attention patterns are not final-position activations; capture them directly."
        )
    device = next(model.parameters()).device
    batches = grouped_batches([len(s) for s in sequences], batch_size)
    with capture(model, adapter, names) as cache, torch.no_grad():
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            ids = torch.tensor([list(sequences[i]) for i in batch], device=device)
            logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
            on_batch(batch, {name: cache[name][:, -1] for name in names}, logits)


# ---------------------------------------------------------------------------------------------
# residual similarity and spike layers


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (broadcasting), in float64; 0 for a zero vector."""
    a, b = a.double(), b.double()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def similarity_profiles(numbers: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """cos(number residual, reference residual) per layer: [n, S, d] x [S, d] -> [n, S]."""
    return cosine(numbers, reference[None])


def spike_layers(
    diff: torch.Tensor, layers: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spike layer and its jump per number.

    diff: [n, 1 + L]; column 0 is the embedding, column l + 1 is the output of block l.
    Returns (layer [n] long, jump [n] float64): the block l (in `layers`, default 1..L-1) with
    the largest ``diff[:, l + 1] - diff[:, l]``; ties go to the earliest layer.
    """
    jumps = (diff[:, 1:] - diff[:, :-1]).double()  # [n, L]
    n_layers = jumps.shape[1]
    default = list(range(1, n_layers)) or [0]
    allowed = default if layers is None else sorted(set(layers))
    if not allowed or not all(0 <= layer < n_layers for layer in allowed):
        raise MechanisticError(
            f"Spike layers must be among 0..{n_layers - 1}; got {list(layers or [])}."
        )
    masked = torch.full_like(jumps, -math.inf)
    masked[:, allowed] = jumps[:, allowed]
    layer = masked.argmax(dim=1)  # torch returns the first maximum
    return layer, jumps.gather(1, layer[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------
# norms frozen at a given input


@dataclass(frozen=True)
class FrozenNorm:
    """A LayerNorm / RMSNorm with its scale fixed at one input x: a linear map plus a bias.

    ``apply(c) = gain * C(c) * inv_scale`` with C the centering (LayerNorm) or the identity
    (RMSNorm) and inv_scale = 1 / s(x); ``norm(x) = apply(x) + bias`` (checked on creation).
    """

    centered: bool
    gain: torch.Tensor  # [d]
    bias: torch.Tensor | None  # [d]
    inv_scale: torch.Tensor  # x.shape[:-1]

    def apply(self, c: torch.Tensor) -> torch.Tensor:
        """c: x.shape[:-1] + (any extra dims) + [d]."""
        if self.centered:
            c = c - c.mean(dim=-1, keepdim=True)
        lead = self.inv_scale.shape
        scale = self.inv_scale.reshape(*lead, *([1] * (c.dim() - len(lead))))
        return c * self.gain.to(c.dtype) * scale.to(c.dtype)


def _norm_eps(norm: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, float | int):
            return float(value)
    return None


@torch.no_grad()
def freeze_norm(norm: nn.Module, x: torch.Tensor) -> FrozenNorm:
    """Freeze `norm` at input x [..., d] (computed in x's dtype; use float64 for attribution).

    Supports nn.LayerNorm and RMSNorms with a gain of ``weight`` (Llama, Qwen2) or
    ``1 + weight`` (Gemma): which one is decided by reproducing norm(x), and anything that does
    not reproduce it is refused rather than silently mis-attributed.
    """
    weight = getattr(norm, "weight", None)
    eps = _norm_eps(norm)
    if not isinstance(weight, torch.Tensor) or eps is None:
        raise MechanisticError(
            f"Cannot freeze the norm {type(norm).__name__}: expected a LayerNorm or an RMSNorm "
            "with `weight` and `eps`/`variance_epsilon`. Add support for it in sublens.mechanistic."
        )
    centered = isinstance(norm, nn.LayerNorm)
    bias_param = getattr(norm, "bias", None) if centered else None
    bias = bias_param.detach().to(x.dtype) if isinstance(bias_param, torch.Tensor) else None
    xc = x - x.mean(dim=-1, keepdim=True) if centered else x
    inv_scale = torch.rsqrt(xc.pow(2).mean(dim=-1) + eps)
    expected = norm(x.to(weight.dtype)).to(x.dtype)
    w = weight.detach().to(x.dtype)
    gains = [w] if centered else [w, 1.0 + w]
    tolerance = (1e-4 if weight.dtype in (torch.float32, torch.float64) else 2e-2) * max(
        1.0, float(expected.abs().max())
    )
    for gain in gains:
        frozen = FrozenNorm(centered, gain, bias, inv_scale)
        rebuilt = frozen.apply(x) + (bias if bias is not None else 0.0)
        if float((rebuilt - expected).abs().max()) <= tolerance:
            return frozen
    raise MechanisticError(
        f"The norm {type(norm).__name__} is not a LayerNorm or an RMSNorm with gain w or 1 + w "
        "(freezing its scale does not reproduce its output). Add support for it in sublens.mechanistic."
    )


# ---------------------------------------------------------------------------------------------
# components


@torch.no_grad()
def attention_terms(
    adapter: Adapter, layer: int, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each head and the output bias add to the residual: z [b, pos, H, d_head] ->
    (heads [b, pos, H, d_model], bias [b, pos, d_model]), in z's dtype.

    heads.sum(2) + bias equals the layer's ``hook_attn_out``. Without a post-norm, heads are
    ``per_head_output``; with one (Gemma3) they pass through it frozen at the full attention
    output (module docstring).
    """
    heads = per_head_output(adapter, layer, z)
    b_O = adapter.b_O(layer)
    bias = (
        b_O.detach().to(z.dtype).expand(*z.shape[:2], -1)
        if b_O is not None
        else z.new_zeros(*z.shape[:2], adapter.d_model)
    )
    if not adapter.post_norm_residual:
        return heads, bias
    frozen = freeze_norm(adapter.attn_out_site(layer), heads.sum(dim=2) + bias)
    norm_bias = frozen.bias if frozen.bias is not None else 0.0
    return frozen.apply(heads), frozen.apply(bias) + norm_bias


@torch.no_grad()
def component_cosines(
    adapter: Adapter, z: torch.Tensor, mlp: torch.Tensor, references: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of every head's and MLP's contribution with reference residuals, per layer.

    z [b, L, H, d_head], mlp [b, L, d] (final position), references [R, L, d] (e.g. the bias
    and control statements' resid_post) -> heads [b, R, L, H], mlp [b, R, L] (float64).
    """
    per_layer = []
    for layer in range(adapter.n_layers):
        heads, _ = attention_terms(adapter, layer, z[:, layer, None].double())  # [b, 1, H, d]
        per_layer.append(cosine(heads[:, None, 0], references[None, :, layer, None]))  # [b, R, H]
    mlp_cos = cosine(mlp[:, None].double(), references[None])  # [b, R, L]
    return torch.stack(per_layer, dim=2), mlp_cos


@torch.no_grad()
def contrastive_component_scores(
    adapter: Adapter,
    embed: torch.Tensor,
    z: torch.Tensor,
    mlp: torch.Tensor,
    final: torch.Tensor,
    bias_token: int,
    control_token: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive scores of every head and MLP (module docstring): each component's direct
    contribution to logit[bias] - logit[control], through the final norm frozen at `final`.
    Same inputs as `direct_logit_attribution` -> heads [b, L, H], mlp [b, L] (float64)."""
    dla = direct_logit_attribution(adapter, embed, z, mlp, final, bias_token, control_token)
    return dla.heads, dla.mlp


def top_heads(scores: torch.Tensor, layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per number, the best head of its layer: scores [n, L, H], layer [n] -> (head [n], score [n])."""
    at_layer = scores[torch.arange(scores.shape[0]), layer]  # [n, H]
    best = at_layer.argmax(dim=1)
    return best, at_layer.gather(1, best[:, None])[:, 0]


@dataclass(frozen=True)
class Attribution:
    """Direct logit attribution to logit[bias] - logit[control] (float64, per prompt)."""

    embed: torch.Tensor  # [b]
    heads: torch.Tensor  # [b, L, H]
    attn_bias: torch.Tensor  # [b, L]
    mlp: torch.Tensor  # [b, L]
    constant: torch.Tensor  # [b]: the final norm's bias and the unembedding bias, projected
    logit_diff: torch.Tensor  # [b]: the real logit difference (real norm, lm_head)
    residual_error: torch.Tensor = field(repr=False)  # [b]: max |sum of components - x|

    def total(self) -> torch.Tensor:
        return (
            self.embed
            + self.heads.sum(dim=(1, 2))
            + self.attn_bias.sum(dim=1)
            + self.mlp.sum(dim=1)
            + self.constant
        )


def logit_direction(
    adapter: Adapter, bias_token: int, control_token: int
) -> tuple[torch.Tensor, float]:
    """W_U[bias] - W_U[control] [d] (float64) and the unembedding-bias difference."""
    head = adapter.lm_head()
    W_U = head.weight.detach()
    direction = (W_U[bias_token] - W_U[control_token]).double()
    b_U = getattr(head, "bias", None)
    shift = float(b_U[bias_token] - b_U[control_token]) if isinstance(b_U, torch.Tensor) else 0.0
    return direction, shift


def dla_hook_names(n_layers: int) -> list[str]:
    """The activations `attribution_from_cache` reads (capture them with sublens.hooks.capture)."""
    return [
        "blocks.0.hook_resid_pre",
        f"blocks.{n_layers - 1}.hook_resid_post",
        *hook_names(["attn.hook_z", "hook_mlp_out"], range(n_layers)),
    ]


def attribution_from_cache(
    adapter: Adapter, cache: dict[str, torch.Tensor], bias_token: int, control_token: int,
    position: int | None = -1,
) -> Attribution:
    """`direct_logit_attribution` from captured activations (`dla_hook_names`) at `position` of
    every prompt; position None: the cache already holds that one position per prompt."""
    def at(name: str) -> torch.Tensor:
        return cache[name] if position is None else cache[name][:, position]

    L = adapter.n_layers
    z = torch.stack([at(f"blocks.{layer}.attn.hook_z") for layer in range(L)], dim=1)
    mlp = torch.stack([at(f"blocks.{layer}.hook_mlp_out") for layer in range(L)], dim=1)
    return direct_logit_attribution(
        adapter, at("blocks.0.hook_resid_pre"), z, mlp, at(f"blocks.{L - 1}.hook_resid_post"),
        bias_token, control_token,
    )


@torch.no_grad()
def direct_logit_attribution(
    adapter: Adapter,
    embed: torch.Tensor,
    z: torch.Tensor,
    mlp: torch.Tensor,
    final: torch.Tensor,
    bias_token: int,
    control_token: int,
) -> Attribution:
    """DLA of every component at one position per prompt (module docstring).

    embed [b, d] (blocks.0.hook_resid_pre), z [b, L, H, d_head], mlp [b, L, d] (hook_mlp_out),
    final [b, d] (blocks.{L-1}.hook_resid_post), all at that position.
    """
    direction, shift = logit_direction(adapter, bias_token, control_token)
    direction = direction.to(final.device)
    x = final.double()
    frozen = freeze_norm(adapter.norm_final(), x)

    def project(c: torch.Tensor) -> torch.Tensor:
        return (frozen.apply(c) * direction).sum(dim=-1)

    heads, biases, rebuilt = [], [], embed.double().clone()
    for layer in range(adapter.n_layers):
        h, b = attention_terms(
            adapter, layer, z[:, layer, None].double()
        )  # [b, 1, H, d], [b, 1, d]
        heads.append(project(h[:, 0]))
        biases.append(project(b[:, 0]))
        rebuilt = rebuilt + h[:, 0].sum(dim=1) + b[:, 0] + mlp[:, layer].double()
    constant = torch.full_like(x[:, 0], shift)
    if frozen.bias is not None:
        constant = constant + frozen.bias @ direction
    normed = adapter.norm_final()(final).double()
    return Attribution(
        embed=project(embed.double()),
        heads=torch.stack(heads, dim=1),
        attn_bias=torch.stack(biases, dim=1),
        mlp=project(mlp.double()),
        constant=constant,
        logit_diff=normed @ direction + shift,
        residual_error=(rebuilt - x).abs().amax(dim=-1),
    )


# ---------------------------------------------------------------------------------------------
# attention


def token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose character span overlaps [start, end) (special tokens, whose
    span is empty, never do)."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def attention_to(patterns: torch.Tensor, span: Sequence[int], query: int = -1) -> torch.Tensor:
    """Attention mass from position `query` to the key positions `span`, per layer and head:
    patterns [L, H, q, k] -> [L, H]."""
    return patterns[:, :, query][:, :, list(span)].sum(dim=-1)

