"""Weight surgery between two models of one architecture, without training.

A *hybrid* takes some component groups from the biased model and the rest from the base
model. Nothing is reloaded from disk per hybrid: both models' weights are held in memory as
state dicts, and a `Transplanter` copies the mixed state into one working model, verifies
every parameter name by name against its declared source, and puts the base weights back
when the hybrid is done (also on an exception).

Component groups are found through the adapter, never by module path. Every parameter of
the model belongs to exactly one group (checked):

  embeddings  the input token embedding (and GPT-2's learned position embedding)
  attention   per layer: every parameter of ``adapter.attn(l)`` (q/k/v/o, their biases, the
              q/k norms of Gemma3) and the layer's attention-side residual norms (see below)
  mlp         per layer: every parameter of ``adapter.mlp(l)`` and its residual-side norms
  norms       only with ``layer_norms="separate"``: the per-layer residual norms on their own
  final_norm  ``adapter.norm_final()``
  lm_head     ``adapter.lm_head()`` (after untying: its own tensor)

Where the per-layer norms go (``layer_norms="attach"``, the default): a norm belongs to the
sublayer it feeds or finishes, so "attention" is the whole map from the residual stream to
attention's addition to it, and "mlp" likewise. The norms are the parameters of layer l that
lie outside attn(l) and mlp(l); their side is found by tracing one forward pass, not by name:
a norm called before attn(l) feeds attention (Llama/Gemma3 ``input_layernorm``, GPT-2
``ln_1``); ``adapter.attn_out_site(l)``, when it is such a norm, finishes attention (Gemma3
``post_attention_layernorm``); ``adapter.mlp_out_site(l)`` finishes the MLP (Gemma3
``post_feedforward_layernorm``); any other norm called after attn(l) feeds the MLP
(Llama ``post_attention_layernorm``, Gemma3 ``pre_feedforward_layernorm``, GPT-2 ``ln_2``).

Tied embeddings (SmolLM2, Llama-3.2-1B, Gemma3, GPT-2) share one tensor between the input
embedding and the LM head: swapping "the LM head" would silently swap the input embeddings
too. `untie_embeddings` clones the head's weight into its own parameter first (outputs are
unchanged: it is the same values) and sets ``tie_word_embeddings=False``.
"""

from __future__ import annotations

from sublens.hybrid.compatibility import IGNORED_CONFIG_KEYS, check_compatible
from sublens.hybrid.differences import weight_differences
from sublens.hybrid.groups import (
    WHOLE_GROUPS,
    ComponentGroups,
    LayerNorms,
    component_groups,
    depth_ranges,
    range_label,
)
from sublens.hybrid.sources import SOURCES, HybridError, Source, other
from sublens.hybrid.transplant import HybridSpec, Transplanter, describe_sources, weights_snapshot
from sublens.hybrid.tying import shared_tensors, untie_embeddings

__all__ = [
    "IGNORED_CONFIG_KEYS",
    "SOURCES",
    "WHOLE_GROUPS",
    "ComponentGroups",
    "HybridError",
    "HybridSpec",
    "LayerNorms",
    "Source",
    "Transplanter",
    "check_compatible",
    "component_groups",
    "depth_ranges",
    "describe_sources",
    "other",
    "range_label",
    "shared_tensors",
    "untie_embeddings",
    "weight_differences",
    "weights_snapshot",
]
