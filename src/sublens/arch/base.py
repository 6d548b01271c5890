"""The adapter interface: canonical components and head geometry of one model family.

Experiments never spell `model.model.layers[i].mlp`; they ask an adapter. Adding an
architecture is one file in this package that subclasses `Adapter` with a `family` and its
`model_types`: the subclass registers itself (`REGISTRY`), and `sublens.arch` imports every
module of the package, so there is no table to edit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, cast

import torch
from torch import nn

# Concrete adapters by family, in the order their modules were imported (filled by
# Adapter.__init_subclass__).
REGISTRY: dict[str, type[Adapter]] = {}


class Adapter(ABC):
    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # values of config.model_type this adapter handles
    # Gemma3 normalises the attention and MLP outputs before adding them to the residual:
    # a head's contribution reaches the residual through a (non-linear) RMSNorm.
    post_norm_residual: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__ and "model_types" in cls.__dict__:  # a concrete family, not a layout base
            taken = {t: f.family for f in REGISTRY.values() for t in f.model_types if f is not cls}
            clash = [t for t in cls.model_types if t in taken]
            if clash:
                raise TypeError(f"{cls.__name__}: model_type {clash[0]!r} already has the {taken[clash[0]]} adapter")
            REGISTRY[cls.family] = cls

    def __init__(self, model: nn.Module) -> None:
        # Any: transformers modules are reached by attribute, which nn.Module types as Tensor | Module.
        self.model: Any = model
        self.config: Any = model.config

    # ---- geometry -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def d_head(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.d_model // self.n_heads)

    @property
    def tied_embeddings(self) -> bool:
        """True when the LM head and the input embedding share one weight tensor."""
        return self.lm_head().weight is self.embed().weight

    def kv_group(self, head: int) -> int:
        """The KV head that query head `head` reads (grouped-query attention)."""
        return head // (self.n_heads // self.n_kv_heads)

    # ---- components -----------------------------------------------------------------
    @abstractmethod
    def embed(self) -> nn.Embedding: ...

    @abstractmethod
    def layers(self) -> nn.ModuleList: ...

    @abstractmethod
    def attn(self, layer: int) -> nn.Module: ...

    @abstractmethod
    def q(self, layer: int) -> nn.Module: ...

    @abstractmethod
    def k(self, layer: int) -> nn.Module: ...

    @abstractmethod
    def v(self, layer: int) -> nn.Module: ...

    @abstractmethod
    def o(self, layer: int) -> nn.Module:
        """The attention output projection; its input is z, heads concatenated."""

    @abstractmethod
    def mlp(self, layer: int) -> nn.Module: ...

    @abstractmethod
    def norm_final(self) -> nn.Module: ...

    def lm_head(self) -> nn.Linear:
        head = self.model.get_output_embeddings()
        assert isinstance(head, nn.Linear)
        return head

    def pos_embed(self) -> nn.Module | None:
        """Learned absolute position embedding (GPT-2), None for rotary models."""
        return None

    def layer(self, layer: int) -> Any:
        return self.layers()[layer]

    # ---- hook sites -----------------------------------------------------------------
    def attn_out_site(self, layer: int) -> nn.Module:
        """Module whose output (first element) is the attention's addition to the residual."""
        return self.attn(layer)

    def mlp_out_site(self, layer: int) -> nn.Module:
        """Module whose output is the MLP's addition to the residual."""
        return self.mlp(layer)

    def values_from(self, layer: int, v_out: torch.Tensor) -> torch.Tensor:
        """Output of `v(layer)` [batch, pos, n_kv*d_head] -> values [batch, pos, n_kv, d_head]."""
        return v_out.unflatten(-1, (self.n_kv_heads, self.d_head))

    def W_O(self, layer: int) -> torch.Tensor:
        """Per-head output projection [n_heads, d_head, d_model] (nn.Linear weight is [out, in])."""
        weight = cast(torch.Tensor, self.o(layer).weight)  # [d_model, n_heads*d_head]
        return weight.T.reshape(self.n_heads, self.d_head, self.d_model)

    def b_O(self, layer: int) -> torch.Tensor | None:
        bias = getattr(self.o(layer), "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    # ---- parameter groups (freezing, transplants) -----------------------------------
    def attention_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for layer in range(self.n_layers):
            yield from self._prefixed(self.attn(layer))

    def mlp_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for layer in range(self.n_layers):
            yield from self._prefixed(self.mlp(layer))

    def _prefixed(self, module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        prefix = self.module_name(module)
        for name, param in module.named_parameters():
            yield f"{prefix}.{name}", param

    def module_name(self, module: nn.Module) -> str:
        for name, candidate in self.model.named_modules():
            if candidate is module:
                return name
        raise KeyError("module is not part of this model")

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head,
            "d_model": self.d_model,
            "tied_embeddings": self.tied_embeddings,
            "post_norm_residual": self.post_norm_residual,
        }


class DecoderAdapter(Adapter):
    """Llama-style layout: model.model.{embed_tokens, layers, norm}, self_attn.{q,k,v,o}_proj."""

    def _body(self) -> Any:
        return self.model.model

    def embed(self) -> nn.Embedding:
        return self._body().embed_tokens

    def layers(self) -> nn.ModuleList:
        return self._body().layers

    def attn(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn

    def q(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn.q_proj

    def k(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn.k_proj

    def v(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn.v_proj

    def o(self, layer: int) -> nn.Module:
        return self.layer(layer).self_attn.o_proj

    def mlp(self, layer: int) -> nn.Module:
        return self.layer(layer).mlp

    def norm_final(self) -> nn.Module:
        return self._body().norm
