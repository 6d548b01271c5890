"""Qwen2 family: the Llama layout with biases on q/k/v."""

from sublens.arch.base import DecoderAdapter


class Qwen2Adapter(DecoderAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
