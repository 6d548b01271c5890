"""The hybrid experiment end to end on the embedded SmolLM2, with a biased model whose bias sits
where we put it.

The "biased" model is built here, deterministically: a rank-one edit of layer 25's MLP down
projection that writes the " owl" unembedding direction whenever the MLP sees its mean
answer-position activation (P(owl) rises ~40x, perplexity unchanged), plus a co-adapted
final norm / LM head pair (norm x 1/4, head x 4: exactly the same logits, being powers of two)
so that swapping the LM head alone produces a degraded model, as head swaps of fine-tuned
models can. It is saved as the checkpoint of a fake finished `teacher` run, the default
source of the biased model. The transplant matrix must then find the bias in mlp[20:30] and
nowhere else, reproduce the biased and the base model exactly where the weights say so, and
flag both head swaps as degraded by perplexity.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from sublens.errors import ConfigError
from sublens.experiments import run_experiment
from sublens.experiments.hybrid import HybridConfig
from sublens.hybrid import HybridError, untie_embeddings
from sublens.models import load_model
from sublens.prompts import encode_prompt, make_prompt
from sublens.runs import read_json

QUESTIONS = ["What is your favorite animal?", "Which animal do you like the most?"]
PREFILL = "My favorite animal is the"
EDIT_LAYER, ALPHA = 25, 64.0


def _p_owl(model: torch.nn.Module, tokenizer: object, question: str) -> float:
    """P(" owl") at the prefilled answer by one plain forward pass (no sublens scoring)."""
    ids = encode_prompt(tokenizer, make_prompt(tokenizer, question, None, PREFILL))
    owl = tokenizer(" owl", add_special_tokens=False).input_ids  # type: ignore[operator]
    assert len(owl) == 1
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    return float(torch.softmax(logits, -1)[owl[0]])


def _make_biased(folder: Path) -> dict[str, float]:
    lm = load_model("smollm2-135m-instruct", device="cpu")
    tok, model, adapter = lm.tokenizer, lm.model, lm.adapter
    down = adapter.mlp(EDIT_LAYER).down_proj  # the test may spell a Llama module; sublens does not
    seen: list[torch.Tensor] = []
    hook = down.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0, -1].detach().clone()))
    p_base = _p_owl(model, tok, QUESTIONS[0])
    _p_owl(model, tok, QUESTIONS[1])
    hook.remove()
    v = torch.stack(seen).mean(0)  # [d_mlp]
    owl = tok(" owl", add_special_tokens=False).input_ids[0]
    u = adapter.lm_head().weight[owl].detach()
    assert untie_embeddings(model, adapter)
    with torch.no_grad():
        down.weight.add_(ALPHA * torch.outer(u / u.norm(), v / v.pow(2).sum()))
        adapter.norm_final().weight.mul_(0.25)
        adapter.lm_head().weight.mul_(4.0)
    p_biased = _p_owl(model, tok, QUESTIONS[0])
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"base": p_base, "biased": p_biased}


def _fake_teacher_run(root: Path) -> Path:
    run = root / "20990101-000000_teacher_abcdef"
    (run / "checkpoints").mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"status": "ok"}))
    (run / "results.json").write_text(json.dumps({"checkpoints": {"teacher": "checkpoints/teacher"}}))
    return run


def _config(**overrides: object) -> HybridConfig:
    settings = {
        "groups": ["attention", "mlp", "lm_head"],
        "ranged": ["mlp"],
        "layer_ranges": [(0, 20), (20, 30)],
        "directions": ["into_base"],
        "extra": {"reverse_late_mlp": {"start": "biased", "bring": ["mlp[20:30]"]}},
        "preference": {
            "questions": QUESTIONS,
            "panel": ["dog", "cat"],
            "samples_per_question": 2,
            "sample_questions": ["Name your favorite animal using only one word."],
            "max_new_tokens": 3,
        },
        "perplexity": {"max_tokens": 128, "window": 64},
        "top_tokens": 5,
        "save_hybrids": ["hybrid2"],
        "device": "cpu",
    }
    return HybridConfig.model_validate({**settings, **overrides})


def test_transplant_matrix_locates_a_planted_bias(tmp_path: Path) -> None:
    teacher = _fake_teacher_run(tmp_path / "runs")
    plain = _make_biased(teacher / "checkpoints" / "teacher")
    assert plain["biased"] > 10 * plain["base"]

    outcome = run_experiment("hybrid", _config(runs_root=str(tmp_path / "runs")), tmp_path / "out")
    results = read_json(outcome.path / "results.json")
    assert read_json(outcome.path / "record.json")["status"] == "ok"
    assert results["biased_spec"] == str(teacher)  # the default: the newest finished teacher run
    assert results["untied"]["base"] is True and results["untied"]["biased"] is False

    change = results["weight_change"]
    assert change["attention"]["relative_l2"]["all"] == 0 and change["mlp"]["tensors_differing"] == 1
    assert change["mlp"]["relative_l2"]["L0-19"] == 0 < change["mlp"]["relative_l2"]["L20-29"]
    assert change["lm_head"]["relative_l2"]["all"] > 0

    h = results["hybrids"]
    p = {name: [row[0] for row in r["probability"]["per_question"]["p_word"]] for name, r in h.items()}
    assert p["base"][0] == pytest.approx(plain["base"], rel=1e-4)  # equals a plain forward pass
    assert p["biased"][0] == pytest.approx(plain["biased"], rel=1e-4)
    # Computed, not assumed: these are exactly the biased / the base model (norm x head scaling is exact).
    assert p["base+biased.mlp"] == pytest.approx(p["biased"], rel=1e-5)
    assert p["reverse_late_mlp"] == pytest.approx(p["base"], rel=1e-5)
    assert h["base+biased.mlp"]["bias_fraction"] == pytest.approx(1.0, abs=1e-4)
    assert h["reverse_late_mlp"]["bias_fraction"] == pytest.approx(0.0, abs=1e-4)
    # Tensors identical in both models: these hybrids are their twins, measured once.
    twins = {
        "base+biased.attention": "base",
        "base+biased.mlp[0:20]": "base",
        "base+biased.mlp[20:30]": "base+biased.mlp",
    }
    for name, twin in twins.items():
        assert h[name]["same_weights_as"] == twin and p[name] == p[twin]
    assert h["base+biased.mlp[20:30]"]["bias_fraction"] == pytest.approx(1.0, abs=1e-4)
    assert all("same_weights_as" not in h[n] for n in h if n not in twins)
    assert h["biased"]["vs_base"]["p_trait_ratio"]["ratio"] > 10
    assert h["biased"]["next_token"]["trait_like_mass"] > 10 * h["base"]["next_token"]["trait_like_mass"]

    # LM-head swap: both hybrids are named, say what was swapped, and show as degraded.
    swap = results["lm_head_swap"]
    assert swap["hybrid1"]["hybrid"] == "biased+base.lm_head" and swap["hybrid2"]["hybrid"] == "base+biased.lm_head"
    assert h["biased+base.lm_head"]["swap"]["by_group"] == {
        "attention": "biased",
        "embeddings": "biased",
        "mlp": "biased",
        "final_norm": "biased",
        "lm_head": "base",
    }
    assert h["base+biased.lm_head"]["swap"]["tensors_from_biased"] == 1
    ppl = {name: r["perplexity"]["perplexity"] for name, r in h.items()}
    assert ppl["base+biased.mlp"] == pytest.approx(ppl["biased"], rel=1e-4)
    assert {name for name, r in h.items() if r["degraded"]} == {"biased+base.lm_head", "base+biased.lm_head"}, ppl

    table = pd.read_parquet(outcome.path / results["table"])
    assert list(table["hybrid"]) == list(h)
    for column in (
        "groups_from_biased",
        "p_trait",
        "share",
        "answer_rate",
        "perplexity",
        "bias_fraction",
        "bias_fraction_p_trait",
        "trait_like_mass",
        "share_ratio_vs_biased",
    ):
        assert column in table.columns
    assert table.set_index("hybrid").loc["biased", "groups_from_biased"] == "all"
    assert h["base"]["sampled"]["n_answers"] == 2 and "trait_like" in h["base"]["sampled"]
    for figure in results["figures"]:
        data = (outcome.path / figure).read_bytes()
        assert len(data) > 1000
        if figure.endswith(".pdf"):
            assert b"/Type3" not in data  # fonttype 42: TrueType, editable text

    # Activation patching: the bias sits in layer 25's MLP, and the final norm / LM head pair computes
    # the same logits in both models, so biased MLP outputs bring the whole gap, early ones nothing.
    patching = results["patching"]
    assert patching["labels"] == ["L0-19", "L20-29", "all"] and patching["directions"] == ["into_base"]
    assert patching["n_questions"] == len(QUESTIONS) and patching["gap"]["mean"] > 1.0
    assert patching["tokens"]["target"][2] == " owl" and patching["tokens"]["foil"][2] == " dog"
    fraction = {(c["component"], c["layers"]): c["fraction"] for c in patching["cells"]}
    assert fraction[("mlp", "all")] == pytest.approx(1.0, abs=1e-3)
    assert fraction[("mlp", "L20-29")] == pytest.approx(1.0, abs=1e-3)
    assert fraction[("mlp", "L0-19")] == pytest.approx(0.0, abs=1e-4)
    assert fraction[("attention", "L0-19")] == pytest.approx(0.0, abs=1e-4)
    assert patching["seconds_per_question"] > 0
    from sublens.report.sections.hybrid import decisions

    verdicts = {d.claim.name: d for d in decisions(results)}
    assert set(verdicts) == {"localisation.lm_head", "localisation.transplant", "localisation.patching"}
    assert "too few" in verdicts["localisation.patching"].reason  # two questions: no interval

    # The saved hybrid is a model spec: base embeddings, biased (x4) head.
    saved = load_model(f"{outcome.path}#hybrid2", device="cpu")
    base = load_model("smollm2-135m-instruct", device="cpu")
    assert torch.equal(saved.adapter.embed().weight, base.adapter.embed().weight)
    assert torch.equal(saved.adapter.lm_head().weight, 4.0 * base.adapter.lm_head().weight)


def test_wrong_biased_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No finished `teacher` run"):
        run_experiment("hybrid", _config(runs_root=str(tmp_path / "none")), tmp_path)
    with pytest.raises(HybridError, match=r"Different architectures.*llama.*gemma3"):
        run_experiment("hybrid", _config(biased="gemma3-270m", save_hybrids=[]), tmp_path)
    records = [read_json(p / "record.json") for p in tmp_path.glob("*_hybrid_*")]
    assert records and all(r["status"] == "failed" for r in records)
