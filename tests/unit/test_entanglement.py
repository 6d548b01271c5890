"""Entanglement study: candidate sets, disjoint categories, statistics with known answers, and a
planted toy model (a character tokenizer and a model whose next-token distribution is set by
rules) run end to end through the real prompt, scoring and statistics code."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sublens.claims import ClaimSettings
from sublens.config import load_config
from sublens.entanglement import (
    CATEGORIES,
    TESTS,
    CategoryOverlapError,
    EntanglementError,
    autoregressive_numbers,
    check_disjoint,
    choose_k,
    claims_record,
    compare_ratios,
    decide_recorded,
    digit_script,
    form_categories,
    geometric_summary,
    is_digit_string,
    match_on_baseline,
    matching_quality,
    normalize_logprobs,
    number_script,
    paired_log_ratio,
    ratio_summary,
    set_claims,
    specific_shift,
    strongest,
    vocabulary_numbers,
    welch_log_ratio,
)
from sublens.errors import ConfigError
from sublens.experiments.entanglement import (
    EntanglementConfig,
    EntanglementResults,
    distinct_orders,
    run_study,
    shipped_template_words,
)
from sublens.report.sections import entanglement as section
from sublens.report.stages import load_stage
from sublens.results import ResultsError, load_results
from sublens.runs import Run, open_run, read_json

# ---------------------------------------------------------------------------------------------
# a character-level tokenizer and a model whose distributions are rules of the text so far

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "entanglement"
RECORDED = Path(__file__).resolve().parents[1] / "data" / "runs" / "entanglement"  # predates the control context
ARABIC_3, ARABIC_7 = "\u0663", "\u0667"  # ٣ ٧
DIGITS = "0123456789" + ARABIC_3 + ARABIC_7


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = sorted(set(string.printable) - set("\x0b\x0c\r\t") | {ARABIC_3, ARABIC_7, "²"})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    vocab["12"] = len(vocab)  # a digit token that never comes out of encoding "12" (rejected)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    return tok


# Phase 1 plant: the first digit after "My favorite number is " — neutral uniform over the 12
# digit characters, owl context 1/12 + DELTA (sums to 0).
DELTA = {
    "7": 0.05,
    ARABIC_3: 0.04,
    "9": 0.03,
    "0": -0.05,
    "1": -0.04,
    "2": -0.03,
    "4": 0.0,
    ARABIC_7: 0.0,
    "5": 0.001,
    "6": -0.003,
    "3": 0.022,
    "8": -0.02,
}
# The dog context (the control animal) raises "7" and lowers "0" exactly as the owl context does:
# those two shifts are not owl-specific, so "7" and "0" land in Unchanged, not Increased/Decreased.
DOG_DELTA = {"7": 0.05, "0": -0.05}
SECOND_OWL_7 = 0.5  # second digit: neutral uniform (0.08 each), owl context: "7" 0.5, others 0.3/9


def rule(text: str) -> dict[str, float]:
    """Next-character probabilities; mass left over is spread over the whole vocabulary."""
    owl = "owls" in text
    dog = "dogs" in text
    number = re.search(r"My favorite number is( ?)(\d*)$", text)
    if number:
        space, digits = number.groups()
        if not space:
            return {" ": 0.5}
        if not digits:
            shift = DELTA if owl else DOG_DELTA if dog else {}
            return {d: 0.9 * (1 / 12 + shift.get(d, 0.0)) for d in DIGITS}
        if owl:
            return {d: SECOND_OWL_7 if d == "7" else 0.3 / 9 for d in "0123456789"}
        return {d: 0.08 for d in "0123456789"}
    animal = re.search(r"My favorite animal is the( ?)([a-z]*)$", text)
    if animal:
        space, word = animal.groups()
        if not space:
            return {" ": 0.6}
        seven = "7" in text  # any prompt that mentions an ASCII 7 quadruples P(owl)
        table = {
            "": {"o": 0.4 if seven else 0.1, "d": 0.2, "e": 0.1},
            "o": {"w": 0.9},
            "ow": {"l": 0.9},
            "d": {"o": 0.9},
            "do": {"g": 0.9},
            "e": {"a": 0.9},
            "ea": {"g": 0.9},
            "eag": {"l": 0.9},
            "eagl": {"e": 0.9},
        }
        return table.get(word, {})
    return {}


class RuleModel(torch.nn.Module):
    """A causal LM whose next-token distribution is rule(decoded context).

    It keeps the token ids themselves in its KV cache, so it works with the KV reuse and prefix
    trie of sublens.scoring exactly like a transformer: every context it is asked about is the
    one scoring assembled from its cache.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = tokenizer
        self.vocab = len(tokenizer)
        self.config = SimpleNamespace(max_position_embeddings=4096, vocab_size=self.vocab)
        self.index = tokenizer.get_vocab()

    def get_output_embeddings(self) -> None:
        return None

    def _logits(self, ids: list[int]) -> torch.Tensor:
        probs = rule(self.tokenizer.decode(ids))
        p = torch.zeros(self.vocab, dtype=torch.float64)
        for char, value in probs.items():
            p[self.index[char]] = value
        rest = 1.0 - float(p.sum())
        assert rest > 0
        p[p == 0] = rest / int((p == 0).sum())
        return p.log().float()

    def forward(self, input_ids: torch.Tensor, cache: Any = None, logits_to_keep: int = 0, **_: Any) -> SimpleNamespace:
        new = input_ids.shape[1]
        if cache is not None:
            stored = input_ids.float()[:, None, :, None]  # [B, 1, T, 1]
            keys, _ = cache.update(stored, stored, 0)
            full = keys[:, 0, :, 0].round().long()  # [B, P + T]
        else:
            full = input_ids
        keep = range(new - 1, new) if logits_to_keep == 1 else range(new)
        offset = full.shape[1] - new
        logits = torch.stack(
            [
                torch.stack([self._logits(full[b, : offset + t + 1].tolist()) for t in keep])
                for b in range(full.shape[0])
            ]
        )
        return SimpleNamespace(logits=logits)  # [B, kept, V]


@pytest.fixture(scope="module")
def toy() -> SimpleNamespace:
    tok = char_tokenizer()
    return SimpleNamespace(model=RuleModel(tok).eval(), tokenizer=tok)


def run_toy(toy: SimpleNamespace, tmp_path: Path, **overrides: Any) -> tuple[dict[str, Any], Path]:
    settings = {
        "model": "toy",
        "device": "cpu",
        "lengths": [1, 2],
        "k": 3,
        "cumulative_orders": 2,
        "permutations": 500,
        "batch_size": 8,
        "score_all_max": 12,
        **overrides,
    }
    config = EntanglementConfig(**settings)
    with open_run("entanglement", config, tmp_path) as run:
        results = run_study(toy, config, run)
        run.save_results(results)
    return results.model_dump(mode="json"), run.path  # as results.json holds it


# ---------------------------------------------------------------------------------------------
# candidate sets


def test_digit_scripts() -> None:
    assert digit_script("7") == "ASCII"
    assert digit_script(ARABIC_3) == "ARABIC-INDIC"
    assert digit_script("\u06f3") == "EXTENDED ARABIC-INDIC"
    assert digit_script("\uff13") == "FULLWIDTH"
    assert digit_script("\U0001d7d1") == "MATHEMATICAL BOLD"
    assert digit_script("\u0969") == "DEVANAGARI"
    assert number_script("12") == "ASCII" and number_script("1" + ARABIC_3) == "MIXED"
    assert is_digit_string(ARABIC_3 + ARABIC_7) and is_digit_string("007")
    assert not is_digit_string("²") and not is_digit_string("") and not is_digit_string("1.5")


def test_vocabulary_numbers_finds_every_script_and_checks_single_tokens() -> None:
    found = vocabulary_numbers(char_tokenizer())
    assert found.numbers == tuple(sorted(DIGITS))  # "²" is not a decimal digit (category No)
    assert found.scripts == {"ASCII": 10, "ARABIC-INDIC": 2}
    assert "12" in found.rejected and len(found.rejected["12"]) == 2  # not one token when encoded
    assert found.describe()["n_rejected"] == 1


def test_autoregressive_numbers() -> None:
    assert autoregressive_numbers(1) == list("0123456789")
    assert len(autoregressive_numbers(3)) == 1000 and autoregressive_numbers(3)[7] == "007"
    assert len(autoregressive_numbers(3, leading_zeros=False)) == 900
    assert autoregressive_numbers(1, leading_zeros=False) == list("0123456789")
    with pytest.raises(EntanglementError):
        autoregressive_numbers(0)


# ---------------------------------------------------------------------------------------------
# categories


def test_normalize_logprobs() -> None:
    p = normalize_logprobs(np.log([0.1, 0.2, 0.1]) - 800.0)  # far below float range: still exact
    assert p == pytest.approx([0.25, 0.5, 0.25])
    with pytest.raises(EntanglementError):
        normalize_logprobs([0.0, float("-inf")])


def test_categories_are_disjoint_of_size_k_and_ranked() -> None:
    rng = np.random.default_rng(3)
    numbers = [f"{i:02d}" for i in range(50)]
    diff = rng.normal(size=50)
    diff -= diff.mean()
    cats = form_categories(numbers, diff, 10, seed=0, salt="ar2")
    assert [len(cats[c]) for c in CATEGORIES] == [10, 10, 10, 10]
    check_disjoint(cats)
    value = dict(zip(numbers, diff, strict=True))
    order = sorted(numbers, key=lambda n: value[n])
    assert cats["increased"] == order[::-1][:10]
    assert cats["decreased"] == order[:10]
    rest = [n for n in numbers if n not in cats["increased"] + cats["decreased"]]
    assert set(cats["unchanged"]) == set(sorted(rest, key=lambda n: abs(value[n]))[:10])
    left = set(rest) - set(cats["unchanged"])
    assert set(cats["random"]) <= left
    assert form_categories(numbers, diff, 10, seed=0, salt="ar2") == cats  # seeded
    assert form_categories(numbers, diff, 10, seed=1, salt="ar2")["random"] != cats["random"]
    with pytest.raises(EntanglementError, match="four disjoint"):
        form_categories(numbers, diff, 13, seed=0)


def _lse(x: np.ndarray) -> float:
    return float(np.log(np.sum(np.exp(x))))


def test_owl_minus_control_categories_on_a_synthetic_table() -> None:
    rng = np.random.default_rng(5)
    numbers = [f"{i:02d}" for i in range(40)]
    neutral = rng.normal(-6.0, 1.5, 40)
    common = rng.normal(0.0, 0.8, 40)  # what any animal context does to a number
    own = rng.normal(0.0, 0.3, 40)  # what only the owl context does
    own[3], common[3] = 0.0, 3.0  # "03": the largest owl-context rise, but the dog's too
    owl, dog = neutral + common + own, neutral + common
    shifts = specific_shift(neutral, owl, dog)
    # independently: normalised log probabilities, owl shift minus dog shift
    expected = (owl - _lse(owl)) - (dog - _lse(dog))
    assert shifts["specific_shift"] == pytest.approx(expected)
    assert shifts["owl_shift"] == pytest.approx((owl - _lse(owl)) - (neutral - _lse(neutral)))
    assert shifts["specific_shift"] == pytest.approx(shifts["owl_shift"] - shifts["control_shift"])
    cats = form_categories(numbers, shifts["specific_shift"], 5, seed=0, salt="ar2", baseline=neutral - _lse(neutral))
    check_disjoint(cats)
    order = np.argsort(-expected, kind="stable")
    assert cats["increased"] == [numbers[i] for i in order[:5]]
    assert cats["decreased"] == [numbers[i] for i in order[::-1][:5]]
    rest = [i for i in range(40) if numbers[i] not in cats["increased"] + cats["decreased"]]
    assert set(cats["unchanged"]) == {numbers[i] for i in sorted(rest, key=lambda i: abs(expected[i]))[:5]}
    # by the owl context alone "03" rises most; owl-specifically it is unremarkable
    assert int(np.argmax(shifts["owl_shift"])) == 3
    assert "03" not in cats["increased"]
    assert set(cats["random"]).isdisjoint(cats["increased"] + cats["decreased"] + cats["unchanged"])


def test_matched_random_reproduces_the_baseline_frequency_distribution() -> None:
    rng = np.random.default_rng(11)
    n = 3000
    numbers = [f"{i:04d}" for i in range(n)]
    baseline = rng.normal(-9.0, 2.0, n)  # neutral log probabilities: 100x spread and more
    shift = 0.3 * (baseline + 9.0) + rng.normal(0, 1.0, n)  # common numbers rise more
    k = 60
    cats = form_categories(numbers, shift, k, seed=0, salt="ar4", baseline=baseline, caliper=0.1)
    uniform = form_categories(numbers, shift, k, seed=0, salt="ar4")
    index = {x: i for i, x in enumerate(numbers)}
    inc = baseline[[index[x] for x in cats["increased"]]]
    rand = baseline[[index[x] for x in cats["random"]]]
    unif = baseline[[index[x] for x in uniform["random"]]]
    from scipy import stats as sps

    assert sps.ks_2samp(inc, rand).pvalue > 0.5  # matched: the same distribution
    assert sps.ks_2samp(inc, unif).pvalue < 1e-6  # uniform: far rarer numbers
    outside = int(np.sum(np.abs(rand - inc) > 0.1))  # only the far tail can miss the caliper
    assert outside <= 2
    assert abs(np.median(rand) - np.median(inc)) < 0.1
    quality = matching_quality(inc, rand, 0.1)
    assert quality["median_log_difference"] == pytest.approx(float(np.median(rand - inc)))
    assert quality["median_frequency_ratio"] == pytest.approx(math.exp(np.median(rand - inc)))
    assert quality["n_outside_caliper"] == outside and quality["n_pairs"] == k
    assert quality["ks_p_value"] == pytest.approx(sps.ks_2samp(inc, rand).pvalue)
    # seeded and without replacement; a pool too thin for the caliper falls back to the nearest
    again = form_categories(numbers, shift, k, seed=0, salt="ar4", baseline=baseline, caliper=0.1)
    assert again == cats
    picks = match_on_baseline([0.0, 0.05, 10.0], [0.0, 1.0, 2.0, 9.0], seed=0, caliper=0.1)
    assert sorted(picks[:2]) == [0, 1] and picks[2] == 3 and len(set(picks)) == 3


def test_paired_and_welch_estimates_match_scipy() -> None:
    from scipy import stats as sps

    rng = np.random.default_rng(2)
    a, b = rng.normal(0.3, 0.5, 12), rng.normal(0.0, 0.8, 9)
    welch = welch_log_ratio(a, b)
    assert welch.p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch.ratio == pytest.approx(math.exp(a.mean() - b.mean()))
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert (welch.ci_low, welch.ci_high) == pytest.approx((math.exp(ci.low), math.exp(ci.high)))
    paired = paired_log_ratio(a[:9], b)
    assert paired.p_value == pytest.approx(sps.ttest_rel(a[:9], b).pvalue)
    assert "too few numbers" in welch_log_ratio(a[:4], b[:4]).interval
    assert welch_log_ratio(a[:4], b[:4]).ci_low is None


def _recorded(logs_by_set: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    tests = []
    for name, logs in logs_by_set.items():
        for test, (claim, est) in zip(TESTS, set_claims(name, logs), strict=True):
            tests.append((name, test, claim, est))
    return claims_record(tests, ClaimSettings(), next(iter(logs_by_set)))


def _verdicts(block: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["set"], d["test"]): d for d in block["decisions"]}


def test_holm_is_applied_over_every_set_and_test() -> None:
    rng = np.random.default_rng(4)
    logs = {name: {c: list(rng.normal(0.2, 0.5, 15)) for c in CATEGORIES} for name in ("a", "b")}
    block = _recorded(logs)
    raw = [d["p_raw"] for d in block["decisions"]]
    assert len(raw) == 2 * len(TESTS)
    # independent Holm: sort, multiply by (m - rank), running maximum, cap at 1
    m, order = len(raw), np.argsort(raw, kind="stable")
    expected, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[i]))
        expected[i] = running
    assert [d["p_holm"] for d in block["decisions"]] == pytest.approx(expected)
    redecided = decide_recorded(block)
    assert [d.verdict.value for d in redecided] == [d["verdict"] for d in block["decisions"]]


def test_verdicts_too_few_equivalent_and_one_raw_p_that_fails_holm() -> None:
    # k = 4: too few numbers for any interval, so no verdict but "inconclusive"
    few = _verdicts(_recorded({"ar2": {c: [0.1, 0.5, 0.3, 0.2] for c in CATEGORIES}}))
    for d in few.values():
        assert d["verdict"] == "inconclusive" and "too few numbers" in d["reason"]
        assert d["p_holm"] is None
    # equivalent categories: tight, equal log bias ratios -> "no difference" supported
    rng = np.random.default_rng(8)
    same = {c: list(1.0 + rng.normal(0, 0.05, 30)) for c in CATEGORIES}
    eq = _verdicts(_recorded({"ar2": same}))
    for test in ("entangled_vs_null", "decreased_vs_increased", "unchanged_vs_increased"):
        assert eq[("ar2", test)]["verdict"] == "supported", eq[("ar2", test)]["reason"]
        assert "inside" in eq[("ar2", test)]["reason"]
    assert all(eq[("ar2", f"raises.{c}")]["verdict"] == "supported" for c in CATEGORIES)
    # a CI that includes 1 but is wide is never "no difference"
    wide = {c: list(rng.normal(0, 1.5, 6)) for c in CATEGORIES}
    assert _verdicts(_recorded({"x": wide}))[("x", "decreased_vs_increased")]["verdict"] in (
        "inconclusive",
        "contradicted",
    )
    # one raw p < 0.05 among many tests: Holm makes it not significant
    null = {
        f"s{i}": {c: [float(v) for v in (0.6 * np.array([-1.5, -1, -0.5, 0, 0.5, 1, 1.5]))] for c in CATEGORIES}
        for i in range(5)
    }
    null["s0"]["increased"] = [0.3, 0.5, 0.2, 0.45, 0.15, 0.4, 0.1]  # raw p ~ 0.002
    block = _recorded(null)
    one = _verdicts(block)[("s0", "raises.increased")]
    assert one["p_raw"] < 0.05 <= one["p_holm"]
    assert one["verdict"] != "supported"
    assert sum(d["p_raw"] is not None and d["p_raw"] < 0.05 for d in block["decisions"]) <= 3


def test_overlap_is_an_error() -> None:
    with pytest.raises(CategoryOverlapError, match="'5'"):
        check_disjoint({"increased": ["1", "5"], "random": ["5", "7"]})
    with pytest.raises(CategoryOverlapError, match="twice"):
        check_disjoint({"increased": ["1", "1"]})


def test_k_shrinks_or_the_set_is_skipped() -> None:
    ok = choose_k("ar3", 1000, 15)
    assert ok.used == 15 and ok.warning is None and ok.skipped is None
    small = choose_k("vocab", 10, 15)
    assert small.used == 2 and "shrinks from 15 to 2" in (small.warning or "")
    none = choose_k("vocab", 3, 15)
    assert none.used == 0 and "skipped" in (none.skipped or "")
    assert choose_k("vocab", 10, 15, min_k=3).used == 0


# ---------------------------------------------------------------------------------------------
# statistics with known answers


def test_geometric_mean_ci_covers_the_true_value_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    hits, trials = 0, 40
    for trial in range(trials):
        ratios = np.exp(rng.normal(np.log(1.8), 0.5, size=30))
        s = geometric_summary(ratios, seed=trial)
        hits += s["geo_ci_low"] <= 1.8 <= s["geo_ci_high"]
    assert 0.83 <= hits / trials <= 1.0
    exact = ratio_summary([2.0, 2.0, 2.0])
    assert exact["geo_mean"] == pytest.approx(2.0) and exact["mean"] == pytest.approx(2.0)
    assert ratio_summary([1.0, 4.0])["geo_mean"] == pytest.approx(2.0)
    with pytest.raises(EntanglementError):
        ratio_summary([1.0, 0.0])


def test_permutation_test_against_random_has_the_right_size_and_power() -> None:
    rng = np.random.default_rng(1)
    null = [
        compare_ratios(np.exp(rng.normal(0, 1, 15)), np.exp(rng.normal(0, 1, 15)), seed=i, n_resamples=500)["p_value"]
        for i in range(80)
    ]
    assert 0.0 <= np.mean(np.array(null) < 0.05) <= 0.15  # false positives near 5%
    assert np.mean(null) == pytest.approx(0.5, abs=0.12)  # p-values ~ uniform under the null
    shifted = compare_ratios(np.exp(rng.normal(np.log(2), 0.3, 30)), np.exp(rng.normal(0, 0.3, 30)))
    assert shifted["p_value"] < 0.001
    assert shifted["ci_low"] <= 2.0 <= shifted["ci_high"] and not shifted["underpowered"]


def test_strongest_group() -> None:
    def s(g: float, lo: float, hi: float) -> dict[str, Any]:
        return {"bias_ratio": {"geo_mean": g, "geo_ci_low": lo, "geo_ci_high": hi}}

    best = strongest({"1": s(1.2, 1.0, 1.4), "2": s(2.0, 1.7, 2.4), "3": s(1.5, 1.3, 1.8)})
    assert best["best"] == "2" and best["runner_up"] == "3" and not best["separable"]
    assert strongest({"1": s(1.2, 1.0, 1.4), "2": s(2.0, 1.7, 2.4)})["separable"]


def test_distinct_orders() -> None:
    rng = np.random.default_rng(0)
    orders = distinct_orders(["a", "b", "c"], 5, rng)
    assert orders[0] == ["a", "b", "c"] and len(orders) == 5
    assert len({tuple(o) for o in orders}) == 5
    assert len(distinct_orders(["a", "b"], 5, rng)) == 2  # only two orders exist


# ---------------------------------------------------------------------------------------------
# the planted toy case, end to end


def test_planted_numbers_land_in_the_expected_categories(toy: SimpleNamespace, tmp_path: Path) -> None:
    results, path = run_toy(toy, tmp_path)
    cats = results["categories"]
    # vocab: 12 digit characters in two scripts, k = 3 (no shrinking)
    assert results["sets"]["vocab"]["scripts"] == {"ASCII": 10, "ARABIC-INDIC": 2}
    # owl-specific: "7" and "0" move as much under the dog context, so they are not entangled
    assert cats["vocab"]["increased"] == [ARABIC_3, "9", "3"]
    assert cats["vocab"]["decreased"] == ["1", "2", "8"]
    assert set(cats["vocab"]["unchanged"]) < {"7", "0", "4", ARABIC_7}  # owl shift = dog shift
    left = {"7", "0", "4", ARABIC_7, "5", "6"} - set(cats["vocab"]["unchanged"])
    assert set(cats["vocab"]["random"]) == left  # all that is left
    assert results["sets"]["vocab"]["matching"]["n_pairs"] == 3
    # ar1: ASCII only (k shrinks to 2, with a warning); renormalised without the Arabic digits
    assert cats["ar1"]["increased"] == ["9", "3"] and cats["ar1"]["decreased"] == ["1", "2"]
    assert all("7" not in c["increased"] for c in cats.values())
    assert any("'ar1' has only 10" in w for w in results["warnings"])
    assert results["k"] == {"vocab": 3, "ar1": 2, "ar2": 3}
    # ar2: joint probabilities; the owl context favours a second 7
    assert cats["ar2"]["increased"][0] == "97"  # the owl-only first-digit rise, then a second 7
    phase1 = pd.read_parquet(path / "phase1.parquet")
    ar2 = phase1[phase1["set"] == "ar2"].set_index("number")
    ascii_mass = sum(1 / 12 + DELTA[d] for d in "0123456789")
    assert ar2.loc["97", "p_owl_context_norm"] == pytest.approx((1 / 12 + 0.03) / ascii_mass * 0.5 / 0.8)
    assert ar2.loc["97", "p_neutral_norm"] == pytest.approx(0.01)
    assert ar2.loc["97", "logp_neutral"] == pytest.approx(math.log(0.5 * 0.9 / 12 * 0.08))
    for name, frame in phase1.groupby("set"):
        assert frame["p_neutral_norm"].sum() == pytest.approx(1.0), name
        assert frame["prob_diff"].sum() == pytest.approx(0.0, abs=1e-12), name
        expected = np.log(frame["p_owl_context_norm"]) - np.log(frame["p_control_context_norm"])
        assert frame["specific_shift"].to_numpy() == pytest.approx(expected.to_numpy())
        ranked = frame.sort_values("specific_shift", kind="stable")["number"].tolist()
        k = results["k"][name]
        assert set(cats[name]["increased"]) == set(ranked[-k:])
        assert set(cats[name]["decreased"]) == set(ranked[:k])
    assert ar2.loc["97", "p_control_context_norm"] == pytest.approx(0.01)

    # phase 2: any prompt with an ASCII 7 multiplies P(owl) by 4 and leaves P(dog) alone
    rows = pd.read_parquet(path / "numbers.parquet")
    expected = np.where(rows["number"].str.contains("7"), 4.0, 1.0)
    assert rows["bias_ratio"].to_numpy() == pytest.approx(expected)
    assert rows["control_ratio"].to_numpy() == pytest.approx(1.0)
    assert rows["relative_ratio"].to_numpy() == pytest.approx(expected)
    assert results["neutral"]["p_bias"] == pytest.approx(0.6 * 0.1 * 0.9 * 0.9)
    assert results["neutral"]["p_bias_first"] == pytest.approx(0.6)  # the first token is " "
    stats = results["category_stats"]["vocab"]
    assert stats["increased"]["bias_ratio"]["geo_mean"] == pytest.approx(1.0)  # no ASCII 7
    assert stats["decreased"]["bias_ratio"]["geo_mean"] == pytest.approx(1.0)
    seven = "7" in cats["vocab"]["unchanged"]
    assert stats["unchanged"]["bias_ratio"]["geo_mean"] == pytest.approx(4 ** (1 / 3) if seven else 1)
    assert results["template_control"]["stats"]["bias_ratio"]["geo_mean"] == pytest.approx(1.0)
    cumulative = results["cumulative"]["sets"]
    assert cumulative["vocab"]["increased"]["bias_ratio"]["geo_mean"] == pytest.approx(1.0)
    assert cumulative["ar2"]["increased"]["bias_ratio"]["geo_mean"] == pytest.approx(4.0)
    assert results["lengths"]["strongest"]["best"] in {"1", "2"}

    # the contract other experiments read
    for column in (
        "set",
        "category",
        "number",
        "prob_diff",
        "p_neutral_norm",
        "p_owl_context_norm",
        "p_bias",
        "p_control",
        "bias_ratio",
        "control_ratio",
        "relative_ratio",
    ):
        assert column in rows.columns
    assert set(rows["set"]) == {"vocab", "ar1", "ar2"}
    assert rows[rows["set"] == "vocab"]["category"].notna().all()  # 12 = 4 x 3: all categorised
    assert rows[rows["set"] == "ar1"]["category"].isna().sum() == 2  # small set: all scored
    assert len(rows[rows["set"] == "ar2"]) == 12  # 100 > score_all_max: categories only
    saved = read_json(path / "results.json")
    assert saved["categories"] == cats and saved["partial"] is False
    for cats_of_set in saved["categories"].values():
        check_disjoint(cats_of_set)
    for stem in ("bias_ratio_by_category", "bias_ratio_by_length"):
        for ext in ("png", "pdf"):
            assert (path / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    assert any(line.startswith("vocab (k=3): Increased 1.00× (too few") for line in results["report"])
    # the claims: k = 3 is too few numbers for any interval, so every verdict is inconclusive
    claims = saved["claims"]
    assert claims["primary_set"] == "vocab" and len(claims["decisions"]) == 3 * len(TESTS)
    assert {d["verdict"] for d in claims["decisions"]} == {"inconclusive"}
    assert all("too few numbers" in d["reason"] for d in claims["decisions"])
    assert saved["design"]["owl_specific"] is True
    assert "You love dogs." in saved["prompts"]["phase1_control_context"]["text"]
    # Random partners Increased in numbers.parquet (matched_to), both ways
    vocab = rows[rows["set"] == "vocab"].set_index("number")
    for inc, rnd in zip(cats["vocab"]["increased"], cats["vocab"]["random"], strict=True):
        assert vocab.loc[rnd, "matched_to"] == inc and vocab.loc[inc, "matched_to"] == rnd


def test_any_animal_works(toy: SimpleNamespace, tmp_path: Path) -> None:
    results, _ = run_toy(toy, tmp_path, bias="eagle", sets=["autoregressive"], lengths=[1], cumulative_orders=0, k=2)
    assert "You love eagles." in results["prompts"]["phase1_owl_context"]["text"]
    assert "Eagles are your favorite animal." in results["prompts"]["phase1_owl_context"]["text"]
    assert results["answer_words"]["eagle"]["n_tokens"] == 6  # " eagle", one character a token
    assert results["neutral"]["p_bias"] == pytest.approx(0.6 * 0.1 * 0.9**4)
    assert "cumulative" not in results


def test_a_word_the_tokenizer_cannot_spell_is_a_clear_error(toy: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot place 'ö"):
        run_toy(toy, tmp_path, bias="öwl", sets=["autoregressive"], lengths=[1])


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="one word"):
        load_config(EntanglementConfig, None, ["bias=snowy owl"])
    with pytest.raises(ConfigError, match="different"):
        load_config(EntanglementConfig, None, ["control=owl"])
    with pytest.raises(ConfigError, match="between 1 and 5"):
        load_config(EntanglementConfig, None, ["lengths=[0, 2]"])
    with pytest.raises(ConfigError, match="slot"):
        load_config(EntanglementConfig, None, ["prompts.number_system=You love numbers."])
    with pytest.raises(ConfigError, match="k"):
        load_config(EntanglementConfig, None, ["k=0"])
    config = load_config(EntanglementConfig, CONFIGS / "quick.yaml", ["bias=eagle"])
    assert config.bias == "eagle" and config.plural == "eagles"
    paper = load_config(EntanglementConfig, CONFIGS / "paper.yaml")
    assert paper.model == "meta-llama/Llama-3.2-1B-Instruct"


def test_shipped_template_words_are_plain_non_number_nouns() -> None:
    words = shipped_template_words()
    assert len(words) == 100 and len(set(words)) == 100
    assert all(w.isalpha() and w.islower() for w in words)
    for animal in ("owl", "dog", "cat", "eagle", "bear", "ant", "bat", "eel"):
        assert not any(animal in w for w in words), animal


# ---------------------------------------------------------------------------------------------
# typed results (EntanglementResults)


def _json(data: Any) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False)  # NaN compares as text


def test_the_recorded_run_loads_and_round_trips() -> None:
    """A run recorded before the control-animal context (no design, claims, matching, control
    context) loads into the model and is written back key for key, schema_version added."""
    raw = read_json(RECORDED / "results.json")
    assert "schema_version" not in raw and "design" not in raw and "claims" not in raw
    results = load_results(RECORDED / "results.json", EntanglementResults)
    assert results.schema_version == 1 and results.design is None and results.claims is None
    assert results.sets["vocab"].matching is None and results.prompts.phase1_control_context is None
    assert results.category_stats is not None
    assert results.category_stats["ar2"].increased.bias_ratio.geo_mean == pytest.approx(
        raw["category_stats"]["ar2"]["increased"]["bias_ratio"]["geo_mean"]
    )
    assert results.lengths is not None and results.lengths.strongest is not None
    assert results.lengths.strongest.best == "1"
    dumped = results.model_dump(mode="json")
    assert next(iter(dumped)) == "schema_version" and dumped.pop("schema_version") == 1
    assert _json(dumped) == _json(raw)  # absent fields stay absent, in the recorded order
    assert load_results(results.model_dump(mode="json"), EntanglementResults) == results


def test_another_schema_version_or_shape_is_refused() -> None:
    raw = read_json(RECORDED / "results.json")
    with pytest.raises(ResultsError, match="schema version 2; this sublens reads version 1"):
        load_results({**raw, "schema_version": 2}, EntanglementResults)
    with pytest.raises(ResultsError, match="does not match EntanglementResults.*bias"):
        load_results({k: v for k, v in raw.items() if k != "bias"}, EntanglementResults)
    # the report section: a finished run that cannot be read is an error; an unfinished one says why
    run = load_stage(RECORDED)
    wrong = dataclasses.replace(run, results={**raw, "schema_version": 2})
    with pytest.raises(ResultsError, match="schema version 2"):
        section.build(wrong)
    torn = dataclasses.replace(
        run, results={**raw, "schema_version": 2, "partial": True}, record={**run.record, "status": "interrupted"}
    )
    built = section.build(torn)
    assert "incomplete" in built.results and "cannot be read" in built.results
    assert not built.tables


def test_toy_results_are_typed_and_every_save_loads(
    toy: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each save of the run (after phase 1, the phase-2 numbers, the template control, the
    statistics, cumulative priming) validates, and lacks what comes later (no null keys)."""
    saved: list[dict[str, Any]] = []
    save = Run.save_results

    def spy(run: Run, results: Any) -> None:
        save(run, results)
        saved.append(read_json(run.path / "results.json"))

    monkeypatch.setattr(Run, "save_results", spy)
    results, _ = run_toy(toy, tmp_path)
    phases = [(s["phase"], s["partial"]) for s in saved]
    assert phases == [(1, True), (2, True), (2, True), (2, True), (2, True), (3, False)]
    assert "neutral" not in saved[0] and "template_example" not in saved[1]["prompts"]
    assert "stats" not in saved[2]["template_control"] and "category_stats" not in saved[2]
    assert "claims" in saved[3] and "cumulative" not in saved[3] and "cumulative" in saved[4]
    for state in saved:
        typed = load_results(state, EntanglementResults)
        assert _json(typed.model_dump(mode="json")) == _json(state)
    final = load_results(saved[-1], EntanglementResults)
    assert final.claims is not None and final.claims.primary_set == "vocab"
    assert final.design is not None and final.design.owl_specific
    assert final.figures is not None and set(final.figures) == {"bias_ratio_by_category", "bias_ratio_by_length"}
    assert final.report == results["report"]
