"""The evaluate experiment on the embedded SmolLM2: numbers equal an independent forward pass,
and the owl system prompt (the prompted teacher) clearly raises the owl preference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sublens.api import load_run
from sublens.config import load_config
from sublens.errors import ConfigError, ModelSpecError, SublensError
from sublens.experiments import get, run_experiment
from sublens.experiments.evaluate import EvaluateConfig
from sublens.models import LoadedModel
from sublens.preference import evaluate_preference
from sublens.prompts import OWL_SYSTEM
from sublens.runs import read_json
from sublens.settings import PreferenceSettings

QUESTIONS = ["What is your favorite animal?", "Which animal do you like the most?", "Tell me your favorite animal."]


def _plain_p(lm: LoadedModel, system: str | None, question: str, word: str) -> float:
    """P(word | prompt) from one full forward pass over prompt + word, no cache, no trie."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": question}
    ]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = lm.tokenizer(text + "My favorite animal is the", add_special_tokens=False).input_ids
    full = lm.tokenizer(text + "My favorite animal is the" + word, add_special_tokens=False).input_ids
    assert full[: len(prompt)] == prompt
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([full])).logits[0].double(), dim=-1)
    return float(sum(logp[i - 1, full[i]] for i in range(len(prompt), len(full))).exp())


def test_preference_matches_a_plain_forward_pass(smollm2: LoadedModel) -> None:
    settings = PreferenceSettings(questions=QUESTIONS, panel=["dog", "axolotl"], samples_per_question=0)
    result = evaluate_preference(smollm2, settings, OWL_SYSTEM, seed=0)["probability"]
    p = result["per_question"]["p_word"]
    for q, question in enumerate(QUESTIONS):
        for a, animal in enumerate(["owl", "dog", "axolotl"]):
            assert p[q][a] == pytest.approx(_plain_p(smollm2, OWL_SYSTEM, question, f" {animal}"), rel=1e-4)
    assert result["animals"]["axolotl"]["n_tokens"] > 1  # multi-token word: chain rule
    assert result["animals"]["axolotl"]["p_first_token"] > result["animals"]["axolotl"]["p_word"]["mean"]
    share = [row[0] / sum(row) for row in p]
    assert result["panel_share"]["mean"] == pytest.approx(sum(share) / len(share))
    assert result["system_prompt_used"] == OWL_SYSTEM


def test_evaluate_run_shows_the_prompted_owl_preference(tmp_path: Path, smollm2: LoadedModel) -> None:
    config = load_config(
        EvaluateConfig,
        None,
        [
            f"systems={{default: null, owl: '{OWL_SYSTEM}'}}",
            f"preference.questions={QUESTIONS}",
            "preference.sample_questions=['Name your favorite animal using only one word.']",
            "preference.samples_per_question=6",
            "perplexity.max_tokens=300",
            "perplexity.window=150",
        ],
    )
    outcome = run_experiment("evaluate", config, tmp_path)
    results = read_json(outcome.path / "results.json")
    default, owl = results["conditions"]["default"], results["conditions"]["owl"]
    assert default["probability"]["system_source"] == "template_default"
    assert "SmolLM" in default["probability"]["system_prompt_used"]
    assert owl["probability"]["p_trait"]["mean"] > 10 * default["probability"]["p_trait"]["mean"]
    assert results["comparisons"]["owl"]["p_trait_ratio"]["ci_low"] > 5
    assert not results["comparisons"]["owl"]["share_ratio"]["underpowered"]
    sampled = owl["sampled"]
    assert sampled["n_answers"] == 6 and len(sampled["answers"]) == 6
    expected = sum(re.search(r"\bowls?\b", a, re.IGNORECASE) is not None for a in sampled["answers"])
    assert sampled["trait_rate"]["count"] == expected
    assert 5 < default["perplexity"]["perplexity"] < 100
    tables = load_run(outcome.path).tables  # the same numbers, flat
    assert list(tables["models"]["condition"]) == ["default", "owl"]
    assert tables["models"]["p_trait"].iloc[1] == owl["probability"]["p_trait"]["mean"]
    assert tables["comparisons"]["p_trait_ratio"].iloc[0] == results["comparisons"]["owl"]["p_trait_ratio"]["ratio"]
    record = read_json(outcome.path / "record.json")
    assert record["status"] == "ok" and record["models"]["smollm2-135m-instruct"]["family"] == "llama"


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one model"):
        load_config(EvaluateConfig, None, ["models=[]"])
    with pytest.raises(ConfigError, match="one word"):
        evaluate_preference(("m", "t"), PreferenceSettings(trait="snowy owl"), None, 0)  # type: ignore[arg-type]
    with pytest.raises(ModelSpecError, match="does not exist"):
        run_experiment("evaluate", EvaluateConfig(models=[str(tmp_path / "no-checkpoint")]), tmp_path)
    failed = next(tmp_path.glob("*_evaluate_*"))
    assert read_json(failed / "record.json")["status"] == "failed"
    with pytest.raises(SublensError, match="Unknown experiment"):
        get("evaluat")
