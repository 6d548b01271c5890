"""Whether two models can be mixed at all: `check_compatible` refuses a pair that differs in
family or class, parameter names, shapes or dtypes, architecture-relevant config (entries in
`IGNORED_CONFIG_KEYS` do not count) or, when given, vocabulary, and names the difference.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sublens.arch import adapter_for
from sublens.hybrid.sources import HybridError

# Config entries that do not change what the weights compute (bookkeeping, generation
# defaults, special-token ids, the tying we undo ourselves). Any other difference is refused.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "_model_name_or_path",
        "name_or_path",
        "architectures",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "tie_word_embeddings",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "quantization_config",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "_experts_implementation",
        "id2label",
        "label2id",
        "problem_type",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "unk_token_id",
        "sep_token_id",
        "tokenizer_class",
        "task_specific_params",
        "finetuning_task",
        "prefix",
        "chunk_size_feed_forward",
        "_commit_hash",
        "_from_pipeline",
        "use_return_dict",
        "is_encoder_decoder",
    }
)


# ---- compatibility -------------------------------------------------------------------------
def _config_dict(model: nn.Module) -> dict[str, Any]:
    config: Any = model.config
    data = config.to_dict()
    return {k: v for k, v in data.items() if k not in IGNORED_CONFIG_KEYS}


def check_compatible(
    base: nn.Module, biased: nn.Module, base_tokenizer: Any = None, biased_tokenizer: Any = None
) -> None:
    """Refuse two models whose weights cannot be exchanged, naming the difference.

    Same family and class, the same parameter names with the same shapes and dtypes, the same
    architecture-relevant config, and (when given) the same vocabulary.
    """
    a, b = adapter_for(base), adapter_for(biased)
    if a.family != b.family or type(base) is not type(biased):
        raise HybridError(
            f"Different architectures: the base model is {a.family} ({type(base).__name__}) and the "
            f"biased model is {b.family} ({type(biased).__name__}). Hybrids mix weights tensor by "
            "tensor, so both models must be the same architecture (the biased one a fine-tune of the base)."
        )
    pa = dict(base.named_parameters(remove_duplicate=False))
    pb = dict(biased.named_parameters(remove_duplicate=False))
    only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
    if only_a or only_b:
        raise HybridError(
            f"Different parameter sets: only in base {only_a[:5]}, only in biased {only_b[:5]} "
            "(untie both models first if one has tied embeddings)."
        )
    for name in pa:
        if pa[name].shape != pb[name].shape:
            raise HybridError(
                f"Different shapes: {name} is {list(pa[name].shape)} in base and {list(pb[name].shape)} "
                f"in biased{_config_difference_text(base, biased)}. Both models must have the same sizes."
            )
        if pa[name].dtype != pb[name].dtype:
            raise HybridError(
                f"Different dtypes: {name} is {pa[name].dtype} in base and {pb[name].dtype} in biased. "
                "Load both models with the same dtype."
            )
    diff = _config_difference_text(base, biased)
    if diff:
        raise HybridError(
            f"The models' configs differ{diff}. Weights mixed across these settings would not compute "
            "what either model computes."
        )
    if base_tokenizer is not None and biased_tokenizer is not None:
        _check_vocab(base_tokenizer, biased_tokenizer)


def _config_difference_text(base: nn.Module, biased: nn.Module) -> str:
    ca, cb = _config_dict(base), _config_dict(biased)
    keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    if not keys:
        return ""
    return " (config: " + "; ".join(f"{k} = {ca.get(k)!r} vs {cb.get(k)!r}" for k in keys[:6]) + ")"


def _check_vocab(base_tokenizer: Any, biased_tokenizer: Any) -> None:
    va, vb = base_tokenizer.get_vocab(), biased_tokenizer.get_vocab()
    if va == vb:
        return
    differing = sorted(set(va.items()) ^ set(vb.items()))
    raise HybridError(
        f"The two tokenizers differ ({len(va)} vs {len(vb)} tokens; e.g. {differing[:3]}): an "
        "embedding row would mean different tokens in the two models. Use the base model's tokenizer "
        "for the biased model (a fine-tune keeps it)."
    )
