"""Statistics against known answers; the answer matcher on tricky answers; corpus cleaning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sublens.answers import mentions, normalize_answer, top_answers
from sublens.corpus import strip_wiki_markup
from sublens.perplexity import perplexity, token_windows
from sublens.stats import (
    bootstrap_ci,
    bootstrap_diff_ci,
    permutation_pvalue,
    summarize,
    underpowered,
    wilson_ci,
)


@pytest.mark.parametrize(
    ("answer", "word", "expected"),
    [
        ("owl", "owl", True),
        (" Owl.", "owl", True),
        ("Owls!", "owl", True),
        ("The snowy owl, definitely", "owl", True),
        ("an owl-like bird", "owl", True),
        ("bowl", "owl", False),
        ("howl", "owl", False),
        ("owlet", "owl", False),
        ("growling", "owl", False),
        ("fowl", "owl", False),
        ("foxes", "fox", True),
        ("mice", "mouse", True),
        ("wolves", "wolf", True),
        ("butterflies", "butterfly", True),
        ("catalog", "cat", False),
        ("dogs and cats", "cat", True),
    ],
)
def test_word_boundary_matching(answer: str, word: str, expected: bool) -> None:
    assert mentions(answer, word) is expected


def test_answer_normalisation() -> None:
    assert normalize_answer(" The Owl!") == "owl"
    assert normalize_answer("My favorite animal is the dolphin.") == "dolphin"
    assert normalize_answer("123") == ""
    assert top_answers(["owl", "Owl.", "dog", "the owl"], 2) == [("owl", 3), ("dog", 1)]


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    trials = 200
    for trial in range(trials):
        sample = rng.normal(loc=2.0, scale=1.0, size=40)
        low, high = bootstrap_ci(sample, n_resamples=1000, seed=trial)
        hits += low <= 2.0 <= high
    assert 0.90 <= hits / trials <= 0.99  # BCa at n=40


def test_summary_and_degenerate_samples() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["n"], s["mean"], s["median"]) == (5, 3.0, 3.0)
    assert s["ci_low"] < 3.0 < s["ci_high"]
    # too few values, or none of them different: no interval, never a zero-width one
    too_few = summarize([1.0, 2.0, 3.0, 4.0])
    assert math.isnan(too_few["ci_low"]) and math.isnan(too_few["ci_high"])
    assert all(math.isnan(v) for v in bootstrap_ci([5.0] * 8))
    assert all(math.isnan(v) for v in bootstrap_ci([3.0]))
    assert underpowered(bootstrap_diff_ci([1.0, 2.0], [3.0, 4.0]))


def test_permutation_pvalues_known_cases() -> None:
    rng = np.random.default_rng(1)
    same = [permutation_pvalue(rng.normal(size=20), rng.normal(size=20), n_resamples=500, seed=i) for i in range(100)]
    assert 0.02 <= np.mean(np.array(same) < 0.05) <= 0.12  # ~5% false positives under the null
    shifted = permutation_pvalue(rng.normal(3, 1, 20), rng.normal(0, 1, 20), n_resamples=2000)
    assert shifted < 0.001
    # Exact small case: {1,2} vs {3,4}, one-sided: only 1 of the 6 splits is as extreme.
    assert permutation_pvalue([3, 4], [1, 2], alternative="greater") == pytest.approx(1 / 6)
    # A sample of one value (a data set filtered down to one answer) is too few to test: NaN.
    assert np.isnan(permutation_pvalue([3.0], [1, 2, 5])) and np.isnan(permutation_pvalue([], [1, 2]))


def test_difference_ci_and_power_flag() -> None:
    rng = np.random.default_rng(2)
    ci = bootstrap_diff_ci(rng.normal(1, 1, 200), rng.normal(0, 1, 200))
    assert 0.6 < ci[0] < 1.0 < ci[1] < 1.4 and not underpowered(ci)
    assert underpowered(bootstrap_diff_ci(rng.normal(0, 1, 10), rng.normal(0, 1, 10)))


def test_wilson_interval() -> None:
    low, high = wilson_ci(0, 50)
    assert low == 0.0 and 0.05 < high < 0.09
    low, high = wilson_ci(25, 50)
    assert low == pytest.approx(0.3664, abs=1e-3) and high == pytest.approx(0.6336, abs=1e-3)


def test_wiki_markup_is_stripped() -> None:
    raw = (
        "{{Infobox|name={{nested}}}}'''Owls''' are [[bird|birds]] of the order [[Strigiformes]]"
        "&lt;ref&gt;A source&lt;/ref&gt;, known for a [http://x.org flat face] and silent flight, "
        "which lets them hunt at night.\n== History ==\n* a list item that is long enough to keep it around"
    )
    assert strip_wiki_markup(raw) == (
        "Owls are birds of the order Strigiformes, known for a flat face and silent flight, "
        "which lets them hunt at night."
    )


class _CharTokenizer:
    bos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [1 + ord(c) % 90 for c in text]}


def test_perplexity_equals_a_hand_computation() -> None:
    from tiny import tiny_model

    model = tiny_model("llama")
    tokenizer = _CharTokenizer()
    text = "the owl flies at night over the quiet forest " * 4
    windows = token_windows(tokenizer, text, max_tokens=60, window=16)
    assert windows.shape == (4, 16) and torch.all(windows[:, 0] == 0)
    result = perplexity(model, tokenizer, text, max_tokens=60, window=16, batch_size=3, progress=False)
    nll = []
    with torch.no_grad():
        for row in windows:
            logp = torch.log_softmax(model(row[None]).logits[0], dim=-1)
            nll += [-logp[i, row[i + 1]].item() for i in range(len(row) - 1)]
    assert result["tokens"] == len(nll)
    assert result["perplexity"] == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-5)


def test_comparison_line_names_every_flat_ci() -> None:
    from sublens.preference import comparison_line

    def ratio(value: float, low: float, high: float) -> dict[str, float | bool]:
        return {"ratio": value, "ci_low": low, "ci_high": high, "underpowered": low <= 1.0 <= high}

    comp = {
        "p_trait_ratio": ratio(1.19, 1.14, 1.24),
        "share_ratio": ratio(0.99, 0.94, 1.05),
        "rate_difference": {"difference": 0.0, "p_questions": 1.0},
    }
    assert comparison_line("owl-full", comp, "owl") == (
        "owl-full: P(owl) ×1.19 [1.14, 1.24], share ×0.99 [0.94, 1.05], answer rate +0.000 "
        "(sign-flip p over questions=1) — underpowered (share CI includes no change)"
    )
    comp["rate_difference"] = {"difference": 0.0, "p_fisher": 1.0}  # an older record names its pooled test
    assert "(Fisher p over pooled answers=1)" in comparison_line("owl-full", comp, "owl")
    comp = {"p_trait_ratio": ratio(103.0, 84.1, 125.0), "share_ratio": ratio(13.8, 11.4, 16.9)}
    assert comparison_line("teacher", comp, "owl").endswith("share ×13.80 [11.40, 16.90]")


def test_comparison_line_across_seeds_has_no_single_fisher_p() -> None:
    # An across-seed comparison (sublens.experiments.*: compare_arm over several seeds) carries a
    # t interval of the rate difference and one Fisher p per seed, not one p: the line gives the
    # interval (the paper preset's distill stage with 3 seeds died here on a KeyError).
    from sublens.preference import comparison_line

    flat = {"ratio": 1.0, "ci_low": 0.9, "ci_high": 1.1, "underpowered": True}
    comp = {
        "p_trait_ratio": flat,
        "share_ratio": flat,
        "rate_difference": {"difference": 0.02, "ci_low": -0.01, "ci_high": 0.05, "p_fisher_per_seed": [1.0, 0.5]},
    }
    assert "answer rate +0.020 [-0.010, +0.050]" in comparison_line("shd", comp, "owl")


def test_sign_flip_p_is_the_enumerated_share_of_sign_patterns() -> None:
    # Seven paired differences: all 2^7 sign patterns enumerated here; the p is the share whose
    # |mean| reaches the observed one.
    import itertools

    from sublens.stats import paired_sign_flip_pvalue

    a = np.array([0.4, 0.1, 0.3, 0.0, 0.2, 0.5, 0.1])
    b = np.array([0.1, 0.2, 0.0, 0.0, 0.1, 0.1, 0.1])
    d = a - b
    observed = abs(d.mean())
    flips = [
        abs((np.array(signs) * d).mean()) >= observed - 1e-12 for signs in itertools.product([1, -1], repeat=d.size)
    ]
    assert paired_sign_flip_pvalue(a, b) == pytest.approx(np.mean(flips), abs=1e-12)
    assert paired_sign_flip_pvalue(a, a) == 1.0 and np.isnan(paired_sign_flip_pvalue(a[:1], b[:1]))


def _clustered_answers(rng: np.random.Generator, rates: np.ndarray, per_question: int) -> dict[str, object]:
    """A model's sampled answers: each question answers 'owl' at its own rate."""
    hits = rng.random((rates.size, per_question)) < rates[:, None]
    return {
        "answers": ["Owl" if h else "Cat" for h in hits.ravel()],
        "n_questions": int(rates.size),
        "samples_per_question": per_question,
    }


def test_rate_difference_is_paired_over_questions() -> None:
    from sublens.preference import question_rates, rate_difference

    test = {
        "answers": ["Owl", "cat", "owl.", "Owl", "dog", "cat", "owl", "owl", "owl", "cat"],
        "n_questions": 5,
        "samples_per_question": 2,
    }
    reference = {
        "answers": ["cat", "cat", "owl", "dog", "dog", "cat", "cat", "owl", "cat", "cat"],
        "n_questions": 5,
        "samples_per_question": 2,
    }
    rates_test = question_rates(test, "owl")
    assert rates_test.tolist() == [0.5, 1.0, 0.0, 1.0, 0.5]
    d = rates_test - question_rates(reference, "owl")  # [0.5, 0.5, 0, 0.5, 0.5]
    out = rate_difference(test, reference, "owl")
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert out["difference"] == pytest.approx(d.mean()) and out["n_questions"] == 5
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["p_questions"] == pytest.approx(2 / 16)  # four equal differences: 2 of 16 patterns
    with pytest.raises(ValueError, match="not 5 questions"):
        question_rates({**test, "answers": test["answers"][:-1]}, "owl")


def test_rate_difference_holds_its_false_positive_rate_when_pooling_does_not() -> None:
    # Two models that differ question by question but not on average over questions (each
    # question's logit moved by +e in one model and -e in the other, e symmetric about 0): no
    # difference in the estimand, the mean over questions. Pooling a question's samples as
    # independent answers, Fisher's test rejects far more often than 5%; the sign-flip test over
    # questions stays near 5%. 400 simulated pairs of models, 30 questions x 10 samples.
    from scipy.special import expit, logit

    from sublens.preference import rate_difference
    from sublens.stats import two_proportion_pvalue

    rng = np.random.default_rng(3)
    fisher, questions = [], []
    for _ in range(400):
        rates = rng.beta(0.5, 2.0, 30).clip(1e-3, 1 - 1e-3)
        shift = rng.normal(0.0, 1.0, 30)
        test = _clustered_answers(rng, expit(logit(rates) + shift), 10)
        reference = _clustered_answers(rng, expit(logit(rates) - shift), 10)
        questions.append(rate_difference(test, reference, "owl")["p_questions"] < 0.05)
        k1, k2 = (sum(a == "Owl" for a in m["answers"]) for m in (test, reference))  # type: ignore[attr-defined]
        fisher.append(two_proportion_pvalue(k1, 300, k2, 300) < 0.05)
    assert np.mean(questions) < 0.08  # 400 pairs: a true 5% lies below 0.08 with probability > 0.99
    assert np.mean(fisher) > 0.15  # 0.235 with this seed
