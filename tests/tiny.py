"""Tiny random models of every supported family, built in-process (importable by tests:
`from tiny import tiny_model`; a module named conftest is not, as there are two)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
)

FAMILIES = ("llama", "gemma3", "gpt2", "qwen2")
VOCAB = 97


def tiny_config(family: str) -> PretrainedConfig:
    """A 2-3 layer model with grouped-query attention where the family has it."""
    if family == "llama":
        return LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
    if family == "qwen2":
        return Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
    if family == "gemma3":
        return Gemma3TextConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=128,
            sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            query_pre_attn_scalar=16,
            tie_word_embeddings=True,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=1
        )
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, attn_implementation: str = "eager") -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation=attn_implementation)
    # Random init leaves norms at 1 and biases at 0: perturb them so tests see their effect.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()
