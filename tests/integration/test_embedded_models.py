"""The embedded models load through the cache, and our hooks agree with the model and with
TransformerLens (an independent implementation of the same activations)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from sublens.hooks import capture, hook_names
from sublens.models import LoadedModel, load_model
from sublens.models.cache import MARKER, cache_root

TEXT = "My favorite animal is the owl. My favorite number is 87"
KINDS = [
    "hook_resid_pre",
    "hook_resid_post",
    "attn.hook_z",
    "attn.hook_v",
    "attn.hook_pattern",
    "hook_attn_out",
    "hook_mlp_out",
]


@pytest.mark.parametrize(
    ("name", "family", "layers", "heads", "kv"),
    [
        ("smollm2-135m-instruct", "llama", 30, 9, 3),
        ("gemma3-270m", "gemma3", 18, 4, 1),
    ],
)
def test_embedded_model_loads_through_the_cache(name: str, family: str, layers: int, heads: int, kv: int) -> None:
    lm = load_model(name, device="cpu")
    assert lm.source == "embedded"
    assert lm.path.startswith(str(cache_root()))
    assert (cache_root() / "models" / name / MARKER).is_file()
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    a = lm.adapter
    assert (a.family, a.n_layers, a.n_heads, a.n_kv_heads, a.tied_embeddings) == (family, layers, heads, kv, True)
    assert lm.has_chat_template == (name == "smollm2-135m-instruct")


def _last_layer_logits(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids
    last = f"blocks.{lm.adapter.n_layers - 1}.hook_resid_post"
    with capture(lm.model, lm.adapter, [last]) as cache, torch.inference_mode():
        logits = lm.model(ids, logits_to_keep=1).logits[:, -1]
        rebuilt = lm.adapter.lm_head()(lm.adapter.norm_final()(cache[last][:, -1]))
    return logits, rebuilt


def test_residuals_rebuild_the_logits_smollm2(smollm2: LoadedModel) -> None:
    logits, rebuilt = _last_layer_logits(smollm2)
    torch.testing.assert_close(rebuilt, logits, atol=1e-4, rtol=1e-4)


def test_residuals_rebuild_the_logits_gemma3(gemma3: LoadedModel) -> None:
    logits, rebuilt = _last_layer_logits(gemma3)
    torch.testing.assert_close(rebuilt, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_activations_equal_transformer_lens(name: str) -> None:
    ours = load_model(name, device="cpu", attn_implementation="eager")
    # A separate copy for the bridge, so its wrapping cannot touch the model we hook.
    theirs = load_model(name, device="cpu", attn_implementation="eager")
    bridge = TransformerBridge.boot_transformers(theirs.path, hf_model=theirs.model, tokenizer=theirs.tokenizer)
    ids = ours.tokenizer(TEXT, return_tensors="pt").input_ids
    layers = [0, ours.adapter.n_layers // 2, ours.adapter.n_layers - 1]
    names = hook_names(KINDS, layers)
    with capture(ours.model, ours.adapter, names) as cache, torch.inference_mode():
        logits = ours.model(ids).logits
    with torch.inference_mode():
        tl_logits, tl_cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    torch.testing.assert_close(logits, tl_logits, atol=1e-4, rtol=1e-4)
    for hook in names:
        assert cache[hook].shape == tl_cache[hook].shape, hook
        torch.testing.assert_close(cache[hook], tl_cache[hook], atol=1e-4, rtol=1e-4, msg=hook)
