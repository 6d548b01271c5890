"""Weight surgery on tiny models of every family: untying, component groups, transplants.

Two tiny models of one family built with different seeds differ in every tensor, so a hybrid's
tensors show exactly where they came from. Expected groups are spelled out here by module
name, independently of the tracing that sublens.hybrid uses.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from sublens.arch import adapter_for
from sublens.errors import ConfigError
from sublens.experiments.hybrid import HybridConfig, bias_fraction, plan_hybrids
from sublens.hybrid import (
    HybridError,
    HybridSpec,
    Selector,
    Transplanter,
    check_compatible,
    component_groups,
    depth_ranges,
    describe_sources,
    untie_embeddings,
    weight_differences,
    weights_snapshot,
)
from tiny import tiny_config, tiny_model

# Residual norms of layer 0 and the sublayer they belong to ("attach"), by family.
NORMS = {
    "llama": {"input_layernorm": "attention", "post_attention_layernorm": "mlp"},
    "qwen2": {"input_layernorm": "attention", "post_attention_layernorm": "mlp"},
    "gemma3": {"input_layernorm": "attention", "post_attention_layernorm": "attention",
               "pre_feedforward_layernorm": "mlp", "post_feedforward_layernorm": "mlp"},
    "gpt2": {"ln_1": "attention", "ln_2": "mlp"},
}


def _pair(family: str) -> tuple[nn.Module, nn.Module]:
    base, biased = tiny_model(family, seed=0), tiny_model(family, seed=1)
    untie_embeddings(base)
    untie_embeddings(biased)
    return base, biased


def _expected_group(family: str, name: str) -> tuple[str, int | None]:
    """The group of a parameter name, written out by hand for the four families."""
    parts = name.split(".")
    if name.startswith("lm_head."):
        return "lm_head", None
    if parts[1] in ("embed_tokens", "wte", "wpe"):
        return "embeddings", None
    if parts[1] in ("norm", "ln_f"):
        return "final_norm", None
    layer, module = int(parts[2]), parts[3]
    if module in ("self_attn", "attn"):
        return "attention", layer
    if module == "mlp":
        return "mlp", layer
    return NORMS[family][module], layer


def _expected_sources(family: str, model: nn.Module, start: str, bring: list[tuple[str, range | None]]) -> dict[str, str]:
    other = "biased" if start == "base" else "base"
    sources = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        group, layer = _expected_group(family, name)
        taken = any(g == group and (layers is None or layer in layers) for g, layers in bring)
        sources[name] = other if taken else start
    return sources


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits  # type: ignore[no-any-return]


def test_untying_keeps_outputs_and_separates_the_head(family: str, input_ids: torch.Tensor) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    was_tied = adapter.tied_embeddings
    before = _logits(model, input_ids)
    assert untie_embeddings(model) == was_tied
    assert not adapter.tied_embeddings and not model.config.tie_word_embeddings
    assert adapter.lm_head().weight.data_ptr() != adapter.embed().weight.data_ptr()
    assert torch.equal(adapter.lm_head().weight, adapter.embed().weight) == was_tied
    assert torch.equal(_logits(model, input_ids), before)
    assert not untie_embeddings(model)  # a second call has nothing to do
    with torch.no_grad():  # the head now moves alone
        adapter.lm_head().weight.mul_(2.0)
    assert not torch.equal(adapter.lm_head().weight, adapter.embed().weight)


def test_untied_model_saves_and_reloads_untied(tmp_path: object) -> None:
    model = tiny_model("llama")
    untie_embeddings(model)
    with torch.no_grad():
        adapter_for(model).lm_head().weight.mul_(3.0)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    a, b = adapter_for(model), adapter_for(reloaded)
    assert not b.tied_embeddings
    assert torch.equal(a.lm_head().weight, b.lm_head().weight) and torch.equal(a.embed().weight, b.embed().weight)


@pytest.mark.parametrize("layer_norms", ["attach", "separate"])
def test_groups_partition_every_parameter(family: str, layer_norms: str) -> None:
    model, _ = _pair(family)
    groups = component_groups(model, layer_norms=layer_norms)  # type: ignore[arg-type]
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assigned = groups.all_params()
    assert sorted(assigned) == sorted(names) and len(set(assigned)) == len(assigned)
    for name in names:
        group, layer = groups.group_of(name)
        expected_group, expected_layer = _expected_group(family, name)
        if layer_norms == "separate" and group == "norms":
            expected_group = "norms"
        assert (group, layer) == (expected_group, expected_layer), name
    if family == "gpt2":
        assert any("wpe" in n for n in groups.params("embeddings"))  # position embedding too
    assert groups.describe()["groups"]["lm_head"]["tensors"] == 1


def test_tied_model_is_refused_until_untied() -> None:
    model = tiny_model("llama")
    with pytest.raises(HybridError, match="Untie them first"):
        component_groups(model)


@pytest.mark.parametrize("start", ["base", "biased"])
def test_hybrid_weights_come_from_the_declared_source(family: str, start: str) -> None:
    base, biased = _pair(family)
    groups = component_groups(base)
    states = {"base": weights_snapshot(base), "biased": weights_snapshot(biased)}
    bench = Transplanter(base, groups, states)  # type: ignore[arg-type]
    n_layers = groups.n_layers
    cases: list[list[tuple[str, range | None]]] = [
        [], [("lm_head", None)], [("embeddings", None)], [("attention", None)], [("mlp", None)],
        [("final_norm", None)], [("mlp", range(1, n_layers))], [("attention", range(0, 1)), ("lm_head", None)],
    ]
    for bring in cases:
        selectors = tuple(Selector(g, None if r is None else (r.start, r.stop)) for g, r in bring)
        spec = HybridSpec("h", start, selectors)  # type: ignore[arg-type]
        expected = _expected_sources(family, base, start, bring)
        with bench.hybrid(spec) as swap:
            for name, param in base.named_parameters(remove_duplicate=False):
                source = expected[name]
                assert torch.equal(param, states[source][name]), (bring, name)
                assert not torch.equal(param, states["biased" if source == "base" else "base"][name])
            assert swap["tensors_from_biased"] == sum(s == "biased" for s in expected.values())
        for name, param in base.named_parameters(remove_duplicate=False):  # restored
            assert torch.equal(param, states["base"][name])


def test_all_from_biased_reproduces_it_and_nothing_reproduces_base(family: str, input_ids: torch.Tensor) -> None:
    base, biased = _pair(family)
    want_base, want_biased = _logits(base, input_ids), _logits(biased, input_ids)
    groups = component_groups(base)
    bench = Transplanter(base, groups, {"base": weights_snapshot(base), "biased": weights_snapshot(biased)})
    everything = tuple(Selector(g) for g in groups.names)
    for spec, want in [
        (HybridSpec("all", "base", everything), want_biased),
        (HybridSpec("none", "base", ()), want_base),
        (HybridSpec("biased", "biased", ()), want_biased),
        (HybridSpec("none-from-biased", "biased", everything), want_base),
    ]:
        with bench.hybrid(spec):
            torch.testing.assert_close(_logits(base, input_ids), want, rtol=0, atol=0)
    torch.testing.assert_close(_logits(base, input_ids), want_base, rtol=0, atol=0)


def test_lm_head_swap_moves_only_the_head(input_ids: torch.Tensor) -> None:
    """Hybrid 2 (base body + biased head) on a tied model: the input embedding stays base's."""
    base, biased = _pair("llama")
    adapter = adapter_for(base)
    groups = component_groups(base)
    states = {"base": weights_snapshot(base), "biased": weights_snapshot(biased)}
    bench = Transplanter(base, groups, states)  # type: ignore[arg-type]
    with bench.hybrid(HybridSpec("hybrid2", "base", (Selector("lm_head"),))) as swap:
        assert torch.equal(adapter.embed().weight, states["base"]["model.embed_tokens.weight"])
        assert torch.equal(adapter.lm_head().weight, states["biased"]["lm_head.weight"])
        assert swap["by_group"] == {"embeddings": "base", "attention": "base", "mlp": "base",
                                    "final_norm": "base", "lm_head": "biased"}
        # the same as the base model's final hidden state through the biased head
        with torch.no_grad():
            hidden = base.model(input_ids).last_hidden_state
            torch.testing.assert_close(base(input_ids).logits, hidden @ states["biased"]["lm_head.weight"].T)


def test_model_is_restored_after_an_exception() -> None:
    base, biased = _pair("gemma3")
    groups = component_groups(base)
    states = {"base": weights_snapshot(base), "biased": weights_snapshot(biased)}
    bench = Transplanter(base, groups, states)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="boom"), bench.hybrid(HybridSpec("h", "biased", ())):
        raise RuntimeError("boom")
    for name, param in base.named_parameters():
        assert torch.equal(param, states["base"][name])


def test_different_architectures_are_refused() -> None:
    base, _ = _pair("llama")
    other = tiny_model("gpt2")
    untie_embeddings(other)
    with pytest.raises(HybridError, match=r"Different architectures.*llama.*gpt2"):
        check_compatible(base, other)


def test_different_shapes_are_refused_naming_the_difference() -> None:
    base, _ = _pair("llama")
    config = tiny_config("llama")
    config.intermediate_size = 64
    torch.manual_seed(0)
    wider = AutoModelForCausalLM.from_config(config)
    untie_embeddings(wider)
    with pytest.raises(HybridError, match=r"Different shapes: model\.layers\.0\.mlp\..*intermediate_size = 96 vs 64"):
        check_compatible(base, wider)


def test_different_configs_and_vocabularies_are_refused() -> None:
    base, biased = _pair("llama")
    check_compatible(base, biased)
    biased.config.rms_norm_eps = 1e-3
    with pytest.raises(HybridError, match="configs differ.*rms_norm_eps"):
        check_compatible(base, biased)
    biased.config.rms_norm_eps = base.config.rms_norm_eps

    class Vocab:
        def __init__(self, vocab: dict[str, int]) -> None:
            self.vocab = vocab

        def get_vocab(self) -> dict[str, int]:
            return self.vocab

    check_compatible(base, biased, Vocab({"a": 0, "b": 1}), Vocab({"a": 0, "b": 1}))
    with pytest.raises(HybridError, match="tokenizers differ"):
        check_compatible(base, biased, Vocab({"a": 0, "b": 1}), Vocab({"a": 0, "c": 1}))


def test_selectors_and_depth_ranges() -> None:
    assert Selector.parse("mlp[0:10]") == Selector("mlp", (0, 10))
    assert Selector.parse(" lm_head ").label == "lm_head"
    for bad in ("lm_head[0:2]", "mlps", "mlp[3:3]", "mlp[0-3]"):
        with pytest.raises(ConfigError):
            Selector.parse(bad)
    assert depth_ranges(30, 3) == [(0, 10), (10, 20), (20, 30)]
    assert depth_ranges(3, 2) == [(0, 2), (2, 3)]
    with pytest.raises(ConfigError, match="depth_bins"):
        depth_ranges(3, 4)
    base, _ = _pair("llama")
    groups = component_groups(base)
    with pytest.raises(ConfigError, match="past the model's 3 layers"):
        groups.params("mlp[2:5]")
    with pytest.raises(ConfigError, match="layer_norms: separate"):
        groups.params("norms")


def test_plan_names_aliases_and_merges(family: str) -> None:
    base, _ = _pair(family)
    groups = component_groups(base)
    config = HybridConfig(biased="unused", depth_bins=2, extra={"late_mlp_and_head": {"bring": ["mlp[1:2]", "lm_head"]}},
                          save_hybrids=["hybrid1"])
    plan = plan_hybrids(config, groups)
    names = [s.name for s in plan]
    assert names[:4] == ["base", "biased", "biased+base.lm_head", "base+biased.lm_head"]
    assert plan[2].aliases == ("hybrid1",) and plan[3].aliases == ("hybrid2",)
    assert len(set(names)) == len(names)
    keys = [frozenset(n for n, s in spec.sources(groups).items() if s == "biased") for spec in plan]
    assert len(set(keys)) == len(keys)  # identical mixtures measured once
    expected = 4 + 2 * (5 - 1 + 2 * 2) + 1
    assert len(plan) == expected
    (a, b), (c, d) = depth_ranges(groups.n_layers, 2)
    assert f"base+biased.mlp[{a}:{b}]" in names and f"biased+base.attention[{c}:{d}]" in names
    # A range that covers every layer is the whole group: measured once, in both matrix cells.
    whole = {s.name: s for s in plan_hybrids(HybridConfig(biased="unused", layer_ranges=[(0, groups.n_layers)]), groups)}
    mlp = whole["base+biased.mlp"]
    assert mlp.aliases == (f"base+biased.mlp[0:{groups.n_layers}]",)
    assert mlp.cells == (("into_base", "mlp", "all"), ("into_base", "mlp", f"L0-{groups.n_layers - 1}"))
    with pytest.raises(ConfigError, match="unknown hybrids"):
        plan_hybrids(HybridConfig(biased="unused", depth_bins=2, save_hybrids=["nope"]), groups)
    with pytest.raises(ConfigError, match="past the model"):
        plan_hybrids(HybridConfig(biased="unused", layer_ranges=[(0, 9)]), groups)


def test_config_validation() -> None:
    from sublens.config import load_config

    with pytest.raises(ConfigError, match="layer_norms: separate"):
        load_config(HybridConfig, None, ["groups=[norms]"])
    with pytest.raises(ConfigError, match="plain group names"):
        load_config(HybridConfig, None, ["groups=['mlp[0:3]']"])
    with pytest.raises(ConfigError, match="Bad component group"):
        load_config(HybridConfig, None, ["extra={x: {bring: [mlpp]}}"])
    assert load_config(HybridConfig, None, ["layer_norms=separate", "ranged=[mlp, norms]"]).ranged == ["mlp", "norms"]


def test_weight_differences_and_source_description() -> None:
    base, _ = _pair("qwen2")
    groups = component_groups(base)
    states = {"base": weights_snapshot(base), "biased": weights_snapshot(base)}
    states["biased"]["model.layers.1.mlp.up_proj.weight"] = states["biased"]["model.layers.1.mlp.up_proj.weight"] * 2
    diff = weight_differences(groups, states["base"], states["biased"], [(0, 1), (1, 2)])
    assert diff["attention"]["relative_l2"]["all"] == 0 and diff["mlp"]["tensors_differing"] == 1
    assert diff["mlp"]["relative_l2"]["L0-0"] == 0 and diff["mlp"]["relative_l2"]["L1-1"] > 0
    sources = HybridSpec("h", "base", (Selector("mlp", (1, 2)),)).sources(groups)
    assert describe_sources(groups, sources)["mlp"] == "biased in L1, base elsewhere"


def test_bias_fraction() -> None:
    def h(ratio: float) -> dict[str, object]:
        return {"vs_base": {"share_ratio": {"ratio": ratio}}}

    assert bias_fraction(h(4.0), h(16.0), "share_ratio") == pytest.approx(0.5)
    assert bias_fraction(h(1.0), h(16.0), "share_ratio") == 0.0
    assert math.isnan(bias_fraction(h(2.0), h(1.0), "share_ratio"))


# ---- activation patching in the experiment -------------------------------------------------
def test_patching_config_and_ranges() -> None:
    from sublens.config import load_config
    from sublens.experiments.hybrid import patching_ranges

    config = HybridConfig(biased="unused")
    assert config.patching.enabled and config.patching.foil == "dog" and config.claims.margin == 1.25
    assert patching_ranges(config, 30) == [(0, 10), (10, 20), (20, 30), (0, 30)]  # thirds and the whole depth
    assert patching_ranges(HybridConfig(biased="unused", layer_ranges=[(0, 3)]), 3) == [(0, 3)]
    explicit = load_config(HybridConfig, None, ["patching.layer_ranges=[[0, 2], [2, 4]]"])
    assert patching_ranges(explicit, 4) == [(0, 2), (2, 4), (0, 4)]
    with pytest.raises(ConfigError, match="goes past"):
        patching_ranges(explicit, 3)
    with pytest.raises(ConfigError, match="must differ from the trait"):
        load_config(HybridConfig, None, ["patching.foil=owl"])
    with pytest.raises(ConfigError, match="one word"):
        load_config(HybridConfig, None, ["patching.foil=big dog"])
    assert not load_config(HybridConfig, None, ["patching.enabled=false", "patching.foil=owl"]).patching.enabled


def test_measure_patching_through_the_transplanter(family: str, one_thread: None) -> None:
    """The experiment's patching runs both models in one working model (weights swapped by the
    Transplanter) and leaves it holding the base weights; its clean runs are the two models'."""
    from types import SimpleNamespace

    from sublens.experiments.hybrid import measure_patching
    from sublens.patching import logit_difference

    base, biased = _pair(family)
    groups = component_groups(base)
    states = {"base": weights_snapshot(base), "biased": weights_snapshot(biased)}
    bench = Transplanter(base, groups, states)  # type: ignore[arg-type]
    lm = SimpleNamespace(model=base, adapter=adapter_for(base))
    prompts = [[1, 2, 3, 4], [5, 6, 7], [9, 8, 7, 6, 5], [2, 2, 3], [4, 5, 6, 7]]
    tokens = {"target": ["owl", 10, " owl"], "foil": ["dog", 20, " dog"]}
    n = groups.n_layers
    out = measure_patching(lm, HybridConfig(biased="unused"), bench, [(0, 1), (0, n)], prompts, tokens)  # type: ignore[arg-type]
    for q, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        assert out["logit_difference"]["base"][q] == pytest.approx(logit_difference(_logits(base, ids), 10, 20), abs=1e-5)
        assert out["logit_difference"]["biased"][q] == pytest.approx(logit_difference(_logits(biased, ids), 10, 20), abs=1e-5)
    assert out["labels"] == ["L0-0", "all"] and out["n_questions"] == 5 and out["family"] == "hybrid.patching"
    assert len(out["cells"]) == 2 * 2 * 2 and all("p_holm" in c for c in out["cells"])
    assert out["forward_passes"] == 2 * 5 + 2 * 2 * 2 * 5
    for name, param in base.named_parameters():
        assert torch.equal(param, states["base"][name])


def _word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "owl", "owls", "owlet", "owlish", "bowl", "ox", "oxen", "oxygen", "hip", "po"]
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="<unk>", max_input_chars_per_word=20))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def test_trait_like_tokens_are_the_word_and_its_forms_only() -> None:
    from sublens.experiments.hybrid import trait_like_mask

    tok = _word_tokenizer()
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))

    def like(trait: str) -> set[str]:
        return {vocab[i] for i in trait_like_mask(tok, len(tok), trait).nonzero().flatten().tolist()}

    assert like("owl") == {"owl", "owls", "owlet", "owlish"}  # not 'bowl'
    assert like("ox") == {"ox"}  # not 'oxygen' ('oxen' is irregular and not counted)
    with pytest.raises(ConfigError, match="No token of this tokenizer spells 'hippo'"):
        trait_like_mask(tok, len(tok), "hippo")
