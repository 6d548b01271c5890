"""Tied embeddings: models that share one tensor between the input embedding and the LM head
cannot take the two from different models, so `untie_embeddings` gives the head its own copy
(same values, same outputs); `shared_tensors` finds parameter names that still share a
tensor, which the component groups and the transplanter refuse.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sublens.arch import Adapter, adapter_for


# ---- untying -------------------------------------------------------------------------------
def untie_embeddings(model: nn.Module, adapter: Adapter | None = None) -> bool:
    """Give the LM head its own copy of the shared embedding tensor; True when it was tied.

    The values are unchanged (outputs are identical); afterwards the input embedding and
    the LM head are separate parameters that can come from different models.
    """
    adapter = adapter or adapter_for(model)
    if not adapter.tied_embeddings:
        return False
    head = adapter.lm_head()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    config: Any = model.config
    configs = {id(config): config}
    text_config = getattr(config, "get_text_config", lambda: None)()
    if text_config is not None:
        configs[id(text_config)] = text_config
    for each in configs.values():
        each.tie_word_embeddings = False  # save_pretrained / from_pretrained keep them apart
    assert not adapter.tied_embeddings
    return True


def shared_tensors(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter tensor (e.g. tied embeddings), one list per tensor."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]
