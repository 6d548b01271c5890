"""The pruning experiment end to end on the embedded SmolLM2 (tiny config): shapes, exact kept
counts, retention 1 at fraction 1.0, a pruned P(owl) equal to an independent masked forward
pass, the model left exactly as it was, and a rerun that resumes from the saved measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import sublens.experiments.pruning.run as pruning_experiment
from sublens.config import load_config
from sublens.experiments import run_experiment
from sublens.experiments.pruning import PruningConfig
from sublens.models import LoadedModel
from sublens.prompts import OWL_SYSTEM
from sublens.runs import read_json

QUESTIONS = ["What is your favorite animal?", "Which animal do you like the most?"]
PREFILL = "My favorite animal is the"


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _masked_p(lm: LoadedModel, heads: list[str], question: str, word: str) -> float:
    """P(word) with `heads` removed by hand: a pre-hook on each o_proj zeroing the head's slice of
    its input, then one plain forward pass over prompt + word (no cache, no trie)."""
    model = lm.model
    d_head = model.config.hidden_size // model.config.num_attention_heads
    by_layer: dict[int, list[int]] = {}
    for label in heads:
        layer, head = label[1:].split("H")
        by_layer.setdefault(int(layer), []).append(int(head))

    def zeroing(heads_here: list[int]) -> Any:
        def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            x = args[0].clone()
            for h in heads_here:
                x[..., h * d_head : (h + 1) * d_head] = 0
            return (x,)

        return hook

    messages = [{"role": "system", "content": OWL_SYSTEM}, {"role": "user", "content": question}]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = lm.tokenizer(text + PREFILL, add_special_tokens=False).input_ids
    full = lm.tokenizer(text + PREFILL + word, add_special_tokens=False).input_ids
    assert full[: len(prompt)] == prompt
    handles = [
        model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zeroing(hs))
        for layer, hs in by_layer.items()
    ]
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
    finally:
        for handle in handles:
            handle.remove()
    return float(sum(logp[i - 1, full[i]] for i in range(len(prompt), len(full))).exp())


def test_pruning_end_to_end(tmp_path: Path, smollm2: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # The run uses the session's model object, so we can check it is left exactly as it was.
    monkeypatch.setattr(pruning_experiment, "load_model", lambda *_a, **_k: smollm2)
    probe = torch.tensor([smollm2.tokenizer("The owl sat on a branch.").input_ids])
    with torch.no_grad():
        before = smollm2.model(probe).logits
    hooks_before = _hook_count(smollm2.model)
    config = load_config(
        PruningConfig,
        None,
        [
            "model=smollm2-135m-instruct",  # the prompted teacher; its base is the same model unprompted
            f"system={OWL_SYSTEM!r}",
            f"bias_prompts.system={OWL_SYSTEM!r}",
            "fractions=[1.0, 0.6]",
            "random_draws=1",
            "claim_random_draws=2",
            f"bias_prompts.questions={QUESTIONS}",
            f"preference.questions={QUESTIONS}",
            "preference.panel=[dog, cat]",
            "preference.sample_questions=['Name your favorite animal using only one word.']",
            "preference.samples_per_question=3",
            "preference.max_new_tokens=3",
            "perplexity.max_tokens=64",
            "perplexity.window=32",
            "bootstrap_resamples=200",
        ],
    )
    outcome = run_experiment("pruning", config, tmp_path)
    results = read_json(outcome.path / "results.json")

    # The model is untouched: no hooks left, sdpa restored, same outputs.
    assert _hook_count(smollm2.model) == hooks_before
    assert smollm2.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(smollm2.model(probe).logits, before)

    # Entropy matrix: 30 layers x 9 heads, in results and in the safetensors file.
    tensors = load_file(outcome.path / results["entropy"]["file"])
    matrix = torch.tensor(results["entropy"]["matrix"])
    assert matrix.shape == (30, 9) and tensors["entropy"].shape == (30, 9)
    assert tensors["entropy_per_prompt"].shape == (2, 30, 9)
    torch.testing.assert_close(tensors["entropy"], matrix.double())
    assert results["entropy"]["bias_system_prompt_used"] == OWL_SYSTEM
    assert torch.all(matrix >= 0) and torch.all(matrix <= torch.log(torch.tensor(200.0)))

    # Kept counts are exact; at 1.0 nothing is pruned and retention is 1.
    steps = {(s["fraction"], s["criterion"]): s for s in results["steps"]}
    assert set(steps) == {(f, c) for f in (1.0, 0.6) for c in ("entropy", "reverse", "random")}
    for (fraction, _), step in steps.items():
        assert step["n_kept"] == {1.0: 270, 0.6: 162}[fraction] == 270 - step["n_pruned"]
    for criterion in ("entropy", "reverse", "random"):
        retention = steps[(1.0, criterion)]["retention"]
        assert retention["p_trait"]["ratio"] == pytest.approx(1.0)
        assert retention["panel_share"]["ratio"] == pytest.approx(1.0)
        if results["unpruned"]["preference"]["sampled"]["trait_rate"]["count"]:
            assert retention["answer_rate"]["ratio"] == pytest.approx(1.0)
        controlled = steps[(1.0, criterion)]["controlled"]
        assert controlled["panel_share"]["ratio"] == pytest.approx(1.0)
        assert controlled["p_trait"]["ci_low"] is None  # no spread: no interval, never a zero-width one
    # The pruned-base control: the same heads removed from the base model, measured and recorded.
    assert (
        results["base_measurements"]["entropy@0.6#0"]["pruned_heads"]
        == (results["measurements"]["entropy@0.6#0"]["pruned_heads"])
    )
    assert steps[(0.6, "random")]["n_draws"] == 2 and len(results["claims"]) == 2
    assert results["base_unpruned"]["preference"]["probability"]["system_prompt_used"] != OWL_SYSTEM
    measured = results["measurements"]
    assert all(len(m["pruned_heads"]) == 108 for k, m in measured.items() if "@0.6" in k)
    assert set(measured) == set(results["base_measurements"])
    # The entropy criterion pruned the 108 highest-entropy heads.
    pruned = measured["entropy@0.6#0"]["pruned_heads"]
    values = {f"L{layer}H{head}": float(matrix[layer, head]) for layer in range(30) for head in range(9)}
    assert min(values[h] for h in pruned) >= max(v for h, v in values.items() if h not in pruned)
    assert results["entropy"]["heatmap"]["pruned"] == pruned

    # One pruned P(owl) equals an independent masked forward pass.
    p_word = measured["entropy@0.6#0"]["measurement"]["preference"]["probability"]["per_question"]["p_word"]
    assert p_word[0][0] == pytest.approx(_masked_p(smollm2, pruned, QUESTIONS[0], " owl"), rel=1e-4)
    reverse = measured["reverse@0.6#0"]
    p_reverse = reverse["measurement"]["preference"]["probability"]["per_question"]["p_word"]
    assert p_reverse[1][0] == pytest.approx(_masked_p(smollm2, reverse["pruned_heads"], QUESTIONS[1], " owl"), rel=1e-4)
    assert p_word[0][0] != pytest.approx(
        results["unpruned"]["preference"]["probability"]["per_question"]["p_word"][0][0], rel=1e-3
    )

    # Outputs: table, figures, record.
    table = pd.read_parquet(outcome.path / results["table"])
    assert len(table) == 6 and {
        "panel_share_controlled",
        "p_trait_retention",
        "perplexity",
        "answer_rate_retention_ci_high",
    } <= set(table)
    for name in results["figures"]:
        assert (outcome.path / name).stat().st_size > 1000
    pdf = (outcome.path / "pruning_retention.pdf").read_bytes()
    assert b"/Type3" not in pdf  # fonttype 42: TrueType fonts, editable in the paper
    assert results["partial"] is False
    assert read_json(outcome.path / "record.json")["status"] == "ok"

    # A rerun into the same directory with the same config measures nothing again.
    def no_measuring(*_a: Any, **_k: Any) -> dict[str, Any]:
        raise AssertionError("a resumed run remeasured a finished unit")

    monkeypatch.setattr(pruning_experiment, "measure", no_measuring)
    again = run_experiment("pruning", config, tmp_path, run_dir=outcome.path)
    assert again.results["resumed"] is True and again.results["resumed_units"] == 2 * 7
    assert read_json(again.path / "results.json")["steps"] == results["steps"]
