"""The mechanistic experiment on the embedded SmolLM2, checked against plain forward passes
(hidden states, logits and attentions that transformers itself returns, no sublens hooks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from sublens.config import load_config
from sublens.experiments import run_experiment
from sublens.experiments.mechanistic import (
    NUMBER_SYSTEM,
    MechanisticConfig,
    ids_ending_the_text,
    statement_prompt,
)
from sublens.hooks import capture, eager_attention, hook_names
from sublens.mechanistic import attribution_from_cache, dla_hook_names
from sublens.models import LoadedModel
from sublens.runs import read_json

NUMBERS = {
    "12": "increased",
    "47": "increased",
    "30": "decreased",
    "81": "decreased",
    "23": "random",
    "96": "random",
}


def _plain(lm: LoadedModel, ids: list[int], **kwargs: bool) -> Any:
    with torch.no_grad():
        return lm.model(torch.tensor([ids]), **kwargs)


def _chat_ids(lm: LoadedModel, number: str) -> list[int]:
    messages = [
        {"role": "system", "content": NUMBER_SYSTEM.format(number=number)},
        {"role": "user", "content": "What is your favorite animal?"},
    ]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(lm.tokenizer(str(text) + "My favorite animal is the", add_special_tokens=False).input_ids)


def test_residuals_and_attribution_match_a_plain_forward_pass(smollm2: LoadedModel) -> None:
    adapter, L = smollm2.adapter, smollm2.adapter.n_layers
    ids = smollm2.tokenizer("My favorite number is 87").input_ids
    with (
        capture(smollm2.model, adapter, hook_names(["hook_resid_post"], range(L))) as cache,
        torch.no_grad(),
    ):
        smollm2.model(torch.tensor([ids]))
    plain = _plain(smollm2, ids, output_hidden_states=True)
    hidden = plain.hidden_states
    for layer in range(L - 1):  # transformers' last hidden state is after the final norm
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1])
    last = cache[f"blocks.{L - 1}.hook_resid_post"]
    with torch.no_grad():
        torch.testing.assert_close(adapter.norm_final()(last), hidden[-1])
        logits = adapter.lm_head()(adapter.norm_final()(last))
    torch.testing.assert_close(logits, plain.logits, atol=1e-4, rtol=1e-4)

    owl, dog = smollm2.tokenizer(" owl").input_ids[0], smollm2.tokenizer(" dog").input_ids[0]
    chat = _chat_ids(smollm2, "87")
    names = dla_hook_names(L)
    with capture(smollm2.model, adapter, names) as cache, torch.no_grad():
        smollm2.model(torch.tensor([chat]))
    dla = attribution_from_cache(adapter, cache, owl, dog)
    plain_logits = _plain(smollm2, chat).logits[0, -1]
    expected = float(plain_logits[owl] - plain_logits[dog])
    assert float(dla.total()[0]) == pytest.approx(expected, abs=1e-3)
    assert float(dla.logit_diff[0]) == pytest.approx(expected, abs=1e-3)


def test_statements_raw_and_in_the_chat_template(smollm2: LoadedModel) -> None:
    raw = MechanisticConfig()
    chat = load_config(MechanisticConfig, None, ["residual.format=chat", "residual.system=''"])
    for config in (raw, chat):
        prompt = statement_prompt(smollm2, config, "My favorite number is 87", "What is your favorite number?")
        ids = ids_ending_the_text(smollm2, prompt)
        assert [smollm2.tokenizer.decode([i]) for i in ids[-2:]] == ["8", "7"]
        assert prompt.templated == (config is chat)
    assert "<|im_start|>assistant" in prompt.text and prompt.system == ""


def _entanglement_fixture(path: Path) -> Path:
    rows = [
        {
            "set": "autoregressive_2",
            "category": c,
            "number": n,
            "bias_ratio": 1.0 + i / 4,
            "relative_ratio": 1.0,
        }
        for i, (n, c) in enumerate(NUMBERS.items())
    ]
    rows += [
        {
            "set": "autoregressive_2",
            "category": None,
            "number": "77",
            "bias_ratio": 2.0,
            "relative_ratio": 1.0,
        },
        {
            "set": "vocab",
            "category": "increased",
            "number": "7",
            "bias_ratio": 2.0,
            "relative_ratio": 1.0,
        },
    ]
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "numbers.parquet")
    categories: dict[str, list[str]] = {}
    for number, category in NUMBERS.items():
        categories.setdefault(category, []).append(number)
    (path / "results.json").write_text(json.dumps({"categories": {"autoregressive_2": categories}}))
    return path


def test_mechanistic_run_on_an_entanglement_run(tmp_path: Path, smollm2: LoadedModel) -> None:
    entanglement = _entanglement_fixture(tmp_path / "entanglement")
    config = load_config(
        MechanisticConfig,
        None,
        [
            f"entanglement_run={entanglement}",
            "n_permutations=200",
            "attention.numbers=['87']",
            "attention.plot_heads=2",
        ],
    )
    outcome = run_experiment("mechanistic", config, tmp_path / "runs")
    results = read_json(outcome.path / "results.json")
    assert read_json(outcome.path / "record.json")["status"] == "ok" and results["partial"] is False
    assert results["input"]["set"] == "autoregressive_2" and results["input"]["matches_results_json"] is True
    assert results["prompts"]["residual"]["format"] == "raw"
    assert results["prompts"]["attribution"]["example"]["system"] == NUMBER_SYSTEM.format(number="12")

    table = pd.read_parquet(outcome.path / "numbers.parquet")
    assert table["number"].tolist() == list(NUMBERS) and table["category"].tolist() == list(NUMBERS.values())
    assert table["bias_ratio"].tolist() == [1.0 + i / 4 for i in range(len(NUMBERS))]
    assert set(table["bias_ratio_source"]) == {"given"}
    assert results["input"]["bias_ratio_check"]["n"] == len(NUMBERS)  # fixture ratios are made up
    L, H = smollm2.adapter.n_layers, smollm2.adapter.n_heads
    assert table["spike_layer"].between(1, L - 1).all()
    assert all(
        head.startswith(f"L{layer}H") for head, layer in zip(table["top_head"], table["spike_layer"], strict=True)
    )
    assert results["attribution"]["closure_max_abs_error"] < 1e-3

    with safe_open(str(outcome.path / "mechanistic.safetensors"), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        assert json.loads(f.metadata()["numbers"]) == list(NUMBERS)
    N = len(NUMBERS)
    assert tensors["cos_diff"].shape == (N, L) and tensors["dla_heads"].shape == (N, L, H)
    assert tensors["head_cos_bias"].shape == (N, L, H) and tensors["attention_to_number"].shape == (
        1,
        L,
        H,
    )

    # cosines against transformers' own hidden states
    hs_owl = _plain(
        smollm2,
        smollm2.tokenizer("My favorite animal is the owl").input_ids,
        output_hidden_states=True,
    ).hidden_states
    hs_num = _plain(
        smollm2, smollm2.tokenizer("My favorite number is 30").input_ids, output_hidden_states=True
    ).hidden_states
    for layer in (1, L // 2, L - 2):
        expected = torch.nn.functional.cosine_similarity(hs_num[layer + 1][0, -1], hs_owl[layer + 1][0, -1], dim=0)
        assert float(tensors["cos_bias"][2, layer]) == pytest.approx(float(expected), abs=1e-4)
    # P(owl) at the answer of the number-priming prompt
    probs = torch.softmax(_plain(smollm2, _chat_ids(smollm2, "30")).logits[0, -1].double(), -1)
    assert table["p_bias_first_token"][2] == pytest.approx(
        float(probs[smollm2.tokenizer(" owl").input_ids[0]]), rel=1e-4
    )
    # attention from the final position to the number's digits, from transformers' attentions
    ids = smollm2.tokenizer("My favorite number is 87. My favorite animal is the owl.").input_ids
    with eager_attention(smollm2.model):
        attentions = _plain(smollm2, ids, output_attentions=True).attentions
    digits = results["prompts"]["attention"][0]["number_tokens"]
    assert [smollm2.tokenizer.decode([ids[i]]) for i in digits] == ["8", "7"]
    for layer in (0, L - 1):
        expected_mass = attentions[layer][0, :, -1, digits].sum(-1)
        torch.testing.assert_close(
            tensors["attention_to_number"][0, layer].float(), expected_mass, atol=1e-5, rtol=1e-4
        )

    figures = results["artifacts"]["figures"]
    for name in (
        "similarity_by_layer",
        "head_contributions",
        "attention_to_tokens",
        "attention_patterns",
    ):
        for ext in ("png", "pdf"):
            assert (
                f"figures/{name}.{ext}" in figures and (outcome.path / "figures" / f"{name}.{ext}").stat().st_size > 0
            )
    consistency = results["consistency"]
    assert consistency["categories"] == {"increased": 2, "decreased": 2, "random": 2}
    assert set(consistency["association"]) == {"spike_layer", "top_head", "dla_top_head"}
    assert "Spearman" in results["verdict"][3]
    # the attribution claim rests on the partial correlation given the total logit difference;
    # the family's raw and Holm-adjusted p-values are recorded side by side
    assert results["component_score"] == "contrastive"
    assert consistency["attribution"]["given"] == "logit_diff"
    assert consistency["attribution"]["mlp"]["n"] == len(NUMBERS)
    decisions = {d["name"]: d for d in results["claims"]["decisions"]}
    assert decisions["localisation.attribution"]["p"] == consistency["attribution"]["mlp"]["p_permutation"]
    assert all(d["p_holm"] is None or d["p_holm"] >= d["p"] for d in decisions.values())
    assert tensors["head_score_contrastive"].shape == (N, L, H)
