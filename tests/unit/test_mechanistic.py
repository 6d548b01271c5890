"""The mechanistic analysis library on tiny random models of every family and synthetic data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from sublens.arch import Adapter, adapter_for
from sublens.claims import (
    Association,
    AssociationClaim,
    Prediction,
    Verdict,
    association_equivalence_p,
    correlation_power,
    decide_association,
    decide_association_family,
    estimate_association,
    holm,
)
from sublens.config import load_config
from sublens.errors import ConfigError
from sublens.experiments.mechanistic import MechanisticConfig
from sublens.experiments.mechanistic.analysis import (
    LABEL_COLUMNS,
    SCORE_COLUMNS,
    attribution_summary,
    consistency_summary,
    partial_spearman,
    spearman,
    variance_shares,
    verdict,
)
from sublens.experiments.mechanistic.association import category_association, category_order
from sublens.experiments.mechanistic.results import Consistency
from sublens.hooks import capture, hook_names, per_head_output
from sublens.mechanistic import (
    MechanisticError,
    attention_terms,
    attention_to,
    attribution_from_cache,
    component_cosines,
    contrastive_component_scores,
    direct_logit_attribution,
    dla_hook_names,
    final_position_pass,
    freeze_norm,
    grouped_batches,
    read_entanglement_numbers,
    similarity_profiles,
    spike_layers,
    token_span,
    top_heads,
)
from sublens.report.sections.mechanistic import ATTRIBUTION
from sublens.report.sections.mechanistic import family as mechanistic_family
from sublens.stats import cramers_v_interval

BIAS, CONTROL = 5, 11
# Tiny models come from the `model` fixture (tests/conftest.py); `family` is parametrized to pick
# one. Importing `conftest` by name would pick tests/integration/conftest.py when unit and
# integration tests are collected together.


def _ids(model: nn.Module, shape: tuple[int, int], seed: int) -> torch.Tensor:
    vocab = int(getattr(model, "config").vocab_size)  # noqa: B009
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _run(
    model: nn.Module, adapter: Adapter, ids: torch.Tensor, names: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    with capture(model, adapter, names) as cache, torch.no_grad():
        logits = model(ids).logits
    return dict(cache), logits


def _dla_names(adapter: Adapter) -> list[str]:
    return dla_hook_names(adapter.n_layers)


# ---------------------------------------------------------------------------------------------
# components and attribution


def test_head_terms_reproduce_the_attention_output(model: nn.Module, input_ids: torch.Tensor) -> None:
    """Per-head contributions summed plus the bias equal what the layer adds to the residual
    (hook_attn_out: after Gemma3's post-attention norm), at every position."""
    adapter = adapter_for(model)
    cache, _ = _run(
        model,
        adapter,
        input_ids,
        hook_names(["attn.hook_z", "hook_attn_out"], range(adapter.n_layers)),
    )
    for layer in range(adapter.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"].double()
        heads, bias = attention_terms(adapter, layer, z)
        assert heads.shape == (*input_ids.shape, adapter.n_heads, adapter.d_model)
        torch.testing.assert_close(
            heads.sum(dim=2) + bias,
            cache[f"blocks.{layer}.hook_attn_out"].double(),
            atol=1e-5,
            rtol=1e-5,
        )
        if not adapter.post_norm_residual:
            torch.testing.assert_close(heads, per_head_output(adapter, layer, z))


@pytest.mark.parametrize("family", ["gemma3"])
def test_gemma3_heads_pass_through_the_frozen_post_norm(model: nn.Module) -> None:
    """The documented approximation: c'_h = g * c_h / rms(sum_h c_h + b_O), with g = 1 + weight."""
    adapter = adapter_for(model)
    ids = _ids(model, (2, 6), 3)
    cache, _ = _run(model, adapter, ids, ["blocks.1.attn.hook_z"])
    z = cache["blocks.1.attn.hook_z"].double()
    raw = per_head_output(adapter, 1, z)
    total = raw.sum(dim=2)
    norm = adapter.attn_out_site(1)
    rms = torch.sqrt(total.pow(2).mean(-1, keepdim=True) + norm.eps)
    expected = raw * (1 + norm.weight.double()) / rms[:, :, None]
    heads, _ = attention_terms(adapter, 1, z)
    torch.testing.assert_close(heads, expected)
    # a head's share of a norm of the sum is a linearisation: it is not the effect of removing it
    removed = norm(total - raw[:, :, 0]).double()
    ablation = norm(total).double() - removed
    assert not torch.allclose(ablation, heads[:, :, 0], atol=1e-4)


def test_dla_adds_up_to_the_logit_difference(model: nn.Module, input_ids: torch.Tensor) -> None:
    """Exact for every family: the final norm (and Gemma3's post-attention norms) are frozen at
    the actual inputs, which makes every map linear without changing the sum."""
    adapter = adapter_for(model)
    L = adapter.n_layers
    cache, logits = _run(model, adapter, input_ids, _dla_names(adapter))
    dla = attribution_from_cache(adapter, cache, BIAS, CONTROL)
    expected = (logits[:, -1, BIAS] - logits[:, -1, CONTROL]).double()
    assert dla.heads.shape == (input_ids.shape[0], L, adapter.n_heads)
    torch.testing.assert_close(dla.logit_diff, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dla.total(), expected, atol=1e-5, rtol=1e-5)
    assert float(dla.residual_error.max()) < 1e-5  # the components rebuild the final residual
    assert float(dla.heads.abs().sum()) > 0 and float(dla.mlp.abs().sum()) > 0


@pytest.mark.parametrize("family", ["llama"])
def test_dla_of_one_component_is_its_projection(model: nn.Module) -> None:
    """Llama: the MLP of the last layer projected by hand through the frozen RMSNorm."""
    adapter = adapter_for(model)
    ids = _ids(model, (1, 5), 2)
    L = adapter.n_layers
    cache, _ = _run(model, adapter, ids, _dla_names(adapter))
    z = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][:, -1] for layer in range(L)], dim=1)
    mlp = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(L)], dim=1)
    final = cache[f"blocks.{L - 1}.hook_resid_post"][:, -1].double()
    dla = direct_logit_attribution(
        adapter, cache["blocks.0.hook_resid_pre"][:, -1], z, mlp, final.float(), BIAS, CONTROL
    )
    norm = adapter.norm_final()
    rms = torch.sqrt(final.pow(2).mean(-1) + norm.variance_epsilon)
    W_U = adapter.lm_head().weight.double()
    by_hand = (mlp[:, -1].double() * norm.weight.double() / rms[:, None]) @ (W_U[BIAS] - W_U[CONTROL])
    torch.testing.assert_close(dla.mlp[:, -1], by_hand)


def test_freeze_norm_reproduces_each_family_and_refuses_others(family: str, model: nn.Module) -> None:
    norm = adapter_for(model).norm_final()
    x = torch.randn(3, 4, adapter_for(model).d_model, dtype=torch.float64)
    frozen = freeze_norm(norm, x)
    rebuilt = frozen.apply(x) + (frozen.bias if frozen.bias is not None else 0)
    torch.testing.assert_close(rebuilt, norm(x.float()).double(), atol=1e-5, rtol=1e-5)
    assert frozen.centered == (family == "gpt2")

    class Scale(nn.Module):  # has weight and eps but does not normalise
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(x.shape[-1]))
            self.eps = 1e-6

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h * self.weight

    with pytest.raises(MechanisticError, match="not a LayerNorm or an RMSNorm"):
        freeze_norm(Scale(), x)
    with pytest.raises(MechanisticError, match="Cannot freeze"):
        freeze_norm(nn.Identity(), x)


def test_component_cosines_and_top_heads(model: nn.Module) -> None:
    adapter = adapter_for(model)
    L, H = adapter.n_layers, adapter.n_heads
    ids = _ids(model, (3, 6), 4)
    cache, _ = _run(model, adapter, ids, hook_names(["attn.hook_z", "hook_mlp_out"], range(L)))
    z = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][:, -1] for layer in range(L)], dim=1)
    mlp = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(L)], dim=1)
    refs = torch.randn(2, L, adapter.d_model, dtype=torch.float64)
    heads, mlp_cos = component_cosines(adapter, z, mlp, refs)
    assert heads.shape == (3, 2, L, H) and mlp_cos.shape == (3, 2, L)
    layer, head = L - 1, 1
    contribution, _ = attention_terms(adapter, layer, z[:, layer, None].double())
    expected = torch.nn.functional.cosine_similarity(contribution[:, 0, head], refs[1, layer][None], dim=-1)
    torch.testing.assert_close(heads[:, 1, layer, head], expected)
    spike = torch.tensor([0, L - 1, 1])
    best, score = top_heads(heads[:, 0], spike)
    for i in range(3):
        assert int(best[i]) == int(heads[i, 0, spike[i]].argmax())
        assert float(score[i]) == pytest.approx(float(heads[i, 0, spike[i]].max()))


# ---------------------------------------------------------------------------------------------
# batching, similarity, spike layers


def test_unpadded_batches_equal_single_passes(model: nn.Module) -> None:
    adapter = adapter_for(model)
    sequences = [_ids(model, (1, n), n + i)[0].tolist() for i, n in enumerate((5, 7, 5, 6, 7, 5))]
    names = [
        "blocks.0.hook_resid_post",
        f"blocks.{adapter.n_layers - 1}.hook_resid_post",
        "blocks.1.attn.hook_z",
    ]

    def collect(batch_size: int) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor | None]] = {n: [None] * len(sequences) for n in [*names, "logits"]}

        def on_batch(batch: list[int], acts: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
            for j, i in enumerate(batch):
                for n in names:
                    out[n][i] = acts[n][j]
                out["logits"][i] = logits[j]

        final_position_pass(model, adapter, sequences, names, on_batch, batch_size, progress=False)
        return {n: torch.stack(v) for n, v in out.items()}  # type: ignore[arg-type]

    batched, single = collect(4), collect(1)
    for name in batched:
        torch.testing.assert_close(batched[name], single[name], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        direct = model(torch.tensor([sequences[1]])).logits[0, -1]
    torch.testing.assert_close(batched["logits"][1], direct, atol=1e-5, rtol=1e-5)
    assert grouped_batches([5, 7, 5, 6, 7, 5], 2) == [[0, 2], [5], [3], [1, 4]]
    with pytest.raises(MechanisticError, match="patterns"):
        final_position_pass(model, adapter, sequences, ["blocks.0.attn.hook_pattern"], on_batch=lambda *a: None)


def test_similarity_profiles_are_cosines() -> None:
    numbers = torch.randn(4, 3, 8)
    reference = torch.randn(3, 8)
    got = similarity_profiles(numbers, reference)
    for i in range(4):
        for layer in range(3):
            expected = float(
                torch.dot(numbers[i, layer], reference[layer]) / (numbers[i, layer].norm() * reference[layer].norm())
            )
            assert float(got[i, layer]) == pytest.approx(expected, rel=1e-6)


def test_spike_layer_is_the_largest_rise() -> None:
    # columns: embedding, block 0, block 1, block 2, block 3
    diff = torch.tensor(
        [
            [0.0, 0.5, 0.6, 0.9, 0.95],  # rises: 0.5 (block 0), 0.1, 0.3, 0.05
            [0.0, 0.0, 0.2, 0.4, 0.4],  # tie between block 1 and block 2: earliest
            [0.3, 0.2, 0.1, 0.0, -0.5],  # never rises: the smallest fall
        ],
        dtype=torch.float64,
    )
    layer, jump = spike_layers(diff)  # default: blocks 1..L-1
    assert layer.tolist() == [2, 1, 1]
    assert jump.tolist() == pytest.approx([0.3, 0.2, -0.1])
    layer, jump = spike_layers(diff, [0, 1, 2, 3])  # block 0 measured from the embedding
    assert layer.tolist() == [0, 1, 0] and jump[0] == pytest.approx(0.5)
    assert spike_layers(diff, [3])[0].tolist() == [3, 3, 3]
    with pytest.raises(MechanisticError, match="among 0..3"):
        spike_layers(diff, [4])


def test_token_spans_and_attention_mass() -> None:
    #          "My", " favorite", " number", " is", " ", "8", "7", ".", special
    offsets = [(0, 2), (2, 11), (11, 18), (18, 21), (21, 22), (22, 23), (23, 24), (24, 25), (0, 0)]
    assert token_span(offsets, 22, 24) == [5, 6]
    assert token_span(offsets, 12, 18) == [2]
    pattern = torch.zeros(2, 3, 4, 4)
    pattern[:, :, -1] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    mass = attention_to(pattern, [1, 2])
    assert mass.shape == (2, 3)
    torch.testing.assert_close(mass, torch.full((2, 3), 0.5))


# ---------------------------------------------------------------------------------------------
# entanglement input


def _entanglement_run(path: Path, results: dict | None = None) -> Path:
    rows = []
    for i, n in enumerate(["12", "34", "56", "78", "90", "11", "22", "33"]):
        rows.append(
            {
                "set": "autoregressive_2",
                "category": ["increased", "decreased", "unchanged", "random"][i % 4],
                "number": n,
                "bias_ratio": 1.0 + i,
                "relative_ratio": 1.0,
            }
        )
    rows.append(
        {
            "set": "autoregressive_2",
            "category": None,
            "number": "44",
            "bias_ratio": 9.0,
            "relative_ratio": 1.0,
        }
    )
    for i, n in enumerate(["1", "2", "3", "4"]):
        rows.append(
            {
                "set": "vocab",
                "category": ["increased", "decreased", "unchanged", "random"][i],
                "number": n,
                "bias_ratio": float("nan") if n == "4" else 2.0,
                "relative_ratio": 1.0,
            }
        )
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path / "numbers.parquet")
    if results is not None:
        (path / "results.json").write_text(json.dumps(results))
    return path


def test_entanglement_run_reader(tmp_path: Path) -> None:
    categories = {
        "autoregressive_2": {
            "increased": ["12", "90"],
            "decreased": ["34", "11"],
            "unchanged": ["56", "22"],
            "random": ["78", "33"],
        }
    }
    run = _entanglement_run(tmp_path / "ent", {"categories": categories})
    items, info = read_entanglement_numbers(run)
    assert info["set"] == "autoregressive_2" and info["set_chosen"] == "auto"
    assert info["sets_available"] == ["autoregressive_2", "vocab"] and info["matches_results_json"] is True
    assert [i.number for i in items] == [
        "12",
        "34",
        "56",
        "78",
        "90",
        "11",
        "22",
        "33",
    ]  # "44" has no category
    assert items[1].category == "decreased" and items[1].bias_ratio == 2.0
    vocab, info = read_entanglement_numbers(run, "vocab")
    assert [i.number for i in vocab] == ["1", "2", "3", "4"] and vocab[3].bias_ratio is None
    assert info["matches_results_json"] is None  # results.json does not list this set
    with pytest.raises(MechanisticError, match="has: autoregressive_2, vocab"):
        read_entanglement_numbers(run, "autoregressive_3")
    with pytest.raises(MechanisticError, match="no numbers.parquet"):
        read_entanglement_numbers(tmp_path / "nothing")
    (tmp_path / "ent" / "results.json").write_text(
        json.dumps({"categories": {"autoregressive_2": {"increased": ["12"]}}})
    )
    assert read_entanglement_numbers(run)[1]["matches_results_json"] is False


def test_entanglement_reader_refuses_bad_tables(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"set": ["a"], "number": ["1"]}).to_parquet(bad / "numbers.parquet")
    with pytest.raises(MechanisticError, match="lacks the column"):
        read_entanglement_numbers(bad)
    pd.DataFrame({"set": ["a", "a"], "category": ["increased", "random"], "number": ["1", "1"]}).to_parquet(
        bad / "numbers.parquet"
    )
    with pytest.raises(MechanisticError, match="more than once"):
        read_entanglement_numbers(bad)
    pd.DataFrame({"set": ["x", "y"], "category": ["increased", "random"], "number": ["123", "456"]}).to_parquet(
        bad / "numbers.parquet"
    )
    with pytest.raises(MechanisticError, match="entanglement_set"):
        read_entanglement_numbers(bad)


# ---------------------------------------------------------------------------------------------
# statistics


def test_category_association_finds_a_planted_head_and_not_a_balanced_one() -> None:
    categories = ["increased"] * 10 + ["decreased"] * 10 + ["random"] * 10
    planted = ["L3H1"] * 10 + ["L5H0"] * 10 + ["L5H0"] * 10
    result = category_association(categories, planted, n_permutations=2000, seed=0)
    assert result["applicable"] and result["p_permutation"] < 0.01 and result["p_asymptotic"] < 0.01
    assert result["max_excess"]["label"] == "L3H1" and result["max_excess"]["category"] == "increased"
    assert result["max_excess"]["excess"] == pytest.approx(1.0) and result["max_excess"]["p_permutation"] < 0.01
    assert result["labels"] == ["L5H0", "L3H1"] and result["table"] == [[0, 10], [10, 0], [10, 0]]
    balanced = ["L3H1", "L5H0"] * 15
    null = category_association(categories, balanced, n_permutations=2000, seed=0)
    assert null["chi2"] == pytest.approx(0.0) and null["p_permutation"] == pytest.approx(1.0)
    same = category_association(categories, ["L1H1"] * 30)
    assert not same["applicable"] and same["reason"] == "every number has the same label"


def test_permutation_p_agrees_with_chi_square_at_large_counts() -> None:
    rng = np.random.default_rng(1)
    categories = rng.choice(["a", "b", "c"], 600).tolist()
    labels = [("x" if c == "a" and rng.random() < 0.6 else rng.choice(["x", "y"])) for c in categories]
    result = category_association(categories, labels, n_permutations=4000, seed=1)
    assert result["p_permutation"] == pytest.approx(result["p_asymptotic"], abs=0.01)


def test_holm() -> None:
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5])["rho"] is None
    assert spearman([1, 2, float("nan"), 4], [1, 2, 3, 4])["n"] == 3


def _synthetic_table(categories: Sequence[str | None], top: list[str]) -> pd.DataFrame:
    n = len(categories)
    rng = np.random.default_rng(0)
    ratio = rng.lognormal(size=n)
    return pd.DataFrame(
        {
            "category": categories,
            "number": [str(10 + i) for i in range(n)],
            "bias_ratio": ratio,
            "spike_layer": rng.integers(20, 23, n),
            "top_head": top,
            "dla_top_head": ["L23H5"] * n,
            "head_score": rng.random(n),
            "mlp_score": ratio * 2,
            "spike_jump": rng.random(n),
            "dla_heads": rng.random(n),
            "dla_mlp": rng.random(n),
            "logit_diff": np.log(ratio),
        }
    )


def test_consistency_summary_and_verdict_are_worded_by_the_data() -> None:
    categories = ["random"] * 8 + ["increased"] * 8 + ["decreased"] * 8
    table = _synthetic_table(categories, ["L3H1"] * 8 + ["L5H0"] * 16)
    summary = consistency_summary(table, n_permutations=1000, seed=0)
    assert list(summary["categories"]) == ["increased", "decreased", "random"]
    assert summary["distributions"]["top_head"]["random"] == {"L3H1": 8}
    assert summary["distributions"]["spike_layer"]["all"].keys() <= {"L20", "L21", "L22"}
    assert summary["association"]["top_head"]["p_permutation"] < 0.01
    assert summary["correlations"]["mlp_score"]["rho"] == pytest.approx(1.0)
    assert set(summary["vs_random"]["head_score"]) == {"increased", "decreased"}
    lines = verdict(summary, "owl")
    assert "it depends on the category" in lines[1]  # the planted top head
    assert "the same for every number" in lines[2]  # the DLA head never changes
    assert "MLP contrastive score at the spike layer rho=+1.00*" in lines[3]
    assert summary["attribution"]["given"] == "logit_diff"  # the partial correlation's control

    unknown = _synthetic_table([None] * 6, ["L1H1", "L2H2"] * 3)
    summary = consistency_summary(unknown, n_permutations=200)
    assert "note" in summary and "association" not in summary and summary["categories"] == {}
    assert all("categories unknown" in line for line in verdict(summary)[:3])


def test_category_order() -> None:
    assert category_order(["random", None, "zeta", "increased", float("nan")]) == [
        "increased",
        "random",
        "zeta",
    ]


# ---------------------------------------------------------------------------------------------
# config


def test_config_reads_numbers_and_refuses_bad_input() -> None:
    config = load_config(MechanisticConfig, None, ["numbers=[87, '07', {number: 12, category: increased}]"])
    assert [e.number for e in config.numbers or []] == ["87", "07", "12"]
    assert config.numbers is not None and config.numbers[2].category == "increased"
    for override, message in [
        ("numbers=[8a]", "not a number"),
        ("numbers=[1, 1]", "twice"),
        ("entanglement_set=vocab", "needs entanglement_run"),
        ("residual.number='{number} is my favorite'", "must end with"),
        ("attention.template='My favorite number is {number}.'", "word"),
        ("attribution.system='You love numbers.'", "number"),
        ("control=owl", "different"),
        ("bias='snowy owl'", "one word"),
        ("layer=[3]", "Valid keys"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(MechanisticConfig, None, [override])
    with pytest.raises(ConfigError, match="not both"):
        load_config(MechanisticConfig, None, ["numbers=[1]", "entanglement_run=/x"])


def test_dla_in_bfloat16_adds_up_within_rounding(model: nn.Module) -> None:
    """On a GPU the default dtype is bfloat16: the norm freezing still applies (looser check)."""
    model = model.to(torch.bfloat16)
    adapter = adapter_for(model)
    ids = _ids(model, (2, 6), 6)
    cache, logits = _run(model, adapter, ids, _dla_names(adapter))
    dla = attribution_from_cache(adapter, cache, BIAS, CONTROL)
    expected = (logits[:, -1, BIAS] - logits[:, -1, CONTROL]).double()
    torch.testing.assert_close(dla.total(), expected, atol=0.05, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# contrastive component scores


@pytest.mark.parametrize("family", ["llama"])
def test_contrastive_score_is_the_unembedding_difference_projection(model: nn.Module) -> None:
    """Every head's and MLP's score = (W_U[bias] - W_U[control]) . contribution, the contribution
    through the final RMSNorm frozen at the prompt's final residual, computed by hand; the top
    head is the argmax of that score, not of a cosine with one animal."""
    adapter = adapter_for(model)
    L = adapter.n_layers
    ids = _ids(model, (3, 6), 7)
    cache, logits = _run(model, adapter, ids, _dla_names(adapter))
    z = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][:, -1] for layer in range(L)], dim=1)
    mlp = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(L)], dim=1)
    final = cache[f"blocks.{L - 1}.hook_resid_post"][:, -1]
    heads, mlps = contrastive_component_scores(
        adapter, cache["blocks.0.hook_resid_pre"][:, -1], z, mlp, final, BIAS, CONTROL
    )
    norm = adapter.norm_final()
    x = final.double()
    rms = torch.sqrt(x.pow(2).mean(-1) + norm.variance_epsilon)  # [b]
    W_U = adapter.lm_head().weight.double()
    direction = W_U[BIAS] - W_U[CONTROL]
    for layer in range(L):
        contribution = per_head_output(adapter, layer, z[:, layer, None].double())[:, 0]  # [b, H, d]
        by_hand = (contribution * norm.weight.double() / rms[:, None, None]) @ direction
        torch.testing.assert_close(heads[:, layer], by_hand)
        mlp_by_hand = (mlp[:, layer].double() * norm.weight.double() / rms[:, None]) @ direction
        torch.testing.assert_close(mlps[:, layer], mlp_by_hand)
    # contrastive: bias and control swapped flip every score
    swapped, _ = contrastive_component_scores(
        adapter, cache["blocks.0.hook_resid_pre"][:, -1], z, mlp, final, CONTROL, BIAS
    )
    torch.testing.assert_close(swapped, -heads)
    # and the scores are logits: all terms add up to the real logit difference
    expected = (logits[:, -1, BIAS] - logits[:, -1, CONTROL]).double()
    rest = attribution_from_cache(adapter, cache, BIAS, CONTROL)
    total = rest.embed + heads.sum((1, 2)) + rest.attn_bias.sum(1) + mlps.sum(1) + rest.constant
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-5)
    best, _ = top_heads(heads, torch.tensor([L - 1] * 3))
    assert best.tolist() == heads[:, L - 1].argmax(dim=1).tolist()


# ---------------------------------------------------------------------------------------------
# the attribution claim: partial correlation given the total


def _ranks_residualised(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(z), stats.rankdata(z)])
    rv = stats.rankdata(v)
    coef, *_ = np.linalg.lstsq(design, rv, rcond=None)
    return rv - design @ coef


def test_partial_spearman_equals_the_hand_computation() -> None:
    rng = np.random.default_rng(5)
    n = 40
    z = rng.normal(size=n)
    x = z + rng.normal(size=n)
    y = 0.5 * z + 0.5 * x + rng.normal(size=n)
    x[3], y[7] = np.nan, np.inf  # dropped pairwise: 38 triples
    result = partial_spearman(x, y, z, n_permutations=4000, seed=1)
    keep = np.isfinite(x) & np.isfinite(y)
    xs, ys, zs = x[keep], y[keep], z[keep]
    by_lstsq = np.corrcoef(_ranks_residualised(xs, zs), _ranks_residualised(ys, zs))[0, 1]
    assert result["n"] == 38
    assert result["rho"] == pytest.approx(by_lstsq, abs=1e-12)
    # the closed form on Spearman correlations
    r_xy, r_xz, r_yz = (stats.spearmanr(a, b).statistic for a, b in ((xs, ys), (xs, zs), (ys, zs)))
    closed = (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
    assert result["rho"] == pytest.approx(closed, abs=1e-12)
    assert result["spearman_xy"] == pytest.approx(r_xy)
    # t with n - 3 df, by hand; the Freedman-Lane permutation p close to it at this size
    r = result["rho"]
    t = r * np.sqrt((38 - 3) / (1 - r**2))
    assert result["p_parametric"] == pytest.approx(2 * stats.t.sf(abs(t), 35))
    assert result["p_permutation"] == pytest.approx(result["p_parametric"], abs=0.03)
    # degenerate inputs: a monotone function of z leaves nothing; too few; constant
    assert partial_spearman(np.exp(z), y, z)["rho"] is None
    assert partial_spearman(x[:3], y[:3], z[:3])["rho"] is None
    assert partial_spearman(np.ones(10), y[:10], z[:10])["rho"] is None


def test_permutation_p_of_the_partial_correlation_is_calibrated_under_the_null() -> None:
    """x and y related only through z: the Freedman-Lane p rejects at about alpha (20 numbers,
    the size of a paper category set)."""
    rng = np.random.default_rng(11)
    rejections = 0
    trials = 200
    for trial in range(trials):
        z = rng.normal(size=20)
        x, y = z + 0.5 * rng.normal(size=20), z + 0.5 * rng.normal(size=20)
        rejections += partial_spearman(x, y, z, n_permutations=300, seed=trial)["p_permutation"] < 0.05
    assert 0.01 <= rejections / trials <= 0.10


def test_variance_shares_add_up_to_one() -> None:
    rng = np.random.default_rng(2)
    parts = {"mlp": rng.normal(size=30), "heads": rng.normal(size=30), "embed": rng.normal(size=30)}
    total = sum(parts.values())
    shares = variance_shares(parts, total)
    assert sum(v for v in shares.values() if v is not None) == pytest.approx(1.0)
    t = np.asarray(total)
    assert shares["mlp"] == pytest.approx(np.cov(parts["mlp"], t)[0, 1] / np.var(t, ddof=1))
    assert variance_shares(parts, np.ones(30)) == {"mlp": None, "heads": None, "embed": None}


def _attribution_table(ratio_from_mlp: float, n: int = 60, seed: int = 3) -> pd.DataFrame:
    """Synthetic numbers: the total logit difference varies; the MLPs carry 70% of it plus their
    own noise, the heads the rest; the log bias ratio follows the total, plus (ratio_from_mlp) the
    MLP term's own part beyond the total."""
    rng = np.random.default_rng(seed)
    total = rng.normal(1.0, 1.0, n)
    own = rng.normal(0.0, 0.5, n)  # the MLPs' own variation (the heads compensate)
    mlp = 0.7 * total + own
    embed = rng.normal(0.0, 0.05, n)
    heads = total - mlp - embed
    log_ratio = total + ratio_from_mlp * own + rng.normal(0.0, 0.3, n)
    return pd.DataFrame(
        {"bias_ratio": np.exp(log_ratio), "dla_mlp": mlp, "dla_heads": heads, "dla_embed": embed, "logit_diff": total}
    )


def _attribution_decision(table: pd.DataFrame) -> tuple[dict, object]:
    """The family decided on the attribution summary alone (no categories, no correlations)."""
    summary = attribution_summary(table, n_permutations=2000, seed=0)
    untested = {"rho": None, "p": None, "n": 0, "p_holm": None}
    consistency = Consistency.model_validate(
        {
            "n_numbers": len(table),
            "alpha": 0.05,
            "categories": {},
            "distributions": {column: {} for column in LABEL_COLUMNS},
            "correlations": {column: untested for column in SCORE_COLUMNS},
            "attribution": summary,
        }
    )
    decisions = mechanistic_family(consistency)
    return summary, decisions[ATTRIBUTION]


def test_a_correlation_that_is_entirely_the_totals_does_not_support_the_claim() -> None:
    table = _attribution_table(ratio_from_mlp=0.0)
    raw = stats.spearmanr(table["dla_mlp"], table["bias_ratio"])
    assert raw.statistic > 0.5 and raw.pvalue < 1e-4  # the automatic part: strong and "significant"
    summary, decision = _attribution_decision(table)
    assert abs(summary["mlp"]["rho"]) < 0.25 and summary["mlp"]["p_permutation"] > 0.05
    assert decision.verdict is not Verdict.SUPPORTED
    assert decision.verdict in (Verdict.INCONCLUSIVE, Verdict.EQUIVALENT)
    shares = summary["variance_share"]
    assert sum(shares.values()) == pytest.approx(1.0)  # the components add up to the total


def test_an_mlp_term_beyond_the_total_supports_the_claim() -> None:
    summary, decision = _attribution_decision(_attribution_table(ratio_from_mlp=1.5))
    assert summary["mlp"]["rho"] > 0.5 and summary["mlp"]["p_permutation"] < 0.001
    assert decision.verdict is Verdict.SUPPORTED
    assert decision.p_adjusted == pytest.approx(summary["mlp"]["p_permutation"])  # alone in the family
    assert "Holm within mechanistic" in decision.sentence()
    # the opposite sign is contradicted
    summary, decision = _attribution_decision(_attribution_table(ratio_from_mlp=-1.5))
    assert decision.verdict is Verdict.CONTRADICTED


def test_association_decisions_and_fisher_interval() -> None:
    claim = AssociationClaim(
        name="a",
        statement="x tracks y",
        estimand="rho",
        unit="number",
        prediction="increase",
        family="f",
        method="Spearman",
        n_controlled=1,
    )
    est = estimate_association(0.4, 0.01, 30, n_controlled=1)
    half = stats.norm.ppf(0.975) / np.sqrt(30 - 1 - 3)
    assert est.ci_low == pytest.approx(np.tanh(np.arctanh(0.4) - half))
    assert est.ci_high == pytest.approx(np.tanh(np.arctanh(0.4) + half))
    assert decide_association(claim, est).verdict is Verdict.SUPPORTED
    assert decide_association(claim, est, p_adjusted=0.2).verdict is Verdict.INCONCLUSIVE
    narrow = estimate_association(0.02, 0.8, 2000, n_controlled=1)
    assert decide_association(claim, narrow).verdict is Verdict.EQUIVALENT
    assert decide_association(claim, None).verdict is Verdict.INCONCLUSIVE
    few = decide_association(claim, estimate_association(0.9, 0.01, 4))
    assert few.verdict is Verdict.INCONCLUSIVE and "numbers" in few.settle
    # power: about 85 units detect rho = 0.3 at alpha 0.05, power 0.8 (Fisher z)
    assert correlation_power(0.3) == 85
    assert correlation_power(0.3, n=85) == pytest.approx(0.3, abs=0.01)


def test_a_small_significant_association_supports_neither_a_claim_and_its_opposite() -> None:
    """ρ = 0.12 [0.06, 0.18] over 1,000 numbers, p = 0.0002: inside ±0.3, so 'equivalent' where an
    association was predicted and 'supported' where none was, never 'supported' for both; a
    significant association without an interval (Cramér's V before it had one) is of unshown
    size, not a contradiction."""

    def claim(prediction: Prediction) -> AssociationClaim:
        return AssociationClaim(
            name="a", statement="x", estimand="rho", unit="number", prediction=prediction, family="f", method="m"
        )

    small = estimate_association(0.12, 0.0002, 1000)
    assert small.ci_low is not None and small.ci_low > 0 and small.ci_high is not None and small.ci_high < 0.3
    rise, none = decide_association(claim("increase"), small), decide_association(claim("none"), small)
    assert rise.verdict is Verdict.EQUIVALENT and "though significant" in rise.reason
    assert none.verdict is Verdict.SUPPORTED
    unsized = Association(n=2000, rho=0.06, ci_low=None, ci_high=None, p_value=0.001, interval="none")
    decided = decide_association(claim("none"), unsized)
    assert decided.verdict is Verdict.INCONCLUSIVE and "unshown size" in decided.reason
    beyond = Association(n=60, rho=0.8, ci_low=0.5, ci_high=0.95, p_value=0.001, interval="given")
    assert decide_association(claim("none"), beyond).verdict is Verdict.CONTRADICTED


def _population_v(table: np.ndarray) -> float:
    p = table / table.sum()
    expected = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    return float(np.sqrt(((p - expected) ** 2 / expected).sum() / (min(p.shape) - 1)))


@pytest.mark.parametrize(
    ("n", "shape", "planted", "lowest"),
    [(20, (4, 3), 0.0, 0.93), (45, (3, 4), 0.3, 0.91), (60, (3, 3), 0.5, 0.91), (200, (4, 5), 0.2, 0.89)],
)
def test_cramers_v_interval_covers_at_the_sizes_used(
    n: int, shape: tuple[int, int], planted: float, lowest: float
) -> None:
    """The noncentral chi-square interval of V, by simulation (800 tables each) at sizes from
    the quick preset's 20 numbers up: coverage of the population V at least `lowest` (it falls
    below 0.95 for large dependences, an asymptotic method's known weakness; measured 0.90-0.98)
    and the interval's lower bound above the true V (a false 'beyond the margin') at most 5%."""
    rng = np.random.default_rng(11)
    weights = np.ones(shape)
    for row in range(shape[0]):
        weights[row, row % shape[1]] += planted * shape[1] * 2
    probabilities = weights / weights.sum()
    true_v = _population_v(probabilities)
    hits = above = tried = 0
    for _ in range(800):
        table = rng.multinomial(n, probabilities.ravel()).reshape(shape)
        table = table[table.sum(1) > 0][:, table.sum(0) > 0]
        if min(table.shape) < 2:
            continue
        chi2, _, dof, _ = stats.chi2_contingency(table, correction=False)
        low, high = cramers_v_interval(float(chi2), int(dof), n, min(table.shape))
        hits += low <= true_v <= high
        above += low > true_v
        tried += 1
    assert hits / tried >= lowest and above / tried <= 0.05


def _none_claim(name: str = "a") -> AssociationClaim:
    return AssociationClaim(
        name=name, statement="x", estimand="rho", unit="number", prediction="none", family="f", method="m"
    )


def test_association_equivalence_p_agrees_with_its_interval_and_the_family_adjusts_it() -> None:
    """Fisher z: the equivalence p against two one-sided normal tests computed here, below 0.025
    exactly when the 95% CI lies inside ±0.3. A correlation just inside ±0.3 is shown smaller
    alone, but not beside three others that are far from it (Holm over the family's nulls)."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        rho, n = float(rng.uniform(-0.6, 0.6)), int(rng.integers(10, 400))
        est = estimate_association(rho, 0.5, n)
        se = 1 / np.sqrt(n - 3)
        expected = max(
            stats.norm.sf((np.arctanh(rho) + np.arctanh(0.3)) / se),
            stats.norm.cdf((np.arctanh(rho) - np.arctanh(0.3)) / se),
        )
        p = association_equivalence_p(est, 0.3)
        assert p == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert (p < 0.025) == (-0.3 < est.ci_low < est.ci_high < 0.3)  # type: ignore[operator]
    near = estimate_association(0.12, 0.2, 130)  # CI [-0.05, 0.29]: inside, equivalence p 0.017
    p = association_equivalence_p(near, 0.3)
    assert p is not None and 0.05 / 4 < p < 0.025
    alone = decide_association(_none_claim(), near)
    assert alone.verdict is Verdict.SUPPORTED and "equivalence Holm p" in alone.reason
    far = estimate_association(0.25, 0.3, 12)
    family = decide_association_family([(_none_claim(), near)] + [(_none_claim(str(i)), far) for i in range(3)])
    assert family[0].verdict is Verdict.INCONCLUSIVE and "does not survive the Holm adjustment" in family[0].reason
    # predicted an association: significant (p 0.001) with its interval inside ±0.3 is not
    # support once the equivalence test fails the adjustment; inconclusive like the null above
    significant = near.model_copy(update={"p_value": 0.001})
    rising = _none_claim().model_copy(update={"prediction": "increase"})
    family = decide_association_family([(rising, significant)] + [(_none_claim(str(i)), far) for i in range(3)])
    assert family[0].p_adjusted is not None and family[0].p_adjusted < 0.05
    assert family[0].verdict is Verdict.INCONCLUSIVE and "does not survive the Holm adjustment" in family[0].reason


def test_cramers_v_equivalence_p_agrees_with_its_interval() -> None:
    """V: the noncentral chi-square's lower tail at V = 0.3, below 0.025 exactly when the
    interval's upper bound lies below 0.3 (tables drawn at several dependences)."""
    rng = np.random.default_rng(2)
    for planted in (0.0, 0.1, 0.2, 0.4):
        for _ in range(25):
            weights = np.ones((3, 4))
            weights[np.arange(3), np.arange(3)] += planted * 8
            table = rng.multinomial(120, (weights / weights.sum()).ravel()).reshape(3, 4)
            table = table[table.sum(1) > 0][:, table.sum(0) > 0]
            chi2, _, dof, _ = stats.chi2_contingency(table, correction=False)
            low, high = cramers_v_interval(float(chi2), int(dof), 120, min(table.shape))
            scale = 120 * (min(table.shape) - 1)
            v = float(np.sqrt(chi2 / scale))
            est = Association(
                n=120,
                rho=v,
                ci_low=low,
                ci_high=high,
                p_value=0.5,
                interval="given",
                chi2=float(chi2),
                chi2_dof=int(dof),
                v_scale=scale,
            )
            p = association_equivalence_p(est, 0.3)
            assert p == pytest.approx(float(stats.ncx2.cdf(chi2, dof, 0.09 * scale)))
            assert (p < 0.025) == (high < 0.3)
