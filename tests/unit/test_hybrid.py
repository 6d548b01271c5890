"""Weight surgery on tiny models of every family: untying, component groups, transplants.

Two tiny models of one family built with different seeds differ in every tensor, so a hybrid's
tensors show exactly where they came from. Expected groups are spelled out here by module
name, independently of the tracing that sublens.hybrid uses.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from fixture_runs import RUNS
from sublens.arch import adapter_for
from sublens.errors import ConfigError
from sublens.experiments.hybrid import HybridConfig, HybridResults, bias_fraction, plan_hybrids
from sublens.experiments.hybrid.results import Comparison, Hybrid, Measurement
from sublens.hybrid import (
    HybridError,
    HybridSpec,
    Transplanter,
    check_compatible,
    component_groups,
    depth_ranges,
    describe_sources,
    untie_embeddings,
    weight_differences,
    weights_snapshot,
)
from sublens.report.sections import hybrid as hybrid_section
from sublens.report.stages import load_stage
from sublens.results import ResultsError, load_results
from sublens.settings import Selector
from tiny import tiny_config, tiny_model

RECORDED = RUNS / "hybrid"  # a real run, recorded before schema versions, bias_fractions and patching

# Residual norms of layer 0 and the sublayer they belong to ("attach"), by family.
NORMS = {
    "llama": {"input_layernorm": "attention", "post_attention_layernorm": "mlp"},
    "qwen2": {"input_layernorm": "attention", "post_attention_layernorm": "mlp"},
    "gemma3": {
        "input_layernorm": "attention",
        "post_attention_layernorm": "attention",
        "pre_feedforward_layernorm": "mlp",
        "post_feedforward_layernorm": "mlp",
    },
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


def _expected_sources(
    family: str, model: nn.Module, start: str, bring: list[tuple[str, range | None]]
) -> dict[str, str]:
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
        [],
        [("lm_head", None)],
        [("embeddings", None)],
        [("attention", None)],
        [("mlp", None)],
        [("final_norm", None)],
        [("mlp", range(1, n_layers))],
        [("attention", range(0, 1)), ("lm_head", None)],
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
        assert swap["by_group"] == {
            "embeddings": "base",
            "attention": "base",
            "mlp": "base",
            "final_norm": "base",
            "lm_head": "biased",
        }
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
    config = HybridConfig(
        biased="unused",
        depth_bins=2,
        extra={"late_mlp_and_head": {"bring": ["mlp[1:2]", "lm_head"]}},
        save_hybrids=["hybrid1"],
    )
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
    whole = {
        s.name: s for s in plan_hybrids(HybridConfig(biased="unused", layer_ranges=[(0, groups.n_layers)]), groups)
    }
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
    assert bias_fraction(4.0, 16.0) == pytest.approx(0.5)  # a hybrid's ratio to base, the biased model's
    assert bias_fraction(1.0, 16.0) == 0.0
    assert math.isnan(bias_fraction(2.0, 1.0))  # the biased model did not move the metric


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
    from sublens.experiments.hybrid.results import PatchTokens
    from sublens.patching import logit_difference

    base, biased = _pair(family)
    groups = component_groups(base)
    states = {"base": weights_snapshot(base), "biased": weights_snapshot(biased)}
    bench = Transplanter(base, groups, states)  # type: ignore[arg-type]
    lm = SimpleNamespace(model=base, adapter=adapter_for(base))
    prompts = [[1, 2, 3, 4], [5, 6, 7], [9, 8, 7, 6, 5], [2, 2, 3], [4, 5, 6, 7]]
    tokens = PatchTokens(target=("owl", 10, " owl"), foil=("dog", 20, " dog"))
    n = groups.n_layers
    out = measure_patching(lm, HybridConfig(biased="unused"), bench, [(0, 1), (0, n)], prompts, tokens)  # type: ignore[arg-type]
    for q, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        assert out.logit_difference.base[q] == pytest.approx(logit_difference(_logits(base, ids), 10, 20), abs=1e-5)
        assert out.logit_difference.biased[q] == pytest.approx(logit_difference(_logits(biased, ids), 10, 20), abs=1e-5)
    assert out.labels == ["L0-0", "all"] and out.n_questions == 5 and out.family == "hybrid.patching"
    assert len(out.cells) == 2 * 2 * 2 and "p_holm" in out.cells[0].model_dump()
    assert out.forward_passes == 2 * 5 + 2 * 2 * 2 * 5
    for name, param in base.named_parameters():
        assert torch.equal(param, states["base"][name])


def _word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "owl", "owls", "owlet", "owlish", "bowl", "ox", "oxen", "oxygen", "hip", "po"]
    tk = Tokenizer(
        models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="<unk>", max_input_chars_per_word=20)
    )
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


# ---- typed results -------------------------------------------------------------------------
def test_recorded_run_loads_and_round_trips() -> None:
    data = json.loads((RECORDED / "results.json").read_text())
    recorded = load_results(RECORDED / "results.json", HybridResults)  # written before schema versions
    assert recorded.schema_version == 1 and recorded.patching is None and recorded.partial is None
    head = recorded.hybrids["base+biased.lm_head"]
    assert head.aliases == ["hybrid2"] and head.cells == [("into_base", "lm_head", "all")]
    assert head.bias_fractions is None and head.bias_fraction_of("share") == head.bias_fraction
    assert recorded.hybrids["base"].vs_base is None and recorded.lm_head_swap is not None
    # the JSON written back is the JSON read, key by key (absent keys stay absent), plus its version
    written = recorded.model_dump(mode="json")
    assert written.pop("schema_version") == 1 and written == data
    again = load_results(json.loads(json.dumps(recorded.model_dump(mode="json"))), HybridResults)
    assert again.model_dump_json() == recorded.model_dump_json()


def test_sparse_keys_are_written_only_when_measured() -> None:
    recorded = load_results(RECORDED / "results.json", HybridResults)
    base = recorded.hybrids["base"]
    unsampled = Measurement(probability=base.probability, perplexity=None)  # sampling and next tokens off
    assert unsampled.model_dump(mode="json") == {
        "probability": base.probability.model_dump(mode="json"),
        "perplexity": None,
    }  # null stays null, absent stays absent
    described = {k: v for k, v in base.model_dump().items() if k not in Measurement.model_fields}
    hybrid = Hybrid.model_validate({**described, **unsampled.present(), "same_weights_as": "biased"})
    written = hybrid.model_dump(mode="json")
    assert "sampled" not in written and "next_token" not in written and written["same_weights_as"] == "biased"
    comparison = Comparison.model_validate(
        recorded.hybrids["biased"].model_dump()["vs_base"] | {"rate_difference": None}
    )
    assert comparison.model_dump()["rate_difference"] is None  # set: written, even as null


def test_results_of_another_version_or_shape_are_refused() -> None:
    data = json.loads((RECORDED / "results.json").read_text())
    with pytest.raises(ResultsError, match="schema version 2; this sublens reads version 1 of HybridResults"):
        load_results({**data, "schema_version": 2}, HybridResults)
    broken = copy.deepcopy(data)
    del broken["hybrids"]["base"]["degraded"]
    with pytest.raises(ResultsError, match=r"does not match HybridResults .*hybrids\.base\.degraded: Field required"):
        load_results(broken, HybridResults)
    # a finished run whose results do not read is an error, never a silently empty section ...
    run = load_stage(RECORDED)
    with pytest.raises(ResultsError):
        hybrid_section.build(replace(run, results={**data, "schema_version": 2}))
    # ... while a failed run's unreadable results are reported as such
    section = hybrid_section.build(
        replace(run, results={**data, "schema_version": 2}, record={**run.record, "status": "failed"})
    )
    assert "incomplete" in section.results and "cannot be read" in section.results and not section.tables
