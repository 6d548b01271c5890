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

from sublens.mechanistic.attention import attention_to, token_span
from sublens.mechanistic.attribution import (
    Attribution,
    attribution_from_cache,
    contrastive_component_scores,
    direct_logit_attribution,
    dla_hook_names,
    logit_direction,
)
from sublens.mechanistic.components import attention_terms, component_cosines, top_heads
from sublens.mechanistic.errors import MechanisticError
from sublens.mechanistic.forward import BatchFn, final_position_pass, grouped_batches
from sublens.mechanistic.frozen_norm import FrozenNorm, freeze_norm
from sublens.mechanistic.input_numbers import NumberItem, read_entanglement_numbers
from sublens.mechanistic.similarity import cosine, similarity_profiles, spike_layers

__all__ = [
    "Attribution",
    "BatchFn",
    "FrozenNorm",
    "MechanisticError",
    "NumberItem",
    "attention_terms",
    "attention_to",
    "attribution_from_cache",
    "component_cosines",
    "contrastive_component_scores",
    "cosine",
    "direct_logit_attribution",
    "dla_hook_names",
    "final_position_pass",
    "freeze_norm",
    "grouped_batches",
    "logit_direction",
    "read_entanglement_numbers",
    "similarity_profiles",
    "spike_layers",
    "token_span",
    "top_heads",
]
