"""Head entropy, pruning masks and the sweep on tiny random models of every family."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.claims import Verdict, estimate_log_ratio, holm
from sublens.config import load_config
from sublens.errors import ConfigError
from sublens.experiments.pruning import (
    PruningConfig,
    PruningResults,
    biased_spec,
    check_base,
    controlled_rate_retention,
    pooled_preference,
    rate_retention,
    summarize_step,
)
from sublens.experiments.pruning import results as results_module
from sublens.experiments.pruning.results import (
    Criterion,
    Measurement,
    PerplexityRecord,
    PreferenceRecord,
    Step,
)
from sublens.hooks import mask_heads
from sublens.pruning import (
    attention_entropy,
    entropy_sums,
    head_entropy,
    keep_count,
    plan,
    pruned_heads,
    row_entropy,
    sweep,
    valid_query_rows,
)
from sublens.report.sections import pruning as pruning_section
from sublens.report.sections.pruning import draws_needed, rank_pvalue, step_decisions
from sublens.report.stages import load_stage
from sublens.results import ResultsError, load_results
from sublens.settings import CRITERIA
from sublens.stats import summarize

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pruning"
RECORDED = Path(__file__).resolve().parents[1] / "data" / "runs" / "pruning"  # predates the base control


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits  # type: ignore[no-any-return]


def _prompts(lengths: tuple[int, ...] = (7, 4, 9, 2, 5)) -> list[list[int]]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(2, 97, (n,), generator=generator).tolist() for n in lengths]


# ---------------------------------------------------------------------------------------------
# masks on every adapter


def _record_o_inputs(adapter: Adapter, store: dict[int, torch.Tensor]) -> list[Any]:
    """Pre-hooks on every output projection that record its input z [b, pos, n_heads*d_head]."""
    handles = []
    for layer in range(adapter.n_layers):

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], layer: int = layer) -> None:
            store[layer] = args[0].detach().clone()

        handles.append(adapter.o(layer).register_forward_pre_hook(hook))
    return handles


def test_mask_zeroes_exactly_the_selected_heads(model: nn.Module, input_ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    entropy = attention_entropy(model, adapter, _prompts(), progress=False).mean
    pruned = pruned_heads(entropy, 0.5, "entropy")
    assert pruned and len(pruned) < adapter.n_layers * adapter.n_heads
    baseline = _hook_count(model)
    before: dict[int, torch.Tensor] = {}
    after: dict[int, torch.Tensor] = {}
    outer = _record_o_inputs(adapter, before)  # runs before the mask: z as the heads computed it
    try:
        with mask_heads(model, adapter, pruned):
            inner = _record_o_inputs(adapter, after)  # runs after the mask: what W_O receives
            try:
                masked = _logits(model, input_ids)
            finally:
                for handle in inner:
                    handle.remove()
    finally:
        for handle in outer:
            handle.remove()
    assert _hook_count(model) == baseline
    for layer in range(adapter.n_layers):
        z_in = before[layer].unflatten(-1, (adapter.n_heads, adapter.d_head))
        z_out = after[layer].unflatten(-1, (adapter.n_heads, adapter.d_head))
        for head in range(adapter.n_heads):
            if (layer, head) in pruned:
                assert torch.all(z_out[:, :, head] == 0)
            else:
                assert torch.equal(z_out[:, :, head], z_in[:, :, head])  # untouched, bit for bit
    # The mask equals removing the heads: their columns of the output projection set to 0.
    removed = copy.deepcopy(model)
    removed_adapter = adapter_for(removed)
    d = adapter.d_head
    with torch.no_grad():
        for layer, head in pruned:
            o = removed_adapter.o(layer)
            if isinstance(o, nn.Linear):  # weight [out, in]
                o.weight[:, head * d : (head + 1) * d] = 0
            else:  # GPT-2 Conv1D, weight [in, out]
                o.weight[head * d : (head + 1) * d, :] = 0
    torch.testing.assert_close(masked, _logits(removed, input_ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked, _logits(model, input_ids), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# entropy


def _h(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in row if p > 0)


def test_entropy_on_a_hand_built_pattern_matches_the_formula() -> None:
    a = [  # head 0 of sequence 0: causal rows summing to 1
        [1.0, 0.0, 0.0, 0.0],
        [0.3, 0.7, 0.0, 0.0],
        [0.2, 0.5, 0.3, 0.0],
        [0.25, 0.25, 0.25, 0.25],
    ]
    b = [  # head 1 of sequence 0
        [1.0, 0.0, 0.0, 0.0],
        [0.9, 0.1, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.1, 0.2, 0.3, 0.4],
    ]
    c = [  # sequence 1 (3 tokens, then one padding row that must not count)
        [1.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.6, 0.2, 0.2, 0.0],
        [0.1, 0.1, 0.1, 0.7],
    ]
    pattern = torch.tensor([[a, b], [c, list(reversed(c))]])  # [b=2, head=2, q=4, k=4]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    expected = [
        (sum(_h(r) for r in a[1:]) + sum(_h(r) for r in c[1:3])) / 5,
        (sum(_h(r) for r in b[1:]) + sum(_h(r) for r in list(reversed(c))[1:3])) / 5,
    ]
    got = head_entropy(pattern, mask)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    nan_padding = pattern.clone()
    nan_padding[1, :, 3] = float("nan")  # a fully masked padding row
    assert head_entropy(nan_padding, mask).tolist() == pytest.approx(expected, rel=1e-6)
    sums, rows = entropy_sums(pattern, mask)
    assert rows.tolist() == [3, 2]
    assert sums[0, 0].item() == pytest.approx(sum(_h(r) for r in a[1:]), rel=1e-6)
    # Uniform rows have entropy log(n); one-hot rows 0; a row's 0 entries add nothing.
    assert row_entropy(pattern)[0, 0].tolist() == pytest.approx(
        [0.0, _h([0.3, 0.7]), _h([0.2, 0.5, 0.3]), math.log(4)], abs=1e-6
    )
    # The first valid row is excluded also under left padding; padding rows never count.
    assert valid_query_rows(torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])).tolist() == [
        [False, False, True, True],
        [False, True, False, False],
    ]
    assert head_entropy(pattern[:1]).tolist() == pytest.approx(
        [sum(_h(r) for r in a[1:]) / 3, sum(_h(r) for r in b[1:]) / 3], rel=1e-6
    )


def test_entropy_of_a_model_ignores_padding_and_pools_rows(family: str) -> None:
    from tiny import tiny_model

    model = tiny_model(family, attn_implementation="sdpa")
    adapter = adapter_for(model)
    prompts = _prompts()
    baseline = _hook_count(model)
    padded = attention_entropy(model, adapter, prompts, batch_size=3, progress=False)
    single = attention_entropy(model, adapter, prompts, batch_size=1, progress=False)
    assert model.config._attn_implementation == "sdpa" and _hook_count(model) == baseline
    assert padded.mean.shape == (adapter.n_layers, adapter.n_heads)
    assert padded.rows.tolist() == [n - 1 for n in map(len, prompts)]
    torch.testing.assert_close(padded.per_prompt, single.per_prompt, atol=1e-6, rtol=1e-6)
    pooled = (single.per_prompt * single.rows[:, None, None]).sum(0) / single.rows.sum()
    torch.testing.assert_close(padded.mean, pooled, atol=1e-6, rtol=1e-6)
    # Independent: the pattern from output_attentions of a plain eager forward pass.
    eager = tiny_model(family, attn_implementation="eager")
    with torch.no_grad():
        attentions = eager(torch.tensor([prompts[0]]), output_attentions=True).attentions
    for layer, pattern in enumerate(attentions):  # [1, head, q, k]
        p = pattern[0].double()
        manual = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)[:, 1:].mean(-1)
        torch.testing.assert_close(single.per_prompt[0, layer], manual, atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        attention_entropy(model, adapter, [[5]], progress=False)


# ---------------------------------------------------------------------------------------------
# kept fraction and criteria


@pytest.mark.parametrize("shape", [(30, 9), (3, 6), (2, 4), (16, 32)])
def test_kept_fraction_is_exact(shape: tuple[int, int]) -> None:
    entropy = np.random.default_rng(1).random(shape)
    total = shape[0] * shape[1]
    flat = {(layer, head): entropy[layer, head] for layer in range(shape[0]) for head in range(shape[1])}
    previous: dict[str, set[tuple[int, int]]] = {}
    for fraction in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4):
        n_keep = math.floor(fraction * total + 0.5 + 1e-9)
        for criterion in CRITERIA:
            for draw in (0, 1):
                pruned = pruned_heads(entropy, fraction, criterion, seed=7, draw=draw)
                assert len(pruned) == len(set(pruned)) == total - n_keep == total - keep_count(fraction, total)
                kept = set(flat) - set(pruned)
                if pruned and criterion == "entropy":  # prune above the percentile
                    assert max(flat[h] for h in kept) < min(flat[h] for h in pruned)
                if pruned and criterion == "reverse":
                    assert min(flat[h] for h in kept) > max(flat[h] for h in pruned)
                if criterion == "random":
                    assert pruned == pruned_heads(entropy, fraction, "random", seed=7, draw=draw)
                # Masks are nested: a smaller fraction prunes a superset.
                label = f"{criterion}{draw}"
                assert previous.get(label, set()) <= set(pruned)
                previous[label] = set(pruned)
    assert keep_count(0.6, 270) == 162 and keep_count(0.4, 270) == 108 and keep_count(0.5, 5) == 3
    half = pruned_heads(entropy, 0.5, "random", seed=7, draw=0)
    assert half != pruned_heads(entropy, 0.5, "random", seed=7, draw=1)
    assert half != pruned_heads(entropy, 0.5, "random", seed=8, draw=0)


def test_ties_and_bad_fractions() -> None:
    flat = np.zeros((2, 3))
    assert pruned_heads(flat, 0.5, "entropy") == [(1, 0), (1, 1), (1, 2)]  # ties: keep lower layers
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            keep_count(bad, 10)
    with pytest.raises(ConfigError, match="fractions must be in"):
        load_config(PruningConfig, None, ["fractions=[1.0, 0]"])
    with pytest.raises(ConfigError, match="distinct"):
        load_config(PruningConfig, None, ["fractions=[0.6, 0.6]"])
    with pytest.raises(ConfigError, match="criteria"):
        load_config(PruningConfig, None, ["criteria=[entropy, magnitude]"])
    with pytest.raises(ConfigError, match="Valid keys"):
        load_config(PruningConfig, None, ["fraction=[0.6]"])


def test_presets_load() -> None:
    quick = load_config(PruningConfig, CONFIGS / "quick.yaml")
    paper = load_config(PruningConfig, CONFIGS / "paper.yaml")
    assert quick.fractions == [1.0, 0.8, 0.6, 0.4] and paper.fractions == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    # The fine-tuned teacher by default: no owl prompt, the trait is in the weights.
    assert quick.model is None and quick.system is None and quick.bias_prompts.system is None
    assert paper.model is None and paper.base == "meta-llama/Llama-3.2-1B-Instruct"
    assert list(quick.criteria) == list(CRITERIA)
    # Enough draws for the rank test to pass Holm over the two claims at alpha 0.05.
    assert quick.claim_random_draws >= draws_needed(quick.claims.alpha, 2) == 80
    assert paper.claim_random_draws >= 80 and quick.max_perplexity_ratio == 1.5


def test_default_biased_model_is_the_newest_teacher_run(tmp_path: Path) -> None:
    config = PruningConfig(runs_root=str(tmp_path))
    with pytest.raises(ConfigError, match="sublens run teacher --preset quick"):
        biased_spec(config)
    for name, status in (
        ("20250101-000000_teacher_a", "ok"),
        ("20250102-000000_teacher_b", "ok"),
        ("20250103-000000_teacher_c", "failed"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "record.json").write_text(json.dumps({"status": status}))
        (folder / "results.json").write_text(json.dumps({"checkpoints": ["checkpoints/teacher"]}))
        (folder / "config.yaml").write_text("base: smollm2-135m-instruct\n")
    newest = str(tmp_path / "20250102-000000_teacher_b")
    assert biased_spec(config) == newest
    assert biased_spec(PruningConfig(model="x")) == "x"
    check_base(newest, "smollm2-135m-instruct")  # its own base: fine
    with pytest.raises(ConfigError, match="--set base=smollm2-135m-instruct"):
        check_base(newest, "gemma3-270m")


def test_claim_fraction_gets_its_own_random_draws() -> None:
    entropy = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    units = plan(entropy, [1.0, 0.5], ["entropy", "random"], random_draws=2, seed=0, draws_at={0.5: 5})
    draws = [u.draw for u in units if u.criterion == "random" and u.fraction == 0.5]
    assert draws == [0, 1, 2, 3, 4]
    assert len([u for u in units if u.criterion == "random" and u.fraction == 1.0]) == 2
    first = [u for u in units if u.criterion == "random"]
    assert plan(entropy, [0.5], ["random"], 2, 0)[0].pruned == next(u for u in first if u.fraction == 0.5).pruned


# ---------------------------------------------------------------------------------------------
# the sweep leaves no mask behind


def test_masks_are_gone_after_the_sweep(model: nn.Module, input_ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    entropy = attention_entropy(model, adapter, _prompts(), progress=False).mean
    reference = _logits(model, input_ids)
    baseline = _hook_count(model)
    units = plan(entropy, [1.0, 0.5], CRITERIA, random_draws=2, seed=0)
    assert [u.key for u in units] == [
        "entropy@1#0",
        "reverse@1#0",
        "random@1#0",
        "random@1#1",
        "entropy@0.5#0",
        "reverse@0.5#0",
        "random@0.5#0",
        "random@0.5#1",
    ]
    calls: list[int] = []

    def measure() -> dict[str, Any]:
        calls.append(_hook_count(model))
        return {"logits": _logits(model, input_ids)}

    unpruned = measure()
    results = dict(sweep(model, adapter, units, measure, unpruned=unpruned, progress=False))
    assert len(calls) == 1 + 4  # fraction 1.0 prunes nothing: the unpruned measurement is reused
    assert all(count > baseline for count in calls[1:])  # a mask was on during each measurement
    for unit, result in results.items():
        if unit.fraction == 1.0:
            assert result is unpruned
        else:
            assert not torch.allclose(result["logits"], reference)
    assert _hook_count(model) == baseline
    assert torch.equal(_logits(model, input_ids), reference)

    # A measurement that raises leaves no mask either.
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(sweep(model, adapter, units[4:], broken, progress=False))
    assert _hook_count(model) == baseline
    assert torch.equal(_logits(model, input_ids), reference)

    # Resuming: measurements already done are not redone.
    done = {u.key: {"stored": u.key} for u in units[:6]}
    calls.clear()
    resumed = list(sweep(model, adapter, units, measure, done=done, progress=False))
    assert len(calls) == 2 and resumed[0][1] == {"stored": "entropy@1#0"}


# ---------------------------------------------------------------------------------------------
# retention arithmetic

ANIMALS = ["owl", "dog", "cat"]


def _record(p_word: list[list[float]], share: list[float], hits: list[list[bool]] | None) -> PreferenceRecord:
    """A complete preference record (as `evaluate_preference` writes it) with these numbers."""
    columns = np.asarray(p_word).T
    probability = {
        "system_prompt_used": None,
        "system_source": "default",
        "prefill": "My favorite animal is the",
        "n_questions": len(p_word),
        "trait": "owl",
        "p_trait": summarize(columns[0]),
        "p_trait_first_token": float(columns[0].mean()),
        "panel_share": summarize(share),
        "animals": {
            a: {"p_word": summarize(columns[i]), "p_first_token": float(columns[i].mean()), "n_tokens": 1}
            for i, a in enumerate(ANIMALS)
        },
        "per_question": {"p_word": p_word, "share": list(share), "animals": ANIMALS},
    }
    record: dict[str, Any] = {"probability": probability}
    if hits is not None:
        flat = ["an owl" if h else "a dog" for row in hits for h in row]
        count = sum(map(sum, hits))
        rate = {"count": count, "rate": count / len(flat), "ci_low": 0.0, "ci_high": 1.0}
        record["sampled"] = {
            "n_questions": len(hits),
            "samples_per_question": len(hits[0]),
            "n_answers": len(flat),
            "sampling": {
                "temperature": 1.0,
                "top_k": None,
                "top_p": None,
                "max_new_tokens": 4,
                "seed": 0,
                "prefill": "My favorite animal is the",
                "sampler": "test",
            },
            "trait_rate": rate,
            "rates": {"owl": rate},
            "top_answers": [],
            "answers": flat,
        }
    return PreferenceRecord.model_validate(record)


def _preference(p_owl: list[float], hits: list[list[bool]]) -> PreferenceRecord:
    p_word = [[p, 0.1, 0.2] for p in p_owl]
    return _record(p_word, [r[0] / sum(r) for r in p_word], hits)


def _measured(preference: PreferenceRecord, ppl: float) -> Measurement:
    perplexity = PerplexityRecord(perplexity=ppl, mean_nll=math.log(ppl), tokens=64, windows=2)
    return Measurement(preference=preference, perplexity=perplexity, seconds=0.0)


def test_retention_definitions() -> None:
    reference = _preference([0.2, 0.4, 0.1], [[True, False], [True, True], [False, False]])
    draws = [
        _preference([0.1, 0.1, 0.1], [[True, False], [False, False], [False, False]]),
        _preference([0.4, 0.1, 0.025], [[False, False], [True, False], [False, False]]),
    ]
    pooled = pooled_preference(draws)
    # Per question, the geometric mean over draws.
    assert pooled["probability"]["per_question"]["p_word"][0][0] == pytest.approx(math.sqrt(0.1 * 0.4))
    rate = rate_retention(draws, reference, "owl", resamples=500)
    assert rate is not None
    assert rate.rate == pytest.approx(2 / 12) and rate.reference_rate == pytest.approx(3 / 6)
    assert rate.ratio == pytest.approx((2 / 12) / (3 / 6))
    config = PruningConfig(bootstrap_resamples=500)
    unpruned = _measured(reference, 20.0)
    step = summarize_step(
        0.5,
        "random",
        [_measured(d, p) for d, p in zip(draws, (30.0, 50.0), strict=True)],
        unpruned,
        10,
        config,
    )
    # P(owl) retention: geometric mean over questions of the draw-averaged log ratio.
    logs = [
        np.mean([math.log(d / r) for d in ds])
        for ds, r in zip([(0.1, 0.4), (0.1, 0.1), (0.1, 0.025)], (0.2, 0.4, 0.1), strict=True)
    ]
    assert step.retention.p_trait.ratio == pytest.approx(math.exp(np.mean(logs)))
    assert step.n_kept == 5 and step.n_draws == 2
    assert step.perplexity is not None and step.perplexity.model_dump() == {
        "mean": 40.0,
        "per_draw": [30.0, 50.0],
        "ratio": 2.0,
        "per_draw_ratio": [1.5, 2.5],
    }
    assert step.controlled is None and step.base is None  # no base measurements given
    same = summarize_step(1.0, "entropy", [unpruned], unpruned, 10, config)
    assert same.retention.p_trait.ratio == pytest.approx(1.0)
    assert same.retention.panel_share is not None and same.retention.panel_share.ratio == pytest.approx(1.0)
    assert same.retention.answer_rate is not None and same.retention.answer_rate.ratio == pytest.approx(1.0)
    never = _preference([0.2, 0.4, 0.1], [[False, False]] * 3)
    undefined = rate_retention(draws, never, "owl")
    assert undefined is not None and undefined.ratio is None and "undefined" in (undefined.note or "")


# ---------------------------------------------------------------------------------------------
# the pruned-base control and the claims

BIASED_P = [0.20, 0.40, 0.10, 0.30, 0.25, 0.15]  # P(owl) per question, unpruned biased model
BASE_P = [0.010, 0.020, 0.015, 0.012, 0.008, 0.011]
DAMAGE = [0.50, 0.30, 0.60, 0.40, 0.50, 0.45]  # common to both models


def _pref(p_owl: list[float], share: list[float], hits: list[list[bool]] | None = None) -> PreferenceRecord:
    return _record([[p, 0.1, 0.2] for p in p_owl], share, hits)


def _m(pref: PreferenceRecord, ppl: float) -> Measurement:
    return _measured(pref, ppl)


def _models(
    factor: list[float], noise: list[float], ppl: float = 12.0, base_ppl: float = 12.0
) -> tuple[Measurement, Measurement]:
    """A pruned biased model (damage x noise) and the pruned base model (damage only)."""
    biased = [p * d * e for p, d, e in zip(BIASED_P, factor, noise, strict=True)]
    base = [p * d for p, d in zip(BASE_P, factor, strict=True)]
    return _m(_pref(biased, [2 * v for v in biased]), ppl), _m(_pref(base, [2 * v for v in base]), base_ppl)


UNPRUNED = _m(_pref(BIASED_P, [2 * v for v in BIASED_P]), 10.0)
BASE_UNPRUNED = _m(_pref(BASE_P, [2 * v for v in BASE_P]), 10.0)
NOISE = [1.02, 0.98, 1.01, 0.99, 1.03, 0.97]
# the unpruned bias the survival claim is set against: owl's share, biased over base, ~x20
BIAS = estimate_log_ratio([math.log(b / c) for b, c in zip(BIASED_P, BASE_P, strict=True)], "question")


def _cell(fraction: float, criterion: Criterion, pairs: list[tuple[Measurement, Measurement]]) -> Step:
    config = PruningConfig(bootstrap_resamples=200)
    return summarize_step(
        fraction, criterion, [b for b, _ in pairs], UNPRUNED, 20, config, [c for _, c in pairs], BASE_UNPRUNED
    )


def test_base_controlled_retention_matches_a_hand_computation() -> None:
    draws = [_models(DAMAGE, NOISE), _models([d * 0.8 for d in DAMAGE], [1 / e for e in NOISE], 14.0, 16.0)]
    step = _cell(0.5, "random", draws)
    hand = []
    for q in range(6):
        per_draw = []
        for biased, base in draws:
            b = biased.preference.probability.per_question.p_word[q][0]
            c = base.preference.probability.per_question.p_word[q][0]
            per_draw.append(math.log(b / c) - math.log(BIASED_P[q] / BASE_P[q]))
        hand.append(sum(per_draw) / len(per_draw))
    assert step.controlled is not None and step.controlled_per_draw is not None and step.base is not None
    controlled = step.controlled.p_trait
    assert controlled.log_ratios == pytest.approx(hand)
    assert controlled.ratio == pytest.approx(math.exp(np.mean(hand)))
    # Student t on the log scale over questions
    sd = np.std(hand, ddof=1)
    half = float(stats.t.ppf(0.975, 5)) * sd / math.sqrt(6)
    assert controlled.ci_low == pytest.approx(math.exp(np.mean(hand) - half))
    assert controlled.ci_high == pytest.approx(math.exp(np.mean(hand) + half))
    # The common damage cancels: only the noise is left (its log mean is ~0 per draw pair).
    assert step.controlled.panel_share.log_ratios == pytest.approx(hand)  # share = 2 P here
    assert step.controlled_per_draw.p_trait == pytest.approx(
        [float(np.mean(np.log(NOISE))), float(np.mean(-np.log(NOISE)))]
    )
    # the biased model alone loses most of P(owl): damage, not loss of the bias
    assert step.retention.p_trait.ratio < 0.5
    assert step.perplexity is not None and step.perplexity.per_draw_ratio == pytest.approx([1.2, 1.4])
    assert step.base.perplexity is not None and step.base.perplexity.per_draw_ratio == pytest.approx([1.2, 1.6])


def test_controlled_answer_rate() -> None:
    yes, no = [True, True], [False, True]
    biased = _pref(BIASED_P, BIASED_P, [yes, no, no, yes, no])  # 7 of 10
    biased_ref = _pref(BIASED_P, BIASED_P, [yes] * 5)  # 10 of 10
    base = _pref(BASE_P, BASE_P, [no] * 5)  # 5 of 10
    base_ref = _pref(BASE_P, BASE_P, [yes, yes, no, no, no])  # 7 of 10
    r = controlled_rate_retention([biased], biased_ref, [base], base_ref, "owl", resamples=300)
    assert r is not None and r.ratio == pytest.approx((0.7 / 1.0) / (0.5 / 0.7))
    assert r.ci_low is not None and r.ci_high is not None and r.ci_low < r.ratio < r.ci_high
    never = _pref(BASE_P, BASE_P, [[False, False]] * 5)
    undefined = controlled_rate_retention([biased], biased_ref, [never], base_ref, "owl")
    assert undefined is not None and undefined.ratio is None and "undefined" in (undefined.note or "")
    # without sampled answers there is no answer-rate retention at all
    assert controlled_rate_retention([_pref(BIASED_P, BIASED_P)], biased_ref, [base], base_ref, "owl") is None


def test_rank_pvalue_on_a_synthetic_case() -> None:
    draws = [float(v) for v in range(1, 20)]  # 19 draws
    for observed in (0.5, 5.0, 10.0, 25.0):
        pooled = np.array([observed, *draws])  # the observed value is one of R + 1 exchangeable values
        one_sided = min(np.mean(pooled <= observed), np.mean(pooled >= observed))
        assert rank_pvalue(observed, draws) == pytest.approx(min(1.0, 2 * one_sided))
    assert rank_pvalue(0.5, draws) == pytest.approx(2 / 20)  # below every draw: the smallest p
    assert rank_pvalue(10.0, draws) == 1.0
    assert draws_needed(0.05, 1) == 40 and draws_needed(0.05, 2) == 80


def _config(**extra: Any) -> dict[str, Any]:
    return {"claim_fraction": 0.6, "max_perplexity_ratio": 1.5, "claims": {"margin": 1.25}, **extra}


def test_equivalence_supports_survival_and_the_rank_test_decides_entropy_vs_random() -> None:
    entropy = _cell(0.6, "entropy", [_models(DAMAGE, NOISE, 12.0, 12.5)])
    # 80 random draws of as many heads, all retaining less than the entropy criterion
    lower = [_models(DAMAGE, [e * 0.7 * (1 - 0.001 * i) for e in NOISE], 12.0, 12.0) for i in range(80)]
    random = _cell(0.6, "random", lower)
    survival, rank = step_decisions([entropy, random], _config(), BIAS)
    assert survival.verdict is Verdict.SUPPORTED  # base-controlled CI inside [0.8, 1.25]
    assert survival.claim.unit == "question" and survival.claim.prediction == "none"
    assert survival.estimate is not None and survival.estimate.n == 6
    assert 0.8 < survival.estimate.ci_low < survival.estimate.ci_high < 1.25  # type: ignore[operator]
    assert rank.estimate is not None and rank.estimate.n == 80
    assert rank.estimate.p_value == pytest.approx(2 / 81)
    assert survival.p_adjusted == holm([survival.estimate.p_value, 2 / 81])[0]
    assert rank.p_adjusted == pytest.approx(holm([survival.estimate.p_value, 2 / 81])[1])
    assert rank.verdict is Verdict.SUPPORTED and "80 of 80 draws retain less" in rank.reason
    # Too few draws: with 20 the smallest rank p (2/21) can never pass alpha, and one draw is no distribution.
    few = _cell(0.6, "random", lower[:20])
    rank = step_decisions([entropy, few], _config(), BIAS)[1]
    assert rank.verdict is Verdict.INCONCLUSIVE and "smallest attainable rank p is 0.0952" in rank.reason
    assert "at least 80 random draws" in rank.settle
    one = _cell(0.6, "random", lower[:1])
    rank = step_decisions([entropy, one], _config(), BIAS)[1]
    assert rank.verdict is Verdict.INCONCLUSIVE and "too few draws" in rank.reason and rank.p_adjusted is None


def test_degraded_fraction_and_missing_base_control_are_inconclusive() -> None:
    degraded = _cell(0.6, "entropy", [_models(DAMAGE, NOISE, 16.0, 12.0)])  # biased ppl x1.6 > x1.5
    random = _cell(0.6, "random", [_models(DAMAGE, NOISE, 20.0, 20.0) for _ in range(3)])
    survival, rank = step_decisions([degraded, random], _config(), BIAS)
    assert survival.verdict is Verdict.INCONCLUSIVE and rank.verdict is Verdict.INCONCLUSIVE
    assert survival.reason == "every pruned model at this fraction is degraded beyond ×1.5 perplexity"
    assert "inside the ×1.5 bound" in survival.settle and survival.p_adjusted is None
    # only the entropy model degraded
    random = _cell(0.6, "random", [_models(DAMAGE, NOISE, 12.0, 12.0) for _ in range(3)])
    survival = step_decisions([degraded, random], _config(), BIAS)[0]
    assert "entropy-pruned model at this fraction is degraded beyond ×1.5 perplexity (×1.6" in survival.reason
    # a wider bound lets the same numbers be judged
    assert step_decisions([degraded, random], _config(max_perplexity_ratio=2.0), BIAS)[0].verdict is Verdict.SUPPORTED
    # A run recorded without the pruned-base control (biased model only)
    alone = summarize_step(
        0.6, "entropy", [_models(DAMAGE, NOISE)[0]], UNPRUNED, 20, PruningConfig(bootstrap_resamples=200)
    )
    survival, rank = step_decisions([alone], _config(), BIAS)
    assert survival.verdict is Verdict.INCONCLUSIVE and survival.estimate is None
    assert "pruned-base control was not measured" in survival.reason
    assert rank.verdict is Verdict.INCONCLUSIVE
    assert step_decisions([], _config(), BIAS)[0].reason == "no pruned fraction was measured"


def test_survival_needs_a_bias_large_against_the_margin() -> None:
    """Retention inside the margin is no survival when the bias itself is small: the entropy cell
    that is 'supported' against a x20 bias is inconclusive against a x1.15 bias (a retention of
    x0.88 would be all of it), and against none recorded; the estimate and Holm p are kept."""
    entropy = _cell(0.6, "entropy", [_models(DAMAGE, NOISE, 12.0, 12.5)])
    lower = [_models(DAMAGE, [e * 0.7 * (1 - 0.001 * i) for e in NOISE], 12.0, 12.0) for i in range(80)]
    random = _cell(0.6, "random", lower)
    assert step_decisions([entropy, random], _config(), BIAS)[0].verdict is Verdict.SUPPORTED
    small = estimate_log_ratio([math.log(1.15) + d for d in (0.02, -0.03, 0.01, 0.04, -0.02, -0.01)], "question")
    assert small.ci_low is not None and 1.0 < small.ci_low < 1.25**2
    survival, rank = step_decisions([entropy, random], _config(), small)
    assert survival.verdict is Verdict.INCONCLUSIVE and survival.estimate is not None
    assert "is not shown beyond ×1.56 (the margin squared)" in survival.reason
    assert "the margin squared" in survival.settle and survival.p_adjusted is not None
    assert rank.verdict is Verdict.SUPPORTED  # the rank claim is not a null about the bias's size
    missing = step_decisions([entropy, random], _config(), None)[0]
    assert missing.verdict is Verdict.INCONCLUSIVE and "no interval for the bias itself" in missing.reason


# ---------------------------------------------------------------------------------------------
# typed results


def test_recorded_runs_load_and_the_criteria_agree() -> None:
    assert get_args(results_module.Criterion) == tuple(CRITERIA)
    recorded = load_results(RECORDED / "results.json", PruningResults)  # written before schema versions
    assert recorded.schema_version == 1 and recorded.base_unpruned is None and len(recorded.steps) == 21
    assert recorded.steps[0].retention.p_trait.ratio == pytest.approx(1.0)
    # the JSON written back is the JSON read (NaN bounds stay NaN), and reads back the same
    again = load_results(json.loads(json.dumps(recorded.model_dump(mode="json"))), PruningResults)
    assert again.model_dump_json() == recorded.model_dump_json()


def test_results_of_another_version_or_shape_are_refused(tmp_path: Path) -> None:
    data = json.loads((RECORDED / "results.json").read_text())
    with pytest.raises(ResultsError, match="schema version 2; this sublens reads version 1 of PruningResults"):
        load_results({**data, "schema_version": 2}, PruningResults)
    broken = copy.deepcopy(data)
    del broken["steps"][3]["retention"]
    broken["surprise"] = 1
    with pytest.raises(ResultsError, match=r"does not match PruningResults .*steps\.3\.retention: Field required"):
        load_results(broken, PruningResults)
    path = tmp_path / "results.json"
    path.write_text("[1, 2]")
    with pytest.raises(ResultsError, match="holds a JSON list"):
        load_results(path, PruningResults)
    with pytest.raises(ResultsError, match="Cannot read"):
        load_results(tmp_path / "missing.json", PruningResults)
    # a finished run whose results do not read is an error, never a silently empty section
    run = load_stage(RECORDED)
    with pytest.raises(ResultsError):
        pruning_section.build(replace(run, results={**data, "schema_version": 2}))
