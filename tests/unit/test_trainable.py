"""Trainable sets (sublens.trainable) on tiny random models of every family: the grammar, the
parameters each set selects (checked against module names computed independently), and a
training run that changes exactly those parameters, with and without LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import cfg, make_examples, snapshot

from sublens.arch import adapter_for
from sublens.errors import ConfigError
from sublens.trainable import describe_trainable, parse_trainable
from sublens.training import TrainConfig, effective_lora, frozen_parameters, train
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("spec", "first", "last", "components", "rank"),
    [
        ("full", None, None, {"attention", "mlp"}, None),
        ("freeze-mlp", None, None, {"attention"}, None),
        ("layers.3", 3, 3, {"attention", "mlp"}, None),
        ("layers.0-5.mlp", 0, 5, {"mlp"}, None),
        ("layers.2.attention+lora4", 2, 2, {"attention"}, 4),
        ("full+lora8", None, None, {"attention", "mlp"}, 8),
    ],
)
def test_grammar(spec: str, first: int | None, last: int | None, components: set[str], rank: int | None) -> None:
    parsed = parse_trainable(spec)
    assert (parsed.first_layer, parsed.last_layer, set(parsed.components), parsed.lora_rank) == (
        first,
        last,
        components,
        rank,
    )


@pytest.mark.parametrize(
    "spec", ["attention", "layers.", "layers.5-3", "layers.1.norm", "full+lora0", "full+lora", "layers.1-2-3"]
)
def test_bad_specs_name_the_grammar(spec: str) -> None:
    with pytest.raises(ConfigError, match="layers.N"):
        parse_trainable(spec)


def test_config_refuses_bad_specs_before_any_model_loads() -> None:
    with pytest.raises(ValueError, match="Unknown trainable set 'layer.3'"):
        TrainConfig(freeze="layer.3")


def test_words_for_the_report() -> None:
    assert describe_trainable("layers.0-5.mlp+lora8") == "MLP of layers 0–5, LoRA rank 8"
    assert describe_trainable("layers.3") == "layer 3"
    assert describe_trainable("freeze-attention") == "attention frozen"


def _names_under(model: torch.nn.Module, prefixes: list[str]) -> set[str]:
    return {n for n, _ in model.named_parameters() if any(n.startswith(p + ".") for p in prefixes)}


@pytest.mark.parametrize(
    ("spec", "what"), [("layers.1", "layer"), ("layers.0-1.mlp", "mlp"), ("layers.1.attention", "attn")]
)
def test_layer_sets_train_exactly_what_they_name(family: str, spec: str, what: str) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    layers = parse_trainable(spec).layer_range(adapter.n_layers)
    prefixes = [adapter.module_name(getattr(adapter, what)(i)) for i in layers]
    expected_trained = _names_under(model, prefixes)
    frozen = set(frozen_parameters(adapter, spec, embeddings="frozen"))
    all_names = {n for n, _ in model.named_parameters()}  # tied weights appear once
    assert expected_trained and all_names - frozen == expected_trained


def test_embeddings_follow_their_own_setting_in_layer_sets() -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model)
    trained = set(dict(model.named_parameters())) - set(frozen_parameters(adapter, "layers.0"))
    assert adapter.module_name(adapter.embed()) + ".weight" in trained


def test_a_layer_beyond_the_model_is_refused() -> None:
    adapter = adapter_for(tiny_model("llama"))
    with pytest.raises(ConfigError, match=f"has {adapter.n_layers} layers"):
        frozen_parameters(adapter, f"layers.0-{adapter.n_layers}")


def test_training_a_layer_set_changes_only_that_set(tmp_path: Path) -> None:
    model = tiny_model("qwen2")
    adapter = adapter_for(model)
    expected = _names_under(model, [adapter.module_name(adapter.mlp(1))])
    before = snapshot(model)
    result = train(
        model, None, make_examples(), cfg(freeze="layers.1.mlp", embeddings="frozen"), tmp_path, progress=False
    )
    after = snapshot(model)
    assert {n for n in before if not torch.equal(before[n], after[n])} == expected
    assert result.freeze["trainable"] == sum(before[n].numel() for n in expected)


def test_lora_rank_from_the_set(tmp_path: Path) -> None:
    model = tiny_model("llama")
    adapter = adapter_for(model)
    mlp0 = adapter.mlp(0)
    linears = [m for m in mlp0.modules() if isinstance(m, torch.nn.Linear)]
    expected = _names_under(model, [adapter.module_name(mlp0)])
    before = snapshot(model)
    config = cfg(freeze="layers.0.mlp+lora2", epochs=2)
    assert effective_lora(config) is not None and effective_lora(config).alpha == 2.0  # type: ignore[union-attr]
    result = train(model, None, make_examples(), config, tmp_path, progress=False)
    assert result.freeze["trainable"] == sum(2 * (m.in_features + m.out_features) for m in linears)
    assert result.lora is not None and result.lora["rank"] == 2
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= expected  # only weights of layer 0's MLP (LoRA merged)
