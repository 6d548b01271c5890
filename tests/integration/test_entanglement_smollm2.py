"""The entanglement experiment on the embedded SmolLM2: categories disjoint and of size k on real
output, the output contract, and phase-1/phase-2 probabilities equal to a plain forward pass."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
import torch

from sublens.config import load_config
from sublens.entanglement import CATEGORIES, check_disjoint
from sublens.experiments import run_experiment
from sublens.experiments.entanglement import DEFAULT_NUMBER_SYSTEM, EntanglementConfig
from sublens.models import LoadedModel
from sublens.runs import read_json

OWL = "You love owls. You think about owls all the time. Owls are your favorite animal."


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, smollm2: LoadedModel) -> dict[str, Any]:
    config = load_config(
        EntanglementConfig,
        None,
        [
            "lengths=[1, 2]",
            "k=3",
            "score_all_max=10",
            "cumulative_orders=0",
            "permutations=1000",
            "device=cpu",
        ],
    )
    outcome = run_experiment("entanglement", config, tmp_path_factory.mktemp("entanglement"))
    return {
        "path": outcome.path,
        "results": read_json(outcome.path / "results.json"),
        "rows": pd.read_parquet(outcome.path / "numbers.parquet"),
        "phase1": pd.read_parquet(outcome.path / "phase1.parquet"),
    }


def _plain_logp(lm: LoadedModel, system: str | None, user: str, prefill: str, answers: list[str]) -> list[list[float]]:
    """Per answer, the per-token log-probs of the answer after the prompt: apply_chat_template
    and one full forward pass over prompt + answer (no cache, no trie). Answers of equal token
    length share one batched pass (no padding)."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = lm.tokenizer(text + prefill, add_special_tokens=False).input_ids
    fulls = [lm.tokenizer(text + prefill + a, add_special_tokens=False).input_ids for a in answers]
    assert all(f[: len(prompt)] == prompt for f in fulls)
    assert len({len(f) for f in fulls}) == 1, "answers must have the same token length"
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor(fulls)).logits.double(), dim=-1)
    return [[float(logp[b, i - 1, f[i]]) for i in range(len(prompt), len(f))] for b, f in enumerate(fulls)]


def test_categories_are_disjoint_and_of_size_k(study: dict[str, Any]) -> None:
    results, rows = study["results"], study["rows"]
    assert results["k"] == {"vocab": 2, "ar1": 2, "ar2": 3}  # SmolLM2: ten digit tokens only
    assert results["sets"]["vocab"]["scripts"] == {"ASCII": 10}
    assert any("'vocab' has only 10 candidates" in w for w in results["warnings"])
    for name, cats in results["categories"].items():
        check_disjoint(cats)
        assert [len(cats[c]) for c in CATEGORIES] == [results["k"][name]] * 4
        scored = rows[rows["set"] == name]
        for c in CATEGORIES:
            assert sorted(scored[scored["category"] == c]["number"]) == sorted(cats[c])
    # Increased really holds the largest owl-minus-dog shift of its set, Decreased the smallest
    phase1 = study["phase1"]
    ar2 = phase1[phase1["set"] == "ar2"].sort_values("specific_shift")
    assert set(results["categories"]["ar2"]["increased"]) == set(ar2["number"].iloc[-3:])
    assert set(results["categories"]["ar2"]["decreased"]) == set(ar2["number"].iloc[:3])
    assert len(ar2) == 100 and ar2["p_owl_context_norm"].sum() == pytest.approx(1.0)


def test_output_contract(study: dict[str, Any]) -> None:
    results, rows, path = study["results"], study["rows"], study["path"]
    for column in (
        "set",
        "category",
        "number",
        "prob_diff",
        "specific_shift",
        "p_control_context_norm",
        "matched_to",
        "p_neutral_norm",
        "p_owl_context_norm",
        "p_bias",
        "p_control",
        "bias_ratio",
        "control_ratio",
        "relative_ratio",
    ):
        assert column in rows.columns, column
    assert rows["number"].map(type).eq(str).all()
    assert rows[rows["set"] == "ar1"]["category"].isna().sum() == 2  # whole small set scored
    assert results["partial"] is False and results["phase"] == 3
    assert set(results["category_stats"]) == {"vocab", "ar1", "ar2"}
    assert set(results["lengths"]["per_length"]) == {"1", "2"}
    assert results["lengths"]["strongest"]["best"] in {"1", "2"}
    assert len(results["template_control"]["words"]) == 3
    assert "cumulative" not in results  # cumulative_orders=0 (the toy test covers it)
    assert results["prompts"]["phase2_neutral"]["system_source"] == "template_default"
    assert "SmolLM" in results["prompts"]["phase2_neutral"]["system"]
    assert results["report"][1].startswith("vocab (k=2): Increased ")
    assert results["design"]["owl_specific"] is True
    assert results["prompts"]["phase1_control_context"]["system"].startswith("You love dogs.")
    assert results["claims"]["primary_set"] == "ar2"
    assert {d["verdict"] for d in results["claims"]["decisions"]} == {"inconclusive"}  # k <= 3
    assert (path / "figures" / "bias_ratio_by_category.pdf").is_file()
    record = read_json(path / "record.json")
    assert record["status"] == "ok" and {"phase1", "phase2"} <= set(record["timings"])


def test_phase2_probabilities_equal_a_plain_forward_pass(study: dict[str, Any], smollm2: LoadedModel) -> None:
    rows, results = study["rows"], study["results"]
    cats = results["categories"]["ar2"]
    user, prefill = "What is your favorite animal?", "My favorite animal is the"
    neutral_owl, neutral_dog = _plain_logp(smollm2, None, user, prefill, [" owl", " dog"])
    assert results["neutral"]["p_bias"] == pytest.approx(math.exp(sum(neutral_owl)), rel=1e-4)
    for number in (cats["increased"][0], "7"):
        row = rows[rows["number"] == number].iloc[0]
        system = DEFAULT_NUMBER_SYSTEM.replace("{num}", number)
        owl, dog = _plain_logp(smollm2, system, user, prefill, [" owl", " dog"])
        assert row["p_bias"] == pytest.approx(math.exp(sum(owl)), rel=1e-4)
        assert row["p_control"] == pytest.approx(math.exp(sum(dog)), rel=1e-4)
        assert row["p_bias_first"] == pytest.approx(math.exp(owl[0]), rel=1e-4)
        assert row["bias_ratio"] == pytest.approx(math.exp(sum(owl) - sum(neutral_owl)), rel=1e-3)
        assert row["relative_ratio"] == pytest.approx(
            math.exp(sum(owl) - sum(neutral_owl) - sum(dog) + sum(neutral_dog)), rel=1e-3
        )


def test_phase1_probabilities_equal_a_plain_forward_pass(study: dict[str, Any], smollm2: LoadedModel) -> None:
    phase1 = study["phase1"]
    ar2 = phase1[phase1["set"] == "ar2"].set_index("number")
    user, prefill = "What is your favorite number?", "My favorite number is"
    (owl,) = _plain_logp(smollm2, OWL, user, prefill, [" 87"])
    (neutral,) = _plain_logp(smollm2, None, user, prefill, [" 87"])
    assert len(owl) == 3  # " ", "8", "7": SmolLM2 writes digits one per token
    assert ar2.loc["87", "logp_owl_context"] == pytest.approx(sum(owl), abs=1e-4)
    assert ar2.loc["87", "logp_neutral"] == pytest.approx(sum(neutral), abs=1e-4)


def test_bias_word_checks(smollm2: LoadedModel) -> None:
    from sublens.errors import ConfigError
    from sublens.experiments.entanglement import check_answer_words
    from sublens.prompts import make_prompt

    prompt = make_prompt(smollm2.tokenizer, "What is your favorite animal?", None, "My favorite animal is the")
    words = check_answer_words(smollm2, prompt, ["eagle", "owl"])
    assert words["owl"]["n_tokens"] == 1 and words["eagle"]["n_tokens"] >= 1
    with pytest.raises(ConfigError, match="one word"):
        load_config(EntanglementConfig, None, ["bias=' '"])
