"""Llama family (Llama 3.x, SmolLM2): pre-norm, rotary, grouped-query attention."""

from sublens.arch.base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama",)
