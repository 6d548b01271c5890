"""Between-seed spread of a subliminal transfer ratio, and what it means for power.

Reads finished `subliminal` run directories (one seed each, or several) and pools the per-seed
log share ratios of the owl student over its matched control student in one mode. Prints the
between-seed SD of the log ratio, the seed-level estimate with its Student-t interval, the
minimal detectable effect at that SD for the seeds in hand, and how many seeds would detect
the claims margin (sublens.claims). Each run should have sampled its own teacher data
(`seed` = training seed, or `data_per_seed: true`), so the spread includes data sampling.

    python benchmarks/seed_spread.py runs/*_subliminal_* [--mode full]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sublens.claims import (
    ClaimSettings,
    estimate_log_ratio,
    minimal_detectable_log_effect,
    per_seed_logs,
    units_for_margin,
)


def owl_share_logs(run_dir: Path, mode: str) -> list[tuple[int, float]]:
    results = json.loads((run_dir / "results.json").read_text())
    row = next((r for r in results.get("headline") or [] if r.get("dataset") == "owl" and r.get("mode") == mode), None)
    if row is None:
        return []
    logs = per_seed_logs((row.get("vs_control") or {}).get("share_ratio"))
    return list(zip(results.get("seeds") or [], logs, strict=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--mode", default="full")
    args = parser.parse_args()
    pairs = [p for run in args.runs for p in owl_share_logs(run, args.mode)]
    for seed, value in pairs:
        print(f"seed {seed}: owl student / control student, owl's share ×{math.exp(value):.3f}")
    logs = [v for _, v in pairs]
    est = estimate_log_ratio(logs, "seed")
    settings = ClaimSettings()
    print(f"{len(logs)} seeds: ×{est.ratio:.3f} [{est.ci_low}, {est.ci_high}] ({est.interval}), p = {est.p_value}")
    if est.sd_log:
        mde = math.exp(minimal_detectable_log_effect(est.sd_log, len(logs), settings.alpha, settings.power))
        needed = units_for_margin(est.sd_log, settings.margin, settings.alpha, settings.power)
        print(f"between-seed SD of the log share ratio: {est.sd_log:.3f}")
        print(
            f"minimal detectable effect with {len(logs)} seeds (alpha {settings.alpha}, power "
            f"{settings.power}): ×{mde:.2f}; seeds to detect ×{settings.margin}: {needed}"
        )


if __name__ == "__main__":
    main()
