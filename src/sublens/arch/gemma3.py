"""Gemma3 (text): Llama layout plus post-attention and post-MLP RMSNorms before the residual.

A head's contribution therefore reaches the residual through `post_attention_layernorm`,
a non-linear map of the *sum* of all heads: per-head z @ W_O is exact for the attention
output before that norm, and only approximately additive after it (`post_norm_residual`).
"""

from torch import nn

from sublens.arch.base import DecoderAdapter


class Gemma3Adapter(DecoderAdapter):
    family = "gemma3"
    model_types = ("gemma3_text", "gemma3")
    post_norm_residual = True

    def attn_out_site(self, layer: int) -> nn.Module:
        return self.layer(layer).post_attention_layernorm

    def mlp_out_site(self, layer: int) -> nn.Module:
        return self.layer(layer).post_feedforward_layernorm
