"""GPT-2: fused q/k/v projection (`c_attn`) and Conv1D weights stored as [in, out]."""

from typing import Any, cast

import torch
from torch import nn

from sublens.arch.base import Adapter


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_types = ("gpt2",)

    @property
    def n_layers(self) -> int:
        return int(self.config.n_layer)

    @property
    def n_heads(self) -> int:
        return int(self.config.n_head)

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def d_model(self) -> int:
        return int(self.config.n_embd)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def _body(self) -> Any:
        return self.model.transformer

    def embed(self) -> nn.Embedding:
        return self._body().wte

    def pos_embed(self) -> nn.Module:
        return self._body().wpe

    def layers(self) -> nn.ModuleList:
        return self._body().h

    def attn(self, layer: int) -> nn.Module:
        return self.layer(layer).attn

    # q, k and v share one Conv1D: each accessor returns it; `values_from` slices v out.
    def q(self, layer: int) -> nn.Module:
        return self.layer(layer).attn.c_attn

    def k(self, layer: int) -> nn.Module:
        return self.layer(layer).attn.c_attn

    def v(self, layer: int) -> nn.Module:
        return self.layer(layer).attn.c_attn

    def o(self, layer: int) -> nn.Module:
        return self.layer(layer).attn.c_proj

    def mlp(self, layer: int) -> nn.Module:
        return self.layer(layer).mlp

    def norm_final(self) -> nn.Module:
        return self._body().ln_f

    def values_from(self, layer: int, v_out: torch.Tensor) -> torch.Tensor:
        v = v_out[..., 2 * self.d_model :]  # c_attn output is [q | k | v]
        return v.unflatten(-1, (self.n_heads, self.d_head))

    def W_O(self, layer: int) -> torch.Tensor:
        weight = cast(torch.Tensor, self.o(layer).weight)  # Conv1D: [n_heads*d_head, d_model]
        return weight.reshape(self.n_heads, self.d_head, self.d_model)
