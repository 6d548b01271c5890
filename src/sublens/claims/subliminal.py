"""The subliminal experiment's claims, from its recorded results (`subliminal_decisions`),
decided with seeds as the unit and keyed by name without the ``subliminal.`` prefix:

- ``transfer.<arm>``: owl's panel-share ratio, owl student over the matched control student
  (same arm, same seed), predicted to rise; for the three freeze modes always, and for every
  other owl arm of the run (`owl_arms`: layer ranges, LoRA, divergence-token masks) that has
  its matched control;
- ``contrast.attention_vs_mlp_frozen``: the per-seed quotient of the attention-frozen and the
  MLP-frozen arms' ratios, predicted to favour the attention-frozen arm (MLPs trained);
- ``mlp``: "the bias is seated in the MLP layers" by freezing: transfer with attention
  frozen, the MLP-frozen arm equivalent to its control, and the contrast
  (`component_blocks_transfer`);
- for every trainable set X the run trains both as X and as ``X~skip-divergence``:
  ``contrast.skip_divergence.<X>``, the per-seed quotient of the two arms' ratios, predicted
  to favour X (every answer token in the loss), and ``divergence.<X>``, "leaving the
  divergence tokens out of the loss blocks the transfer" (`blocks_transfer`: transfer in X,
  the masked arm equivalent to its control, and that contrast); an ``X~divergence-only``
  arm has its transfer claim;
- ``specificity.<teacher>`` for every extra teacher (e.g. eagle) whose students share an arm
  with owl students: the per-seed quotient of the owl student's and that teacher's student's
  ratios, each over the control student, predicted to favour owl (the transfer is owl-specific);
- where the run trained the entanglement filter's students: ``transfer.owl-no-random`` and
  ``transfer.owl-no-entangled`` (the students without the random-set, or the entangled-number,
  answers over the full control student, predicted to rise), ``contrast.no_entangled_vs_no_random``
  (the per-seed quotient of those two students' ratios, predicted to be no change: supported
  only by equivalence within the margin, its open verdict saying how many seeds would show
  it, `equivalence_settle`) and ``entanglement``, "token entanglement does not explain the
  transfer" (`all_legs`: all three; contradicted when there is a transfer and the quotient
  lies significantly beyond the margin).

Every null among them (an ``equivalent``, or the quotient's predicted no-change) stands only
where the students behind it learned their data (`learned_or_inconclusive`); the composites
are built from the gated legs.

Torch-free: the subliminal results model is imported inside `subliminal_decisions` (it imports
this package for ClaimSettings and Estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sublens.claims.composite import all_legs, blocks_transfer, component_blocks_transfer
from sublens.claims.core import (
    Claim,
    ClaimSettings,
    Decision,
    Estimate,
    Prediction,
    Verdict,
    decide_family,
    estimate_log_ratio,
    units_for_equivalence,
    unless_learned,
)
from sublens.learning import learning_check
from sublens.results import as_results
from sublens.trainable import describe_trainable

if TYPE_CHECKING:
    from sublens.experiments.subliminal.results import SeedRatio, SubliminalResults

SUBLIMINAL_MODES = ("full", "freeze-attention", "freeze-mlp")
SKIP_DIVERGENCE = "~skip-divergence"  # sublens.trainable.split_arm
# The data sets the run names (sublens.experiments.subliminal.config, which imports torch through
# its training settings: this module must not): the owl and control data, and the entanglement
# filter's.
OWL, CONTROL, NO_ENTANGLED, NO_RANDOM = "owl", "control", "owl-no-entangled", "owl-no-random"


def per_seed_logs(ratio: SeedRatio | None) -> list[float]:
    """Per-seed log ratios of a recorded comparison (older runs store only the ratios)."""
    if ratio is None:
        return []
    if ratio.per_seed_log is not None:
        return [float(v) for v in ratio.per_seed_log]
    return [math.log(v) for v in ratio.per_seed if v and v > 0]


@dataclass(frozen=True)
class SeedLogs:
    """One arm's per-seed log share ratios over its matched control student, with the seed of
    each (None where the record does not say: older or hand-made records, paired by position)."""

    logs: list[float]
    seeds: list[int] | None


def arm_seed_logs(results: SubliminalResults, dataset: str, mode: str, control_modes: Sequence[str]) -> SeedLogs:
    """The per-seed log share ratios of the students of `dataset` in arm `mode` over the control
    students of the same arm (none where the run has no such control: not measured). The seeds
    are those `analysis.arm_row` paired: the run's seeds with both students recorded."""
    if mode not in control_modes:
        return SeedLogs([], None)
    row = results.row(dataset, mode)
    logs = per_seed_logs(row.vs_control.share_ratio if row is not None and row.vs_control else None)
    students = results.students or {}
    seeds = [
        s for s in results.seeds if f"{dataset}-{mode}-seed{s}" in students and f"{CONTROL}-{mode}-seed{s}" in students
    ]
    return SeedLogs(logs, seeds if logs and len(seeds) == len(logs) else None)


def paired_difference(test: SeedLogs, reference: SeedLogs) -> list[float]:
    """Per seed, the test arm's log ratio minus the reference arm's: the log of the quotient of
    the two arms' ratios, each over its matched control. Paired by seed where both records say
    which seed each value is, else by position (as older runs were) when both arms have every
    seed; else none (not measured)."""
    if test.seeds is not None and reference.seeds is not None:
        other = dict(zip(reference.seeds, reference.logs, strict=True))
        return [v - other[s] for s, v in zip(test.seeds, test.logs, strict=True) if s in other]
    if len(test.logs) != len(reference.logs):
        return []  # an arm lost a seed and the record does not say which: no pairing is like against like
    return [a - b for a, b in zip(test.logs, reference.logs, strict=True)]


def run_arms(results: SubliminalResults, modes: Sequence[str] | None = None) -> list[str]:
    """The owl arms the run trains: `modes` (the config's), else as results.json recorded
    them, else as its headline rows show them."""
    given = modes or results.modes or [r.mode for r in results.headline or [] if r.dataset == OWL and r.mode]
    return list(dict.fromkeys(given))


def owl_arms(results: SubliminalResults, control_modes: Sequence[str], modes: Sequence[str] | None = None) -> list[str]:
    """The owl arms with a transfer claim: the three freeze modes always (an older run's arm
    without a matched control is decided as not measured), then every other owl arm of the run
    (`run_arms`) with a matched control."""
    others = [m for m in run_arms(results, modes) if m not in SUBLIMINAL_MODES and m in control_modes]
    return [*SUBLIMINAL_MODES, *others]


def equivalence_settle(decision: Decision) -> Decision:
    """An inconclusive claim of no effect with what would show it: the units for its CI to fall
    inside the margin at the measured SD if the true ratio is 1 (`units_for_equivalence`), in
    place of the units that would detect an effect of the margin."""
    est, s, unit = decision.estimate, decision.claim.settings, decision.claim.unit
    if decision.verdict is not Verdict.INCONCLUSIVE or est is None or not est.has_interval or not est.sd_log:
        return decision
    needed = units_for_equivalence(est.sd_log, s.margin, s.alpha, s.power)
    settle = (
        f"about {needed} {unit}s would place the CI inside ×1/{s.margin:g}..×{s.margin:g} at the measured "
        f"SD if there is no effect (power {s.power:g})"
        if needed
        else f"more {unit}s"
    )
    return decision.model_copy(update={"settle": settle})


def _transfer_claim(arm: str, settings: ClaimSettings) -> Claim:
    how = describe_trainable(arm)
    return Claim(
        name=f"subliminal.transfer.{arm}",
        statement=f"The owl student acquires the bias ({how})",
        estimand=(
            f"owl's panel-share ratio, owl student over the control student, both trained with {how} and the same seed"
        ),
        unit="seed",
        prediction="increase",
        family="subliminal",
        settings=settings,
    )


def _seed_claim(name: str, statement: str, estimand: str, prediction: Prediction, settings: ClaimSettings) -> Claim:
    return Claim(
        name=f"subliminal.{name}",
        statement=statement,
        estimand=estimand,
        unit="seed",
        prediction=prediction,
        family="subliminal",
        settings=settings,
    )


def _estimate(logs: Sequence[float]) -> Estimate | None:
    return estimate_log_ratio(logs, "seed") if logs else None


NO_RANDOM_WORDS = "the owl student trained without the answers that hold a number of the size-matched random set"
NO_ENTANGLED_WORDS = "the owl student trained without the answers that hold an entangled number"


def subliminal_decisions(
    results: SubliminalResults | Mapping[str, Any],
    control_modes: Sequence[str],
    settings: ClaimSettings | None = None,
    modes: Sequence[str] | None = None,
) -> dict[str, Decision]:
    """The subliminal experiment's claims (listed in the module docstring), decided with seeds
    as the unit, keyed by name without the ``subliminal.`` prefix.

    Every claim with a test is in one Holm family (``subliminal``); the composites add no
    p-value. A claim joins the family only when the run has its arms, so a run with only the
    three freeze modes has the family it always had (three transfers and the contrast) and its
    recorded verdicts are unchanged; where a run has more arms, the only change to the
    existing claims is the larger family's Holm adjustment. Contrasts pair by seed; a record
    that does not say which seed each value is pairs by position, as before.

    An owl mode without a control student in `control_modes` (older runs compared frozen owl
    students with a fully fine-tuned control) has no matched comparison: a freeze mode counts
    as not measured (inconclusive), another arm gets no claim. `modes`: the run's owl arms
    where results.json does not record them (the config's). `results` is the run's
    results.json (its mapping is read with `load_results`: ResultsError when it does not
    validate)."""
    # Imported here: the subliminal results model imports this module (ClaimSettings, Estimate).
    from sublens.experiments.subliminal.results import SubliminalResults

    parsed = as_results(results, SubliminalResults)
    settings = settings or ClaimSettings()
    arms = owl_arms(parsed, control_modes, modes)
    logs = {arm: arm_seed_logs(parsed, OWL, arm, control_modes) for arm in arms}
    trained = [a for a in run_arms(parsed, modes) if a in control_modes]
    masked = [s for s in trained if s + SKIP_DIVERGENCE in trained]  # sets trained with and without the mask
    filtered = _trained_filter(parsed)
    pairs = [
        *_transfer_pairs(arms, logs, settings),
        _freezing_contrast(logs, settings),
        *_divergence_contrasts(masked, logs, settings),
    ]
    if filtered:
        pairs += _entanglement_pairs(parsed, control_modes, settings)
    pairs += _specificity_pairs(parsed, control_modes, settings)

    out = {d.claim.name.removeprefix("subliminal."): d for d in decide_family(pairs)}
    behind = _students_behind(parsed, arms, masked)
    out = {name: learned_or_inconclusive(d, parsed, behind.get(name, ())) for name, d in out.items()}
    out["mlp"] = component_blocks_transfer(
        "MLP", out["transfer.freeze-attention"], out["transfer.freeze-mlp"], out["contrast.attention_vs_mlp_frozen"]
    )
    out.update(_divergence_claims(masked, out, settings))
    if filtered:
        out.update(_entanglement_claims(out, settings))
    return out


def learned_or_inconclusive(
    decision: Decision, results: SubliminalResults, sides: Sequence[tuple[str, str]]
) -> Decision:
    """A null (an arm's 'equivalent', a contrast's or a specificity quotient's 'equivalent', the
    filter quotient's predicted no-change) stands only where the students behind it, as
    (data set, arm) pairs, every seed pooled, are shown to have learned their data
    (`sublens.learning`). A claim with no students named is treated as one whose students
    were not shown to learn."""
    wanted = set(sides)
    students = [s for s in (results.students or {}).values() if (s.dataset, s.mode) in wanted]
    return unless_learned(decision, learning_check([s.training.loss_curve for s in students]))


def _students_behind(
    parsed: SubliminalResults, arms: Sequence[str], masked: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """Per claim with a test, the (data set, arm) students its estimate is made of."""

    def owl_and_control(*sets: str) -> list[tuple[str, str]]:
        return [(data, s) for s in sets for data in (OWL, CONTROL)]

    behind = {f"transfer.{a}": owl_and_control(a) for a in arms}
    behind["contrast.attention_vs_mlp_frozen"] = owl_and_control("freeze-attention", "freeze-mlp")
    behind |= {f"contrast.skip_divergence.{s}": owl_and_control(s, s + SKIP_DIVERGENCE) for s in masked}
    behind |= {f"transfer.{data}": [(data, "full"), (CONTROL, "full")] for data in (NO_RANDOM, NO_ENTANGLED)}
    behind["contrast.no_entangled_vs_no_random"] = [(NO_ENTANGLED, "full"), (NO_RANDOM, "full"), (CONTROL, "full")]
    behind |= {f"specificity.{t}": [*owl_and_control(arm), (t, arm)] for t, arm in extra_students(parsed)}
    return behind


# ---- the steps of subliminal_decisions -------------------------------------------------------
def _transfer_pairs(
    arms: Sequence[str], logs: Mapping[str, SeedLogs], settings: ClaimSettings
) -> list[tuple[Claim, Estimate | None]]:
    """Per owl arm, its transfer claim with the estimate of its per-seed log ratios."""
    return [(_transfer_claim(a, settings), _estimate(logs[a].logs)) for a in arms]


def _freezing_contrast(logs: Mapping[str, SeedLogs], settings: ClaimSettings) -> tuple[Claim, Estimate | None]:
    """The attention-frozen arm over the MLP-frozen arm, per seed."""
    contrast = _seed_claim(
        "contrast.attention_vs_mlp_frozen",
        "The transfer is larger with the MLP layers trained than frozen",
        "per seed, the attention-frozen arm's share ratio over the MLP-frozen arm's share ratio (each against "
        "its matched control)",
        "increase",
        settings,
    )
    return contrast, _estimate(paired_difference(logs["freeze-attention"], logs["freeze-mlp"]))


def _divergence_contrasts(
    masked: Sequence[str], logs: Mapping[str, SeedLogs], settings: ClaimSettings
) -> list[tuple[Claim, Estimate | None]]:
    """Per trainable set trained with and without the divergence mask, the unmasked arm over
    the masked arm, per seed."""
    pairs: list[tuple[Claim, Estimate | None]] = []
    for s in masked:
        how = describe_trainable(s)
        claim = _seed_claim(
            f"contrast.skip_divergence.{s}",
            f"The transfer is larger with the divergence tokens in the loss than out of it ({how})",
            f"per seed, the share ratio with every answer token in the loss over the share ratio with the "
            f"divergence tokens out of the loss (each owl student against its matched control, {how})",
            "increase",
            settings,
        )
        pairs.append((claim, _estimate(paired_difference(logs[s], logs[s + SKIP_DIVERGENCE]))))
    return pairs


def _trained_filter(parsed: SubliminalResults) -> bool:
    """Whether the run trained the entanglement filter's students."""
    return any(r.dataset in (NO_ENTANGLED, NO_RANDOM) for r in parsed.headline or []) or (
        parsed.data is not None and parsed.data.entangled is not None and parsed.data.entangled.filter is not None
    )


def _entanglement_pairs(
    parsed: SubliminalResults, control_modes: Sequence[str], settings: ClaimSettings
) -> list[tuple[Claim, Estimate | None]]:
    """The transfer without the random-set answers, and the quotient of the students without
    the entangled and without the random-set answers (predicted: no change)."""
    no_random = arm_seed_logs(parsed, NO_RANDOM, "full", control_modes)
    no_entangled = arm_seed_logs(parsed, NO_ENTANGLED, "full", control_modes)
    transfer = _seed_claim(
        f"transfer.{NO_RANDOM}",
        "The owl student acquires the bias without the answers that hold a random-set number (full fine-tuning)",
        f"owl's panel-share ratio, {NO_RANDOM_WORDS} over the control student, both with full fine-tuning "
        "and the same seed",
        "increase",
        settings,
    )
    kept = _seed_claim(
        f"transfer.{NO_ENTANGLED}",
        "The owl student acquires the bias without the answers that hold an entangled number (full fine-tuning)",
        f"owl's panel-share ratio, {NO_ENTANGLED_WORDS} over the control student, both with full fine-tuning "
        "and the same seed",
        "increase",
        settings,
    )
    quotient = _seed_claim(
        "contrast.no_entangled_vs_no_random",
        "Removing the answers that hold an entangled number changes the transfer no more than removing "
        "as many that hold a number of a matched random set",
        f"per seed, owl's panel-share ratio of {NO_ENTANGLED_WORDS} over that of {NO_RANDOM_WORDS} (each "
        "against the control student of the same seed, full fine-tuning)",
        "none",
        settings,
    )
    return [
        (transfer, _estimate(no_random.logs)),
        (kept, _estimate(no_entangled.logs)),
        (quotient, _estimate(paired_difference(no_entangled, no_random))),
    ]


def extra_students(results: SubliminalResults) -> list[tuple[str, str]]:
    """The extra teachers' students as (data set, arm), from the headline rows: every data set
    that is not the owl, control or entanglement-filter data (e.g. eagle, in its extra_mode)."""
    known = (OWL, CONTROL, NO_ENTANGLED, NO_RANDOM)
    rows = results.headline or []
    return list(dict.fromkeys((r.dataset, r.mode) for r in rows if r.dataset and r.mode and r.dataset not in known))


def _specificity_pairs(
    parsed: SubliminalResults, control_modes: Sequence[str], settings: ClaimSettings
) -> list[tuple[Claim, Estimate | None]]:
    """Per extra teacher (e.g. eagle) whose students share a trainable set with owl students:
    the owl data raise owl's share more than that teacher's data do, the per-seed quotient of
    the two students' ratios, each over the control student of that set and seed. A rise that
    any animal-loving teacher's numbers cause is not owl transfer (the specificity matrix's owl
    column, decided)."""
    pairs = []
    for teacher, arm in extra_students(parsed):
        owl = arm_seed_logs(parsed, OWL, arm, control_modes)
        other = arm_seed_logs(parsed, teacher, arm, control_modes)
        if not owl.logs or not other.logs:
            continue
        how = describe_trainable(arm)
        claim = _seed_claim(
            f"specificity.{teacher}",
            f"The owl teacher's numbers raise owl's share more than the {teacher} teacher's numbers do ({how})",
            f"per seed, owl's panel-share ratio of the owl student over that of the {teacher} student, each "
            f"over the control student of the same seed, all trained with {how}",
            "increase",
            settings,
        )
        pairs.append((claim, _estimate(paired_difference(owl, other))))
    return pairs


def _divergence_claims(
    masked: Sequence[str], out: Mapping[str, Decision], settings: ClaimSettings
) -> dict[str, Decision]:
    """Per masked trainable set, "leaving the divergence tokens out of the loss blocks the
    transfer" (`blocks_transfer`) from its decided legs."""
    decided: dict[str, Decision] = {}
    for s in masked:
        how = describe_trainable(s)
        claim = _seed_claim(
            f"divergence.{s}",
            f"Leaving the divergence tokens out of the loss blocks the transfer ({how})",
            f"(a) the ratio with every answer token in the loss, (b) the ratio with the divergence tokens out of "
            f"the loss, each owl student over its matched control student ({how}), (c) their quotient, per seed",
            "increase",
            settings,
        )
        decided[f"divergence.{s}"] = blocks_transfer(
            claim,
            out[f"transfer.{s}"],
            out[f"transfer.{s}{SKIP_DIVERGENCE}"],
            out[f"contrast.skip_divergence.{s}"],
            reference_leg="transfer with every answer token in the loss",
            blocked_arm="divergence-masked arm",
        )
    return decided


def _entanglement_claims(out: Mapping[str, Decision], settings: ClaimSettings) -> dict[str, Decision]:
    """The quotient claim with what would show no effect (`equivalence_settle`), and "token
    entanglement does not explain the transfer" (`all_legs`) from its decided legs: (a) the
    owl data transfer without the random-set answers, (b) they still transfer without the
    entangled-number answers, and (c) removing the entangled numbers changes the transfer no
    more than removing the random set (the quotient inside the margin). Leg (b) guards the
    equivalence of (c): where the margin is as wide as the transfer itself, a quotient inside
    it can hide the entangled numbers carrying all of it. Contradicted only where there is a
    transfer to lower (a) and the quotient lies beyond the margin."""
    transfer, kept = out[f"transfer.{NO_RANDOM}"], out[f"transfer.{NO_ENTANGLED}"]
    quotient = equivalence_settle(out["contrast.no_entangled_vs_no_random"])
    claim = _seed_claim(
        "entanglement",
        "Token entanglement does not explain the transfer",
        f"(a) the share ratio of {NO_RANDOM_WORDS} over the control student, (b) that of "
        f"{NO_ENTANGLED_WORDS}, (c) per seed, (b) divided by (a)",
        "none",
        settings,
    )
    legs = {
        "(a) transfer without the random-set answers": transfer.verdict is Verdict.SUPPORTED,
        "(b) transfer without the entangled-number answers": kept.verdict is Verdict.SUPPORTED,
        "(c) removing the entangled numbers no different from removing the random set (within the margin)": quotient.verdict
        is Verdict.SUPPORTED,
    }
    ratio = quotient.estimate.ratio if quotient.estimate else None
    against = (
        f"removing the entangled numbers {'lowers' if ratio is not None and ratio < 1 else 'raises'} "
        f"the transfer beyond the margin ({quotient.reason})"
        if quotient.verdict is Verdict.CONTRADICTED and transfer.verdict is Verdict.SUPPORTED
        else None
    )
    return {
        "contrast.no_entangled_vs_no_random": quotient,
        "entanglement": all_legs(claim, legs, (transfer, kept, quotient), quotient, against),
    }
