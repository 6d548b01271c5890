"""The subliminal claims, decided in `sublens.claims` with seeds as the unit (each owl arm
against the control student of its own freeze mode), which owl arms beyond the freeze modes
and which divergence-token sets have a claim of their own, and the verdicts as the text states
them: transfer, localisation by freezing, the other arms, the divergence-token and the
entanglement claims, each family led once."""

from __future__ import annotations

from sublens.claims import (
    NO_ENTANGLED,
    NO_RANDOM,
    SKIP_DIVERGENCE,
    SUBLIMINAL_MODES,
    Decision,
    subliminal_decisions,
)
from sublens.experiments.subliminal.results import SubliminalResults
from sublens.report.sections.subliminal.reading import arm_modes
from sublens.report.stages import StageRun
from sublens.report.verdicts import claim_settings, decisions_latex
from sublens.trainable import split_arm


# ---- the claims (decided in sublens.claims) ---------------------------------------------------
def decisions(run: StageRun, results: SubliminalResults) -> dict[str, Decision]:
    """The subliminal claims with seeds as the unit, each owl arm against the control student
    of its own freeze mode (older runs without matched controls: those arms count as not
    measured)."""
    modes, control_modes = arm_modes(results, run.config)
    return subliminal_decisions(results, control_modes, claim_settings(run.config), modes=modes)


FREEZE_MODES = ("freeze-attention", "freeze-mlp")
FREEZING_LEAD = "Localisation by freezing (a claim separate from localisation by transplant and by attribution): "
DIVERGENCE_LEAD = "Divergence tokens \\citep{schrodi2026understanding}: "
ENTANGLEMENT_LEAD = "Entanglement \\citep{zur2025owl}: "
# A rise that any animal-loving teacher's numbers cause is not owl transfer.
SPECIFICITY_LEAD = "Specificity, against the other teachers' students: "


def divergence_sets(decided: dict[str, Decision]) -> list[str]:
    """The trainable sets the run trained both with and without the divergence tokens in the loss."""
    return [key.removeprefix("divergence.") for key in decided if key.startswith("divergence.")]


def other_arms(modes: list[str], decided: dict[str, Decision]) -> list[str]:
    """The owl arms beyond the freeze modes with a transfer claim of their own in the text (a
    layer range, LoRA, a divergence-token mask): all but the masked arms whose claim is the
    divergence one."""
    masked = {f"{s}{SKIP_DIVERGENCE}" for s in divergence_sets(decided)}
    return [m for m in modes if m not in SUBLIMINAL_MODES and m not in masked and f"transfer.{m}" in decided]


def _claims_text(modes: list[str], decided: dict[str, Decision]) -> str:
    """The verdicts on the owl arms the run has (one family with the entanglement claims):
    transfer with full fine-tuning, localisation by freezing, transfer with every other arm,
    the divergence-token claims; the text has given each arm's ratio."""
    chosen, lead = [decided["transfer.full"]], [""]
    if any(m in FREEZE_MODES for m in modes):
        chosen.append(decided["mlp"])
        lead.append(FREEZING_LEAD)
    others = other_arms(modes, decided)
    divergence = [f"transfer.{arm}" for arm in others if split_arm(arm)[1] != "all"]
    divergence += [f"divergence.{s}" for s in divergence_sets(decided)]
    for key in [f"transfer.{arm}" for arm in others if split_arm(arm)[1] == "all"] + divergence:
        chosen.append(decided[key])
        lead.append(DIVERGENCE_LEAD if divergence and key == divergence[0] else "")
    return decisions_latex(chosen, ratio_stated=True, lead=lead)


def _specificity_claims_text(decided: dict[str, Decision]) -> str:
    """The owl students against each extra teacher's students (each over the control student),
    with the quotient's own interval, which no table gives (the test and margin were said with
    the other claims of the family)."""
    keys = [key for key in decided if key.startswith("specificity.")]
    lead = [SPECIFICITY_LEAD if i == 0 else "" for i in range(len(keys))]
    return decisions_latex([decided[k] for k in keys], test_stated=True, lead=lead) if keys else ""


def _entanglement_claims_text(decided: dict[str, Decision]) -> str:
    """The entanglement claims, after the filtered students' contrast: transfer without the
    random-set answers, the quotient predicted to be no change, and the claim they make
    together (the test and margin were said with the other claims of the family)."""
    if "entanglement" not in decided:
        return ""
    keys = (f"transfer.{NO_RANDOM}", f"transfer.{NO_ENTANGLED}", "contrast.no_entangled_vs_no_random", "entanglement")
    return decisions_latex([decided[k] for k in keys], test_stated=True, lead=["", "", "", ENTANGLEMENT_LEAD])
