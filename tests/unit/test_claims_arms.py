"""The subliminal experiment's claims beyond the three freeze modes (issue #18): a transfer claim
for every owl arm with its matched control (layer ranges, LoRA, divergence-token masks), the
divergence-token claim built like the freezing one, and the entanglement claim, a claim of no
effect decided only by equivalence. Decided on the recorded run re-dressed with per-seed log
ratios, on the typed end of a run (compare, decide) and in the paper section; with a simulation
of the equivalence test's false-positive rate at the margin."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from fixture_runs import RUNS
from sublens import claims
from sublens.claims import (
    Claim,
    ClaimSettings,
    SeedLogs,
    Verdict,
    decide,
    decide_family,
    estimate_log_ratio,
    holm,
    paired_difference,
    subliminal_decisions,
    units_for_equivalence,
    units_for_margin,
)
from sublens.experiments.subliminal import SubliminalConfig
from sublens.experiments.subliminal import config as subliminal_config
from sublens.experiments.subliminal.results import Student, SubliminalResults
from sublens.experiments.subliminal.run import compare
from sublens.experiments.subliminal.run import decide as decide_run
from sublens.report.sections import builder
from sublens.report.sections.subliminal import build
from sublens.report.stages import load_stage
from sublens.results import load_results

FREEZE = ["full", "freeze-attention", "freeze-mlp"]
TRANSFER = [0.50, 0.45, 0.55, 0.48, 0.52]  # a clear transfer over five seeds
FLAT = [0.01, -0.01, 0.02, -0.015, 0.0]  # equivalent to the control
WIDE = [0.3, -0.25, 0.2, -0.3, 0.1]  # no effect shown either way


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return json.loads((RUNS / "subliminal" / "results.json").read_text())


def _ratio(values: list[float]) -> dict[str, Any]:
    mean = sum(values) / len(values)
    return {
        "ratio": math.exp(mean),
        "ci_low": math.exp(mean - 0.1),
        "ci_high": math.exp(mean + 0.1),
        "n_seeds": len(values),
        "ci": f"t over {len(values)} seeds",
        "per_seed_log": values,
        "per_seed": [math.exp(v) for v in values],
        "underpowered": False,
    }


def dressed(
    recorded: dict[str, Any], arms: dict[tuple[str, str], list[float]], control_modes: list[str] | None = None
) -> dict[str, Any]:
    """The recorded run as a run of these (data set, arm) rows, each with these per-seed log
    share ratios over its matched control; every owl arm has its control unless told otherwise."""
    results = copy.deepcopy(recorded)
    template = next(r for r in results["headline"] if r["model"] == "owl-full")
    rows = [r for r in results["headline"] if r["dataset"] in (None, "control")]
    for (dataset, mode), logs in arms.items():
        row = copy.deepcopy(template) | {"model": f"{dataset}-{mode}", "dataset": dataset, "mode": mode}
        row["vs_control"]["share_ratio"] = _ratio(logs)
        rows.append(row)
    modes = [m for d, m in arms if d == "owl"]
    results["students"] = _students(results, arms)
    results |= {
        "headline": rows,
        "modes": modes,
        "n_seeds": max(len(v) for v in arms.values()),
        "control_modes": control_modes if control_modes is not None else list(dict.fromkeys(["full", *modes])),
    }
    return results


def _students(results: dict[str, Any], arms: dict[tuple[str, str], list[float]]) -> dict[str, Any]:
    """A student per seed for every row and its control, each with the recorded owl student's
    training record (its loss fell: sublens.learning), so that a null is not read as one of
    untrained students."""
    template = results["students"]["owl-full-seed0"]
    students = {}
    for (dataset, mode), logs in arms.items():
        for data in (dataset, "control"):
            for seed in range(len(logs)):
                name = f"{data}-{mode}-seed{seed}"
                students[name] = copy.deepcopy(template) | {"name": name, "dataset": data, "mode": mode, "seed": seed}
    return students


def decided(results: dict[str, Any], **kwargs: Any) -> dict[str, claims.Decision]:
    return subliminal_decisions(results, results["control_modes"], **kwargs)


# ---- a transfer claim for every arm -------------------------------------------------------------
def test_lora_and_layer_arms_get_transfer_claims(recorded: dict[str, Any]) -> None:
    results = dressed(
        recorded,
        {
            ("owl", "full"): TRANSFER,
            ("owl", "layers.3"): TRANSFER,
            ("owl", "full+lora8"): WIDE,
            ("owl", "layers.0-5.mlp"): [0.4],
        },
    )
    out = decided(results)
    layer, lora, mlp_layers = out["transfer.layers.3"], out["transfer.full+lora8"], out["transfer.layers.0-5.mlp"]
    assert layer.verdict is Verdict.SUPPORTED and "(layer 3)" in layer.claim.statement
    assert "trained with layer 3 and the same seed" in layer.claim.estimand
    assert lora.verdict is Verdict.INCONCLUSIVE and "LoRA rank 8" in lora.claim.statement
    assert "seeds would detect" in lora.settle
    assert mlp_layers.verdict is Verdict.INCONCLUSIVE and "too few seeds" in mlp_layers.reason  # one seed
    assert "MLP of layers 0–5" in mlp_layers.claim.statement
    for d in out.values():
        assert d.claim.unit == "seed" and d.claim.family == "subliminal"
    # one Holm family: the p-values of every claim with a test, adjusted together
    tested = [k for k, d in out.items() if k not in ("mlp",) and d.estimate is not None and d.estimate.p_value]
    raw = [out[k].estimate.p_value for k in tested]
    assert [out[k].p_adjusted for k in tested] == pytest.approx(holm(raw))


def test_an_arm_without_its_matched_control_gets_no_claim(recorded: dict[str, Any]) -> None:
    results = dressed(recorded, {("owl", "full"): TRANSFER, ("owl", "layers.3"): TRANSFER}, control_modes=["full"])
    out = decided(results)
    assert "transfer.layers.3" not in out
    # the freeze modes keep their claims (not measured), as older runs had them
    assert out["transfer.freeze-mlp"].verdict is Verdict.INCONCLUSIVE
    assert out["transfer.freeze-mlp"].reason.startswith("not measured")


def test_the_arms_come_from_the_config_where_the_results_do_not_name_them(recorded: dict[str, Any]) -> None:
    results = dressed(recorded, {("owl", "full"): TRANSFER, ("owl", "layers.3"): TRANSFER})
    results["modes"] = None
    assert "transfer.layers.3" in decided(results)  # the headline rows name it
    assert "transfer.layers.3" in decided(results, modes=["full", "layers.3"])


def test_existing_claims_change_only_through_the_larger_family(recorded: dict[str, Any]) -> None:
    """A run of the three freeze modes has the family it always had; added arms change the
    existing claims only through Holm's adjustment over more p-values."""
    base = {("owl", m): v for m, v in zip(FREEZE, (TRANSFER, TRANSFER, FLAT), strict=True)}
    before = decided(dressed(recorded, base))
    assert set(before) == {
        "transfer.full",
        "transfer.freeze-attention",
        "transfer.freeze-mlp",
        "contrast.attention_vs_mlp_frozen",
        "mlp",
    }
    assert before["mlp"].verdict is Verdict.SUPPORTED and before["mlp"].reason == "all three legs hold"
    after = decided(dressed(recorded, base | {("owl", "layers.3"): WIDE, ("owl", "full+lora8"): WIDE}))
    for key, old in before.items():
        new = after[key]
        assert new.estimate == old.estimate and new.claim == old.claim
        if old.p_adjusted is not None:
            assert new.p_adjusted is not None and new.p_adjusted >= old.p_adjusted
    assert after["mlp"].verdict is Verdict.SUPPORTED


def test_contrasts_pair_by_seed_where_the_record_says_which() -> None:
    a, b = SeedLogs([0.5, 0.6, 0.7], [0, 1, 2]), SeedLogs([0.1, 0.3], [0, 2])
    assert paired_difference(a, b) == pytest.approx([0.4, 0.4])
    # without seeds: by position, as older records were
    assert paired_difference(SeedLogs([0.5, 0.6], None), SeedLogs([0.1, 0.3], None)) == pytest.approx([0.4, 0.3])
    # ... but not where an arm lost a seed the record does not name: seed 2 would meet seed 1
    assert paired_difference(SeedLogs([0.5, 0.6, 0.7], None), SeedLogs([0.1, 0.3], None)) == []


def test_seeds_are_read_from_the_students(recorded: dict[str, Any]) -> None:
    parsed = load_results(recorded, SubliminalResults)
    logs = claims.arm_seed_logs(parsed, "owl", "full", ["full"])
    assert logs.seeds == [0] and len(logs.logs) == 1
    assert claims.arm_seed_logs(parsed, "owl", "freeze-mlp", ["full"]) == SeedLogs([], None)


# ---- divergence tokens ---------------------------------------------------------------------------
def divergence(recorded: dict[str, Any], full: list[float], masked: list[float]) -> dict[str, claims.Decision]:
    return decided(
        dressed(
            recorded,
            {("owl", "full"): full, ("owl", "full~skip-divergence"): masked, ("owl", "full~divergence-only"): TRANSFER},
        )
    )


def test_masking_divergence_tokens_is_supported_only_when_all_three_legs_hold(recorded: dict[str, Any]) -> None:
    out = divergence(recorded, TRANSFER, FLAT)
    claim = out["divergence.full"]
    assert claim.verdict is Verdict.SUPPORTED and claim.reason == "all three legs hold"
    assert claim.claim.statement == (
        "Leaving the divergence tokens out of the loss blocks the transfer (full fine-tuning)"
    )
    assert claim.estimate == out["contrast.skip_divergence.full"].estimate  # (c): the per-seed quotient
    assert claim.estimate is not None and claim.estimate.ratio == pytest.approx(
        math.exp(np.mean(np.subtract(TRANSFER, FLAT)))
    )
    assert "divergence tokens left out of the loss" in out["transfer.full~skip-divergence"].claim.statement
    only = out["transfer.full~divergence-only"]
    assert only.verdict is Verdict.SUPPORTED and "loss on divergence tokens only" in only.claim.statement
    # the masked arm flat but wide: absence of evidence, inconclusive, naming the leg not shown
    wide = divergence(recorded, TRANSFER, WIDE)["divergence.full"]
    assert wide.verdict is Verdict.INCONCLUSIVE and "(b) divergence-masked arm equivalent" in wide.reason
    assert wide.settle
    # no transfer to block: inconclusive
    none = divergence(recorded, WIDE, FLAT)["divergence.full"]
    assert none.verdict is Verdict.INCONCLUSIVE and "(a) transfer with every answer token" in none.reason
    # the masked arm transfers as much as the unmasked one: contradicted
    same = divergence(recorded, TRANSFER, TRANSFER)["divergence.full"]
    assert same.verdict is Verdict.CONTRADICTED and "divergence-masked arm transfers by itself" in same.reason
    # one seed decides nothing
    assert divergence(recorded, [0.5], [0.0])["divergence.full"].verdict is Verdict.INCONCLUSIVE


def test_a_masked_arm_without_its_unmasked_arm_has_no_divergence_claim(recorded: dict[str, Any]) -> None:
    out = decided(dressed(recorded, {("owl", "freeze-mlp"): TRANSFER, ("owl", "full~skip-divergence"): FLAT}))
    assert not any(k.startswith(("divergence.", "contrast.skip_divergence")) for k in out)
    assert out["transfer.full~skip-divergence"].verdict is Verdict.EQUIVALENT


# ---- entanglement --------------------------------------------------------------------------------
def entanglement(
    recorded: dict[str, Any], no_random: list[float], no_entangled: list[float], owl: list[float] | None = None
) -> dict[str, claims.Decision]:
    arms = {
        ("owl", "full"): owl or no_random,
        ("owl-no-random", "full"): no_random,
        ("owl-no-entangled", "full"): no_entangled,
    }
    return decided(dressed(recorded, arms))


def _noise(n: int, sd: float, seed: int) -> list[float]:
    values = np.random.default_rng(seed).normal(0.0, sd, n)
    return list(values - values.mean())  # exactly no change on average


def test_entanglement_is_supported_by_equivalence_with_many_tight_seeds(recorded: dict[str, Any]) -> None:
    transfer = [0.5 + v for v in _noise(10, 0.05, 1)]
    out = entanglement(recorded, transfer, [t + e for t, e in zip(transfer, _noise(10, 0.05, 2), strict=True)])
    quotient, claim = out["contrast.no_entangled_vs_no_random"], out["entanglement"]
    assert quotient.claim.prediction == "none" and quotient.verdict is Verdict.SUPPORTED
    assert "the CI lies inside" in quotient.reason
    assert out["transfer.owl-no-random"].verdict is Verdict.SUPPORTED
    assert out["transfer.owl-no-entangled"].verdict is Verdict.SUPPORTED
    assert claim.verdict is Verdict.SUPPORTED and claim.reason == "all three legs hold"
    assert claim.claim.statement == "Token entanglement does not explain the transfer"
    assert claim.estimate == quotient.estimate and not claim.settle


def test_entanglement_is_inconclusive_with_few_seeds_and_says_what_would_decide_it(recorded: dict[str, Any]) -> None:
    out = entanglement(recorded, [0.5, 0.45, 0.55], [0.8, 0.2, 0.45])
    quotient, claim = out["contrast.no_entangled_vs_no_random"], out["entanglement"]
    assert quotient.verdict is Verdict.INCONCLUSIVE and claim.verdict is Verdict.INCONCLUSIVE
    assert quotient.estimate is not None and quotient.estimate.sd_log is not None
    needed = units_for_equivalence(quotient.estimate.sd_log, 1.25)
    assert needed is not None and needed > 3
    assert f"about {needed} seeds would place the CI inside ×1/1.25..×1.25" in quotient.settle
    assert "(c) removing the entangled numbers" in claim.reason and quotient.settle in claim.settle
    # one seed: too few, never supported
    one = entanglement(recorded, [0.5], [0.5])
    assert one["entanglement"].verdict is Verdict.INCONCLUSIVE
    assert "at least 2 seeds" in one["contrast.no_entangled_vs_no_random"].settle


def test_entanglement_is_contradicted_when_filtering_entangled_numbers_clearly_reduces_transfer(
    recorded: dict[str, Any],
) -> None:
    out = entanglement(recorded, TRANSFER, FLAT)
    claim = out["entanglement"]
    assert out["contrast.no_entangled_vs_no_random"].verdict is Verdict.CONTRADICTED
    assert claim.verdict is Verdict.CONTRADICTED and claim.reason.startswith("removing the entangled numbers lowers")


def test_entanglement_needs_transfer_without_the_random_set(recorded: dict[str, Any]) -> None:
    out = entanglement(recorded, FLAT, [v + e for v, e in zip(FLAT, _noise(5, 0.01, 3), strict=True)], owl=TRANSFER)
    assert out["contrast.no_entangled_vs_no_random"].verdict is Verdict.SUPPORTED
    assert out["entanglement"].verdict is Verdict.INCONCLUSIVE
    assert "(a) transfer without the random-set answers" in out["entanglement"].reason


def test_entanglement_is_not_supported_where_the_entangled_numbers_carry_all_of_a_small_transfer(
    recorded: dict[str, Any],
) -> None:
    """A transfer smaller than the margin (×1.16 without the random set) that vanishes without
    the entangled numbers (×1.00): the quotient ×0.86 lies inside ×1/1.25..×1.25, but leg (b),
    transfer without the entangled numbers, fails, so the claim is not supported."""
    no_random = [math.log(1.16) + v for v in _noise(10, 0.12, 4)]  # CI reaching past ×1.25: supported
    no_entangled = [v - math.log(1.16) + e for v, e in zip(no_random, _noise(10, 0.01, 5), strict=True)]
    out = entanglement(recorded, no_random, no_entangled)
    assert out["transfer.owl-no-random"].verdict is Verdict.SUPPORTED
    assert out["contrast.no_entangled_vs_no_random"].verdict is Verdict.SUPPORTED  # inside the margin
    assert out["transfer.owl-no-entangled"].verdict is Verdict.EQUIVALENT
    assert out["entanglement"].verdict is Verdict.INCONCLUSIVE
    assert "(b) transfer without the entangled-number answers" in out["entanglement"].reason


def test_entanglement_is_not_contradicted_without_a_transfer_to_lower(recorded: dict[str, Any]) -> None:
    """The quotient beyond the margin says nothing against the claim where the owl data do not
    transfer without the random set in the first place."""
    out = entanglement(
        recorded, FLAT, [v - 0.3 + e for v, e in zip(FLAT, _noise(5, 0.01, 7), strict=True)], owl=TRANSFER
    )
    assert out["contrast.no_entangled_vs_no_random"].verdict is Verdict.CONTRADICTED
    assert out["transfer.owl-no-random"].verdict is not Verdict.SUPPORTED
    assert out["entanglement"].verdict is Verdict.INCONCLUSIVE


def test_every_null_of_the_run_needs_students_that_learned(recorded: dict[str, Any]) -> None:
    """Flat loss curves in every student: no null of the run stands (the arms' equivalence, the
    contrasts', the specificity quotient's and the filter quotient's), and the composites built
    on them are not supported; a rise is reported as measured."""
    arms = {
        ("owl", "full"): TRANSFER,
        ("owl", "freeze-attention"): FLAT,
        ("owl", "freeze-mlp"): [v + e for v, e in zip(FLAT, _noise(5, 0.01, 8), strict=True)],
        ("eagle", "full"): [v + e for v, e in zip(TRANSFER, _noise(5, 0.01, 9), strict=True)],
        ("owl-no-random", "full"): TRANSFER,
        ("owl-no-entangled", "full"): [v + e for v, e in zip(TRANSFER, _noise(5, 0.005, 6), strict=True)],
    }
    learned = decided(dressed(recorded, arms))
    flat = dressed(recorded, arms)
    for student in flat["students"].values():
        student["training"]["loss_curve"] = [[k, 1.36 + 0.01 * (k % 3)] for k in range(40)]
    untrained = decided(flat)
    nulls = [
        "transfer.freeze-attention",
        "transfer.freeze-mlp",
        "contrast.attention_vs_mlp_frozen",
        "specificity.eagle",
        "contrast.no_entangled_vs_no_random",
    ]
    assert {k: learned[k].verdict.value for k in nulls} == {
        "transfer.freeze-attention": "equivalent",
        "transfer.freeze-mlp": "equivalent",
        "contrast.attention_vs_mlp_frozen": "equivalent",
        "specificity.eagle": "equivalent",
        "contrast.no_entangled_vs_no_random": "supported",  # predicted no change
    }
    for key in nulls:
        assert untrained[key].verdict is Verdict.INCONCLUSIVE, key
        assert untrained[key].reason.startswith("the students were not shown to learn their data"), key
    assert learned["entanglement"].verdict is Verdict.SUPPORTED
    assert untrained["entanglement"].verdict is Verdict.INCONCLUSIVE
    assert untrained["transfer.full"].verdict is learned["transfer.full"].verdict is Verdict.SUPPORTED


def test_entanglement_claims_only_where_the_run_trained_the_filtered_students(recorded: dict[str, Any]) -> None:
    out = decided(dressed(recorded, {("owl", "full"): TRANSFER}))
    assert "entanglement" not in out and "transfer.owl-no-random" not in out
    # the data stage recorded the filter but the students have not finished: not measured
    results = dressed(recorded, {("owl", "full"): TRANSFER})
    results["data"]["entangled"] = {
        "run": "runs/x",
        "set": "ar2",
        "enrichment": {},
        "filter": {"size": 240, "removed": {"increased": 41}, "pool": 300},
    }
    out = decided(results)
    assert out["entanglement"].verdict is Verdict.INCONCLUSIVE
    assert out["contrast.no_entangled_vs_no_random"].reason.startswith("not measured")


def test_the_data_set_names_are_the_configs() -> None:
    assert (claims.OWL, claims.CONTROL, claims.NO_ENTANGLED, claims.NO_RANDOM) == (
        subliminal_config.OWL,
        subliminal_config.CONTROL,
        subliminal_config.NO_ENTANGLED,
        subliminal_config.NO_RANDOM,
    )


# ---- the equivalence test by simulation ------------------------------------------------------------
def none_claim(margin: float = 1.25) -> Claim:
    return Claim(
        name="test",
        statement="no effect",
        estimand="a quotient",
        unit="seed",
        prediction="none",
        family="test",
        settings=ClaimSettings(margin=margin),
    )


def inside_margin(samples: np.ndarray, margin: float = 1.25) -> np.ndarray:
    """Row by row, what `decide` calls 'no effect': the 95% Student-t CI of the mean log ratio
    inside [1/margin, margin] (vectorised, for many simulated studies at once)."""
    n = samples.shape[1]
    mean, half = samples.mean(axis=1), stats.t.ppf(0.975, n - 1) * samples.std(axis=1, ddof=1) / math.sqrt(n)
    bound = math.log(margin)
    return (-bound < mean - half) & (mean + half < bound)


@pytest.mark.parametrize("n", [3, 5, 10, 20])
def test_equivalence_false_positive_rate_at_the_margin(n: int) -> None:
    """A true effect exactly at the margin (either side) is called 'no effect' at most at
    alpha/2 (the 95% CI inside the margin is two one-sided tests at 2.5%): within alpha with
    room for simulation noise. The rate is simulated with the criterion vectorised; `decide`
    gives that very verdict on every one of a few hundred of the simulated studies, alone and
    inside a Holm family (equivalence is not loosened by the family)."""
    rng = np.random.default_rng(100 + n)
    sd = 0.2
    for edge in (math.log(1.25), -math.log(1.25)):
        samples = rng.normal(edge, sd, (20_000, n))
        assert inside_margin(samples).mean() <= 0.025 + 0.01  # alpha/2 expected
        # decide agrees with the criterion; near the margin, where the calls are close
        close = rng.normal(edge / 2, sd, (150, n))
        expected = inside_margin(close)
        verdicts = [decide(none_claim(), estimate_log_ratio(row, "seed")).verdict for row in close]
        assert [v is Verdict.SUPPORTED for v in verdicts] == list(expected)
        assert 0 < expected.sum() < len(expected)  # both outcomes exercised
        other = estimate_log_ratio(rng.normal(0.5, sd, n), "seed")
        in_family = [
            decide_family([(none_claim(), estimate_log_ratio(row, "seed")), (none_claim(), other)])[0]
            for row in close[:50]
        ]
        assert [d.verdict is Verdict.SUPPORTED for d in in_family] == list(expected[:50])


def test_the_seeds_for_equivalence_give_its_power() -> None:
    """At the seeds `units_for_equivalence` names, a true quotient of 1 is shown equivalent
    with about the stated power; they exceed the seeds that would detect the margin."""
    sd = 0.15
    n = units_for_equivalence(sd, 1.25)
    assert n is not None and n >= (units_for_margin(sd, 1.25) or 0)
    rng = np.random.default_rng(7)
    hits = np.mean(
        [
            decide(none_claim(), estimate_log_ratio(rng.normal(0.0, sd, n), "seed")).verdict is Verdict.SUPPORTED
            for _ in range(1000)
        ]
    )
    assert 0.7 <= hits <= 0.95


# ---- the typed end of a run, and the paper section ---------------------------------------------------
ARMS = ["full", "layers.3", "full+lora8", "full~skip-divergence", "full~divergence-only"]


def _student(template: Student, dataset: str, mode: str, seed: int, owl_scale: float) -> Student:
    data: dict[str, Any] = template.model_dump(mode="json")
    data |= {"name": f"{dataset}-{mode}-seed{seed}", "dataset": dataset, "mode": mode, "seed": seed}
    per_question = data["preference"]["probability"]["per_question"]
    for row in per_question["p_word"]:
        row[0] *= owl_scale
    per_question["share"] = [row[0] / sum(row) for row in per_question["p_word"]]
    return Student.model_validate(data)


@pytest.fixture(scope="module")
def arms_run(recorded: dict[str, Any]) -> tuple[SubliminalConfig, SubliminalResults]:
    """The recorded run as a three-seed run of the new arms and the entanglement filter's
    students, compared and decided as `run.execute` does at its end."""
    parsed = load_results(recorded, SubliminalResults)
    assert parsed.students is not None
    config = SubliminalConfig(seeds=[0, 1, 2], modes=ARMS, control_modes=ARMS, entangled={"run": "runs/entanglement"})
    scales = {
        "full": 1.6,
        "layers.3": 1.5,
        "full+lora8": 1.05,
        "full~skip-divergence": 1.02,
        "full~divergence-only": 1.4,
    }
    students = {}
    for seed in config.seeds:
        jitter = (0.0, 0.08, -0.06)[seed]
        for mode in ARMS:
            for dataset, scale in (("control", 1.0 + jitter / 2), ("owl", scales[mode] + jitter)):
                s = _student(
                    parsed.students[f"{'control' if dataset == 'control' else 'owl'}-full-seed0"],
                    dataset,
                    mode,
                    seed,
                    scale,
                )
                students[s.name] = s
        for dataset, scale in (("owl-no-entangled", 1.55 + jitter), ("owl-no-random", 1.6 - jitter)):
            s = _student(parsed.students["owl-full-seed0"], dataset, "full", seed, scale)
            students[s.name] = s
    started = parsed.model_copy(
        update={
            "seeds": config.seeds,
            "n_seeds": 3,
            "modes": ARMS,
            "control_modes": ARMS,
            "partial": True,
            "students": students,
            "headline": None,
            "comparisons": None,
            "specificity": None,
            "parameters": None,
        }
    )
    return config, decide_run(config, compare(config, started))


def test_the_run_records_every_new_claim(arms_run: tuple[SubliminalConfig, SubliminalResults]) -> None:
    results = arms_run[1]
    recorded_claims = results.claims or {}
    for arm in ARMS:
        assert f"transfer.{arm}" in recorded_claims
    for key in (
        "divergence.full",
        "contrast.skip_divergence.full",
        "transfer.owl-no-random",
        "contrast.no_entangled_vs_no_random",
        "entanglement",
        "mlp",
    ):
        assert key in recorded_claims
    assert recorded_claims["contrast.no_entangled_vs_no_random"].claim.prediction == "none"
    # seeds are read from the students: the contrasts pair seed by seed
    parsed_logs = claims.arm_seed_logs(results, "owl-no-random", "full", ARMS)
    assert parsed_logs.seeds == [0, 1, 2]
    written = results.model_dump(mode="json")
    assert load_results(json.loads(json.dumps(written)), SubliminalResults).model_dump(mode="json") == json.loads(
        json.dumps(written)
    )
    assert recorded_claims["transfer.layers.3"].verdict is Verdict.SUPPORTED


def test_the_section_words_the_new_claims(arms_run: tuple[SubliminalConfig, SubliminalResults]) -> None:
    config, results = arms_run
    run = load_stage(RUNS / "subliminal")
    run = dataclasses.replace(
        run,
        results=results.model_dump(mode="json"),
        config={
            **run.config,
            "modes": ARMS,
            "control_modes": ARMS,
            "seeds": [0, 1, 2],
            "entangled": config.entangled.model_dump(),
        },
    )
    assert builder(run.stage) is build
    section = build(run)
    text = section.results
    for words in (
        "The owl student acquires the bias (layer 3)",
        "(full fine-tuning, LoRA rank 8)",
        "Leaving the divergence tokens out of the loss blocks the transfer (full fine-tuning)",
        "loss on divergence tokens only",
        r"Divergence tokens \citep{schrodi2026understanding}",
        r"Entanglement \citep{zur2025owl}: Token entanglement does not explain the transfer",
        "changes the transfer no more than removing",
    ):
        assert words in text, words
    for key in (
        "layers.3",
        "lora8",
        "~skip-divergence",
        "divergence-only:",
        "owl-no-random",
        "no_entangled",
        "transfer.",
        "skip_divergence",
    ):
        assert key not in text, key
    # the freeze-mode claim only where the run froze a component
    assert "Localisation by freezing" not in text
    assert text.count(r"\citep{schrodi2026understanding}:") == 1  # the divergence claims led once
    lines = section.headline
    assert len(lines) == 4 and not any("MLP claim by freezing" in line for line in lines)  # no frozen arm
    assert lines[1].startswith("subliminal: transfer with layer 3 ")
    assert "with full fine-tuning, LoRA rank 8 " in lines[1]
    assert "with full fine-tuning, loss on divergence tokens only" in lines[1]
    assert "skip" not in lines[1]
    assert lines[2].startswith("subliminal: divergence tokens out of the loss block the transfer (full fine-tuning) ")
    assert lines[3].startswith("subliminal: token entanglement does not explain the transfer ")
    for line in lines:
        assert "~" not in line and "owl-no" not in line


def test_the_recorded_run_section_is_unchanged_in_its_claims() -> None:
    """A run of the freeze modes alone: no new claim in the text or the headline."""
    section = build(load_stage(RUNS / "subliminal"))
    assert len(section.headline) == 2
    assert "Divergence tokens \\citep" not in section.results and "Token entanglement" not in section.results


# ---- specificity: the owl students against each extra teacher's ------------------------------------
def test_specificity_against_each_extra_teacher(recorded: dict[str, Any]) -> None:
    """The owl data must raise owl's share more than another animal's data do: the per-seed
    quotient of the owl student's and the extra teacher's student's ratios (same arm)."""
    dog_like_owl = [v - 0.01 * (-1) ** i for i, v in enumerate(TRANSFER)]  # rises as much as owl
    arms = {("owl", "full"): TRANSFER, ("eagle", "full"): FLAT, ("dog", "full"): dog_like_owl}
    out = decided(dressed(recorded, arms))
    eagle, dog = out["specificity.eagle"], out["specificity.dog"]
    assert eagle.claim.prediction == "increase" and eagle.claim.family == "subliminal"
    assert "than the eagle teacher's numbers do (full fine-tuning)" in eagle.claim.statement
    quotient = [o - e for o, e in zip(TRANSFER, FLAT, strict=True)]
    assert eagle.estimate is not None and eagle.estimate.ratio == pytest.approx(math.exp(np.mean(quotient)))
    assert eagle.estimate.p_value == pytest.approx(stats.ttest_1samp(quotient, 0.0).pvalue)
    assert eagle.verdict is Verdict.SUPPORTED
    assert dog.verdict is Verdict.EQUIVALENT  # a dog teacher raises owl as much: not owl-specific
    tested = [k for k, d in out.items() if k != "mlp" and d.estimate is not None and d.estimate.p_value]
    assert [out[k].p_adjusted for k in tested] == pytest.approx(holm([out[k].estimate.p_value for k in tested]))
    # an extra teacher trained in an arm the owl students do not have: no claim
    other_arm = decided(dressed(recorded, {("owl", "full"): TRANSFER, ("eagle", "layers.3"): FLAT}))
    assert not any(k.startswith("specificity.") for k in other_arm)


def test_the_section_states_specificity_with_its_interval(recorded: dict[str, Any]) -> None:
    results = dressed(recorded, {("owl", "full"): TRANSFER, ("eagle", "full"): FLAT})
    run = dataclasses.replace(load_stage(RUNS / "subliminal"), results=results)
    text = build(run).results
    lead = text.index("Specificity, against the other teachers' students: ")
    assert "eagle teacher" in text[lead:] and "Student-$t$ 95\\% CI over 5 seeds" in text[lead:]
