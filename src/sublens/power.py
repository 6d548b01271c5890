"""Power of the seed-level transfer test, from a pilot's between-seed spread.

The transfer claim tests the mean over training seeds of log(owl share ratio against the
matched control) with a two-sided one-sample t-test (`sublens.claims`). Its power for a true
ratio R, with between-seed SD sigma of the log ratio and n seeds, is exact under normal
per-seed logs: the t statistic is noncentral t with n - 1 degrees of freedom and noncentrality
log(R) * sqrt(n) / sigma. A pilot (one or more runs of the same design) gives sigma; this
module says how many seeds a given effect needs, and what effect the pilot itself could see.
Torch-free: it reads results.json only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sublens.claims import DEFAULT_ALPHA, DEFAULT_POWER, minimal_detectable_log_effect
from sublens.errors import ConfigError
from sublens.runs import read_json


def power_of(ratio: float, sd_log: float, n: int, alpha: float = DEFAULT_ALPHA) -> float:
    """Probability that the two-sided one-sample t-test at `alpha` rejects "no change" when the
    per-seed log ratios are normal with mean log(ratio) and SD sd_log, over n seeds."""
    if n < 2 or sd_log <= 0:
        raise ConfigError("power needs at least 2 seeds and a positive between-seed SD")
    df = n - 1
    noncentrality = math.log(ratio) * math.sqrt(n) / sd_log
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def seeds_for(
    ratio: float, sd_log: float, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER, limit: int = 10_000
) -> int | None:
    """Fewest seeds whose power reaches `power` for this ratio (None beyond `limit`)."""
    if ratio <= 0 or ratio == 1:
        raise ConfigError("the effect to detect must be a ratio other than 1 (e.g. 1.25)")
    low, high = 2, 2
    while power_of(ratio, sd_log, high, alpha) < power:  # power grows with n: bracket, then bisect
        if high >= limit:
            return None
        low, high = high, min(limit, high * 2)
    while low < high:
        middle = (low + high) // 2
        if power_of(ratio, sd_log, middle, alpha) >= power:
            high = middle
        else:
            low = middle + 1
    return high


def pilot_logs(run_dirs: Sequence[str | Path], arm: str = "owl-full") -> list[float]:
    """The per-seed log share ratios of one arm against its matched control, from finished
    subliminal runs (pooled: the runs must share the design)."""
    logs: list[float] = []
    for run_dir in run_dirs:
        path = Path(run_dir).expanduser() / "results.json"
        if not path.is_file():
            raise ConfigError(f"{str(run_dir)!r} has no results.json: give finished subliminal run folders.")
        results: dict[str, Any] = read_json(path)
        row = next((r for r in results.get("headline") or [] if r.get("model") == arm), None)
        found = ((row or {}).get("vs_control") or {}).get("share_ratio") or {}
        if "per_seed_log" not in found:
            arms = ", ".join(r.get("model", "?") for r in results.get("headline") or [] if r.get("vs_control"))
            raise ConfigError(f"{run_dir}: no comparison of arm {arm!r} against its control (arms: {arms or 'none'}).")
        logs += [float(v) for v in found["per_seed_log"]]
    return logs


@dataclass(frozen=True)
class PowerReport:
    n_pilot: int
    mean_log: float
    sd_log: float
    ratio: float
    alpha: float
    power: float
    seeds_needed: int | None
    pilot_power: float
    pilot_detectable_ratio: float

    def lines(self) -> list[str]:
        needed = f"{self.seeds_needed} seeds" if self.seeds_needed is not None else "more than 10,000 seeds"
        goal = f"to detect x{self.ratio:g} at {self.power:.0%} power (two-sided alpha {self.alpha:g}): {needed}"
        if self.n_pilot == 0:  # an SD given, no pilot runs
            return [f"between-seed SD of the log ratio {self.sd_log:.3g} (given)", goal]
        return [
            f"pilot: {self.n_pilot} seeds, mean share ratio x{math.exp(self.mean_log):.3g}, "
            f"between-seed SD of the log ratio {self.sd_log:.3g}",
            goal,
            f"with the pilot's {self.n_pilot} seeds: power {self.pilot_power:.0%} for x{self.ratio:g}; "
            f"detectable at {self.power:.0%}: x{self.pilot_detectable_ratio:.3g}",
        ]


def power_report(
    logs: Sequence[float],
    ratio: float = 1.25,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    sd_log: float | None = None,
) -> PowerReport:
    """Seeds needed for `ratio` from the pilot's per-seed logs (or a given SD)."""
    n = len(logs)
    if sd_log is None:
        if n < 2:
            raise ConfigError("a pilot needs at least 2 seeds for a between-seed SD (or give --sd)")
        sd_log = float(np.std(logs, ddof=1))
    if sd_log <= 0:
        raise ConfigError("the pilot's per-seed ratios do not vary: no SD to plan with")
    pilot_n = max(n, 2)
    return PowerReport(
        n_pilot=n,
        mean_log=float(np.mean(logs)) if n else 0.0,
        sd_log=sd_log,
        ratio=ratio,
        alpha=alpha,
        power=power,
        seeds_needed=seeds_for(ratio, sd_log, alpha, power),
        pilot_power=power_of(ratio, sd_log, pilot_n, alpha),
        pilot_detectable_ratio=math.exp(minimal_detectable_log_effect(sd_log, pilot_n, alpha, power)),
    )
